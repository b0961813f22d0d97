"""`launch` on all three peers: endorsement refusals (exit 5), the forwarded credential, and its secrecy."""

from __future__ import annotations

import base64
import datetime
import email
import gzip
import os
import re
import socket
import xmlrpc.client
from email.message import Message
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml
from peers import gridca
from peers.opennebula import OpenNebulaPeer
from peers.proxies import Grid, make_grid, make_token

from conftest import (
    OpenStackPeer,
    Run,
    World,
    ec2_profile,
    own_marked_ami,
    write_profiles,
)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Grid:
    return make_grid(tmp_path_factory.mktemp("grid"))


@pytest.fixture
def proxy(grid: Grid, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VOMS proxy for ATLAS with 12 h to live, outside the test's world (it is the user's own file)."""
    return grid.voms_proxy(tmp_path_factory.mktemp("proxy") / "x509up", "atlas", "/atlas/Role=NULL/Capability=NULL")


# --------------------------------------------------------------------------- reading back


def ec2_user_data(server: Any, instance_id: str) -> bytes:
    value = server.client().describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    return base64.b64decode(value["UserData"]["Value"])


def nova_user_data(peer: OpenStackPeer, server_id: str) -> bytes:
    """The server's user_data as Nova returns it to an admin at microversion 2.3 and later."""
    import openstack

    admin = peer.admin
    conn = openstack.connect(
        auth_url=admin["OS_AUTH_URL"], username=admin["OS_USERNAME"], password=admin["OS_PASSWORD"],
        project_name=admin["OS_PROJECT_NAME"], user_domain_name=admin.get("OS_USER_DOMAIN_NAME", "Default"),
        project_domain_name=admin.get("OS_PROJECT_DOMAIN_NAME", "Default"),
        region_name=admin.get("OS_REGION_NAME", "RegionOne"), load_yaml_config=False, load_envvars=False,
    )  # fmt: skip
    reply = conn.compute.get(f"/servers/{server_id}", microversion="2.3")
    assert reply.status_code == 200, reply.text
    return base64.b64decode(reply.json()["server"]["OS-EXT-SRV-ATTR:user_data"])


def one_user_data(peer: OpenNebulaPeer, vm_id: str) -> bytes:
    """CONTEXT/USER_DATA of the VM's TEMPLATE, as one.vm.info gives it."""
    proxy = xmlrpc.client.ServerProxy(peer.url)
    ok, body, _code = proxy.one.vm.info("atlas:secret", int(vm_id))[:3]
    assert ok, body
    context = ElementTree.fromstring(body).find("TEMPLATE/CONTEXT")
    assert context is not None, body
    assert context.findtext("USER_DATA_ENCODING") == "base64"
    return base64.b64decode(context.findtext("USER_DATA") or "")


def document_parts(sent: bytes) -> list[Message]:
    raw = gzip.decompress(sent) if sent[:2] == b"\x1f\x8b" else sent
    message = email.message_from_bytes(raw)
    return [p for p in message.get_payload() if isinstance(p, Message)]  # type: ignore[union-attr]


def forwarded(sent: bytes) -> bytes:
    """The credential our cloud-config part writes to /run/wlcgcloud/."""
    for part in document_parts(sent):
        if part.get_content_type() == "text/cloud-config" and part["Merge-Type"]:
            config = yaml.safe_load(part.get_payload(decode=True))  # type: ignore[arg-type]
            [entry] = [f for f in config["write_files"] if f["path"].startswith("/run/wlcgcloud/x509up")]
            assert entry["encoding"] == "gz+b64"
            return gzip.decompress(base64.b64decode(entry["content"]))
    raise AssertionError("no wlcgcloud cloud-config part")


def secret_pieces(proxy: Path) -> list[str]:
    """Every base64 line of the proxy's PEM blocks (certificates and key), and the file in pieces as base64
    and as the gzipped base64 our cloud-config carries."""
    from wlcgcloud.context.vmagent import packed

    pem = proxy.read_text()
    lines = [line for line in pem.splitlines() if line and not line.startswith("-----") and len(line) >= 40]
    pieces = []
    for whole in (base64.b64encode(proxy.read_bytes()).decode(), packed(proxy.read_bytes())):
        pieces += [whole[i : i + 48] for i in range(0, len(whole) - 48, 48)]
    return lines + pieces


def scan(texts: list[str], root: Path, pieces: list[str]) -> list[str]:
    """Where any piece appears: in the printed texts, or in any file under `root`."""
    hits = [f"output #{n}" for n, text in enumerate(texts) if any(p in text for p in pieces)]
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes().decode("latin-1")
            hits += [str(path) for p in pieces if p in data][:1]
    return hits


# --------------------------------------------------------------------------- tests


