"""The first hour of a new user: bare commands, headless machines, imported secrets, messages.

Each test is something a newcomer met on a fresh machine: a noun typed alone, a machine with no
keyring, a profile imported from ~/.aws or clouds.yaml that must work with no other secret,
the default profile after import and remove, and messages that stay readable.
"""

from __future__ import annotations

import stat
from typing import Any

import pytest

from conftest import OpenStackPeer, Run, World, ec2_profile, write_profiles

NOUNS = ("profile", "image", "fleet", "instance", "completion")


# ----------------------------------------------------------------------------- bare commands


@pytest.mark.parametrize("words", [(), ("--debug",), ("-o", "json"), *((noun,) for noun in NOUNS)])
def test_a_command_alone_prints_its_usage_and_commands(run: Run, words: tuple[str, ...]) -> None:
    r = run(*words)
    assert r.code == 0, r.err
    assert r.out.startswith("Usage: wlcgcloud") and "Commands:" in r.out
    assert "Traceback" not in r.err and "error" not in r.err


def test_a_mistyped_command_suggests_one_sentence_and_no_traceback_with_debug(run: Run) -> None:
    r = run("profile", "lisst", "--debug")
    assert r.code == 2
    assert "Did you mean 'list'? Run 'wlcgcloud profile --help'." in r.err and "?." not in r.err
    assert "Traceback" not in r.err and len(r.err.splitlines()) == 1


def test_a_query_syntax_error_shows_the_expression_and_a_caret_beneath(run: Run) -> None:
    r = run("profile", "list", "--query", "[?name == ]")
    assert r.code == 2
    first, expression, caret = r.err.splitlines()
    assert first.startswith("error: invalid --query expression") and "column 11" in first
    assert expression == "  [?name == ]"
    assert caret == "  " + " " * 10 + "^"  # under the ']' where a value was expected


# ----------------------------------------------------------------------------- control characters


def test_control_characters_in_a_file_name_are_shown_escaped(run: Run, world: World) -> None:
    hostile = world.root / "conf\x1b]0;owned\x07\x1b[2J.toml"
    hostile.write_text("[profiles.a\n")
    r = run("--config", str(hostile), "profile", "list")
    assert r.code == 3
    assert "\x1b" not in r.err and "\x07" not in r.err
    assert "conf\\x1b]0;owned\\x07\\x1b[2J.toml" in r.err


