"""`instance` commands on OpenStack, against the real Keystone + Nova + Glance + Neutron peer."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from peers.faultproxy import Fault, FaultProxy

from wlcgcloud.config import load_config
from wlcgcloud.errors import WlcgError
from wlcgcloud.providers import connect

from conftest import (
    INSTANCE_KEYS,
    OpenStackPeer,
    Run,
    World,
    create_instances,
    openstack_profile,
    write_profiles,
)
from conftest import (
    openstack_sdk as sdk,
)

pytestmark = pytest.mark.openstack


@pytest.fixture
def fleet(osk: OpenStackPeer) -> Iterator[str]:
    """A fresh fleet name; whatever is left of it is deleted afterwards (the peer's quota is 100)."""
    name = "t-" + uuid.uuid4().hex[:10]
    yield name
    conn = sdk(osk.appcred)
    for server in conn.compute.servers(details=True):
        if (server.metadata or {}).get("wlcg:fleet") == name:
            conn.compute.delete_server(server.id, ignore_missing=True)


def wait_for(run: Run, fleet: str, done: Any, seconds: float = 90) -> list[dict[str, Any]]:
    deadline = time.monotonic() + seconds
    while True:
        result = run("instance", "list", "--fleet", fleet, "-o", "json")
        assert result.code == 0, result.err
        rows = result.json()
        assert isinstance(rows, list)
        if done(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(2)


def test_twenty_servers_in_one_request_listed_by_fleet_then_terminated(
    run: Run, world: World, osk: OpenStackPeer, fleet: str
) -> None:
    ids = create_instances(world, "osk", osk.image_id, "m1.small", 20, fleet)
    assert len(set(ids)) == 20
    rows = wait_for(run, fleet, lambda rows: len(rows) == 20 and all(r["state"] == "running" for r in rows))
    assert sorted(r["id"] for r in rows) == sorted(ids)
    for row in rows:
        assert set(row) >= INSTANCE_KEYS
        assert (row["fleet"], row["profile"], row["provider"], row["flavor"]) == (fleet, "osk", "openstack", "m1.small")
        assert (row["vcpus"], row["memory_mb"], row["image"]) == (1, 2048, osk.image_id)
        assert row["state"] == "running" and row["provider_state"] == "ACTIVE"
        assert row["addresses"] and row["addresses"][0].startswith("198.51.100.")
    assert {r["name"] for r in rows} == {f"{fleet}-vm-{n}" for n in range(1, 21)}  # Nova numbers a multi-create

    done = run("instance", "terminate", *ids, "--yes", "-o", "json")
    assert done.code == 0, done.err
    assert len(done.json()) == 20  # type: ignore[arg-type]
    assert wait_for(run, fleet, lambda rows: not rows) == []


def test_same_request_twice_creates_once(world: World, osk: OpenStackPeer, fleet: str) -> None:
    first = create_instances(world, "osk", osk.image_id, "m1.tiny", 2, fleet)
    again = create_instances(world, "osk", osk.image_id, "m1.tiny", 2, fleet)
    assert sorted(first) == sorted(again)
    mine = [s for s in sdk(osk.appcred).compute.servers() if s.id in first]
    assert len(mine) == 2


def test_nova_error_state_and_metadata_only_servers(run: Run, world: World, osk: OpenStackPeer, fleet: str) -> None:
    admin = sdk(osk.admin)
    nowhere = admin.compute.find_flavor("osk-nowhere") or admin.compute.create_flavor(
        name="osk-nowhere", ram=512, vcpus=1, disk=1
    )
    # Asks Placement for a resource no host has: the scheduler finds no valid host -> ERROR.
    admin.compute.create_flavor_extra_specs(nowhere, {"resources:CUSTOM_WLCG_NOWHERE": "1"})
    create_instances(world, "osk", osk.image_id, "osk-nowhere", 1, fleet)
    # A server made by another tool, with our metadata and no server tags, belongs to the fleet too.
    operator = sdk(osk.appcred)
    net = operator.network.find_network("osk-net")
    stranger = operator.compute.create_server(
        name="by-hand",
        image_id=osk.image_id,
        flavor_id=operator.compute.find_flavor("m1.tiny").id,
        networks=[{"uuid": net.id}],
        metadata={"wlcg:fleet": fleet},
    )
    rows = wait_for(run, fleet, lambda rows: {r["state"] for r in rows} == {"error", "running"})
    by_name = {r["name"]: r for r in rows}
    assert by_name[f"{fleet}-vm"]["state"] == "error" and by_name[f"{fleet}-vm"]["provider_state"] == "ERROR"
    assert by_name["by-hand"]["id"] == stranger.id and by_name["by-hand"]["state"] == "running"
    log = run("instance", "console-log", stranger.id)
    assert log.code == 0 and "LAST LINE" in log.out  # what Nova's fake driver returns


def test_password_auth_and_usage_records(
    run: Run, world: World, osk: OpenStackPeer, fleet: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = osk.password
    write_profiles(
        world,
        {
            "osk": openstack_profile(osk),
            "osk-pw": openstack_profile(
                osk, application_credential_id=None, username=pw["OS_USERNAME"], project=pw["OS_PROJECT_NAME"]
            ),
        },
    )
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK_PW", pw["OS_PASSWORD"])
    ids = create_instances(world, "osk-pw", osk.image_id, "m1.large", 1, fleet)
    rows = wait_for(run, fleet, lambda rows: bool(rows) and rows[0]["state"] == "running")
    listed = run("instance", "list", "-p", "osk-pw", "--fleet", fleet, "-o", "json")
    assert listed.code == 0 and [r["id"] for r in listed.json()] == ids  # type: ignore[union-attr]
    assert rows[0]["vcpus"] == 4
    provider = connect(load_config(world.config).profile("osk"))
    now = datetime.now(UTC)
    records = [r for r in provider.usage(now - timedelta(hours=1), now + timedelta(minutes=1)) if r.instance_id in ids]
    assert len(records) == 1 and records[0].vcpus == 4 and records[0].ended_at is None


def test_wrong_application_credential_is_exit_4(run: Run, osk: OpenStackPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", "wrong-secret-value")
    result = run("instance", "list")
    assert result.code == 4
    assert result.err.startswith("error: profile 'osk': Keystone refused the application credential (HTTP 401).")
    assert "wrong-secret-value" not in result.err


def test_unreachable_keystone_is_exit_6_quickly(
    run: Run, world: World, osk: OpenStackPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_profiles(world, {"osk": openstack_profile(osk, auth_url="http://127.0.0.1:9/v3")})
    started = time.monotonic()
    result = run("instance", "list")
    assert result.code == 6 and "profile 'osk'" in result.err and "cannot reach" in result.err
    assert "Traceback" not in result.err and result.err.count("\n") == 1
    assert time.monotonic() - started < 8


def test_nova_throttling_honours_retry_after(
    run: Run, world: World, osk: OpenStackPeer, nova_behind_proxy: tuple[FaultProxy, str]
) -> None:
    proxy, region = nova_behind_proxy
    write_profiles(world, {"osk": openstack_profile(osk, region=region)})
    proxy.plan(Fault("status", status=503, headers={"Retry-After": "1"}, match="GET /v2.1/servers/detail"))
    started = time.monotonic()
    result = run("instance", "list", "-o", "json")
    took = time.monotonic() - started
    assert result.code == 0, result.err
    assert [s.fault for s in proxy.requests if "/servers/detail" in s.path] == ["status", None]
    assert 1 <= took < 10


def test_reset_during_create_launches_nothing_twice(
    world: World, osk: OpenStackPeer, fleet: str, nova_behind_proxy: tuple[FaultProxy, str]
) -> None:
    """A POST that never arrives is safe to repeat; one whose answer is lost must not be repeated."""
    proxy, region = nova_behind_proxy
    write_profiles(world, {"osk": openstack_profile(osk, region=region)})
    proxy.plan(Fault("reset", match="POST /v2.1/servers"))  # the request itself is lost
    with pytest.raises(WlcgError):
        create_instances(world, "osk", osk.image_id, "m1.tiny", 3, fleet)
    assert proxy.forwarded("POST /v2.1/servers") == 0
    proxy.plan(Fault("lose_answer", match="POST /v2.1/servers"))  # Nova creates; the answer is lost
    made = create_instances(world, "osk", osk.image_id, "m1.tiny", 3, fleet)
    assert len(made) == 3  # found through the request tag, not created again
    again = create_instances(world, "osk", osk.image_id, "m1.tiny", 3, fleet)
    assert sorted(again) == sorted(made)
    assert proxy.forwarded("POST /v2.1/servers") == 1
    on_nova = [
        s for s in sdk(osk.appcred).compute.servers(details=True) if (s.metadata or {}).get("wlcg:fleet") == fleet
    ]
    assert len(on_nova) == 3


def test_throttled_keystone_is_retried(run: Run, world: World, osk: OpenStackPeer) -> None:
    """keystoneauth does not retry the token request itself: wlcgcloud does, honouring Retry-After."""
    with FaultProxy(osk.appcred["OS_AUTH_URL"].rsplit("/v3", 1)[0], preserve_host=True) as proxy:
        write_profiles(world, {"osk": openstack_profile(osk, auth_url=proxy.url + "/v3")})
        throttle = Fault("status", status=429, headers={"Retry-After": "1"}, match="POST /v3/auth/tokens")
        proxy.plan(throttle, Fault("status", status=503, match="POST /v3/auth/tokens"))
        started = time.monotonic()
        result = run("instance", "list", "-o", "json")
        took = time.monotonic() - started
        assert result.code == 0, result.err
        assert [s.fault for s in proxy.requests if "/auth/tokens" in s.path] == ["status", "status", None]
    assert 1 <= took < 10


def test_stalled_keystone_fails_within_timeout(run: Run, world: World, osk: OpenStackPeer) -> None:
    with FaultProxy(osk.appcred["OS_AUTH_URL"].rsplit("/v3", 1)[0], preserve_host=True) as proxy:
        write_profiles(world, {"osk": openstack_profile(osk, auth_url=proxy.url + "/v3", timeout=2)})
        proxy.always(Fault("stall"))
        started = time.monotonic()
        result = run("instance", "list")
        took = time.monotonic() - started
    assert result.code == 6 and "no answer within 2 s" in result.err and "profile 'osk'" in result.err
    assert took < 6  # the 2 s timeout plus start-up, on a loaded CI machine too; unbounded would hang


def test_user_data_up_to_novas_limit(world: World, osk: OpenStackPeer, fleet: str) -> None:
    """Nova keeps 65535 characters of base64: 49149 bytes fit, 49150 are refused before any call."""
    from wlcgcloud.errors import PolicyError
    from wlcgcloud.providers.base import LaunchRequest

    provider = connect(load_config(world.config).profile("osk"))
    fits = b"#" * 49149
    made = provider.create(LaunchRequest(fleet, osk.image_id, "m1.tiny", 1, fits, {"wlcg:fleet": fleet}))
    assert len(made) == 1
    with pytest.raises(PolicyError) as refused:
        provider.create(LaunchRequest(fleet + "-x", osk.image_id, "m1.tiny", 1, fits + b"#", {"wlcg:fleet": fleet}))
    assert "49150 bytes; OpenStack accepts at most 49149" in str(refused.value)


def test_security_groups_and_key_of_the_profile_reach_nova(world: World, osk: OpenStackPeer, fleet: str) -> None:
    operator = sdk(osk.appcred)
    if operator.compute.find_keypair("wlcg-test") is None:
        operator.compute.create_keypair(name="wlcg-test")
    write_profiles(world, {"osk": openstack_profile(osk, security_groups=["default"], key_name="wlcg-test")})
    [sid] = create_instances(world, "osk", osk.image_id, "m1.tiny", 1, fleet)
    server = operator.compute.wait_for_server(operator.compute.get_server(sid), interval=1, wait=90)
    assert [g["name"] for g in server.security_groups or []] == ["default"]  # read from its Neutron port
    assert server.key_name == "wlcg-test"
    assert server.metadata["wlcg:fleet"] == fleet
    assert f"wlcg:fleet={fleet}" in server.tags and any(t.startswith("wlcg:request=") for t in server.tags)
