"""`instance` commands on OpenNebula, against the XML-RPC peer of tests/peers/opennebula.py."""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any

import pyone
import pytest
from peers.faultproxy import Fault, FaultProxy

from wlcgcloud.config import load_config
from wlcgcloud.errors import PartialFailure, PolicyError, UsageError
from wlcgcloud.providers import connect
from wlcgcloud.providers.base import LaunchRequest

from conftest import INSTANCE_KEYS, OneNebulaPeer, Run, World, create_instances, one_profile, write_profiles

ACTIVE, POWEROFF = 3, 8
BOOT_FAILURE, PROLOG_FAILURE = 36, 39


@pytest.fixture
def one(world: World, one_peer: OneNebulaPeer, monkeypatch: pytest.MonkeyPatch) -> OneNebulaPeer:
    write_profiles(world, {"one": one_profile(one_peer)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    return one_peer


@pytest.fixture
def fleet() -> str:
    return "t-" + uuid.uuid4().hex[:10]


def listed(run: Run, fleet: str) -> list[dict[str, Any]]:
    result = run("instance", "list", "--fleet", fleet, "-o", "json")
    assert result.code == 0, result.err
    rows = result.json()
    assert isinstance(rows, list)
    return rows


def test_twenty_vms_from_one_request_listed_by_fleet_then_terminated(
    run: Run, world: World, one: OneNebulaPeer, fleet: str
) -> None:
    before = one.control.peer.calls().get("one.template.instantiate", 0)
    ids = create_instances(world, "one", "cernvm-4", "atlas-wn", 20, fleet)
    assert len(set(ids)) == 20
    [image_id] = [i.id for i in connect(load_config(world.config).profile("one")).images() if i.name == "cernvm-4"]
    assert one.control.peer.calls()["one.template.instantiate"] - before == 20
    time.sleep(0.3)  # the peer deploys a pending VM after 0.2 s
    rows = listed(run, fleet)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    for row in rows:
        assert set(row) >= INSTANCE_KEYS
        assert (row["fleet"], row["profile"], row["provider"], row["flavor"]) == (
            fleet,
            "one",
            "opennebula",
            "atlas-wn",
        )
        assert (row["vcpus"], row["memory_mb"], row["image"]) == (2, 4096, image_id)
        assert (row["state"], row["provider_state"]) == ("running", "ACTIVE/RUNNING")
        assert row["addresses"][0].startswith("10.10.")
    assert {r["name"] for r in rows} == {f"{fleet}-vm-{n}" for n in range(1, 21)}

    done = run("instance", "terminate", *ids, "--yes", "-o", "json")
    assert done.code == 0, done.err
    assert all(r["terminated"] for r in done.json())  # type: ignore[union-attr]
    assert listed(run, fleet) == []  # DONE VMs leave the pool listing


@pytest.mark.parametrize(
    ("state", "lcm", "ours", "words"),
    [
        (3, 18, "stopping", "ACTIVE/SHUTDOWN_POWEROFF"),
        (3, 16, "unknown", "ACTIVE/UNKNOWN"),
        (3, 51, "stopped", "ACTIVE/DISK_SNAPSHOT_POWEROFF"),
        (3, 57, "running", "ACTIVE/DISK_SNAPSHOT"),
        (3, 2, "pending", "ACTIVE/BOOT"),
        (3, 14, "error", "ACTIVE/FAILURE"),
        (3, 44, "error", "ACTIVE/PROLOG_MIGRATE_POWEROFF_FAILURE"),
        (3, 43, "stopped", "ACTIVE/PROLOG_MIGRATE_POWEROFF"),
        (2, 0, "pending", "HOLD"),
        (9, 0, "stopped", "UNDEPLOYED"),
    ],
)
def test_more_states_map(
    run: Run, world: World, one: OneNebulaPeer, fleet: str, state: int, lcm: int, ours: str, words: str
) -> None:
    [vm_id] = create_instances(world, "one", "cernvm-4", "atlas-wn", 1, fleet)
    one.control.peer.set_state(int(vm_id), state, lcm)
    [row] = listed(run, fleet)
    assert (row["state"], row["provider_state"]) == (ours, words)


def test_tag_values_round_trip_and_unwritable_ones_are_refused(world: World, one: OneNebulaPeer, fleet: str) -> None:
    provider = connect(load_config(world.config).profile("one"))
    tags = {"wlcg:fleet": fleet, "wlcg:launched-by": 'CERN\\op "night shift"'}
    [made] = provider.create(LaunchRequest(f"{fleet}-q", "cernvm-4", "atlas-wn", 1, None, tags))
    assert made.tags["wlcg:launched-by"] == 'CERN\\op "night shift"'
    raw = pyone.OneServer(one.url, session="atlas:secret").vm.info(int(made.id))
    assert raw.USER_TEMPLATE["WLCG_LAUNCHED_BY"] == 'CERN\\op "night shift"'
    disk = raw.TEMPLATE["DISK"]  # the endorsed image replaced the template's image disk, not its size
    assert disk["IMAGE_ID"] == "0" and disk["IMAGE"] == "cernvm-4" and disk.get("TARGET") == "vda"
    for bad in ("ends-in\\", "has]]>cdata"):
        with pytest.raises(UsageError, match="cannot be written in an OpenNebula template"):
            provider.create(
                LaunchRequest(f"{fleet}-b", "cernvm-4", "atlas-wn", 1, None, {**tags, "wlcg:experiment": bad})
            )
    assert [i.id for i in provider.instances(fleet=fleet)] == [made.id]


def test_user_data_over_the_profiles_limit_is_refused(world: World, one: OneNebulaPeer, fleet: str) -> None:
    write_profiles(world, {"one": one_profile(one, user_data_limit=1000)})
    provider = connect(load_config(world.config).profile("one"))
    with pytest.raises(PolicyError, match="1001 bytes; OpenNebula accepts at most 1000"):
        provider.create(LaunchRequest(fleet, "cernvm-4", "atlas-wn", 1, b"x" * 1001, {"wlcg:fleet": fleet}))
    assert provider.instances(fleet=fleet) == []


def test_lcm_failure_and_other_states_map(run: Run, world: World, one: OneNebulaPeer, fleet: str) -> None:
    a, b, c = create_instances(world, "one", "cernvm-4", "atlas-wn", 3, fleet)
    one.control.peer.set_state(int(a), ACTIVE, BOOT_FAILURE)
    one.control.peer.set_state(int(b), ACTIVE, PROLOG_FAILURE)
    one.control.peer.set_state(int(c), POWEROFF, 0)
    rows = {r["id"]: r for r in listed(run, fleet)}
    assert (rows[a]["state"], rows[a]["provider_state"]) == ("error", "ACTIVE/BOOT_FAILURE")
    assert (rows[b]["state"], rows[b]["provider_state"]) == ("error", "ACTIVE/PROLOG_FAILURE")
    assert (rows[c]["state"], rows[c]["provider_state"]) == ("stopped", "POWEROFF")
    errors = run("instance", "list", "--fleet", fleet, "--state", "error", "-o", "json").json()
    assert sorted(r["id"] for r in errors) == sorted([a, b])  # type: ignore[union-attr]


def test_user_data_goes_in_context_beside_the_templates_own(world: World, one: OneNebulaPeer, fleet: str) -> None:
    [vm_id] = create_instances(world, "one", "cernvm-4", "atlas-wn", 1, fleet)
    raw = pyone.OneServer(one.url, session="atlas:secret").vm.info(int(vm_id))
    context = raw.TEMPLATE["CONTEXT"]
    assert base64.b64decode(context["USER_DATA"]) == b"#cloud-config\n{}\n"
    assert context["USER_DATA_ENCODING"] == "base64"
    assert context["NETWORK"] == "YES"  # the template's own context survives
    assert raw.USER_TEMPLATE["WLCG_FLEET"] == fleet and raw.USER_TEMPLATE["WLCG_EXPERIMENT"] == "atlas"


def test_vms_of_another_tool_and_similar_fleet_names(run: Run, world: World, one: OneNebulaPeer, fleet: str) -> None:
    [ours] = create_instances(world, "one", "cernvm-4", "atlas-wn", 1, fleet)
    by_hand = one.control.peer.add_vm("atlas", f'NAME="by-hand"\nCPU="1"\nMEMORY="1024"\nWLCG_FLEET="{fleet}"')
    one.control.peer.add_vm("atlas", f'NAME="other"\nCPU="1"\nMEMORY="1024"\nWLCG_FLEET="{fleet}-1"')
    stranger = one.control.peer.add_vm("atlas", 'NAME="stranger"\nCPU="1"\nMEMORY="1024"')
    assert sorted(r["id"] for r in listed(run, fleet)) == sorted([ours, str(by_hand)])
    everything = run("instance", "list", "--all", "-o", "json").json()
    assert str(stranger) in [r["id"] for r in everything]  # type: ignore[union-attr]


def test_same_request_twice_instantiates_once(world: World, one: OneNebulaPeer, fleet: str) -> None:
    before = one.control.peer.calls().get("one.template.instantiate", 0)
    first = create_instances(world, "one", "cernvm-4", "atlas-wn", 4, fleet)
    again = create_instances(world, "one", "cernvm-4", "atlas-wn", 4, fleet)
    assert sorted(first) == sorted(again)
    assert one.control.peer.calls()["one.template.instantiate"] - before == 4


def test_over_quota_is_a_partial_launch(
    world: World, one: OneNebulaPeer, fleet: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_profiles(world, {"cms": one_profile(one, username="cms")})
    monkeypatch.setenv("WLCGCLOUD_SECRET_CMS", "secret")
    provider = connect(load_config(world.config).profile("cms"))
    quota = provider.quota()
    room = (quota.instances or 0) - (quota.instances_used or 0)
    assert quota.instances == 10 and room > 0
    with pytest.raises(PartialFailure) as caught:
        create_instances(world, "cms", "cernvm-4", "atlas-wn", room + 2, fleet)
    assert f"{room} of {room + 2} VMs created" in str(caught.value) and "limit of 10 reached" in str(caught.value)
    assert provider.quota().instances_used == 10
    made = provider.instances(fleet=fleet)
    provider.terminate([i.id for i in made])
    assert provider.quota().instances_used == 10 - room


def test_console_log_says_opennebula_cannot(run: Run, world: World, one: OneNebulaPeer, fleet: str) -> None:
    [vm_id] = create_instances(world, "one", "cernvm-4", "atlas-wn", 1, fleet)
    result = run("instance", "console-log", vm_id)
    assert result.code == 2 and "OpenNebula has no console-log call" in result.err


def test_wrong_password_is_exit_4(run: Run, one: OneNebulaPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "not-it")
    result = run("instance", "list")
    assert result.code == 4
    assert result.err.startswith("error: profile 'one': OpenNebula refused the login (AUTHENTICATION, 0x100).")
    assert "not-it" not in result.err


def test_unreachable_endpoint_is_exit_6(run: Run, world: World, one: OneNebulaPeer) -> None:
    write_profiles(world, {"one": one_profile(one, endpoint="http://127.0.0.1:9/RPC2")})
    started = time.monotonic()
    result = run("instance", "list")
    assert result.code == 6 and "profile 'one'" in result.err and "cannot reach" in result.err
    assert time.monotonic() - started < 8


def test_throttled_and_failing_answers(run: Run, world: World, one: OneNebulaPeer, fleet: str) -> None:
    create_instances(world, "one", "cernvm-4", "atlas-wn", 1, fleet)
    with FaultProxy(one.url.rsplit("/RPC2", 1)[0]) as proxy:
        write_profiles(world, {"one": one_profile(one, endpoint=proxy.url + "/RPC2")})
        proxy.plan(Fault("status", status=503, headers={"Retry-After": "1"}, match="one.vmpool.infoextended"))
        started = time.monotonic()
        ok = run("instance", "list", "--fleet", fleet, "-o", "json")
        assert ok.code == 0, ok.err
        assert len(ok.json()) == 1 and time.monotonic() - started >= 1  # type: ignore[arg-type]
        proxy.plan(Fault("xmlrpc_fault", value=[False, "[one.vmpool.infoextended] Internal error", 0x2000, -1, -1]))
        failed = run("instance", "list")
        assert failed.code == 6 and "Internal error" in failed.err and "Traceback" not in failed.err


def test_stalled_endpoint_fails_within_timeout(run: Run, world: World, one: OneNebulaPeer) -> None:
    with FaultProxy(one.url.rsplit("/RPC2", 1)[0]) as proxy:
        write_profiles(world, {"one": one_profile(one, endpoint=proxy.url + "/RPC2", timeout=2)})
        proxy.always(Fault("stall"))
        started = time.monotonic()
        result = run("instance", "list")
        took = time.monotonic() - started
    assert result.code == 6 and "no answer within 2 s" in result.err and result.err.count("\n") == 1
    assert took < 6  # the 2 s timeout plus start-up, on a loaded CI machine too; unbounded would hang


def test_lost_instantiate_answer_is_adopted_not_repeated(world: World, one: OneNebulaPeer, fleet: str) -> None:
    before = one.control.peer.calls().get("one.template.instantiate", 0)
    with FaultProxy(one.url.rsplit("/RPC2", 1)[0]) as proxy:
        write_profiles(world, {"one": one_profile(one, endpoint=proxy.url + "/RPC2")})
        proxy.plan(Fault("lose_answer", match="one.template.instantiate"))
        made = create_instances(world, "one", "cernvm-4", "atlas-wn", 3, fleet)
    assert len(made) == 3
    assert one.control.peer.calls()["one.template.instantiate"] - before == 3


def test_usage_from_accounting_records(world: World, one: OneNebulaPeer, fleet: str) -> None:
    from datetime import UTC, datetime, timedelta

    provider = connect(load_config(world.config).profile("one"))
    ended, running = create_instances(world, "one", "cernvm-4", "atlas-wn", 2, fleet)
    one.control.peer.set_state(int(ended), ACTIVE, 3)  # deployed now: its accounting record opens
    one.control.peer.set_state(int(running), ACTIVE, 3)
    provider.terminate([ended])
    now = datetime.now(UTC)
    records = {r.instance_id: r for r in provider.usage(now - timedelta(hours=1), now + timedelta(minutes=1))}
    assert records[running].ended_at is None and records[running].vcpus == 2 and records[running].memory_mb == 4096
    assert records[ended].ended_at is not None and records[ended].tags["wlcg:fleet"] == fleet
    assert ended not in {r.instance_id for r in provider.usage(now - timedelta(days=2), now - timedelta(days=1))}
