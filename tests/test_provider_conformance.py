"""The contract of `Provider` (wlcgcloud/providers/base.py), checked the same way on every cloud.

Each test takes `cloud`: a connected provider for one profile against that cloud's real test
peer, with what the checks need (an image to launch, a flavor and its size, an id no instance
has). A new provider joins by adding one entry to `CLOUDS` and one set-up function below; every
check then runs against it too.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from wlcgcloud.config import load_config
from wlcgcloud.errors import AuthError, PolicyError, WlcgError
from wlcgcloud.providers import connect
from wlcgcloud.providers.base import STATES, TAG_KEYS, Flavor, Instance, LaunchRequest, Provider

from conftest import (
    INSTANCE_KEYS,
    OneNebulaPeer,
    OpenStackPeer,
    World,
    ec2_profile,
    one_profile,
    openstack_profile,
    openstack_sdk,
    write_profiles,
)

USER_DATA = b"#cloud-config\n{}\n"
GONE_WITHIN = 60.0  # seconds: OpenStack deletes asynchronously
LIVE = ("pending", "running", "stopping")


@dataclass
class CloudCase:
    """One profile on one cloud's peer, and what the contract checks need to know of it."""

    provider: Provider
    profile: str
    secret_variable: str  # WLCGCLOUD_SECRET_<PROFILE>
    image: str  # what a LaunchRequest names
    image_id: str  # what an Instance reports as its image
    flavor: str
    vcpus: int
    memory_mb: int
    unknown_id: str  # well-formed for this cloud, yet no instance has it
    has_key_pairs: bool  # base.py: key_pairs() is None where the cloud has no key pairs
    fleet: str  # unique to the test: the peers live for the whole session
    world: World

    def connect(self) -> Provider:
        """A fresh provider for the profile, with whatever secret the environment holds now."""
        return connect(load_config(self.world.config).profile(self.profile))

    def tags(self) -> dict[str, str]:
        return {"wlcg:fleet": self.fleet, "wlcg:profile": self.profile, "wlcg:experiment": "atlas",
                "wlcg:flavor": self.flavor}  # fmt: skip

    def request(self, count: int = 2, user_data: bytes = USER_DATA) -> LaunchRequest:
        return LaunchRequest(f"{self.fleet}-vm", self.image, self.flavor, count, user_data, self.tags())


Sweep = Callable[[], None]  # removes whatever is left of the test's fleet
Setup = Callable[[pytest.FixtureRequest, World, pytest.MonkeyPatch, str], tuple[CloudCase, Sweep]]


