"""Launching fleets safely: the ledger's intent, resuming, partial failure, rollback, --spread, --wait, --spot."""

from __future__ import annotations

import contextlib
import re
import socket
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers.opennebula import DEFAULT_WORLD, OpenNebulaPeer
from peers.proxies import make_token

from wlcgcloud.context.vmagent import packed

from conftest import Run, World, create_instances, ec2_profile, one_profile, own_marked_ami, write_profiles

LEDGER = "ledger.sqlite"


def ledger_rows(world: World, table: str) -> list[dict[str, Any]]:
    db = sqlite3.connect(world.state / LEDGER)
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute(f"SELECT * FROM {table} ORDER BY rowid")]
    finally:
        db.close()


def private(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def users_with_quota(vms: int) -> list[dict[str, Any]]:
    users = [dict(u) for u in DEFAULT_WORLD["users"]]
    for u in users:
        if u["name"] == "atlas":
            u["quota"] = {"VMS": vms, "CPU": 400, "MEMORY": 819200}
    return users


@pytest.fixture
def one_world(world: World, endorsed: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Two OpenNebula sites for atlas, one with room for 4 VMs and one for 12, each holding the endorsed image."""
    images = [{"id": 0, "name": "atlas-wn", "owner": "atlas", "size": 1,
               "template": f'WLCG_ENDORSED_ID="{endorsed["first"]}"\n'}]  # fmt: skip
    with (
        OpenNebulaPeer(images=images, users=users_with_quota(4)) as small,
        OpenNebulaPeer(images=images, users=users_with_quota(12), deploy_delay=1.0) as big,
    ):
        write_profiles(world, {
            "small": one_profile(small, vm_template="atlas-wn", experiment="atlas"),  # type: ignore[arg-type]
            "big": one_profile(big, vm_template="atlas-wn", experiment="atlas"),  # type: ignore[arg-type]
        })  # fmt: skip
        monkeypatch.setenv("WLCGCLOUD_SECRET_SMALL", "secret")
        monkeypatch.setenv("WLCGCLOUD_SECRET_BIG", "secret")
        yield {"small": small, "big": big}


def test_the_intent_is_in_the_ledger_before_the_first_api_call(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here: every API call fails
    write_profiles(world, {"aws": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": f"http://127.0.0.1:{port}",
                                   "access_key_id": "A", "flavor": "m5.large", "timeout": 3}})  # fmt: skip
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", "x")
    result = run("launch", "ami-0abc", "-p", "aws", "--allow-unendorsed", "--credential", "none", "-n", "3",
                 "--fleet", "never-made")  # fmt: skip
    assert result.code == 6, result.err
    [launch] = ledger_rows(world, "launches")
    assert launch["fleet"] == "never-made" and launch["requested"] == 3 and launch["state"] == "failed"
    assert len(launch["request_token"]) == 32 and launch["endorsement"] == "none" and "cannot reach" in launch["error"]
    assert (world.state / LEDGER).stat().st_mode & 0o777 == 0o600


def test_a_rerun_resumes_the_fleet_without_duplicates(
    run: Run, world: World, endorsed: dict[str, Any], moto_ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    ami = own_marked_ami(moto_ec2.client(), endorsed["first"])
    write_profiles(world, {"aws": ec2_profile(moto_ec2, flavor="m5.large", experiment="atlas")})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    # Another machine launched 3 of the fleet and was lost with its ledger: reconcile learns of
    # them from their tags, and the same launch run here then resumes the fleet.
    earlier = create_instances(world, "aws", ami, "m5.large", 3, "resume-me")
    assert run("fleet", "reconcile", "-p", "aws").code == 0
    base = ("launch", endorsed["first"], "-p", "aws", "--credential", "none", "--fleet", "resume-me", "-o", "json")
    result = run(*base, "--count", "5")
    assert result.code == 0, result.err
    data = result.json()
    assert isinstance(data, dict)
    # Truthful: 3 found from the earlier run, 2 started by this one.
    assert (data["resumed"], data["launched"], data["failed"]) == (3, 2, 0)
    assert (data["profiles"][0]["resumed"], data["profiles"][0]["launched"]) == (3, 2)
    ids = {i["id"] for i in data["instances"]}
    assert set(earlier) <= ids and len(ids) == 5
    listed = run("instance", "list", "--fleet", "resume-me", "-p", "aws", "-o", "json")
    assert len([i for i in listed.json() if i["state"] != "terminated"]) == 5  # type: ignore[union-attr]
    assert ids <= {r["id"] for r in ledger_rows(world, "instances")}
    again = run(*base, "--count", "5")  # the same command once more: nothing new
    assert again.code == 0 and again.json()["profiles"][0]["resumed"] == 5  # type: ignore[index,call-overload]
    assert again.json()["launched"] == 0  # type: ignore[index,call-overload]
    table = run(*base[:-2], "--count", "5")
    assert "5 requested; found 5 of an earlier run, started 0." in table.err
    assert ids == {r["id"] for r in ledger_rows(world, "instances") if r["fleet"] == "resume-me"}
    other = run(*base, "--count", "7")
    assert other.code == 2 and "fleet scale resume-me" in other.err
    assert run("instance", "terminate", *ids, "-p", "aws", "--yes").code == 0
    ended = {r["id"]: r["ended_at"] for r in ledger_rows(world, "instances")}
    assert all(ended[i] for i in ids)  # `instance terminate` records the ends in the ledger too


def test_a_launch_writes_each_instance_it_makes_to_the_ledger_once(
    run: Run, world: World, endorsed: dict[str, Any], moto_ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As soon as the ids are known, and not a second time when the call returns (on a PostgreSQL ledger a
    launch of 200 wrote 400 rows). A spy around the ledger's own method: every row still goes to SQLite."""
    from collections import Counter

    from wlcgcloud.ledger import Ledger

    write_profiles(world, {"aws": ec2_profile(moto_ec2, flavor="m5.large", experiment="atlas")})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    own_marked_ami(moto_ec2.client(), endorsed["first"])
    written: Counter[str] = Counter()
    record = Ledger.record_instances

    def counted(self: Ledger, instances: Any, launch_id: int | None = None) -> None:
        instances = list(instances)
        written.update(i.id for i in instances)
        record(self, instances, launch_id)

    monkeypatch.setattr(Ledger, "record_instances", counted)
    result = run("launch", endorsed["first"], "-p", "aws", "--credential", "none", "--fleet", "once", "-n", "4",
                 "-o", "json")  # fmt: skip
    assert result.code == 0, result.err
    ids = {i["id"] for i in result.json()["instances"]}  # type: ignore[index,call-overload]
    assert len(ids) == 4 and written == Counter(dict.fromkeys(ids, 1))
    rows = [r for r in ledger_rows(world, "instances") if r["fleet"] == "once"]
    assert {r["id"] for r in rows} == ids and all(r["launch_id"] and r["vcpus"] == 2 for r in rows)


def test_quota_exhausted_midway_is_a_partial_launch_and_rollback_undoes_it(
    run: Run, world: World, one_world: dict[str, Any]
) -> None:
    base = ("launch", "ATLAS worker node 1", "-p", "small", "--credential", "none", "-o", "json")
    partial = run(*base, "--count", "6", "--fleet", "too-big")
    assert partial.code == 7, partial.err
    data = partial.json()
    assert isinstance(data, dict)
    assert (data["requested"], data["launched"], data["failed"]) == (6, 4, 2)
    assert "limit of 4 reached for VMS quota" in data["errors"][0]["message"]
    [launch] = ledger_rows(world, "launches")
    assert launch["state"] == "partial" and len(ledger_rows(world, "instances")) == 4
    for vm in data["instances"]:
        run("instance", "terminate", vm["id"], "-p", "small", "--yes")
    undone = run(*base, "--count", "6", "--fleet", "all-or-nothing", "--rollback-on-failure")
    assert undone.code == 6, undone.err
    gone = undone.json()
    assert isinstance(gone, dict) and gone["rolled_back"] == 4 and gone["launched"] == 0
    assert "terminated the 4 instance(s)" in undone.err
    ended = [r for r in ledger_rows(world, "instances") if r["fleet"] == "all-or-nothing"]
    assert len(ended) == 4 and all(r["ended_at"] for r in ended)


def test_spread_divides_by_free_quota_and_wait_waits_for_running(
    run: Run, world: World, one_world: dict[str, Any]
) -> None:
    plan = run("launch", "ATLAS worker node 1", "-p", "small", "-p", "big", "--spread", "-n", "8",
               "--credential", "none", "--dry-run", "-o", "json")  # fmt: skip
    assert plan.code == 0, plan.err
    shares = {p["profile"]: p["requested"] for p in plan.json()["profiles"]}  # type: ignore[index,call-overload]
    assert shares == {"small": 2, "big": 6} and "--spread: small 2, big 6" in plan.err
    result = run("launch", "ATLAS worker node 1", "-p", "small", "-p", "big", "--spread", "-n", "8",
                 "--credential", "none", "--wait", "--timeout", "60s", "-o", "json")  # fmt: skip
    assert result.code == 0, result.err
    data = result.json()
    assert isinstance(data, dict) and data["launched"] == 8
    assert {i["state"] for i in data["instances"]} == {"running"}  # big deploys after 1 s: --wait saw it
    too_many = run("launch", "ATLAS worker node 1", "-p", "small", "-p", "big", "--spread", "-n", "20",
                   "--credential", "none", "--fleet", "too-many")  # fmt: skip
    assert too_many.code == 5 and "free quota holds 8 of the 20" in too_many.err
    one = run("launch", "ATLAS worker node 1", "-p", "small", "-p", "big", "--credential", "none")
    assert one.code == 2 and "add --spread" in one.err
    # --dry-run reads the quota and says what will not fit; only --spread refuses on it.
    tight = run("launch", "ATLAS worker node 1", "-p", "small", "-n", "6", "--credential", "none", "--dry-run")
    assert tight.code == 0 and "room for 2 more of atlas-wn, not 6" in tight.err
    assert "quota: room for 2 more of this flavor (instances 2/4" in tight.out
    # With several profiles, --render-user-data writes one file per profile.
    target = world.root / "ud"
    token = make_token()
    rendered = run("launch", "ATLAS worker node 1", "-p", "small", "-p", "big", "--spread", "-n", "8",
                   "--token-file", str(private(world.root / "token", token)), "--credential", "token",
                   "--dry-run", "--render-user-data", str(target))  # fmt: skip
    assert rendered.code == 0, rendered.err
    for name in ("small", "big"):
        data = (world.root / f"ud.{name}").read_bytes()
        assert (world.root / f"ud.{name}").stat().st_mode & 0o777 == 0o600 and packed(token).encode() in data
    assert not target.exists() and token.decode() not in rendered.out + rendered.err


def test_spot_and_lease_on_ec2(
    run: Run, world: World, endorsed: dict[str, Any], moto_ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    own_marked_ami(moto_ec2.client(), endorsed["first"])
    write_profiles(world, {"aws": ec2_profile(moto_ec2, flavor="m5.large", experiment="atlas"),
                           "one": {"provider": "opennebula", "endpoint": "http://127.0.0.1:9/RPC2"}})  # fmt: skip
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "x")
    base = ("launch", endorsed["first"], "--credential", "none", "-o", "json")
    # moto starts MinCount spot instances (1): the market "refused" the other two.
    spot = run(*base, "-p", "aws", "--spot", "-n", "3", "--lease", "2h", "--fleet", "spot-fleet")
    assert spot.code == 7, spot.err
    data = spot.json()
    assert isinstance(data, dict) and (data["launched"], data["failed"]) == (1, 2)
    assert "the market refused the others" in data["errors"][0]["message"]
    [vm] = data["instances"]
    ec2 = moto_ec2.client()
    behaviour = ec2.describe_instance_attribute(InstanceId=vm["id"], Attribute="instanceInitiatedShutdownBehavior")
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    assert vm["tags"]["wlcg:lease-until"] > vm["tags"]["wlcg:created"]
    refused = run(*base, "-p", "one", "--spot", "--allow-unendorsed")
    assert refused.code == 2 and "EC2 only" in refused.err
    run("instance", "terminate", vm["id"], "-p", "aws", "--yes")


def test_sigkill_at_any_moment_then_the_same_command_resumes_without_duplicates(
    world: World, one_world: dict[str, Any]
) -> None:
    """A real SIGKILL of the real command while its instantiate calls are in flight, then a re-run."""
    import signal
    import subprocess
    import time
    import xmlrpc.client

    peer = one_world["big"]
    with slow_instantiate(world, peer) as (proxy, env, launch):
        command = [*launch, "-n", "10", "--fleet", "killed"]
        victim = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        # Received by the proxy, which holds each 1 s before it forwards it: the first batch is on the
        # wire and none of it has been answered (waiting for `forwarded` raced the second batch).
        while not proxy.bodies("one.template.instantiate") and time.monotonic() < deadline:
            time.sleep(0.02)
        # Killed with a first batch of instantiate calls (8 at a time) in flight: the proxy still
        # delivers them, so the cloud makes VMs this process never hears of; two are never sent.
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        [intent] = ledger_rows(world, "launches")
        assert intent["state"] == "intent" and intent["requested"] == 10  # the record of an unfinished launch
        # Calls a dead process had on the wire still reach the cloud (here: after the proxy's 1 s).
        # The re-run, at once, must not list the fleet before they can have landed: it waits out
        # the dead launch's heartbeat plus one call's timeout, then resumes.
        again = subprocess.run(command, env=env, capture_output=True, text=True)
        assert again.returncode == 0, again.stderr
        assert "for calls of an interrupted launch to land" in again.stderr
        # It says what it found and what it started, never "launched 10/10" for VMs it did not start.
        found = re.search(r"resumed (\d+)/10", again.stderr)
        started = re.search(r"launched (\d+)/(\d+)", again.stderr)
        assert found and started and started[1] == started[2], again.stderr
        assert int(found[1]) + int(started[1]) == 10 and int(started[1]) >= 2  # two calls were never sent
        assert f"found {found[1]} of an earlier run, started {started[1]}." in again.stderr
    _ok, body = xmlrpc.client.ServerProxy(peer.url).one.vmpool.info("atlas:secret", -1, -1, -1, -1)[:2]
    assert body.count("killed") >= 10
    names = re.findall(r"<NAME>(killed-\d+)</NAME>", body)
    # Ten, none twice. Not necessarily killed-1..10: a call the kill cut before it reached the cloud leaves
    # its number unused, and the re-run names what it makes after the highest number it found.
    assert len(names) == 10 and len(set(names)) == 10, names
    recorded = {r["id"] for r in ledger_rows(world, "instances") if r["fleet"] == "killed"}
    assert len(recorded) == 10
    # The killed launch's intent stayed open until the re-run's listing adopted what it had made.
    assert [r["state"] for r in ledger_rows(world, "launches")] == ["adopted", "launched"]


def test_a_second_launch_of_a_fleet_being_launched_is_refused(world: World, one_world: dict[str, Any]) -> None:
    """Two launches of one fleet at once would each see the other's VMs missing: the second is refused."""
    import subprocess
    import time

    with slow_instantiate(world, one_world["big"], hold=3.0) as (proxy, env, launch):
        command = [*launch, "-n", "12", "--fleet", "twice"]  # two rounds of calls held 3 s each (the quota: 12)
        first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while proxy.forwarded("one.template.instantiate") < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        patient = subprocess.Popen([*command, "--wait-lock", "2m"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True)  # fmt: skip
        second = subprocess.run(command, env=env, capture_output=True, text=True)
        _, err = first.communicate(timeout=60)
        _, waited = patient.communicate(timeout=60)
    assert first.returncode == 0, err
    # The fleet's lock says who holds it: user, host, pid, command, and the calls it has on the wire.
    assert second.returncode == 2, second.stderr
    holder = f"(pid {first.pid}, 'wlcgcloud launch') since "
    assert "error: fleet 'twice' is being changed by " in second.stderr and holder in second.stderr, second.stderr
    assert "with calls on the wire on profile(s) slow" in second.stderr and "--wait-lock" in second.stderr
    # With --wait-lock it waits for the holder instead, then finds the fleet complete: nothing more is made.
    assert patient.returncode == 0, waited
    assert "waiting up to 120 s (--wait-lock)" in waited and "found 12 of an earlier run, started 0." in waited
    assert len({r["id"] for r in ledger_rows(world, "instances") if r["fleet"] == "twice"}) == 12


def test_ctrl_c_reports_what_was_launched_and_leaves_the_ledger_true(world: World, one_world: dict[str, Any]) -> None:
    import json
    import signal
    import subprocess
    import time

    with slow_instantiate(world, one_world["big"]) as (_proxy, env, launch):
        command = [*launch, "-n", "4", "--fleet", "interrupted", "-o", "json"]
        victim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        while not ledger_rows_or_none(world) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # the instantiate calls are on their way
        victim.send_signal(signal.SIGINT)
        out, err = victim.communicate(timeout=60)
    assert victim.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    reported = json.loads(out)
    [launch] = ledger_rows(world, "launches")
    assert launch["state"] in ("launched", "partial") and reported["launched"] == len(ledger_rows(world, "instances"))


@contextlib.contextmanager
def slow_instantiate(world: World, peer: Any, hold: float = 1.0) -> Iterator[tuple[Any, dict[str, str], list[str]]]:
    """Profile 'slow': the OpenNebula peer behind a proxy that holds each instantiate call `hold` s (< timeout 4 s).

    Yields the proxy, the environment for the real command, and the start of a launch command line.
    """
    import os

    from peers.faultproxy import Fault, FaultProxy

    with FaultProxy(peer.url.removesuffix("/RPC2")) as proxy:
        proxy.always(Fault("delay", seconds=hold, match="one.template.instantiate"))
        settings = one_profile(peer, endpoint=proxy.url + "/RPC2", vm_template="atlas-wn", timeout=4)  # type: ignore[arg-type]
        write_profiles(world, {"slow": settings})
        env = {**os.environ, "WLCGCLOUD_SECRET_SLOW": "secret", **world.env()}
        launch = [str(Path(sys.executable).with_name("wlcgcloud")), "launch", "0", "--allow-unendorsed",
                  "--credential", "none", "-p", "slow"]  # fmt: skip
        yield proxy, env, launch


def ledger_rows_or_none(world: World) -> list[dict[str, Any]]:
    try:
        return ledger_rows(world, "launches")
    except sqlite3.Error:
        return []