def test_control_characters_in_a_cloud_reply_are_shown_escaped(
    run: Run, world: World, moto_ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    client: Any = moto_ec2.client()
    # XML 1.0 (the EC2 wire) cannot carry C0 controls but does carry C1: CSI (\x9b) and OSC (\x9d)
    # act on many terminals as ESC [ and ESC ] do; a newline would break a table row.
    name = "evil\x9b2J\x9d0;title\x9c\nname"
    made = client.run_instances(
        ImageId="ami-03cf127a", InstanceType="t3.micro", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}],
    )["Instances"][0]["InstanceId"]  # fmt: skip
    write_profiles(world, {"aws": ec2_profile(moto_ec2)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    try:
        for fmt in ("table", "csv"):
            r = run("instance", "show", made, "-o", fmt)
            assert r.code == 0, r.err
            assert not {"\x9b", "\x9c", "\x9d"} & set(r.out)
            assert "evil\\u009b2J\\u009d0;title\\u009c\\nname" in r.out
        shown = run("instance", "show", made, "-o", "json").json()
        assert isinstance(shown, dict) and shown["name"] == name  # JSON carries the value itself, escaped by JSON
    finally:
        client.terminate_instances(InstanceIds=[made])


# ----------------------------------------------------------------------------- headless machines


@pytest.mark.usefixtures("no_keyring")
def test_add_on_a_machine_without_keyring_keeps_the_profile_and_says_how(run: Run, world: World) -> None:
    r = run("profile", "add", "ci-aws", "--provider", "ec2", "--region", "eu-west-1", "--secret-stdin", input="s3cr\n")
    assert r.code == 3
    [line] = r.err.splitlines()
    assert "profile 'ci-aws' is saved, but its secret is not" in line
    assert "WLCGCLOUD_SECRET_CI_AWS" in line and "--secret-file FILE" in line and "s3cr" not in line
    shown = run("profile", "show", "ci-aws", "-o", "json").json()
    assert isinstance(shown, dict) and shown["provider"] == "ec2" and shown["secret"]["found"] is False
    assert not list(world.root.rglob("*.secret"))  # no silent plaintext fallback


@pytest.mark.usefixtures("no_keyring")
def test_secret_file_named_by_the_user_is_written_owner_only(run: Run, world: World) -> None:
    target = world.home / ".config" / "wlcgcloud" / "ci-aws.secret"
    r = run("profile", "add", "ci-aws", "--provider", "ec2", "--region", "eu-west-1",
            "--secret-stdin", "--secret-file", str(target), input="first-secret\n")  # fmt: skip
    assert r.code == 0, r.err
    assert "written to" in r.err and "first-secret" not in r.err + r.out
    assert target.read_text() == "first-secret\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "first-secret" not in world.config.read_text()
    shown = run("profile", "show", "ci-aws", "-o", "json").json()
    assert isinstance(shown, dict) and shown["secret"] == {"found": True, "source": f"secret_file {target}"}
    # a new secret replaces the file's, and the file keeps its mode
    again = run("profile", "edit", "ci-aws", "--secret-stdin", "--secret-file", str(target), input="second-secret\n")
    assert again.code == 0, again.err
    assert target.read_text() == "second-secret\n" and stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.usefixtures("no_keyring")
def test_secret_file_that_is_not_ours_to_replace_is_refused(run: Run, world: World) -> None:
    link = world.root / "link.secret"
    link.symlink_to(world.root / "elsewhere")
    r = run("profile", "add", "x", "--provider", "ec2", "--region", "eu-west-1",
            "--secret-stdin", "--secret-file", str(link), input="v\n")  # fmt: skip
    assert r.code == 3 and "not a regular file of yours" in r.err
    assert not (world.root / "elsewhere").exists() and not world.config.exists()


# ----------------------------------------------------------------------------- imported secrets


@pytest.mark.usefixtures("no_keyring")
def test_a_profile_imported_from_aws_files_works_with_no_other_secret(run: Run, world: World, moto_ec2: Any) -> None:
    aws = world.home / ".aws"
    aws.mkdir()
    (aws / "config").write_text(f"[profile lab]\nregion = eu-west-1\nendpoint_url = {moto_ec2.url}\n")
    credentials = aws / "credentials"
    credentials.write_text(
        f"[lab]\naws_access_key_id = {moto_ec2.access_key}\naws_secret_access_key = {moto_ec2.secret_key}\n"
    )
    credentials.chmod(0o600)
    r = run("profile", "import", "--from", "aws")
    assert r.code == 0, r.err
    assert moto_ec2.secret_key not in world.config.read_text()
    shown = run("profile", "show", "lab", "-o", "json").json()
    assert isinstance(shown, dict)
    assert shown["secret_from"] == f"aws:{credentials}#lab"
    assert shown["secret"] == {"found": True, "source": f"AWS credentials file {credentials} [lab]"}
    assert shown["default"] is True  # imported into an empty config: the first becomes the default
    listed = run("instance", "list", "--all", "-o", "json")
    assert listed.code == 0, listed.err
    # the reference is read at run time: a key changed in the file is the one used
    credentials.write_text("[lab]\naws_access_key_id = x\naws_secret_access_key = rotated-away\n")
    assert run("instance", "list", "--all").code == 4
    # and the same owner-only rule as secret_file
    credentials.chmod(0o644)
    refused = run("instance", "list", "--all")
    assert refused.code == 3 and "readable by others" in refused.err and "chmod 600" in refused.err


@pytest.mark.openstack
@pytest.mark.usefixtures("no_keyring")
def test_a_profile_imported_from_clouds_yaml_works_with_no_other_secret(
    run: Run, world: World, openstack_peer: OpenStackPeer
) -> None:
    creds = openstack_peer.appcred
    osdir = world.home / ".config" / "openstack"
    osdir.mkdir(parents=True)
    (osdir / "clouds.yaml").write_text(
        "clouds:\n  osk:\n    auth_type: v3applicationcredential\n    auth:\n"
        f"      auth_url: {creds['OS_AUTH_URL']}\n"
        f"      application_credential_id: {creds['OS_APPLICATION_CREDENTIAL_ID']}\n"
        "    region_name: RegionOne\n"
    )
    secure = osdir / "secure.yaml"
    secret = creds["OS_APPLICATION_CREDENTIAL_SECRET"]
    secure.write_text(f"clouds:\n  osk:\n    auth:\n      application_credential_secret: {secret}\n")
    secure.chmod(0o600)
    r = run("profile", "import", "--from", "clouds.yaml")
    assert r.code == 0, r.err
    shown = run("profile", "show", "osk", "-o", "json").json()
    assert isinstance(shown, dict) and shown["secret_from"] == f"clouds.yaml:{secure}#osk"
    assert shown["secret"]["found"] is True and str(secure) in shown["secret"]["source"]
    assert creds["OS_APPLICATION_CREDENTIAL_SECRET"] not in world.config.read_text()
    listed = run("instance", "list", "-o", "json")
    assert listed.code == 0, listed.err


@pytest.mark.usefixtures("no_keyring")
def test_a_one_auth_import_reads_the_file_it_came_from(run: Run, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    auth = world.root / "one_auth"
    auth.write_text("atlas:one-pass\n")
    auth.chmod(0o600)
    monkeypatch.setenv("ONE_AUTH", str(auth))
    monkeypatch.setenv("ONE_XMLRPC", "https://one.example.org:2633/RPC2")
    assert run("profile", "import", "--from", "one", "--name", "lal").code == 0
    monkeypatch.delenv("ONE_AUTH")  # not the environment: the reference in the profile
    shown = run("profile", "show", "lal", "-o", "json").json()
    assert isinstance(shown, dict) and shown["secret"] == {"found": True, "source": f"ONE_AUTH file {auth}"}
    assert "one-pass" not in world.config.read_text()


# ----------------------------------------------------------------------------- default profile


def test_removing_the_default_leaves_the_one_profile_left_as_default(run: Run, world: World) -> None:
    for name in ("a", "b", "c"):
        assert run("profile", "add", name, "--provider", "ec2", "--region", "eu-west-1").code == 0
    r = run("profile", "remove", "a", "--yes")
    assert r.code == 0 and "no default profile now" in r.err and "--default" in r.err
    assert "default_profile" not in world.config.read_text()
    assert run("profile", "edit", "b", "--default").code == 0
    r = run("profile", "remove", "b", "--yes")
    assert r.code == 0 and "'c' is the default profile now" in r.err
    listed = run("profile", "list", "-o", "json").json()
    assert listed == [{"name": "c", "provider": "ec2", "default": True, "region": "eu-west-1"}]


@pytest.mark.parametrize(
    ("prepare", "problem"),
    [
        (lambda f: None, "cannot read secret_file"),
        (lambda f: (f.write_text("s\n"), f.chmod(0o644)), "readable by others"),
        (lambda f: (f.write_text(""), f.chmod(0o600)), "is empty"),
    ],
)
def test_a_secret_file_named_without_a_secret_is_checked_before_it_is_saved(
    run: Run, world: World, prepare: Any, problem: str
) -> None:
    named = world.root / "given.secret"
    prepare(named)
    r = run("profile", "add", "x", "--provider", "ec2", "--region", "eu-west-1", "--secret-file", str(named))
    assert r.code == 3 and problem in r.err and len(r.err.splitlines()) == 1
    assert not world.config.exists()


def test_a_cloud_that_cannot_be_reached_says_why_and_points_at_doctor(run: Run, world: World) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    write_profiles(world, {"aws": {"provider": "ec2", "region": "eu-west-1", "access_key_id": "AKIA1",
                                   "endpoint_url": f"http://127.0.0.1:{port}", "timeout": 5}})  # fmt: skip
    r = run("instance", "list")
    assert r.code in (3, 6)  # no secret is configured: 3 comes first
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WLCGCLOUD_SECRET_AWS", "x")
        r = run("instance", "list")
    assert r.code == 6
    [line] = r.err.splitlines()
    assert "connection refused (nothing listens there)" in line and "Run 'wlcgcloud doctor aws'" in line


def test_a_termination_plan_says_what_it_lists(run: Run, world: World, moto_ec2: Any) -> None:
    client: Any = moto_ec2.client()
    made = client.run_instances(ImageId="ami-03cf127a", InstanceType="t3.micro", MinCount=1, MaxCount=1)
    iid = made["Instances"][0]["InstanceId"]
    write_profiles(world, {"aws": ec2_profile(moto_ec2)})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
        r = run("instance", "terminate", iid, "--dry-run")
    client.terminate_instances(InstanceIds=[iid])
    assert r.code == 0, r.err
    lines = r.err.splitlines()
    assert lines[0].startswith("Would terminate: 1 instance(s)")
    assert f"  {iid}  fleet -  profile aws" in lines[1] and "None" not in r.err
