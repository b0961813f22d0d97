"""User-data documents: valid for cloud-init, parts kept as given, the credential byte-identical, sizes per cloud."""

from __future__ import annotations

import base64
import datetime
import email
import gzip
import itertools
import os
import shutil
import subprocess
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
import yaml
from peers.proxies import Grid, make_grid, make_token

from wlcgcloud.context import userdata, vmagent
from wlcgcloud.context.credentials import Credential, read_proxy, read_token
from wlcgcloud.errors import PolicyError, UsageError

USER_CONFIG = b"#cloud-config\npackages: [htop]\nwrite_files:\n- path: /etc/motd\n  content: welcome\n"
USER_SCRIPT = b"#!/bin/sh\necho started > /var/tmp/started\n"
BOOTHOOK = b"#cloud-boothook\n#!/bin/sh\necho early\n"


def cloud_init() -> str:
    found = shutil.which("cloud-init")
    if not found:
        pytest.fail("cloud-init is missing: install Debian's cloud-init (dev/test does as root).", pytrace=False)
    return found


def schema_ok(config: bytes, where: Path) -> None:
    """`cloud-init schema` accepts this cloud-config; the test fails with its complaint otherwise."""
    where.write_bytes(config)
    result = subprocess.run([cloud_init(), "schema", "--config-file", str(where)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def parts_of(document: bytes) -> list[Message]:
    message = email.message_from_bytes(document)
    assert message.is_multipart() and message.get_content_type() == "multipart/mixed"
    return [p for p in message.get_payload() if isinstance(p, Message)]  # type: ignore[union-attr]


def body(part: Message) -> bytes:
    payload = part.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Grid:
    return make_grid(tmp_path_factory.mktemp("grid"))


@pytest.fixture(scope="module")
def credentials(grid: Grid, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Credential | None]:
    where = tmp_path_factory.mktemp("creds")
    return {
        "proxy": read_proxy(grid.grid_proxy_init(where / "x509up"), datetime.datetime.now(datetime.UTC)),
        "token": read_token(make_token(), "$BEARER_TOKEN"),
        "none": None,
    }


@pytest.fixture(scope="module")
def user_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | None]:
    where = tmp_path_factory.mktemp("user-data")
    config, script, hook = where / "config.yaml", where / "start.sh", where / "hook.txt"
    config.write_bytes(USER_CONFIG)
    script.write_bytes(USER_SCRIPT)
    hook.write_bytes(BOOTHOOK)
    mime = where / "multipart.txt"
    # A multipart made by cloud-init's own tool, as a user would.
    made = subprocess.run(
        [cloud_init(), "devel", "make-mime", "-a", f"{config}:cloud-config", "-a", f"{script}:x-shellscript",
         "-a", f"{hook}:cloud-boothook"],
        capture_output=True, check=True,
    )  # fmt: skip
    mime.write_bytes(made.stdout)
    gz = where / "config.gz"
    gz.write_bytes(gzip.compress(USER_CONFIG))
    return {"none": None, "config": config, "script": script, "multipart": mime, "gzip": gz}


BOOTSTRAPS: dict[str, tuple[str | None, dict[str, str]]] = {
    "none": (None, {}),
    "htcondor": ("htcondor", {"COLLECTOR": "cm.example.org:9618", "POOL_TOKEN": "eyJpool.token.value"}),
    "script": ("script", {"PILOT_URL": "https://pilots.example.org/pilot.sh", "PILOT_ARGS": "-q atlas"}),
}


@pytest.mark.parametrize(
    ("cred", "user", "boot", "lease"),
    [
        *itertools.product(("proxy", "token", "none"), ("none", "config", "multipart"), ("none", "htcondor"), (None,)),
        ("proxy", "script", "script", 12),
        ("token", "gzip", "script", None),
        ("proxy", "config", "htcondor", 48),
    ],
)
def test_every_rendered_document_is_valid_and_gives_back_what_went_in(
    credentials: dict[str, Credential | None],
    user_files: dict[str, Path | None],
    cred: str,
    user: str,
    boot: str,
    lease: int | None,
    tmp_path: Path,
) -> None:
    credential = credentials[cred]
    name, settings = BOOTSTRAPS[boot]
    document = userdata.compose(
        credential,
        user_data=user_files[user],
        bootstrap=userdata.bootstrap(name) if name else None,
        settings=settings,
        lease=datetime.timedelta(hours=lease) if lease else None,
        now=datetime.datetime.now(datetime.UTC),  # the moment of this test, never of collection
    )
    if not document.parts:
        assert credential is None and user == "none" and name is None
        return
    rendered = document.render()
    assert rendered == document.render()  # deterministic: the same launch, the same idempotency key
    parts = parts_of(rendered)
    assert [p.get_content_type() for p in parts] == [p.content_type for p in document.parts]

    for n, part in enumerate(parts):
        if part.get_content_type() == "text/cloud-config":
            schema_ok(body(part), tmp_path / f"part{n}.cfg")

    ours = [p for p, d in zip(parts, document.parts, strict=True) if d.origin == "wlcgcloud"]
    if credential is None and name is None and lease is None:
        assert not ours
    else:
        [mine] = ours
        assert mine["Merge-Type"] == userdata.MERGE_TYPE
        config: dict[str, Any] = yaml.safe_load(body(mine))
        files = {f["path"]: f for f in config.get("write_files", [])}
        if credential is not None:
            written = files[f"/run/wlcgcloud/{credential.file_name}"]
            assert written["encoding"] == "gz+b64"
            assert gzip.decompress(base64.b64decode(written["content"])) == credential.data  # byte-identical
            assert written["permissions"] == "0600" and written["owner"] == "root:root"
            variable = "X509_USER_PROXY" if credential.kind == "x509" else "BEARER_TOKEN_FILE"
            assert files["/etc/environment"]["content"] == f"{variable}=/run/wlcgcloud/{credential.file_name}\n"
            assert variable in files["/etc/profile.d/wlcgcloud.sh"]["content"]
        if name:
            env = files["/run/wlcgcloud/bootstrap.env"]
            assert env["permissions"] == "0600" and all(f"{k}=" in env["content"] for k in settings)
        if lease:
            assert config["power_state"]["delay"] == lease * 60

    user_bodies = {USER_CONFIG, USER_SCRIPT, BOOTHOOK}
    given = [body(p) for p, d in zip(parts, document.parts, strict=True) if d.origin.startswith("--user-data")]
    expected = {"none": 0, "config": 1, "script": 1, "multipart": 3, "gzip": 1}[user]
    assert len(given) == expected and all(b in user_bodies for b in given)
    if name:
        [script] = [p for p, d in zip(parts, document.parts, strict=True) if d.origin == f"bootstrap {name}"]
        assert script.get_content_type() == "text/x-shellscript"
        assert body(script) == userdata.bootstrap(name).script.encode()


def test_structure_shows_where_things_go_but_no_secret(credentials: dict[str, Credential | None]) -> None:
    proxy = credentials["proxy"]
    assert proxy is not None
    document = userdata.compose(proxy, bootstrap=userdata.bootstrap("htcondor"), settings=BOOTSTRAPS["htcondor"][1])
    shown = repr(document.structure())
    assert proxy.fingerprint in shown and "(redacted)" in shown and "cm.example.org:9618" in shown
    assert "eyJpool.token.value" not in shown
    assert base64.b64encode(proxy.data).decode()[:40] not in shown and vmagent.packed(proxy.data)[:40] not in shown
    assert not any(line in shown for line in proxy.data.decode().splitlines()[1:3])


def test_bootstraps_are_shell_that_parses_and_declare_their_settings() -> None:
    shipped = userdata.bootstraps()
    assert set(shipped) == {"htcondor", "script"}
    for boot in shipped.values():
        result = subprocess.run(["bash", "-n"], input=boot.script, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert boot.summary and boot.settings
    with pytest.raises(UsageError, match="needs --set COLLECTOR"):
        shipped["htcondor"].resolve({})
    with pytest.raises(UsageError, match="has no setting 'COLECTOR'"):
        shipped["htcondor"].resolve({"COLECTOR": "x"})
    assert shipped["htcondor"].resolve({"COLLECTOR": "cm"})["SLOTS"] == "partitionable"
    with pytest.raises(UsageError, match="no bootstrap 'glidein'"):
        userdata.bootstrap("glidein")
    with pytest.raises(UsageError, match=r"--set 'POOL_TOKEN': expected KEY=VALUE|expected KEY=VALUE"):
        userdata.parse_settings(["POOL_TOKEN"])


def test_gzip_when_only_that_fits_and_a_clear_refusal_when_nothing_does(tmp_path: Path) -> None:
    compressible = tmp_path / "big.yaml"
    compressible.write_text("#cloud-config\nbootcmd:\n" + "".join(f"- echo line {n:05d}\n" for n in range(1500)))
    document = userdata.compose(None, user_data=compressible)
    raw = document.render()
    assert len(raw) > 16384
    payload = userdata.fit(document, 16384, "profile 'aws' (ec2)")
    assert payload is not None and payload.gzipped and len(payload.data) <= 16384
    assert gzip.decompress(payload.data) == raw
    plain = userdata.fit(document, len(raw), "x")
    assert plain is not None and not plain.gzipped and plain.data == raw
    noise = tmp_path / "noise.sh"
    noise.write_text("#!/bin/sh\n# " + base64.b64encode(os.urandom(40000)).decode() + "\n")
    with pytest.raises(
        PolicyError, match=r"profile 'aws' \(ec2\): user-data is \d+ bytes \(\d+ gzipped\); it accepts at most 16384"
    ):
        userdata.fit(userdata.compose(None, user_data=noise), 16384, "profile 'aws' (ec2)")


def test_a_voms_proxy_and_the_htcondor_bootstrap_fit_ec2_with_room_to_spare(grid: Grid, tmp_path: Path) -> None:
    """What a pilot launch sends (a VOMS proxy, the htcondor bootstrap with its agent, a lease) fits EC2's
    16 KB gzipped with room for a longer chain or more FQANs. The proxy went as base64 of its PEM, which
    the document's gzip cannot undo: 16.2-16.4 KB, and a launch refused now and then by the size of a
    test proxy's signatures."""
    from wlcgcloud.providers.ec2 import USER_DATA_LIMIT

    proxy = read_proxy(grid.voms_proxy(tmp_path / "x509up", "atlas", "/atlas/Role=production/Capability=NULL"),
                       datetime.datetime.now(datetime.UTC))  # fmt: skip
    settings = {"COLLECTOR": "cm.example.org", "POOL_TOKEN": "s3cr3t-pool-token"}
    document = userdata.compose(proxy, bootstrap=userdata.bootstrap("htcondor"), settings=settings,
                                lease=datetime.timedelta(hours=24))  # fmt: skip
    payload = userdata.fit(document, USER_DATA_LIMIT, "profile 'aws' (ec2)")
    assert payload is not None and payload.gzipped
    assert len(payload.data) <= USER_DATA_LIMIT - 1024, len(payload.data)


def test_user_data_cloud_init_would_not_understand_is_refused(tmp_path: Path) -> None:
    odd = tmp_path / "odd.txt"
    odd.write_text("hello\n")
    with pytest.raises(UsageError, match="cloud-init would not know what it is"):
        userdata.read_user_data(odd)
    binary = tmp_path / "blob"
    binary.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(UsageError, match="not text"):
        userdata.read_user_data(binary)
    with pytest.raises(UsageError, match="No such file"):
        userdata.read_user_data(tmp_path / "missing")
