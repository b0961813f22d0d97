"""`image register`: download an endorsed image over https, check it, upload it marked, leave nothing on a mismatch."""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from peers import gridca, tls

from conftest import OpenStackPeer, Run, World, ec2_profile, openstack_profile, write_profiles

BLOB = bytes(range(256)) * 64  # 16 KiB of image bytes
EBS_BLOCK = 512 * 1024
SPARSE = BLOB + b"\0" * (EBS_BLOCK - len(BLOB)) + b"\0" * EBS_BLOCK + BLOB  # a raw disk with a hole


@pytest.fixture
def image_server(world: World) -> Iterator[dict[str, Any]]:
    """An https server on 127.0.0.1 serving /good.img (BLOB), signed by a throwaway CA."""
    ca = tls.make_ca(world.root / "https-ca")

    served = {"/good.img": BLOB, "/sparse.img": SPARSE}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = served.get(self.path, b"")
            self.send_response(200 if self.path in served else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ca.server.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    def swap() -> None:
        served["/good.img"] = BLOB[::-1]

    yield {"url": f"https://127.0.0.1:{server.server_address[1]}/good.img", "ca": str(ca.ca_file), "swap": swap}
    server.shutdown()


def subscribe_with(run: Run, world: World, uri: str, sha512: str, size: int) -> str:
    ca = gridca.make_ca("wlcgcloud Test CA")
    endorser = gridca.make_endorser(ca, "atlas-endorser")
    anchors = world.root / "certificates"
    gridca.install_ca(anchors, ca)
    document = gridca.image_list(endorser, ca)
    image = document["hv:imagelist"]["hv:images"][0]["hv:image"]
    image.update({"hv:uri": uri, "sl:checksum:sha512": sha512, "hv:size": size, "hv:format": "raw"})
    signed = gridca.sign(world.root / "lists", document, endorser)
    trust = ("--trust-anchors", str(anchors), "--endorser", gridca.slash(endorser.name))
    assert run("image", "subscribe", str(signed), *trust).code == 0
    return str(image["dc:identifier"])


def leftovers(world: World) -> list[str]:
    folder = world.state / "downloads"
    return [p.name for p in folder.iterdir()] if folder.exists() else []


@pytest.mark.openstack
def test_register_on_glance_then_verify_finds_it_by_sha512(
    run: Run, world: World, openstack_peer: OpenStackPeer, image_server: dict[str, Any], monkeypatch: Any
) -> None:
    write_profiles(world, {"osk": openstack_profile(openstack_peer)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", openstack_peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
    endorsed = subscribe_with(run, world, image_server["url"], hashlib.sha512(BLOB).hexdigest(), len(BLOB))
    result = run("image", "register", endorsed, "-p", "osk", "--ca-bundle", image_server["ca"], "-o", "json")
    assert result.code == 0, result.err
    [row] = result.json()  # type: ignore[misc]
    try:
        assert row["endorsed_id"] == endorsed and row["checksum"] == f"sha512:{hashlib.sha512(BLOB).hexdigest()}"
        assert row["size_bytes"] == len(BLOB)
        verified = run("image", "verify", endorsed, "-p", "osk", "-o", "json")
        assert verified.code == 0 and row["id"] in [r["id"] for r in verified.json() if r["ok"]]  # type: ignore[union-attr]
        assert leftovers(world) == []
    finally:
        import openstack

        creds = openstack_peer.appcred
        conn = openstack.connect(
            auth_type="v3applicationcredential",
            auth={"auth_url": creds["OS_AUTH_URL"], "application_credential_id": creds["OS_APPLICATION_CREDENTIAL_ID"],
                  "application_credential_secret": creds["OS_APPLICATION_CREDENTIAL_SECRET"]},
            region_name="RegionOne", load_yaml_config=False, load_envvars=False,
        )  # fmt: skip
        conn.image.delete_image(row["id"], ignore_missing=True)


@pytest.mark.parametrize(
    ("change", "reason"), [("sha512", "differs from the list's"), ("size", "not the list's hv:size")]
)
def test_a_mismatch_uploads_nothing_and_leaves_nothing(
    run: Run, world: World, moto_ec2: Any, image_server: dict[str, Any], monkeypatch: Any, change: str, reason: str
) -> None:
    write_profiles(world, {"aws": ec2_profile(moto_ec2)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    sha512 = "0" * 128 if change == "sha512" else hashlib.sha512(BLOB).hexdigest()
    size = len(BLOB) + (1 if change == "size" else 0)
    endorsed = subscribe_with(run, world, image_server["url"], sha512, size)
    result = run("image", "register", endorsed, "-p", "aws", "--ca-bundle", image_server["ca"])
    assert result.code == 5 and reason in result.err
    assert leftovers(world) == []


def test_ec2_registers_an_ami_from_an_ebs_snapshot_with_the_exact_bytes(
    run: Run, world: World, moto_unchecked: Any, image_server: dict[str, Any], monkeypatch: Any
) -> None:
    moto_ec2 = moto_unchecked
    write_profiles(world, {"aws": ec2_profile(moto_ec2)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    url = image_server["url"].replace("good.img", "sparse.img")
    endorsed = subscribe_with(run, world, url, hashlib.sha512(SPARSE).hexdigest(), len(SPARSE))
    untrusted = run("image", "register", endorsed, "-p", "aws")  # the https server's CA is not trusted
    assert untrusted.code == 6 and "cannot download" in untrusted.err
    result = run("image", "register", endorsed, "-p", "aws", "--ca-bundle", image_server["ca"], "-o", "json")
    assert result.code == 0, result.err
    [row] = result.json()  # type: ignore[misc]
    assert row["endorsed_id"] == endorsed and row["id"].startswith("ami-")
    ec2 = moto_ec2.client()
    [ami] = ec2.describe_images(ImageIds=[row["id"]])["Images"]
    assert {"Key": "wlcg:endorsed-id", "Value": endorsed} in ami["Tags"]
    # moto's RegisterImage makes a snapshot of its own for the AMI: find ours by its description.
    snapshots = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    [snapshot] = [s["SnapshotId"] for s in snapshots if s.get("Description") == "wlcgcloud: ATLAS worker node 1"]
    # Read the snapshot back through the EBS direct APIs: the blocks sent are the image's bytes,
    # and the all-zero block between them was not sent.
    import boto3
    import botocore.exceptions

    ebs = boto3.client("ebs", region_name="eu-west-1", endpoint_url=moto_ec2.url,
                       aws_access_key_id=moto_ec2.access_key, aws_secret_access_key=moto_ec2.secret_key)  # fmt: skip

    # (moto's ListSnapshotBlocks fails with 500, so the blocks are read one by one; it ignores tokens.)
    def block(index: int) -> bytes:
        got = ebs.get_snapshot_block(SnapshotId=snapshot, BlockIndex=index, BlockToken="unused")
        return bytes(got["BlockData"].read())

    padded = BLOB + b"\0" * (EBS_BLOCK - len(BLOB))
    assert block(0) == padded and block(2) == padded
    with pytest.raises(botocore.exceptions.ClientError):
        block(1)  # the all-zero block was never sent
    verified = run("image", "verify", endorsed, "-p", "aws", "-o", "json")
    assert verified.code == 0 and row["id"] in [r["id"] for r in verified.json() if r["ok"]]  # type: ignore[union-attr]
    assert leftovers(world) == []


def test_opennebula_datastore_fetches_the_image_held_to_our_hashes(
    run: Run, world: World, image_server: dict[str, Any], monkeypatch: Any
) -> None:
    from peers.opennebula import OpenNebulaPeer

    from conftest import one_profile

    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    with OpenNebulaPeer(download_ca=image_server["ca"]) as peer:
        write_profiles(world, {"one": one_profile(peer)})  # type: ignore[arg-type]
        endorsed = subscribe_with(run, world, image_server["url"], hashlib.sha512(BLOB).hexdigest(), len(BLOB))
        result = run("image", "register", endorsed, "-p", "one", "--ca-bundle", image_server["ca"], "-o", "json")
        assert result.code == 0, result.err
        [row] = result.json()  # type: ignore[misc]
        assert row["endorsed_id"] == endorsed
        verified = run("image", "verify", endorsed, "-p", "one", "-o", "json")
        assert verified.code == 0 and row["id"] in [r["id"] for r in verified.json() if r["ok"]]  # type: ignore[union-attr]
        # The server now serves other bytes at the same address: we check what we download, and
        # the datastore's own download is held to our MD5/SHA1, so it fails and is deleted again.
        image_server["swap"]()
        before = len(peer_images(peer))
        again = run("image", "register", endorsed, "-p", "one", "--ca-bundle", image_server["ca"])
        assert again.code == 5 and "differs from the list's" in again.err  # our own check, first
        assert len(peer_images(peer)) == before
    assert leftovers(world) == []


def peer_images(peer: Any) -> list[str]:
    import xmlrpc.client

    ok, body = xmlrpc.client.ServerProxy(peer.url).one.imagepool.info("atlas:secret", -2, -1, -1)[:2]
    assert ok
    return re.findall(r"<IMAGE><ID>(\d+)</ID>", body)