def _ec2(
    request: pytest.FixtureRequest, world: World, monkeypatch: pytest.MonkeyPatch, fleet: str
) -> tuple[CloudCase, Sweep]:
    server = request.getfixturevalue("moto_ec2")
    write_profiles(world, {"aws": ec2_profile(server)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", server.secret_key)
    ami = "ami-03cf127a"  # one of moto's built-in AMIs
    cloud = CloudCase(
        provider=connect(load_config(world.config).profile("aws")),
        profile="aws",
        secret_variable="WLCGCLOUD_SECRET_AWS",
        image=ami,
        image_id=ami,
        flavor="t3.micro",
        vcpus=2,
        memory_mb=1024,
        unknown_id="i-0123456789abcdef0",
        has_key_pairs=True,
        fleet=fleet,
        world=world,
    )
    return cloud, lambda: _terminate_fleet(cloud)


def _openstack(
    request: pytest.FixtureRequest, world: World, monkeypatch: pytest.MonkeyPatch, fleet: str
) -> tuple[CloudCase, Sweep]:
    peer: OpenStackPeer = request.getfixturevalue("openstack_peer")
    write_profiles(world, {"osk": openstack_profile(peer)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
    cloud = CloudCase(
        provider=connect(load_config(world.config).profile("osk")),
        profile="osk",
        secret_variable="WLCGCLOUD_SECRET_OSK",
        image=peer.image_id,
        image_id=peer.image_id,
        flavor="m1.small",
        vcpus=1,
        memory_mb=2048,
        unknown_id=str(uuid.uuid4()),
        has_key_pairs=True,
        fleet=fleet,
        world=world,
    )

    def sweep() -> None:
        # Behind our back, with the SDK: the peer's quota is 100, so nothing may stay even when our code failed.
        conn = openstack_sdk(peer.appcred)
        for server in conn.compute.servers(details=True):
            if (server.metadata or {}).get("wlcg:fleet") == fleet:
                conn.compute.delete_server(server.id, ignore_missing=True)

    return cloud, sweep


def _opennebula(
    request: pytest.FixtureRequest, world: World, monkeypatch: pytest.MonkeyPatch, fleet: str
) -> tuple[CloudCase, Sweep]:
    peer: OneNebulaPeer = request.getfixturevalue("one_peer")
    write_profiles(world, {"one": one_profile(peer)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    provider = connect(load_config(world.config).profile("one"))
    [image_id] = [i.id for i in provider.images() if i.name == "cernvm-4"]
    cloud = CloudCase(
        provider=provider,
        profile="one",
        secret_variable="WLCGCLOUD_SECRET_ONE",
        image="cernvm-4",  # OpenNebula launches an image by name, and reports its id
        image_id=image_id,
        flavor="atlas-wn",  # a VM template
        vcpus=2,
        memory_mb=4096,
        unknown_id="999999",
        has_key_pairs=False,
        fleet=fleet,
        world=world,
    )
    return cloud, lambda: _terminate_fleet(cloud)


def _terminate_fleet(cloud: CloudCase) -> None:
    provider = cloud.connect()
    left = [i.id for i in provider.instances(fleet=cloud.fleet) if i.state != "terminated"]
    if left:
        provider.terminate(left)


# A fourth cloud: one more entry here, and a mark in MARKS if its peer must be selectable on its own.
CLOUDS: dict[str, Setup] = {"ec2": _ec2, "openstack": _openstack, "opennebula": _opennebula}
MARKS = {"openstack": pytest.mark.openstack}  # the peer of ../shared/peers/openstack: deselect with -m 'not openstack'


@pytest.fixture(params=[pytest.param(name, marks=[MARKS[name]] if name in MARKS else []) for name in CLOUDS])
def cloud(request: pytest.FixtureRequest, world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[CloudCase]:
    fleet = "c-" + uuid.uuid4().hex[:10]
    made, sweep = CLOUDS[request.param](request, world, monkeypatch, fleet)
    secret = os.environ[made.secret_variable]
    try:
        yield made
    finally:
        monkeypatch.setenv(made.secret_variable, secret)  # a test may have set a wrong one
        sweep()


def until_gone(cloud: CloudCase, ids: list[str]) -> list[Instance]:
    """The fleet's instances still live among `ids`, polled until there are none or the deadline passes."""
    deadline = time.monotonic() + GONE_WITHIN
    while True:
        live = [i for i in cloud.provider.instances(fleet=cloud.fleet) if i.id in ids and i.state in LIVE]
        if not live or time.monotonic() > deadline:
            return live
        time.sleep(1)


@pytest.fixture
def launched(cloud: CloudCase) -> list[Instance]:
    """Two instances of the test's fleet, made through `create`."""
    return cloud.provider.create(cloud.request(2))


# ----------------------------------------------------------------------------- create and read back


def test_create_returns_one_instance_per_request_with_the_fleets_identity(
    cloud: CloudCase, launched: list[Instance]
) -> None:
    assert len(launched) == 2 and len({i.id for i in launched}) == 2
    for inst in launched:
        assert isinstance(inst, Instance) and inst.id
        assert (inst.fleet, inst.profile) == (cloud.fleet, cloud.profile)
        assert inst.provider == cloud.provider.profile.provider  # the profile's `provider` key
        assert inst.name.startswith(f"{cloud.fleet}-vm")
        assert inst.state in STATES and inst.state in ("pending", "running") and inst.provider_state
        assert dict(inst.tags).items() >= cloud.tags().items()
        assert set(inst.tags) <= set(TAG_KEYS)  # our tags only, in the contract's spelling
        assert inst.flavor == cloud.flavor


def test_created_instances_are_found_by_id_and_by_fleet_with_their_size(
    cloud: CloudCase, launched: list[Instance]
) -> None:
    ids = sorted(i.id for i in launched)
    for iid in ids:
        found = cloud.provider.instance(iid)
        assert found is not None and found.id == iid and found.fleet == cloud.fleet
        assert (found.flavor, found.vcpus, found.memory_mb) == (cloud.flavor, cloud.vcpus, cloud.memory_mb)
        assert found.image == cloud.image_id
    listed = cloud.provider.instances(fleet=cloud.fleet)
    assert sorted(i.id for i in listed) == ids
    assert all(i.state in STATES for i in listed)
    assert {i.provider for i in listed} == {launched[0].provider}
    everyone = {i.id for i in cloud.provider.instances()}  # every fleet's instances include this one's
    assert set(ids) <= everyone


def test_to_dict_is_the_contracts_instance_shape(cloud: CloudCase, launched: list[Instance]) -> None:
    # cli-contract.md, "JSON shapes": instance list keys, plus our tags (Instance.to_dict); never `extra`.
    for inst in [*launched, *cloud.provider.instances(fleet=cloud.fleet)]:
        shape = inst.to_dict()
        assert set(shape) == INSTANCE_KEYS | {"tags"}
        assert list(shape)[:3] == ["id", "name", "fleet"]
        assert shape["fleet"] == cloud.fleet and shape["tags"]["wlcg:fleet"] == cloud.fleet
        assert isinstance(shape["addresses"], list)
        assert shape["launched_at"] is None or shape["launched_at"].endswith("Z")
        for key in ("vcpus", "memory_mb"):
            assert shape[key] is None or type(shape[key]) is int
        json.dumps(shape)  # goes to JSON as it is


def test_terminate_ends_every_instance_it_is_given(cloud: CloudCase, launched: list[Instance]) -> None:
    ids = [i.id for i in launched]
    outcomes = cloud.provider.terminate(ids)
    assert [o.id for o in outcomes] == ids  # one outcome per id, in order
    assert [(o.error, o.exit_code) for o in outcomes] == [(None, 0), (None, 0)]
    assert until_gone(cloud, ids) == []
    for iid in ids:
        after = cloud.provider.instance(iid)
        assert after is None or after.state == "terminated"  # clouds forget them sooner or later


# ----------------------------------------------------------------------------- reading


def test_an_unknown_instance_is_none(cloud: CloudCase) -> None:
    assert cloud.provider.instance("an-id-that-does-not-exist") is None
    assert cloud.provider.instance(cloud.unknown_id) is None


def test_flavors_name_the_launch_flavor_with_its_size(cloud: CloudCase) -> None:
    flavors = cloud.provider.flavors()
    assert all(isinstance(f, Flavor) and f.name and f.id for f in flavors)
    [ours] = [f for f in flavors if f.name == cloud.flavor]
    assert (ours.vcpus, ours.memory_mb) == (cloud.vcpus, cloud.memory_mb)
    assert type(ours.vcpus) is int and type(ours.memory_mb) is int
    assert set(ours.to_dict()) == {"name", "id", "vcpus", "memory_mb", "disk_gb"}


def test_api_version_networks_and_key_pairs(cloud: CloudCase) -> None:
    words, warning = cloud.provider.api_version()
    assert isinstance(words, str) and words.strip()
    assert warning is None  # every peer speaks an API as new as the one we use
    networks = cloud.provider.networks()
    assert networks and all(isinstance(i, str) and i and isinstance(n, str) for i, n in networks)
    keys = cloud.provider.key_pairs()
    if cloud.has_key_pairs:
        assert isinstance(keys, list) and all(isinstance(k, str) for k in keys)
    else:
        assert keys is None


def test_check_accepts_the_right_secret(cloud: CloudCase) -> None:
    check = cloud.provider.check()
    assert check.ok and check.reason and check.exit_code == 0


# ----------------------------------------------------------------------------- refusals


def test_user_data_over_the_limit_is_refused_before_anything_is_made(cloud: CloudCase) -> None:
    limit = cloud.provider.user_data_limit
    assert isinstance(limit, int) and limit > 0
    with pytest.raises(PolicyError) as refused:
        cloud.provider.create(cloud.request(1, b"#" * (limit + 1)))
    assert refused.value.exit_code == 5
    assert f"profile '{cloud.profile}'" in refused.value.message and str(limit) in refused.value.message
    assert cloud.provider.instances(fleet=cloud.fleet) == []


def test_a_wrong_secret_is_auth_error_naming_the_profile(cloud: CloudCase, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "not-the-secret-" + uuid.uuid4().hex[:8]
    monkeypatch.setenv(cloud.secret_variable, wrong)
    provider = cloud.connect()
    with pytest.raises(AuthError) as refused:
        provider.instances()
    error: WlcgError = refused.value
    assert error.exit_code == 4
    assert error.message.startswith(f"profile '{cloud.profile}': ")
    assert wrong not in error.message + (error.hint or "")
    check = provider.check()
    assert (check.ok, check.exit_code) == (False, 4)
    assert f"profile '{cloud.profile}'" in check.reason and wrong not in check.reason