@pytest.mark.openstack
def test_a_launch_with_a_proxy_on_three_clouds_forwards_it_and_shows_it_nowhere(
    run: Run, world: World, three_clouds: dict[str, Any], proxy: Path
) -> None:
    printed: list[str] = []
    pieces = secret_pieces(proxy)
    for profile in ("aws", "osk", "one"):
        plan = run("launch", "ATLAS worker node 1", "-p", profile, "--proxy", str(proxy), "--count", "2",
                   "--dry-run", "-o", "json", "-v", "--debug")  # fmt: skip
        printed += [plan.out, plan.err]
        assert plan.code == 0, plan.err
        shown = plan.json()
        assert isinstance(shown, dict) and shown["dry_run"] is True
        kinds = {"aws": "ec2", "osk": "openstack", "one": "opennebula"}
        assert [p["provider"] for p in shown["profiles"]] == [kinds[profile]]  # the config's name, as everywhere
        assert shown["credential"]["vo"] == "atlas" and shown["credential"]["fingerprint"].startswith("sha256:")
        result = run("launch", "ATLAS worker node 1", "-p", profile, "--proxy", str(proxy), "--count", "2",
                     "--fleet", f"fwd-{profile}", "-o", "json", "-v", "--debug")  # fmt: skip
        printed += [result.out, result.err]
        assert result.code == 0, result.err
        launched = result.json()
        assert isinstance(launched, dict)
        assert launched["launched"] == 2 and launched["failed"] == 0 and launched["errors"] == []
        for inst in launched["instances"]:
            tags = inst["tags"]
            assert tags["wlcg:fleet"] == f"fwd-{profile}" and tags["wlcg:endorsement"] == "verified"
            assert tags["wlcg:credential"].startswith("x509 sha256:")
            if profile == "aws":
                sent = ec2_user_data(three_clouds["aws"], inst["id"])
            elif profile == "osk":
                sent = nova_user_data(three_clouds["osk"], inst["id"])
            else:
                sent = one_user_data(three_clouds["one"], inst["id"])
            assert forwarded(sent) == proxy.read_bytes()  # byte-identical in the VM
        listing = run("instance", "list", "-p", profile, "--fleet", f"fwd-{profile}", "-o", "json")
        printed += [listing.out, listing.err]
        gone = run("instance", "terminate", *[i["id"] for i in launched["instances"]], "-p", profile, "--yes")
        assert gone.code == 0, gone.err
    assert scan(printed, world.root, pieces) == []


