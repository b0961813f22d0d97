"""Hostile input: every file, option and document a user hands us, at its worst.

Organised by input class: config files, image lists, user-data, credentials (proxies and
tokens), durations and dates, `--query`. Each class has a table of cases; add a case to the
table of its class. Every case asserts the contract (design/cli-contract.md): the documented
exit code, exactly one `error:` line on stderr, no traceback, and no secret in anything printed.
Nothing here fakes a cloud: every case is refused before one would be asked, and the profiles
point at a closed port on 127.0.0.1 so that a case that wrongly got further cannot leave the host.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from peers import gridca
from peers.proxies import make_token, write_private

from wlcgcloud import bounded

from conftest import Result, Run, World, write_profiles

SECRET = "hostile-secret-do-not-print-4711"
NOWHERE = "http://127.0.0.1:9"  # a closed port: a case that wrongly reaches a cloud fails there, locally


def refused(r: Result, code: int, says: str = "", *secrets: str) -> None:
    """The contract for a refusal: this exit code, one `error:` line, no traceback, no secret."""
    assert r.code == code, (r.code, r.err)
    assert [line for line in r.err.splitlines() if line.startswith("error:")] == [r.err.splitlines()[0]], r.err
    assert "Traceback" not in r.err + r.out
    assert says in r.err, r.err
    for secret in (SECRET, *secrets):
        assert secret not in r.out + r.err


# ----------------------------------------------------------------------------- kinds of file
#
# What can stand where a file is expected. Each maker returns the path to give.


def _huge(limit: int, fill: bytes = b"#") -> Callable[[Path], Path]:
    def make(where: Path) -> Path:
        path = where / "huge"
        with path.open("wb") as out:  # limit + 1 bytes: just past the bound
            out.write(fill * (limit + 1))
        path.chmod(0o600)
        return path

    return make


def _dev_zero(where: Path) -> Path:
    return Path("/dev/zero")


def _directory(where: Path) -> Path:
    path = where / "a-directory"
    path.mkdir()
    return path


def _symlink_loop(where: Path) -> Path:
    path = where / "loop"
    path.symlink_to(path)
    return path


def _missing(where: Path) -> Path:
    return where / "not-there"


def _content(data: bytes) -> Callable[[Path], Path]:
    def make(where: Path) -> Path:
        path = where / "file"
        write_private(path, data)
        return path

    return make


EMPTY = _content(b"")
NON_UTF8 = _content(b"\xff\xfe\xc3\x28 not UTF-8 " + SECRET.encode() + b"\n")
NUL_BYTES = _content(b"\0\0\0" + SECRET.encode() + b"\0\n")


# ----------------------------------------------------------------------------- config files (exit 3)


def _config(text: str) -> Callable[[Path], Path]:
    return _content(text.encode())


EC2 = '[profiles.a]\nprovider = "ec2"\nregion = "eu-west-1"\n'
OS = '[profiles.a]\nprovider = "openstack"\nauth_url = "https://keystone.example.org:5000/v3"\n'
ONE = '[profiles.a]\nprovider = "opennebula"\nendpoint = "https://one.example.org:2633/RPC2"\n'

TOO_BIG_CONFIG = f"larger than {bounded.size_text(bounded.CONFIG_SIZE)}"
CONFIGS: dict[str, tuple[Callable[[Path], Path], str]] = {
    # size
    "larger than the bound": (_huge(bounded.CONFIG_SIZE), TOO_BIG_CONFIG),
    "32 MiB": (_huge(32 * bounded.MiB), TOO_BIG_CONFIG),
    "/dev/zero": (_dev_zero, TOO_BIG_CONFIG),
    # kinds of file
    "a directory": (_directory, "Is a directory"),
    "a symlink loop": (_symlink_loop, "Too many levels of symbolic links"),
    "not UTF-8": (NON_UTF8, "not UTF-8"),
    "NUL bytes": (NUL_BYTES, "TOML syntax error"),
    # nesting
    "nested arrays": (_config("a = " + "[" * 100_000), "nested more than 32 levels"),
    "nested inline tables": (_config("a = " + "{b = " * 50_000), "nested more than 32 levels"),
    "a long dotted key": (_config("a" + ".a" * 100_000 + " = 1\n"), "nested more than 32 levels"),
    "a long table header": (_config("[a" + ".a" * 100_000 + "]\n"), "nested more than 32 levels"),
    "a long quoted dotted key": (_config("a" + '."b"' * 50_000 + " = 1\n"), "nested more than 32 levels"),
    # numbers
    "timeout of 10^23": (_config(EC2 + "timeout = 99999999999999999999999\n"), "key 'timeout'"),
    "timeout past a day": (_config(EC2 + "timeout = 86401\n"), "up to 86400"),
    "timeout of 5000 digits": (_config(EC2 + "timeout = " + "9" * 5000 + "\n"), "does not read as TOML"),
    "timeout as infinity": (_config(EC2 + "timeout = inf\n"), "key 'timeout'"),
    "user_data_limit of 2^40": (_config(ONE + f"user_data_limit = {2**40}\n"), "key 'user_data_limit'"),
    "image_datastore past int32": (_config(ONE + f"image_datastore = {2**31}\n"), "key 'image_datastore'"),
    "a benchmark of nan": (
        _config(EC2 + '[profiles.a.benchmarks]\ntype = "HEPscore23"\n"m5.xlarge" = nan\n'),
        "expected a positive number",
    ),
    "a benchmark of inf": (
        _config(EC2 + '[profiles.a.benchmarks]\ntype = "HEPscore23"\n"m5.xlarge" = inf\n'),
        "expected a positive number",
    ),
    # values
    "endpoint_url with a broken IPv6 host": (_config(EC2 + 'endpoint_url = "http://[::1"\n'), "key 'endpoint_url'"),
    "endpoint_url not a URL": (_config(EC2 + 'endpoint_url = "not a url"\n'), "key 'endpoint_url'"),
    "endpoint_url with a port past 65535": (_config(EC2 + 'endpoint_url = "http://h:99999"\n'), "key 'endpoint_url'"),
    "endpoint_url with a bad port": (_config(EC2 + 'endpoint_url = "http://h:port/"\n'), "key 'endpoint_url'"),
    "auth_url not a URL": (
        _config('[profiles.a]\nprovider = "openstack"\nauth_url = "keystone"\n'),
        "key 'auth_url'",
    ),
    "auth_url of another scheme": (
        _config('[profiles.a]\nprovider = "openstack"\nauth_url = "ftp://keystone/v3"\n'),
        "key 'auth_url'",
    ),
    "OpenNebula endpoint with a broken IPv6 host": (
        _config('[profiles.a]\nprovider = "opennebula"\nendpoint = "http://[fe80::1/RPC2"\n'),
        "key 'endpoint'",
    ),
    "region with a newline": (_config(OS + 'region = "Region\\nOne"\n'), "key 'region'"),
    "region with a terminal escape": (_config(OS + 'region = "\\u001b[2J"\n'), "key 'region'"),
    "region with a NUL": (_config(OS + 'region = "a\\u0000b"\n'), "key 'region'"),
    "EC2 region with a space": (_config('[profiles.a]\nprovider = "ec2"\nregion = "eu west 1"\n'), "key 'region'"),
    "a setting of 5000 characters": (_config(EC2 + f'key_name = "{"k" * 5000}"\n'), "key 'key_name'"),
    "a list item with a newline": (_config(EC2 + 'security_groups = ["sg-1\\nsg-2"]\n'), "key 'security_groups'"),
}


@pytest.fixture
def config_path(world: World) -> Path:
    world.config.parent.mkdir(parents=True, exist_ok=True)
    return world.config


@pytest.mark.parametrize("case", CONFIGS)
def test_a_hostile_config_is_exit_3_naming_the_file(run: Run, world: World, case: str) -> None:
    make, says = CONFIGS[case]
    made = make(world.root)
    world.config.parent.mkdir(parents=True, exist_ok=True)
    world.config.symlink_to(made)
    refused(run("profile", "list"), 3, says)
    assert str(world.config) in run("profile", "list").err


@pytest.mark.parametrize("case", ["larger than the bound", "32 MiB", "nested arrays", "a long dotted key"])
def test_profile_add_refuses_a_hostile_config_at_once_and_leaves_it(run: Run, world: World, case: str) -> None:
    make, says = CONFIGS[case]
    made = make(world.root)
    before = made.read_bytes()
    r = run("profile", "add", "b", "--provider", "ec2", "--region", "eu-west-1", "--config", str(made))
    refused(r, 3, says)
    assert made.read_bytes() == before


UNREADABLE = ["a directory", "a symlink loop", "/dev/zero", "not UTF-8"]


@pytest.mark.parametrize("how", ["default path", "WLCGCLOUD_CONFIG", "--config"])
@pytest.mark.parametrize("case", UNREADABLE)
def test_an_unreadable_config_is_exit_3_however_it_is_named(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch, case: str, how: str
) -> None:
    made = CONFIGS[case][0](world.root)
    args: list[str] = []
    if how == "default path":
        world.config.parent.mkdir(parents=True, exist_ok=True)
        world.config.symlink_to(made)
        made = world.config
    elif how == "WLCGCLOUD_CONFIG":
        monkeypatch.setenv("WLCGCLOUD_CONFIG", str(made))
    else:
        args = ["--config", str(made)]
    refused(run(*args, "profile", "list"), 3, str(made))


@pytest.mark.parametrize("how", ["default path", "WLCGCLOUD_CONFIG", "--config"])
def test_a_config_without_read_permission_is_exit_3_however_it_is_named(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if os.geteuid() != 0:
        world.config.parent.mkdir(parents=True, exist_ok=True)
        world.config.write_text(EC2)
        world.config.chmod(0)
        args: list[str] = []
        if how == "WLCGCLOUD_CONFIG":
            monkeypatch.setenv("WLCGCLOUD_CONFIG", str(world.config))
        elif how == "--config":
            args = ["--config", str(world.config)]
        refused(run(*args, "profile", "list"), 3, "Permission denied")
        return
    # Root reads a file of mode 000: the command runs as 'nobody' instead (setpriv, util-linux),
    # in a HOME of its own that nobody may enter, with a config of root's that it may not read.
    home = Path(tempfile.mkdtemp(prefix="wlcgcloud-nobody-"))
    try:
        home.chmod(0o777)
        config = home / ".config" / "wlcgcloud" / "config.toml"
        config.parent.mkdir(parents=True)
        for d in (home / ".config", config.parent):
            d.chmod(0o755)
        config.write_text(EC2)
        config.chmod(0)
        env = {"HOME": str(home), "PATH": os.environ["PATH"], "WLCGCLOUD_STATE_DIR": str(home / "state")}
        args = []
        if how == "WLCGCLOUD_CONFIG":
            env["WLCGCLOUD_CONFIG"] = str(config)
        elif how == "--config":
            args = ["--config", str(config)]
        done = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             sys.executable, "-m", "wlcgcloud", *args, "profile", "list"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        refused(Result(done.returncode, done.stdout, done.stderr), 3, "Permission denied")
    finally:
        shutil.rmtree(home)


def test_an_empty_config_is_an_empty_config(run: Run, world: World) -> None:
    world.config.parent.mkdir(parents=True, exist_ok=True)
    world.config.write_text("")
    r = run("profile", "list", "-o", "json")
    assert r.code == 0 and r.json() == [] and "Traceback" not in r.err


@pytest.mark.parametrize(
    ("option", "value", "key"),
    [
        ("--endpoint-url", "http://[::1", "endpoint_url"),
        ("--endpoint-url", "not a url", "endpoint_url"),
        ("--region", "eu-west-1\nus-east-1", "region"),
        ("--region", "eu west 1", "region"),
        ("--timeout", "99999999999999999999999", "timeout"),
        ("--timeout", "0", "timeout"),
        ("--key-name", "\x1b]0;owned\x07", "key_name"),
    ],
)
def test_profile_add_refuses_bad_values_and_saves_nothing(
    run: Run, world: World, option: str, value: str, key: str
) -> None:
    r = run("profile", "add", "a", "--provider", "ec2", "--region", "eu-west-1", option, value,
            "--secret-stdin", input=SECRET + "\n")  # fmt: skip
    refused(r, 3, f"key '{key}'")
    assert not world.config.exists() and SECRET not in json.dumps(world.secrets())


def test_profile_edit_refuses_a_bad_url_and_keeps_the_profile(run: Run, world: World) -> None:
    write_profiles(world, {"a": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": NOWHERE}})
    before = world.config.read_text()
    refused(run("profile", "edit", "a", "--endpoint-url", "http://[::1"), 3, "key 'endpoint_url'")
    assert world.config.read_text() == before


# ----------------------------------------------------------------------------- imported files and secrets (exit 3)
#
# What `profile import` reads (clouds.yaml, ~/.aws files) and what a profile's secret comes from
# (secret_file, secret_from, --secret-stdin): bounded and refused in one line, never quoted.

IMPORTED: dict[str, Callable[[Path], Path]] = {
    "larger than the bound": _huge(bounded.IMPORTED_FILE_SIZE),
    "/dev/zero": _dev_zero,
    "a directory": _directory,
    "a symlink loop": _symlink_loop,
    "not UTF-8": NON_UTF8,
    "nested flow YAML": _content(b"clouds: " + b"[" * 100_000 + SECRET.encode() + b"\n"),
    "nested block YAML": _content(
        b"clouds:\n" + b"".join(b" " * (i + 1) + b"k%d:\n" % i for i in range(900)) + b" " * 901 + SECRET.encode()
    ),
}


@pytest.mark.parametrize("case", IMPORTED)
def test_a_hostile_clouds_yaml_is_exit_3_and_not_quoted(run: Run, world: World, case: str) -> None:
    made = IMPORTED[case](world.root)
    refused(run("profile", "import", "--from", "clouds.yaml", "--file", str(made)), 3, str(made))
    assert not world.config.exists()


@pytest.mark.parametrize("case", ["larger than the bound", "/dev/zero", "not UTF-8", "a directory"])
def test_a_hostile_aws_credentials_file_is_exit_3_and_not_quoted(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    made = IMPORTED[case](world.root)
    config = world.root / "aws-config"
    config.write_text("[default]\nregion = eu-west-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(made))
    refused(run("profile", "import", "--from", "aws"), 3, str(made))


@pytest.mark.parametrize(
    "case", ["larger than the bound", "/dev/zero", "not UTF-8", "a directory", "a symlink loop", "empty"]
)
def test_a_hostile_secret_file_is_exit_3_when_the_secret_is_needed(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    makers = {**IMPORTED, "larger than the bound": _huge(bounded.SECRET_SIZE), "empty": EMPTY}
    made = makers[case](world.root)
    write_profiles(world, {"a": {"provider": "ec2", "region": "eu-west-1", "secret_file": str(made)}})
    refused(run("instance", "list"), 3, "profile 'a'")


def test_secret_stdin_of_dev_zero_is_exit_2_at_once(run: Run, world: World) -> None:
    with open("/dev/zero") as zeros:
        import io

        endless = io.StringIO(zeros.read(bounded.SECRET_SIZE + 10))  # as much as the bound reads, and more
    r = run("profile", "add", "a", "--provider", "ec2", "--region", "eu-west-1", "--secret-stdin",
            input=endless.getvalue())  # fmt: skip
    refused(r, 2, "--secret-stdin")
    assert not world.config.exists()


# ----------------------------------------------------------------------------- image lists (exit 5)


@pytest.fixture(scope="module")
def grid_keys() -> tuple[gridca.Identity, gridca.Identity]:
    ca = gridca.make_ca("wlcgcloud Hostile Test CA")
    return ca, gridca.make_endorser(ca, "atlas-endorser")


@pytest.fixture
def anchors(world: World, grid_keys: tuple[gridca.Identity, gridca.Identity]) -> Path:
    path = world.root / "certificates"
    gridca.install_ca(path, grid_keys[0])
    return path


def _signed(grid_keys: tuple[gridca.Identity, gridca.Identity], where: Path, content: bytes) -> Path:
    """`content` validly signed by the trusted endorser: only what it says is hostile."""
    return gridca.sign(where / "lists", content, grid_keys[1])


def _list_json(grid_keys: tuple[gridca.Identity, gridca.Identity], **changes: Any) -> bytes:
    return json.dumps(gridca.image_list(grid_keys[1], grid_keys[0], **changes)).encode()


def _image_with(grid_keys: tuple[gridca.Identity, gridca.Identity], **fields: Any) -> bytes:
    document = gridca.image_list(grid_keys[1], grid_keys[0])
    document["hv:imagelist"]["hv:images"][0]["hv:image"].update(fields)
    return json.dumps(document).encode()


Keys = tuple[gridca.Identity, gridca.Identity]
SIGNED_CONTENT: dict[str, tuple[Callable[[Keys], bytes], str]] = {
    "nested JSON": (lambda k: b'{"hv:imagelist": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "levels deep"),
    "nested objects": (lambda k: b'{"a": ' * 50_000 + b"1" + b"}" * 50_000, "levels deep"),
    "not UTF-8": (lambda k: _list_json(k).replace(b"ATLAS endorsed", b"\xff\xfe\xc3\x28"), "not a JSON image list"),
    "NUL bytes": (lambda k: b"\0" * 64 + _list_json(k), "not a JSON image list"),
    "empty": (lambda k: b"", "not a JSON image list"),
    "a size of 1e400": (lambda k: _image_with(k, **{"hv:size": 1e400}).replace(b"Infinity", b"1e400"), "hv:size"),
    "a size of 5000 digits": (
        lambda k: _image_with(k, **{"hv:size": 1}).replace(b'"hv:size": 1', b'"hv:size": ' + b"9" * 5000),
        "not a JSON image list",
    ),
    "a size of 2^70": (lambda k: _image_with(k, **{"hv:size": 2**70}), "hv:size is out of range"),
    "a negative ram minimum": (lambda k: _image_with(k, **{"hv:ram_minimum": -1}), "hv:ram_minimum"),
}


def _subscribe(run: Run, path: Path, anchors: Path, keys: Keys) -> Result:
    endorser = gridca.slash(keys[1].name)
    return run("image", "subscribe", str(path), "--trust-anchors", str(anchors), "--endorser", endorser)


@pytest.mark.parametrize("case", SIGNED_CONTENT)
def test_a_validly_signed_hostile_image_list_is_exit_5(
    run: Run, world: World, anchors: Path, grid_keys: Keys, case: str
) -> None:
    content, says = SIGNED_CONTENT[case]
    refused(_subscribe(run, _signed(grid_keys, world.root, content(grid_keys)), anchors, grid_keys), 5, says)
    assert not list((world.state / "image-lists").glob("*.json"))


IMAGE_LIST_FILES: dict[str, tuple[Callable[[Path], Path], int, str]] = {
    "/dev/zero": (_dev_zero, 5, "no image list is that big"),
    "larger than the bound": (_huge(bounded.IMAGE_LIST_SIZE, b"A"), 5, "no image list is that big"),
    "empty": (EMPTY, 5, "not an S/MIME signed image list"),
    "not UTF-8": (NON_UTF8, 5, "not an S/MIME signed image list"),
    "NUL bytes": (NUL_BYTES, 5, "not an S/MIME signed image list"),
    "a directory": (_directory, 2, "Is a directory"),
    "a symlink loop": (_symlink_loop, 2, "Too many levels of symbolic links"),
    "missing": (_missing, 2, "No such file"),
}


@pytest.mark.parametrize("case", IMAGE_LIST_FILES)
def test_a_hostile_image_list_file_is_refused(
    run: Run, world: World, anchors: Path, grid_keys: Keys, case: str
) -> None:
    make, code, says = IMAGE_LIST_FILES[case]
    refused(_subscribe(run, make(world.root), anchors, grid_keys), code, says)


def test_a_version_of_5000_digits_is_compared_not_crashed_on(
    run: Run, world: World, anchors: Path, grid_keys: Keys
) -> None:
    assert _subscribe(run, _signed(grid_keys, world.root, _list_json(grid_keys)), anchors, grid_keys).code == 0
    huge = _list_json(grid_keys, **{"hv:version": "9" * 5000})
    r = _subscribe(run, _signed(grid_keys, world.root, huge), anchors, grid_keys)
    assert r.code in (0, 5), r.err  # a newer or an older version: either is an answer, a traceback is not
    assert "Traceback" not in r.err and "internal error" not in r.err


# ----------------------------------------------------------------------------- user-data (too large: exit 5)


@pytest.fixture
def launchable(world: World) -> None:
    """A profile to launch on whose endpoint is a closed local port: every case stops before it."""
    write_profiles(world, {"a": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": NOWHERE}})


def _gzip_bomb(where: Path) -> Path:
    path = where / "bomb.gz"
    path.write_bytes(gzip.compress(b"#cloud-config\n" + b"\0" * (8 * bounded.MiB), compresslevel=9))
    return path


def _nested_multipart(where: Path) -> Path:
    depth = 5000
    head = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(depth))
    tail = b"".join(b"\n--b%d--\n" % i for i in reversed(range(depth)))
    path = where / "nested.mime"
    path.write_bytes(b"MIME-Version: 1.0\n" + head + b"Content-Type: text/x-shellscript\n\n#!/bin/sh\n" + tail)
    return path


USER_DATA: dict[str, tuple[Callable[[Path], Path], int, str]] = {
    "1 MiB of text": (_content(b"#cloud-config\n" + b"a" * bounded.MiB), 5, "user-data too large"),
    "/dev/zero": (_dev_zero, 5, "user-data too large"),
    "a gzip bomb": (_gzip_bomb, 5, "user-data too large"),
    "nested multiparts": (_nested_multipart, 2, "multiparts"),
    "empty": (EMPTY, 2, "cloud-init would not know"),
    "not UTF-8": (NON_UTF8, 2, "not text"),
    "a directory": (_directory, 2, "Is a directory"),
    "a symlink loop": (_symlink_loop, 2, "Too many levels of symbolic links"),
    "missing": (_missing, 2, "No such file"),
    "a broken gzip": (_content(gzip.compress(b"#!/bin/sh\necho hi\n")[:-12]), 2, "broken gzip"),
}


@pytest.mark.usefixtures("launchable")
@pytest.mark.parametrize("case", USER_DATA)
def test_hostile_user_data_is_refused_before_any_cloud(run: Run, world: World, case: str) -> None:
    make, code, says = USER_DATA[case]
    r = run("launch", "img", "-p", "a", "--credential", "none", "--dry-run", "--user-data", str(make(world.root)))
    refused(r, code, says)


# ----------------------------------------------------------------------------- credentials (exit 5)


def _jwt(claims: bytes) -> bytes:
    header = base64.urlsafe_b64encode(b'{"alg":"ES256","typ":"JWT"}').rstrip(b"=")
    body = base64.urlsafe_b64encode(claims).rstrip(b"=")
    return header + b"." + body + b"." + base64.urlsafe_b64encode(SECRET.encode()).rstrip(b"=")


def _token(data: bytes) -> Callable[[Path], Path]:
    return _content(data)


CREDENTIAL_FILES: dict[str, Callable[[Path], Path]] = {
    "/dev/zero": _dev_zero,
    "larger than a proxy": _huge(bounded.PROXY_SIZE, b"-"),
    "a directory": _directory,
    "a symlink loop": _symlink_loop,
    "missing": _missing,
    "empty": EMPTY,
    "not UTF-8": NON_UTF8,
    "NUL bytes": NUL_BYTES,
}
TOKENS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "larger than a token": (_huge(bounded.TOKEN_SIZE, b"a"), "no token is that big"),
    "exp of 10^30": (_token(make_token(exp=10**30)), "'exp' claim"),
    "exp of 1e30": (_token(make_token(exp=1e30)), "'exp' claim"),
    "exp of NaN": (_token(make_token(exp=float("nan"))), "'exp' claim"),
    "exp of infinity": (_token(make_token(exp=float("inf"))), "'exp' claim"),
    "exp before 1970": (_token(make_token(exp=-(10**12))), "'exp' claim"),
    "exp of 5000 digits": (_token(_jwt(b'{"exp": ' + b"9" * 5000 + b"}")), "do not decode"),
    "nested claims": (_token(_jwt(b"[" * 10_000 + b"]" * 10_000)), "nest more than 32 levels"),
    "claims not UTF-8": (_token(_jwt(b'{"exp": 1, "sub": "\xff\xfe"}')), "do not decode"),
    "claims with NUL bytes": (_token(_jwt(b'\0{"exp": 1}')), "do not decode"),
}


@pytest.mark.usefixtures("launchable")
@pytest.mark.parametrize("option", ["--proxy", "--token-file"])
@pytest.mark.parametrize("case", CREDENTIAL_FILES)
def test_a_hostile_credential_file_is_exit_5(run: Run, world: World, option: str, case: str) -> None:
    path = CREDENTIAL_FILES[case](world.root)
    kind = "x509" if option == "--proxy" else "token"
    refused(run("launch", "img", "-p", "a", "--dry-run", "--credential", kind, option, str(path)), 5)


@pytest.mark.usefixtures("launchable")
@pytest.mark.parametrize("case", TOKENS)
def test_a_hostile_token_is_exit_5_and_never_shown(run: Run, world: World, case: str) -> None:
    make, says = TOKENS[case]
    path = make(world.root)
    token = path.read_bytes().decode("ascii", errors="replace").strip()
    r = run("launch", "img", "-p", "a", "--dry-run", "--credential", "token", "--token-file", str(path))
    refused(r, 5, says, token[-40:])


@pytest.mark.usefixtures("launchable")
@pytest.mark.parametrize("case", ["larger than a token", "nested claims", "exp of 10^30"])
def test_a_hostile_bearer_token_variable_is_exit_5(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    make, says = TOKENS[case]
    token = make(world.root).read_text()
    monkeypatch.setenv("BEARER_TOKEN", token)
    refused(run("launch", "img", "-p", "a", "--dry-run", "--credential", "token"), 5, says, token.strip()[-40:])


# ----------------------------------------------------------------------------- durations and dates (exit 2)

HOSTILE_DURATIONS = {
    "empty": "",
    "blank": "   ",
    "12 digits of days": "999999999999d",
    "5000 digits": "9" * 5000,
    "5000 digits of weeks": "9" * 5000 + "w",
    "a superscript digit": "²h",
    "negative": "-5m",
    "a control character": "5m\x1b[2J",
}
HOSTILE_DATES = {
    **HOSTILE_DURATIONS,
    "the last day of 9999": "9999-12-31",
    "year 1 east of UTC": "0001-01-01T00:00:00+01:00",
    "year 9999 west of UTC": "9999-12-31T23:59:59-12:00",
    "after 2200": "2300-01-01",
    "before 1970": "1900-01-01",
    "100 years ago": "36500d",
}


@pytest.mark.parametrize("option", ["--since", "--until"])
@pytest.mark.parametrize("case", HOSTILE_DATES)
def test_usage_refuses_a_hostile_date_with_exit_2(run: Run, option: str, case: str) -> None:
    refused(run("usage", option, HOSTILE_DATES[case]), 2, option)


@pytest.mark.usefixtures("launchable")
@pytest.mark.parametrize("option", ["--lease", "--min-lifetime", "--timeout"])
@pytest.mark.parametrize("case", HOSTILE_DURATIONS)
def test_launch_refuses_a_hostile_duration_with_exit_2(run: Run, option: str, case: str) -> None:
    r = run("launch", "img", "-p", "a", "--credential", "none", "--wait", "--dry-run", option, HOSTILE_DURATIONS[case])
    refused(r, 2, option)


# ----------------------------------------------------------------------------- --query (exit 2)

HOSTILE_QUERIES = {
    "50,000 brackets": ("[" * 50_000, "longer than 2048"),
    "1,000 nested brackets": ("[" * 1000 + "]" * 1000, "levels deep"),
    "nested parentheses": ("(" * 500 + "name" + ")" * 500, "levels deep"),
    "nested multiselect hashes": ("{a:" * 300 + "name" + "}" * 300, "levels deep"),
    "a deeply nested JSON literal": ("`" + "[" * 1000 + "]" * 1000 + "`", "levels deep"),
    # Within both bounds, but deeper than jmespath's recursion goes: the last line of defence.
    "a chain of 1,000 nots": ("!" * 1000 + "a", "--query"),
    "a chain of 1,000 pipes": ("a" + "|a" * 1000, "--query"),
    "a chain of 680 ors": ("a" + "||a" * 680, "--query"),
    "a syntax error": ("[.name", "invalid --query"),
}


@pytest.mark.parametrize("case", HOSTILE_QUERIES)
def test_a_hostile_query_is_exit_2(run: Run, world: World, case: str) -> None:
    write_profiles(world, {"a": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": NOWHERE}})
    query, says = HOSTILE_QUERIES[case]
    refused(run("profile", "list", "-o", "json", "--query", query), 2, says)


def test_a_real_query_still_works(run: Run, world: World) -> None:
    write_profiles(world, {"a": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": NOWHERE}})
    r = run("profile", "list", "-o", "json", "--query", "[?provider == 'ec2'].{name: name, url: endpoint_url}")
    assert r.code == 0 and r.json() == [{"name": "a", "url": NOWHERE}], r.err


def test_a_bad_query_is_refused_before_any_cloud_is_asked(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An endpoint that never answers: were it asked, the command would wait out its timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        write_profiles(world, {"a": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": url, "timeout": 30}})
        monkeypatch.setenv("WLCGCLOUD_SECRET_A", "x")
        started = time.monotonic()
        r = run("instance", "list", "--query", "[?state == ]")
        assert time.monotonic() - started < 5
    refused(r, 2, "invalid --query")


# ----------------------------------------------------------------------------- counts (exit 2)


@pytest.mark.parametrize("count", ["0", "-1", "10001", "99999999999999999999"])
def test_launch_refuses_a_count_out_of_range_before_any_cloud(run: Run, world: World, count: str) -> None:
    write_profiles(world, {"a": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": NOWHERE}})
    refused(run("launch", "img", "-p", "a", "--count", count, "--dry-run"), 2, "--count")


@pytest.mark.parametrize("count", ["-1", "10001"])
def test_fleet_scale_refuses_a_count_out_of_range(run: Run, world: World, count: str) -> None:
    write_profiles(world, {"a": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": NOWHERE}})
    refused(run("fleet", "scale", "f", "--count", count, "--dry-run"), 2, "--count")


# ----------------------------------------------------------------------------- the ledger: its settings and files

LEDGER_SETTINGS = {
    "a password in the URL": ('ledger = "postgresql://ops:' + SECRET + '@127.0.0.1:9/wlcg"\n', "never sits in"),
    "a password in the query": ('ledger = "postgresql://ops@127.0.0.1:9/wlcg?password=' + SECRET + '"\n',
                                "never sits in"),
    "a number": ("ledger = 5\n", "expected a non-empty string"),
    "empty": ('ledger = ""\n', "expected a non-empty string"),
    "a terminal escape": ('ledger = "postgresql://\\u001b[2J@h/db"\n', "control or unprintable"),
    "5000 characters": (f'ledger = "postgresql://ops@h/{"d" * 5000}"\n', "longer than"),
    "a password file that is a table": ("ledger_password_file = {a = 1}\n", "expected a non-empty string"),
}  # fmt: skip


@pytest.mark.parametrize("case", LEDGER_SETTINGS)
def test_a_hostile_ledger_setting_is_exit_3_and_the_config_is_kept(run: Run, world: World, case: str) -> None:
    text, says = LEDGER_SETTINGS[case]
    world.config.parent.mkdir(parents=True, exist_ok=True)
    world.config.write_text(text + EC2)
    refused(run("ledger", "status"), 3, says)
    refused(run("profile", "list"), 3, says)
    assert world.config.read_text() == text + EC2


@pytest.mark.parametrize("case", ["/dev/zero", "32 MiB", "a directory", "a symlink loop", "not UTF-8", "missing",
                                  "readable by others", "empty"])  # fmt: skip
def test_a_hostile_ledger_password_file_is_exit_3_before_any_connection(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    makers = {"/dev/zero": _dev_zero, "32 MiB": _huge(32 * bounded.MiB), "a directory": _directory,
              "a symlink loop": _symlink_loop, "not UTF-8": NON_UTF8, "missing": _missing, "empty": EMPTY,
              "readable by others": _content(SECRET.encode())}  # fmt: skip
    made = makers[case](world.root)
    if case == "readable by others":
        made.chmod(0o644)
    world.config.parent.mkdir(parents=True, exist_ok=True)
    world.config.write_text(f'ledger = "postgresql://ops@127.0.0.1:9/wlcg"\nledger_password_file = "{made}"\n')
    refused(run("ledger", "status"), 3, "ledger_password_file")


IMPORTS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "/dev/zero": (_dev_zero, "a line longer than 64 KiB"),
    "one line of 32 MiB": (_huge(32 * bounded.MiB, b"{"), "a line longer than 64 KiB"),
    "a directory": (_directory, "cannot read"),
    "a symlink loop": (_symlink_loop, "cannot read"),
    "missing": (_missing, "cannot read"),
    "not UTF-8": (NON_UTF8, "not a JSON object"),
    "NUL bytes": (NUL_BYTES, "not a JSON object"),
    "nested arrays": (_content(b"[" * 60_000 + b"\n"), "not a JSON object"),
    "a row with nested values": (_content(json.dumps({"table": "instances", "row": {
        "profile": {"a": [1]}, "id": "1", "provider": "x", "last_seen": "t"}}).encode() + b"\n"), "not a plain value"),
    "a row of another table": (_content(b'{"table": "fleet_locks", "row": {}}\n'), "expected"),
    "a launch id that is text": (_content(json.dumps({"table": "launches", "row": {
        "id": "1", "fleet": "f", "profile": "p", "provider": "ec2", "request_token": "t", "image": "i",
        "cloud_image": "c", "endorsement": "none", "flavor": "m", "requested": 1, "options": "{}",
        "created": "2026-01-01T00:00:00Z", "state": "launched"}}).encode() + b"\n"), "launches.id"),
    "SQL in a column name": (_content(b'{"table": "instances", "row": {"id\\"; DROP TABLE launches; --": 1}}\n'),
                             "unknown column(s)"),
}  # fmt: skip


@pytest.mark.parametrize("case", IMPORTS)
def test_a_hostile_ledger_import_is_exit_2_and_imports_nothing(run: Run, world: World, case: str) -> None:
    make, says = IMPORTS[case]
    refused(run("ledger", "import", str(make(world.root))), 2, says)
    status = run("ledger", "status", "-o", "json").json()
    assert isinstance(status, dict) and (status["launches"], status["instances"]) == (0, 0)


@pytest.mark.parametrize("column", ["id", "name", "fleet"])
def test_a_ledger_row_that_is_not_utf8_is_the_ledgers_exit_3_not_a_bug(run: Run, world: World, column: str) -> None:
    """Another tool, or a disk, wrote bytes that are not UTF-8 into the SQLite ledger: a command that reads
    them says which ledger failed and how to check it, in one line, and exits 3 (it was "internal error")."""
    import sqlite3

    from wlcgcloud.ledger import Ledger

    Ledger(world.state / "ledger.sqlite").close()
    db = sqlite3.connect(world.state / "ledger.sqlite")
    values = {"id": "'i-1'", "name": "'vm'", "fleet": "'f'"} | {column: "CAST(x'69ff2d31' AS TEXT)"}
    db.execute("INSERT INTO instances (profile, id, name, fleet, provider, launched_at, last_seen, launched_epoch,"
               f" seen_epoch) VALUES ('p', {values['id']}, {values['name']}, {values['fleet']}, 'ec2',"
               " '2026-11-01T00:00:00Z', '2026-11-01T05:00:00Z', 1793491200, 1793509200)")  # fmt: skip
    db.commit()
    db.close()
    result = run("ledger", "export", "-")
    refused(result, 3, "PRAGMA integrity_check")
    assert "ledger.sqlite failed (Could not decode to UTF-8" in result.err
    assert run("ledger", "status").code == 0  # what does not read that text still works


@pytest.mark.parametrize("case", ["soon", "", "-5m", "99999999999999999999d"])
def test_a_hostile_wait_lock_is_exit_2(run: Run, world: World, case: str) -> None:
    refused(run("--wait-lock", case, "fleet", "terminate", "f", "--yes"), 2, "--wait-lock")


# ----------------------------------------------------------------------------- fleet specs (exit 3)

SPECS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "/dev/zero": (_dev_zero, "not a fleet spec"),
    "32 MiB": (_huge(32 * bounded.MiB), "not a fleet spec"),
    "a directory": (_directory, "cannot read the fleet spec"),
    "a symlink loop": (_symlink_loop, "cannot read the fleet spec"),
    "not UTF-8": (NON_UTF8, "not UTF-8"),
    "NUL bytes": (NUL_BYTES, "TOML syntax error"),
    "nested arrays": (_config("a = " + "[" * 100_000), "nested more than 32 levels"),
    "a long dotted key": (_config("a" + ".a" * 100_000 + " = 1\n"), "nested more than 32 levels"),
    "an integer of 5000 digits": (_config("fleet = 'f'\nimage = 'i'\ntarget = " + "9" * 5000 + "\n"), "TOML"),
    "a fleet name with an escape": (_config('fleet = "\\u001b[2J"\nimage = "i"\ntarget = 1\n'), "key 'fleet'"),
    "a secret in settings": (_config(f'fleet = "f"\nimage = "i"\ntarget = 1\nbootstrap = "htcondor"\n'
                                     f'[settings]\nPOOL_TOKEN = "{SECRET}"\n[profiles.a]\n'), "never sits in a spec"),
}  # fmt: skip


@pytest.mark.parametrize("case", SPECS)
def test_a_hostile_fleet_spec_is_exit_3_and_never_quoted(run: Run, world: World, case: str) -> None:
    make, says = SPECS[case]
    refused(run("fleet", "maintain", str(make(world.root)), "--dry-run"), 3, says)


# ----------------------------------------------------------------------------- completion (never hangs)


@pytest.mark.parametrize("case", ["/dev/zero", "nested arrays", "32 MiB"])
def test_completion_with_a_hostile_config_answers_at_once_with_no_profile(
    world: World, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    from wlcgcloud.completion import complete

    made = CONFIGS[case][0](world.root) if case in CONFIGS else _dev_zero(world.root)
    monkeypatch.setenv("WLCGCLOUD_CONFIG", str(made))
    started = time.monotonic()
    assert complete(["wlcgcloud", "instance", "list", "-p", ""], 4) == []
    assert time.monotonic() - started < 5
