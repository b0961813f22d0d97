"""Images, flavors, quotas and credential checks: the same value objects from every cloud."""

from __future__ import annotations

from typing import Any

import pytest
from peers.opennebula import DONE, HOLD

from wlcgcloud.config import load_config
from wlcgcloud.providers import connect
from wlcgcloud.providers.base import Provider

from conftest import OneNebulaPeer, OpenStackPeer, World, ec2_profile, one_profile, openstack_profile, write_profiles


def provider(world: World, name: str) -> Provider:
    return connect(load_config(world.config).profile(name))


def test_ec2_catalogue(world: World, moto_ec2: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    write_profiles(world, {"aws": ec2_profile(moto_ec2, image_owners=["self"])})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    client = moto_ec2.client()
    [base] = client.describe_images(Owners=["amazon"], Filters=[{"Name": "image-id", "Values": ["ami-03cf127a"]}])[
        "Images"
    ]
    made = client.create_image(InstanceId=_one_instance(client), Name="cernvm-endorsed")["ImageId"]
    client.create_tags(Resources=[made], Tags=[{"Key": "wlcg:endorsed-id", "Value": "cernvm-4-2024.06"}])
    aws = provider(world, "aws")
    assert aws.check().ok and "availability zones" in aws.check().reason
    images = {i.id: i for i in aws.images()}
    assert images[made].endorsed_id == "cernvm-4-2024.06" and base["ImageId"] not in images  # only image_owners
    flavors = {f.name: f for f in aws.flavors()}
    assert (flavors["m5.xlarge"].vcpus, flavors["m5.xlarge"].memory_mb) == (4, 16384)
    quota = aws.quota()
    assert quota.instances is not None and quota.instances_used is not None and quota.instances_used >= 1


def _one_instance(client: Any) -> str:
    reply = client.run_instances(ImageId="ami-03cf127a", InstanceType="t3.micro", MinCount=1, MaxCount=1)
    return str(reply["Instances"][0]["InstanceId"])


@pytest.mark.openstack
def test_openstack_catalogue(world: World, openstack_peer: OpenStackPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    write_profiles(world, {"osk": openstack_profile(openstack_peer)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", openstack_peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
    osk = provider(world, "osk")
    check = osk.check()
    assert check.ok and "application credential" in check.reason
    image = next(i for i in osk.images() if i.id == openstack_peer.image_id)
    assert image.checksum == ("sha512", openstack_peer.image_sha512) and image.size_bytes == 1024
    flavors = {f.name: f for f in osk.flavors()}
    assert (flavors["m1.small"].vcpus, flavors["m1.small"].memory_mb, flavors["m1.small"].disk_gb) == (1, 2048, 20)
    assert (flavors["m1.large"].vcpus, flavors["m1.large"].memory_mb) == (4, 8192)
    quota = osk.quota()
    assert (quota.instances, quota.cores, quota.memory_mb) == (100, 400, 800 * 1024)
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", "wrong")
    refused = provider(world, "osk").check()
    assert not refused.ok and refused.exit_code == 4 and "HTTP 401" in refused.reason


def test_opennebula_catalogue(world: World, one_peer: OneNebulaPeer, monkeypatch: pytest.MonkeyPatch) -> None:
    write_profiles(world, {"one": one_profile(one_peer)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    one = provider(world, "one")
    check = one.check()
    assert check.ok and "atlas" in check.reason
    [image] = [i for i in one.images() if i.name == "cernvm-4"]
    assert image.endorsed_id == "cernvm-4-2024.06" and image.size_bytes == 20480 * 1024 * 1024
    flavors = {f.name: f for f in one.flavors()}
    assert (flavors["atlas-wn"].vcpus, flavors["atlas-wn"].memory_mb, flavors["atlas-wn"].disk_gb) == (2, 4096, 20)
    assert (flavors["atlas-large"].vcpus, flavors["atlas-large"].memory_mb) == (8, 16384)
    quota = one.quota()
    assert (quota.instances, quota.cores, quota.memory_mb) == (100, 400, 819200)
    assert quota.instances_used is not None
    # the session's peer holds what earlier tests made: count one more VM of ours, held (no history)
    held = one_peer.control.peer.add_vm("atlas", 'NAME="quota-probe"\nCPU="1"\nMEMORY="1024"', HOLD, 0)
    try:
        assert one.quota().instances_used == quota.instances_used + 1
    finally:
        one_peer.control.peer.set_state(held, DONE)
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "wrong")
    refused = provider(world, "one").check()
    assert not refused.ok and refused.exit_code == 4


def test_profile_test_checks_every_profile_and_exits_with_the_most_severe_class(
    run: Any, world: World, moto_own: Any, one_peer: OneNebulaPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_profiles(
        world,
        {
            "aws": ec2_profile(moto_own),
            "one": one_profile(one_peer),
            "gone": ec2_profile(moto_own, endpoint_url="http://127.0.0.1:9"),
            "nosecret": one_profile(one_peer),
        },
    )
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_own.secret_key)
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "wrong")
    monkeypatch.setenv("WLCGCLOUD_SECRET_GONE", "x")
    result = run("profile", "test", "-o", "json")
    rows = {r["profile"]: r for r in result.json()}
    assert rows["aws"]["ok"] is True and "EC2 answered" in rows["aws"]["reason"]
    assert rows["one"]["ok"] is False and "refused the login" in rows["one"]["reason"]
    assert rows["gone"]["ok"] is False and "cannot reach" in rows["gone"]["reason"]
    assert rows["nosecret"]["ok"] is False and "WLCGCLOUD_SECRET_NOSECRET" in rows["nosecret"]["reason"]
    assert result.code == 3  # configuration first, then credentials, then the cloud
    assert run("profile", "test", "one", "gone").code == 4
    assert run("profile", "test", "gone").code == 6
    assert run("profile", "test", "aws").code == 0
