"""`image verify`: which cloud image carries an endorsed one, on all three clouds, and why it counts."""

from __future__ import annotations

from typing import Any

import pytest
from peers import gridca
from peers.opennebula import DEFAULT_WORLD, OpenNebulaPeer

from conftest import (
    OpenStackPeer,
    Run,
    World,
    ec2_profile,
    one_profile,
    openstack_profile,
    own_marked_ami,
    write_profiles,
)


@pytest.mark.openstack
def test_openstack_matches_by_glance_sha512(
    run: Run, world: World, endorsed: dict[str, Any], openstack_peer: OpenStackPeer, monkeypatch: Any
) -> None:
    write_profiles(world, {"osk": openstack_profile(openstack_peer)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", openstack_peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
    found = run("image", "verify", endorsed["first"], "-p", "osk", "-o", "json")
    assert found.code == 0, found.err
    [row] = [r for r in found.json() if r["ok"]]  # type: ignore[union-attr]
    assert row["id"] == openstack_peer.image_id and "os_hash_value (sha512)" in row["how"]
    missing = run("image", "verify", endorsed["second"], "-p", "osk")
    assert missing.code == 5 and "no cloud image carries endorsed image 'ATLAS worker node 2'" in missing.err


def test_ec2_trusts_the_tag_only_on_the_profiles_own_amis(
    run: Run, world: World, endorsed: dict[str, Any], moto_ec2: Any, monkeypatch: Any
) -> None:
    write_profiles(world, {"aws": ec2_profile(moto_ec2)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    client = moto_ec2.client()
    own = own_marked_ami(client, endorsed["first"])
    # Anyone can tag an image: one of another account's AMIs marked as the second endorsed image.
    client.create_tags(Resources=["ami-03cf127a"], Tags=[{"Key": "wlcg:endorsed-id", "Value": endorsed["second"]}])
    found = run("image", "verify", endorsed["first"], "-p", "aws", "-o", "json")
    assert found.code == 0, found.err
    # (the moto server is shared by the session: other tests marked AMIs of this account too)
    [row] = [r for r in found.json() if r["id"] == own]  # type: ignore[union-attr]
    assert "wlcg:endorsed-id" in row["how"] and "image_owners: self" in row["how"]
    assert "ami-03cf127a" not in [r["id"] for r in found.json()]  # type: ignore[union-attr]
    foreign = run("image", "verify", endorsed["second"], "-p", "aws")
    assert foreign.code == 5


def test_opennebula_trusts_the_attribute_only_on_the_users_own_images(
    run: Run, world: World, endorsed: dict[str, Any], monkeypatch: Any
) -> None:
    images = [
        {"id": 0, "name": "public-copy", "owner": "oneadmin", "size": 1,
         "template": f'WLCG_ENDORSED_ID="{endorsed["first"]}"\n'},
        {"id": 1, "name": "atlas-own", "owner": "atlas", "size": 1,
         "template": f'WLCG_ENDORSED_ID="{endorsed["second"]}"\n'},
        {"id": 2, "name": "group-mate", "owner": "atlas2", "size": 1,
         "template": f'WLCG_ENDORSED_ID="{endorsed["first"]}"\n'},
    ]  # fmt: skip
    users = [*DEFAULT_WORLD["users"], {"id": 4, "name": "atlas2", "password": "x", "gid": 100, "umask": "137"}]
    with OpenNebulaPeer(images=images, users=users) as peer:
        write_profiles(world, {"one": one_profile(peer)})  # type: ignore[arg-type]
        monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
        own = run("image", "verify", endorsed["second"], "-p", "one", "-o", "json")
        assert own.code == 0, own.err
        [row] = own.json()  # type: ignore[misc]
        assert row["name"] == "atlas-own" and "owned by user atlas" in row["how"]
        public = run("image", "verify", endorsed["first"], "-p", "one")
        assert public.code == 5 and "no cloud image carries" in public.err


def test_an_endorsement_revoked_since_subscribing_no_longer_counts(
    run: Run, world: World, endorsed: dict[str, Any], moto_ec2: Any, monkeypatch: Any
) -> None:
    write_profiles(world, {"aws": ec2_profile(moto_ec2)})
    gridca.install_ca(endorsed["anchors"], endorsed["ca"], revoked=(endorsed["endorser"].cert,))
    result = run("image", "verify", endorsed["first"], "-p", "aws")
    assert result.code == 5 and "no longer holds" in result.err and "revoked" in result.err
    raw = run("image", "verify", "ami-03cf127a", "-p", "aws")
    assert raw.code == 5 and "is not an endorsed image" in raw.err


def _provider(world: World, name: str) -> Any:
    from wlcgcloud.config import load_config
    from wlcgcloud.providers import connect

    return connect(load_config(world.config).profile(name))


def test_launch_gate_on_ec2(run: Run, world: World, endorsed: dict[str, Any], moto_ec2: Any, monkeypatch: Any) -> None:
    """What launch will ask before creating anything: endorsed, copy found, flavor big enough."""
    from wlcgcloud.endorsement import gate
    from wlcgcloud.errors import PolicyError

    write_profiles(world, {"aws": ec2_profile(moto_ec2)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    client = moto_ec2.client()
    own = own_marked_ami(client, endorsed["first"])
    aws = _provider(world, "aws")
    decision = gate("ATLAS worker node 1", aws, "m5.large")  # 2 vCPUs, 8 GiB: meets 2 cores, 4 GiB
    tagged = [{"Name": "tag:wlcg:endorsed-id", "Values": [endorsed["first"]]}]
    marked = {i["ImageId"] for i in client.describe_images(Owners=["self"], Filters=tagged)["Images"]}
    assert own in marked and decision.cloud_image in marked  # the moto server is shared: others marked some too
    assert decision.tags == {"wlcg:image": endorsed["first"], "wlcg:endorsement": "verified"}
    with pytest.raises(PolicyError, match="below what 'ATLAS worker node 1' needs: 1024 MiB < hv:ram_minimum 4096"):
        gate(endorsed["first"], aws, "t3.micro")
    with pytest.raises(PolicyError, match="is not an endorsed image"):
        gate("ami-03cf127a", aws, "m5.large")
    loud = gate("ami-03cf127a", aws, "m5.large", allow_unendorsed=True)
    assert loud.cloud_image == "ami-03cf127a" and loud.tags["wlcg:endorsement"] == "none" and loud.endorsed is None
    with pytest.raises(PolicyError, match="no cloud image carries endorsed image 'ATLAS worker node 2'"):
        gate(endorsed["second"], aws, "m5.large")


@pytest.mark.openstack
def test_launch_gate_on_openstack(
    world: World, endorsed: dict[str, Any], openstack_peer: OpenStackPeer, monkeypatch: Any
) -> None:
    from wlcgcloud.endorsement import gate
    from wlcgcloud.errors import PolicyError

    write_profiles(world, {"osk": openstack_profile(openstack_peer)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", openstack_peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
    osk = _provider(world, "osk")
    assert gate(endorsed["first"], osk, "m1.large").cloud_image == openstack_peer.image_id
    with pytest.raises(PolicyError, match="1 vCPUs < hv:core_minimum 2"):
        gate(endorsed["first"], osk, "m1.small")


def test_launch_gate_on_opennebula(world: World, endorsed: dict[str, Any], monkeypatch: Any) -> None:
    from wlcgcloud.endorsement import gate

    images = [{"id": 0, "name": "atlas-own", "owner": "atlas", "size": 1,
               "template": f'WLCG_ENDORSED_ID="{endorsed["second"]}"\n'}]  # fmt: skip
    with OpenNebulaPeer(images=images) as peer:
        write_profiles(world, {"one": one_profile(peer)})  # type: ignore[arg-type]
        monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
        decision = gate(endorsed["second"], _provider(world, "one"), "atlas-wn")
        assert decision.cloud_image == "0" and "owned by user atlas" in decision.how