def test_dry_run_renders_the_exact_user_data_to_a_private_new_file(
    run: Run, world: World, endorsed: dict[str, Any], moto_ec2: Any, monkeypatch: pytest.MonkeyPatch, proxy: Path
) -> None:
    own_marked_ami(moto_ec2.client(), endorsed["first"])
    write_profiles(world, {"aws": ec2_profile(moto_ec2, flavor="m5.large", experiment="cms")})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    target = world.root / "rendered"
    args = ("launch", endorsed["first"], "-p", "aws", "--proxy", str(proxy), "--bootstrap", "htcondor",
            "--set", "COLLECTOR=cm.example.org", "--set", "POOL_TOKEN=s3cr3t-pool-token", "--lease", "24h")  # fmt: skip
    result = run(*args, "--dry-run", "--render-user-data", str(target))
    assert result.code == 0, result.err
    assert (target.stat().st_mode & 0o777) == 0o600
    assert forwarded(target.read_bytes()) == proxy.read_bytes()
    # People see the plan at a glance, with the credential as a fingerprint only.
    assert "Dry run: fleet cms-" in result.out and "sha256:" in result.out and "/run/wlcgcloud/x509up" in result.out
    assert "POOL_TOKEN=(redacted)" in result.out and "s3cr3t-pool-token" not in result.out + result.err
    assert "would call: RunInstances(" in result.out
    # Warnings: the proxy's VO is not the experiment; the lease outlasts the proxy.
    assert "carries VO 'atlas' but the experiment is 'cms'" in result.err
    assert "outlasts the forwarded proxy" in result.err
    assert moto_ec2.client().describe_instances(
        Filters=[{"Name": "tag:wlcg:experiment", "Values": ["cms"]}])["Reservations"] == []  # fmt: skip
    again = run(*args, "--dry-run", "--render-user-data", str(target))
    assert again.code == 2 and "exists; it writes only new files" in again.err
    alone = run(*args, "--render-user-data", str(world.root / "other"))
    assert alone.code == 2 and "goes with --dry-run" in alone.err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_oversized_user_data_is_refused_on_each_cloud_before_any_api_call(
    run: Run, world: World, moto_ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every profile points at a port nothing listens on: any API call would be exit 6, not 5."""
    nowhere = f"http://127.0.0.1:{closed_port()}"
    write_profiles(world, {
        "aws": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": nowhere, "access_key_id": "AKIA0",
                "flavor": "m5.large"},
        "osk": {"provider": "openstack", "auth_url": f"{nowhere}/v3", "application_credential_id": "x",
                "flavor": "m1.large"},
        "one": {"provider": "opennebula", "endpoint": f"{nowhere}/RPC2", "username": "atlas",
                "vm_template": "atlas-wn", "user_data_limit": 4096},
    })  # fmt: skip
    for name in ("WLCGCLOUD_SECRET_AWS", "WLCGCLOUD_SECRET_OSK", "WLCGCLOUD_SECRET_ONE"):
        monkeypatch.setenv(name, "x")
    noise = world.root / "noise.sh"
    noise.write_text("#!/bin/sh\n# " + base64.b64encode(os.urandom(60000)).decode() + "\n")
    for profile, limit in (("aws", 16384), ("osk", 49149), ("one", 4096)):
        result = run("launch", "ATLAS worker node 1", "-p", profile, "--user-data", str(noise), "--credential", "none")
        assert result.code == 5, result.err
        assert re.search(rf"user-data is \d+ bytes \(\d+ gzipped\); it accepts at most {limit}\.", result.err)
    # A document that fits only compressed passes that check (here the quota read of --dry-run is
    # the first call, and fails), and on a cloud that answers it goes gzipped, as the plan says.
    lines = world.root / "lines.yaml"
    lines.write_text("#cloud-config\nbootcmd:\n" + "".join(f"- echo line {n:05d}\n" for n in range(1500)))
    args = ("launch", "ami-0abc", "--user-data", str(lines), "--credential", "none", "--dry-run", "--allow-unendorsed")
    passed = run(*args, "-p", "aws")
    assert passed.code == 6 and "cannot reach" in passed.err and "user-data" not in passed.err
    write_profiles(world, {"aws": ec2_profile(moto_ec2, flavor="m5.large")})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    plan = run(*args, "-p", "aws", "-o", "json")
    assert plan.code == 0, plan.err
    [sized] = [p["user_data"] for p in plan.json()["profiles"]]  # type: ignore[call-overload,index]
    assert sized["gzipped"] is True and sized["bytes"] > 16384 >= sized["sent_bytes"]


@pytest.mark.openstack
def test_launch_refuses_what_is_not_endorsed_on_every_cloud(
    run: Run, world: World, three_clouds: dict[str, Any], endorsed: dict[str, Any]
) -> None:
    raw_images = {"aws": "ami-03cf127a", "osk": three_clouds["osk"].image_id, "one": "0"}
    small = {"aws": "t3.micro", "osk": "m1.small", "one": "atlas-tiny"}
    for profile, raw in raw_images.items():
        base = ("-p", profile, "--credential", "none")
        refused = run("launch", raw, *base)
        assert refused.code == 5 and "is not an endorsed image" in refused.err, (profile, refused.err)
        copy_missing = run("launch", endorsed["second"], *base)
        assert copy_missing.code == 5 and "no cloud image carries endorsed image" in copy_missing.err
        too_small = run("launch", endorsed["first"], *base, "--flavor", small[profile])
        assert too_small.code == 5 and "is below what 'ATLAS worker node 1' needs" in too_small.err
        no_such = run("launch", endorsed["first"], *base, "--flavor", "x9.nope", "--dry-run")
        assert no_such.code == 2 and f"profile '{profile}': no flavor 'x9.nope'." in no_such.err, no_such.err
        loud = run("launch", raw, *base, "--allow-unendorsed", "--dry-run", "-o", "json")
        assert loud.code == 0, loud.err
        assert "no endorsed image list vouches for" in loud.err
        plan = loud.json()
        assert isinstance(plan, dict)
        [p] = plan["profiles"]
        assert p["tags"]["wlcg:endorsement"] == "none" and p["tags"]["wlcg:image"] == "none"
        assert p["image"]["cloud_image"] == raw
    # An endorsement whose signer was revoked since subscribing no longer holds, on every cloud.
    gridca.install_ca(endorsed["anchors"], endorsed["ca"], revoked=(endorsed["endorser"].cert,))
    for profile in raw_images:
        revoked = run("launch", endorsed["first"], "-p", profile, "--credential", "none", "--dry-run")
        assert revoked.code == 5 and "no longer holds" in revoked.err and "revoked" in revoked.err


def test_unusable_credentials_stop_the_launch_with_exit_5(
    run: Run, world: World, grid: Grid, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}"
    write_profiles(world, {"aws": {"provider": "ec2", "region": "eu-west-1", "flavor": "m5.large",
                                   "endpoint_url": nowhere, "access_key_id": "A"}})  # fmt: skip
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", "x")
    short = grid.proxy(tmp_path / "short", lifetime=datetime.timedelta(hours=1))
    result = run("launch", "ATLAS worker node 1", "--proxy", str(short), "--credential", "x509", "-p", "aws")
    assert result.code == 5 and "less than --min-lifetime 6h" in result.err
    open_file = grid.proxy(tmp_path / "open")
    open_file.chmod(0o644)
    result = run("launch", "ATLAS worker node 1", "--proxy", str(open_file), "-p", "aws", "--dry-run")
    assert result.code == 5 and "readable by others" in result.err and "chmod 600" in result.err
    monkeypatch.setenv("BEARER_TOKEN", make_token(-datetime.timedelta(hours=1)).decode())
    monkeypatch.setenv("X509_USER_PROXY", str(tmp_path / "none"))
    result = run("launch", "ATLAS worker node 1", "-p", "aws", "--dry-run")
    assert result.code == 5 and "token $BEARER_TOKEN: expired" in result.err
    assert make_token(-datetime.timedelta(hours=1)).decode()[:60] not in result.err
