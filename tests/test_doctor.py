"""`doctor` against real peers: a healthy cloud on each provider, and every failure it must explain.

Each failure is made for real at test time: a closed port, a listener that never finishes a TLS
handshake, certificates that are self-signed, expired or for another host (FaultProxy with TLS),
refused credentials, a server clock 10 minutes off (FaultProxy rewriting `Date`), an OpenNebula
user at its VM quota, and profile settings naming what the cloud does not have.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
from peers import opennebula
from peers.faultproxy import Fault, FaultProxy
from peers.tls import make_ca, self_signed

from wlcgcloud.completion import complete

from conftest import (
    OneNebulaPeer,
    OpenStackPeer,
    Run,
    World,
    ec2_profile,
    one_profile,
    openstack_profile,
    openstack_sdk,
    own_marked_ami,
    write_profiles,
)


@pytest.fixture(scope="module")
def moto(moto_own: Any) -> Any:
    """This module's moto, with a key pair and a named subnet."""
    server = moto_own
    client: Any = server.client()
    client.import_key_pair(KeyName="wlcg-ops", PublicKeyMaterial=_ssh_public_key())
    vpc = client.describe_vpcs()["Vpcs"][0]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock="172.31.200.0/24")["Subnet"]["SubnetId"]
    client.create_tags(Resources=[subnet], Tags=[{"Key": "Name", "Value": "atlas-workers"}])
    return server


def _ssh_public_key() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def _doctor(run: Run, *names: str) -> tuple[int, dict[str, dict[str, Any]]]:
    result = run("doctor", *names, "-o", "json")
    assert result.out, result.err
    return result.code, {r["profile"]: r for r in result.json()}  # type: ignore[union-attr]


def _checks(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["check"]: c for c in report["checks"]}


def _not_passing(reports: dict[str, dict[str, Any]]) -> str:
    """Every check that did not pass, in full, one per line: the message of a failing assertion."""
    lines = [
        f"{name}: {c['check']} {c['status']}: {c.get('detail')} | next: {c.get('hint')}"
        for name, report in reports.items()
        for c in report["checks"]
        if c["status"] != "pass"
    ]
    return "\n" + "\n".join(lines)


def test_a_healthy_ec2_profile_passes_every_check_and_feeds_completion(
    run: Run, world: World, moto: Any, endorsed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    own_marked_ami(moto.client(), endorsed["first"])
    settings = ec2_profile(moto, flavor="t3.micro", key_name="wlcg-ops", subnet="atlas-workers",
                           image=endorsed["first"])  # fmt: skip
    write_profiles(world, {"aws": settings})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto.secret_key)
    code, reports = _doctor(run)
    checks = _checks(reports["aws"])
    assert code == 0 and reports["aws"]["ok"], _not_passing(reports)
    assert [c["check"] for c in reports["aws"]["checks"]] == [
        "secret", "dns", "tcp", "tls", "clock", "login", "api", "flavor", "quota", "image", "key pair", "network",
    ]  # fmt: skip
    assert {c["status"] for c in checks.values()} <= {"pass", "skip"}
    assert checks["tls"]["status"] == "skip" and "no TLS" in checks["tls"]["detail"]  # http:// endpoint
    assert "EC2 API 2016-11-15" in checks["api"]["detail"]
    assert "is endorsed" in checks["image"]["detail"] and "'wlcg-ops' exists" in checks["key pair"]["detail"]
    assert "instances" in checks["quota"]["detail"] and "subnet 'atlas-workers'" in checks["network"]["detail"]
    assert all(c["seconds"] >= 0 for c in checks.values())
    # what doctor learnt completes: flavors and networks of that profile
    assert "t3.micro" in complete(["wlcgcloud", "launch", "x", "-p", "aws", "--flavor", "t3.mi"], 6)
    assert "atlas-workers" in complete(["wlcgcloud", "profile", "edit", "aws", "--network", "atl"], 5)
    table = run("doctor")
    assert table.code == 0 and "key pair" in table.out and "RESULT" in table.out


