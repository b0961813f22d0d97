"""One `instance list` over EC2 (moto), OpenStack (the real peer) and OpenNebula (the XML-RPC peer)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from wlcgcloud.config import load_config
from wlcgcloud.providers import connect

from conftest import (
    INSTANCE_KEYS,
    OneNebulaPeer,
    OpenStackPeer,
    Run,
    World,
    create_instances,
    ec2_profile,
    one_profile,
    openstack_profile,
    write_profiles,
)

pytestmark = pytest.mark.openstack

IMAGE = "ami-03cf127a"


@pytest.fixture
def three(
    world: World,
    moto_ec2: Any,
    openstack_peer: OpenStackPeer,
    one_peer: OneNebulaPeer,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    write_profiles(
        world,
        {"aws": ec2_profile(moto_ec2), "osk": openstack_profile(openstack_peer), "one": one_profile(one_peer)},
    )
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", openstack_peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    fleet = "t-" + uuid.uuid4().hex[:10]
    create_instances(world, "aws", IMAGE, "m5.large", 2, fleet)
    create_instances(world, "osk", openstack_peer.image_id, "m1.small", 2, fleet)
    create_instances(world, "one", "cernvm-4", "atlas-wn", 2, fleet)
    provider = connect(load_config(world.config).profile("osk"))  # now, while its secret is right
    yield fleet
    provider.terminate([i.id for i in provider.instances(fleet=fleet)])


def test_same_json_shape_from_every_cloud(run: Run, three: str) -> None:
    result = run("instance", "list", "--fleet", three, "-o", "json")
    assert result.code == 0, result.err
    rows = result.json()
    assert isinstance(rows, list)
    assert sorted(r["provider"] for r in rows) == ["ec2", "ec2", "opennebula", "opennebula", "openstack", "openstack"]
    shapes = {r["provider"]: {k: type(v).__name__ for k, v in r.items()} for r in rows}
    for row in rows:
        assert set(row) >= INSTANCE_KEYS and row["fleet"] == three
        assert isinstance(row["vcpus"], int) and isinstance(row["memory_mb"], int)
        assert row["state"] in ("pending", "running") and row["launched_at"].endswith("Z")
        assert isinstance(row["addresses"], list)
    # The same keys with the same JSON types, whichever cloud answered.
    assert shapes["ec2"] == shapes["openstack"] == shapes["opennebula"]
    table = run("instance", "list", "--fleet", three)
    assert table.code == 0 and table.out.splitlines()[0].split()[:3] == ["ID", "NAME", "FLEET"]
    assert len(table.out.splitlines()) == 7


def test_one_cloud_refusing_credentials_is_exit_7_and_the_others_answer(
    run: Run, three: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "wrong")
    result = run("instance", "list", "--fleet", three, "-o", "json")
    assert result.code == 7
    assert {r["profile"] for r in result.json()} == {"aws", "osk"}  # type: ignore[union-attr]
    assert result.err.splitlines() == [
        "warning: profile 'one': OpenNebula refused the login (AUTHENTICATION, 0x100). "
        "Check the user name and password; run 'wlcgcloud profile test one'."
    ]
    narrowed = run("instance", "list", "-p", "aws", "-p", "osk", "--fleet", three, "-o", "json")
    assert narrowed.code == 0 and len(narrowed.json()) == 4  # type: ignore[arg-type]


def test_every_cloud_failing_gives_that_failures_code(run: Run, three: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS", "OSK", "ONE"):
        monkeypatch.setenv(f"WLCGCLOUD_SECRET_{name}", "wrong")
    started = time.monotonic()
    result = run("instance", "list")
    assert result.code == 4
    lines = result.err.splitlines()
    assert (len(lines) == 3 and lines[0].startswith("warning: profile 'osk'")) or lines[0].startswith("warning:")
    assert lines[-1].startswith("error: profile 'aws'") and result.out == ""
    assert time.monotonic() - started < 20
