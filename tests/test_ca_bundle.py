"""A profile's `ca_bundle` is the trust anchor for its endpoint, on every cloud.

Each peer is put behind a TLS proxy whose certificate a throwaway CA signed: with `ca_bundle`
pointing at that CA the profile works; without it, verification fails as exit 6, saying so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from peers.faultproxy import FaultProxy
from peers.tls import ThrowawayCA, make_ca

from conftest import (
    OneNebulaPeer,
    OpenStackPeer,
    Run,
    World,
    ec2_profile,
    one_profile,
    openstack_profile,
    write_profiles,
)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> ThrowawayCA:
    return make_ca(tmp_path_factory.mktemp("ca"))


def both_ways(run: Run, world: World, name: str, settings: dict[str, Any], ca_file: Path) -> None:
    write_profiles(world, {name: {**settings, "ca_bundle": str(ca_file)}})
    trusted = run("instance", "list", "--all", "-o", "json")
    assert trusted.code == 0, trusted.err
    write_profiles(world, {name: settings})
    untrusted = run("instance", "list", "--all")
    assert untrusted.code == 6, untrusted.err
    assert f"profile '{name}'" in untrusted.err and "TLS certificate" in untrusted.err and "ca_bundle" in untrusted.err


def test_ec2_endpoint_behind_tls(run: Run, world: World, moto_ec2: Any, ca: ThrowawayCA, monkeypatch: Any) -> None:
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    with FaultProxy(moto_ec2.url, preserve_host=True, tls=ca.server) as proxy:
        both_ways(run, world, "aws", ec2_profile(moto_ec2, endpoint_url=proxy.url), ca.ca_file)
        assert proxy.forwarded() >= 1


@pytest.mark.openstack
def test_keystone_behind_tls(
    run: Run, world: World, openstack_peer: OpenStackPeer, ca: ThrowawayCA, monkeypatch: Any
) -> None:
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", openstack_peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
    keystone = openstack_peer.appcred["OS_AUTH_URL"].rsplit("/v3", 1)[0]
    with FaultProxy(keystone, preserve_host=True, tls=ca.server) as proxy:
        both_ways(run, world, "osk", openstack_profile(openstack_peer, auth_url=proxy.url + "/v3"), ca.ca_file)
        assert proxy.forwarded("/auth/tokens") >= 1


def test_opennebula_behind_tls(
    run: Run, world: World, one_peer: OneNebulaPeer, ca: ThrowawayCA, monkeypatch: Any
) -> None:
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    with FaultProxy(one_peer.url.rsplit("/RPC2", 1)[0], tls=ca.server) as proxy:
        both_ways(run, world, "one", one_profile(one_peer, endpoint=proxy.url + "/RPC2"), ca.ca_file)
        assert proxy.forwarded("one.vmpool.infoextended") >= 1


@pytest.fixture(autouse=True)
def _no_ambient_ca(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Trust comes from the profile only, not from a CA bundle in the environment."""
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    yield