@pytest.mark.openstack
def test_a_healthy_openstack_profile_reports_nova_microversions(
    run: Run, world: World, openstack_peer: OpenStackPeer, endorsed: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A key pair of this test's own: what other tests left on the peer (or a freshly reset peer) must not matter.
    operator = openstack_sdk(openstack_peer.appcred)
    key_name = f"doctor-{uuid.uuid4().hex[:8]}"
    operator.compute.create_keypair(name=key_name, public_key=_ssh_public_key().decode())
    try:
        settings = openstack_profile(openstack_peer, flavor="m1.tiny", key_name=key_name, image=endorsed["first"])
        write_profiles(world, {"osk": settings})
        monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", openstack_peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
        code, reports = _doctor(run)
    finally:
        operator.compute.delete_keypair(key_name, ignore_missing=True)
    checks = _checks(reports["osk"])
    assert code == 0, _not_passing(reports)
    assert "microversions 2.1 to 2." in checks["api"]["detail"] and checks["api"]["status"] == "pass"
    assert checks["clock"]["status"] == "pass" and "network 'osk-net' exists" in checks["network"]["detail"]
    assert checks["image"]["status"] == "pass" and checks["key pair"]["status"] == "pass"


def test_a_healthy_opennebula_profile_by_host_name(
    run: Run, world: World, one_peer: OneNebulaPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`localhost` (not an address) makes the dns step resolve for real."""
    url = one_peer.url.replace("127.0.0.1", "localhost")
    write_profiles(world, {"one": one_profile(one_peer, endpoint=url, network="atlas-net")})
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    code, reports = _doctor(run)
    checks = _checks(reports["one"])
    assert code == 0, _not_passing(reports)
    assert checks["dns"]["status"] == "pass" and "'localhost' is" in checks["dns"]["detail"]
    assert checks["api"]["detail"] == "OpenNebula 7.0.0"
    assert checks["flavor"]["detail"].startswith("'atlas-wn'")  # vm_template is OpenNebula's flavor
    assert checks["key pair"]["status"] == "skip"  # key_name is not an OpenNebula setting
    assert checks["network"]["status"] == "pass"


def test_a_closed_port_fails_at_tcp_at_once_and_skips_the_rest(run: Run, world: World) -> None:
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_profiles(world, {"gone": {"provider": "opennebula", "endpoint": f"http://127.0.0.1:{port}/RPC2",
                                    "username": "atlas", "timeout": 5}})  # fmt: skip
    start = time.monotonic()
    code, reports = _doctor(run)
    assert time.monotonic() - start < 5
    checks = _checks(reports["gone"])
    assert code == 3  # no secret either: configuration comes first
    assert checks["tcp"]["status"] == "fail" and "refused" in checks["tcp"]["detail"].lower()
    assert "nothing listens there" in checks["tcp"]["hint"]
    assert checks["secret"]["status"] == "fail" and "WLCGCLOUD_SECRET_GONE" in checks["secret"]["hint"]
    assert {checks[c]["status"] for c in ("tls", "clock", "login", "quota", "network")} == {"skip"}


def test_an_endpoint_that_never_answers_is_reported_within_the_timeout(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listener that accepts into its backlog and never speaks: the TLS handshake stalls, not doctor."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        write_profiles(world, {"mute": {"provider": "ec2", "region": "eu-west-1", "access_key_id": "AKIAEXAMPLE",
                                        "endpoint_url": f"https://127.0.0.1:{port}", "timeout": 2}})  # fmt: skip
        monkeypatch.setenv("WLCGCLOUD_SECRET_MUTE", "x")
        start = time.monotonic()
        code, reports = _doctor(run)
        elapsed = time.monotonic() - start
    checks = _checks(reports["mute"])
    assert code == 6 and elapsed < 6, elapsed
    assert checks["tcp"]["status"] == "pass"
    assert checks["tls"]["status"] == "fail" and "no answer within 2 s" in checks["tls"]["detail"]


def test_a_malformed_host_name_fails_at_dns(run: Run, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    write_profiles(world, {"typo": {"provider": "opennebula", "endpoint": "http://one..example.org:2633/RPC2",
                                    "username": "atlas", "timeout": 3}})  # fmt: skip
    monkeypatch.setenv("WLCGCLOUD_SECRET_TYPO", "atlas:secret")
    code, reports = _doctor(run)
    checks = _checks(reports["typo"])
    assert code == 6 and checks["dns"]["status"] == "fail" and "endpoint" in checks["dns"]["hint"]
    assert checks["tcp"]["status"] == "skip"


@pytest.mark.parametrize("case", ["trusted", "self-signed", "expired", "wrong host"])
def test_tls_certificates_are_judged_with_the_next_step(
    run: Run, world: World, moto: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    extra: dict[str, Any] = {}
    if case == "self-signed":
        server = self_signed(tmp_path)
    else:
        ca = make_ca(tmp_path, names=("other.example.org",) if case == "wrong host" else ("127.0.0.1",),
                     expired=case == "expired")  # fmt: skip
        server, extra = ca.server, {"ca_bundle": str(ca.ca_file)}
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto.secret_key)
    with FaultProxy(moto.url, preserve_host=True, tls=server) as proxy:
        write_profiles(world, {"aws": ec2_profile(moto, endpoint_url=proxy.url, **extra)})
        code, reports = _doctor(run)
    tls = _checks(reports["aws"])["tls"]
    if case == "trusted":
        assert code == 0 and tls["status"] in ("pass", "warn"), _not_passing(reports)
        assert "verified against ca_bundle" in tls["detail"] and "expires in" in tls["detail"]
        return
    assert code == 6 and tls["status"] == "fail"
    assert _checks(reports["aws"])["login"]["status"] == "skip"  # nothing is sent over an unverified channel
    if case == "self-signed":
        assert "self-signed" in tls["detail"] and "--ca-bundle" in tls["hint"]
    elif case == "expired":
        assert "expired on" in tls["detail"] and "renew" in tls["hint"]
    else:
        assert "'other.example.org', not '127.0.0.1'" in tls["detail"] and "--endpoint-url" in tls["hint"]


def test_wrong_credentials_fail_the_login_with_exit_4(run: Run, world: World, moto: Any, monkeypatch: Any) -> None:
    write_profiles(world, {"aws": ec2_profile(moto, key_name="wlcg-ops")})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", "not-the-secret")
    code, reports = _doctor(run)
    checks = _checks(reports["aws"])
    assert code == 4 and checks["login"]["status"] == "fail" and "aws" in checks["login"]["detail"]
    assert checks["key pair"]["status"] == "skip" and checks["tcp"]["status"] == "pass"


def test_a_server_clock_ten_minutes_off_fails_the_clock_check(
    run: Run, world: World, moto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto.secret_key)
    with FaultProxy(moto.url, preserve_host=True) as proxy:
        proxy.always(Fault("clock", seconds=600))
        write_profiles(world, {"aws": ec2_profile(moto, endpoint_url=proxy.url)})
        code, reports = _doctor(run)
    clock = _checks(reports["aws"])["clock"]
    assert code == 6 and clock["status"] == "fail", _not_passing(reports)
    assert "600 s behind" in clock["detail"] or "599 s behind" in clock["detail"] or "601 s behind" in clock["detail"]
    assert "timedatectl" in clock["hint"]


def test_an_exhausted_quota_fails_with_exit_5(
    run: Run, world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "one.json"
    from peers.opennebula import DEFAULT_WORLD

    users = [u for u in DEFAULT_WORLD["users"] if u["name"] != "atlas"]
    users.append({"id": 2, "name": "atlas", "password": "secret", "gid": 100, "quota": {"VMS": 2, "CPU": 40}})
    config.write_text(json.dumps({"users": users}))
    url, proc = opennebula.spawn("--config", str(config))
    try:
        busy = 'NAME="busy"\nCPU="1"\nVCPU="2"\nMEMORY="2048"'
        xmlrpc.client.ServerProxy(url, allow_none=True).peer.add_vms("atlas", busy, 2)
        write_profiles(world, {"one": one_profile(OneNebulaPeer(url, None))})
        monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
        code, reports = _doctor(run)
    finally:
        proc.terminate()
        proc.wait(10)
    quota = _checks(reports["one"])["quota"]
    assert code == 5 and quota["status"] == "fail", _not_passing(reports)
    assert "instances 2 of 2" in quota["detail"] and "more quota" in quota["hint"]


def test_settings_naming_what_the_cloud_lacks_are_configuration_errors(
    run: Run, world: World, moto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_profiles(world, {"aws": ec2_profile(moto, flavor="m9.galactic", key_name="nobody", subnet="subnet-0000",
                                              image="not-an-endorsed-image")})  # fmt: skip
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto.secret_key)
    code, reports = _doctor(run)
    checks = _checks(reports["aws"])
    assert code == 3, _not_passing(reports)  # configuration (3) outranks policy (5)
    assert checks["flavor"]["status"] == "fail" and "--flavor NAME" in checks["flavor"]["hint"]
    assert checks["key pair"]["status"] == "fail" and "wlcg-ops" in checks["key pair"]["detail"]
    assert checks["network"]["status"] == "fail" and "atlas-workers" in checks["network"]["detail"]
    assert checks["image"]["status"] == "fail" and checks["image"]["hint"]
    write_profiles(world, {"aws": ec2_profile(moto, image="not-an-endorsed-image")})
    assert run("doctor").code == 5  # only the image wrong: refused by policy
