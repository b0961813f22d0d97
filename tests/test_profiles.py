"""Profiles: add, list, show, edit, remove; validation; a broken file is never overwritten."""

from __future__ import annotations

import stat

import pytest

from wlcgcloud.config import load_config

from conftest import Run, World

SECRET = "s3cr3t-Value-that-must-stay-out-of-config"


def add_ec2(run: Run, name: str = "aws-atlas", *extra: str, secret: str | None = SECRET) -> None:
    args = ["profile", "add", name, "--provider", "ec2", "--region", "eu-west-1", *extra]
    if secret is not None:
        args.append("--secret-stdin")
    r = run(*args, input=(secret or "") + "\n")
    assert r.code == 0, r.err


def test_round_trip_add_list_show_remove(run: Run, world: World) -> None:
    add_ec2(run, "aws-atlas", "--access-key-id", "AKIAEXAMPLE", "--security-groups", "sg-1,sg-2", "--public-ip")
    r = run(
        "profile",
        "add",
        "cern-atlas",
        "--provider",
        "openstack",
        "--auth-url",
        "https://keystone.example.org:5000/v3",
        "--auth-type",
        "v3applicationcredential",
        "--application-credential-id",
        "4f3c",
        "--secret-stdin",
        "--experiment",
        "atlas",
        "--timeout",
        "12",
        input="appcred-secret\n",
    )
    assert r.code == 0, r.err
    assert r.out == ""  # confirmations go to stderr only

    listed = run("profile", "list", "-o", "json")
    assert listed.code == 0
    assert listed.json() == [
        {
            "name": "aws-atlas",
            "provider": "ec2",
            "default": True,
            "region": "eu-west-1",
            "access_key_id": "AKIAEXAMPLE",
            "security_groups": ["sg-1", "sg-2"],
            "public_ip": True,
        },
        {
            "name": "cern-atlas",
            "provider": "openstack",
            "default": False,
            "auth_url": "https://keystone.example.org:5000/v3",
            "auth_type": "v3applicationcredential",
            "application_credential_id": "4f3c",
            "experiment": "atlas",
            "timeout": 12,
        },
    ]
    shown = run("profile", "show", "cern-atlas", "-o", "json").json()
    assert isinstance(shown, dict)
    assert shown["secret"] == {"found": True, "source": "system keyring"}
    assert shown["timeout"] == 12

    text = world.config.read_bytes()
    assert SECRET.encode() not in text and b"appcred-secret" not in text
    assert world.secrets() == {"wlcgcloud/aws-atlas": SECRET, "wlcgcloud/cern-atlas": "appcred-secret"}
    assert stat.S_IMODE(world.config.stat().st_mode) == 0o600

    r = run("profile", "remove", "aws-atlas", "--yes")
    assert r.code == 0, r.err
    assert [p["name"] for p in run("profile", "list", "-o", "json").json()] == ["cern-atlas"]  # type: ignore[union-attr]
    assert "wlcgcloud/aws-atlas" not in world.secrets()
    # the default was removed and one profile is left: that one is the default now, and the user is told
    assert 'default_profile = "cern-atlas"' in world.config.read_text()
    assert "'cern-atlas' is the default profile now" in r.err


def test_remove_needs_yes_without_a_terminal(run: Run, world: World) -> None:
    add_ec2(run)
    before = world.config.read_bytes()
    r = run("profile", "rm", "aws-atlas")
    assert r.code == 2
    assert "--yes" in r.err
    assert world.config.read_bytes() == before


def test_syntax_error_exit_3_with_position_and_file_untouched(run: Run, world: World) -> None:
    world.config.parent.mkdir(parents=True)
    broken = b'default_profile = "a"\n\n[profiles.a]\nprovider = "ec2"\nregion = eu-west-1\n'
    world.config.write_bytes(broken)
    for args in (
        ("profile", "list"),
        ("profile", "add", "b", "--provider", "ec2", "--region", "x"),
        ("profile", "edit", "a", "--region", "y"),
        ("profile", "remove", "a", "--yes"),
    ):
        r = run(*args)
        assert r.code == 3, args
        assert f"{world.config}:5:10: TOML syntax error" in r.err
        assert len(r.err.strip().splitlines()) == 1
        assert "Traceback" not in r.err
        assert world.config.read_bytes() == broken


def test_syntax_error_at_end_of_document_has_a_position(run: Run, world: World) -> None:
    world.config.parent.mkdir(parents=True)
    world.config.write_text('[profiles.a]\nprovider = "ec2"\nregion = "x')
    r = run("profile", "list")
    assert r.code == 3
    assert f"{world.config}:3:" in r.err


def test_unknown_profile_names_the_known_ones(run: Run) -> None:
    add_ec2(run, "aws-atlas")
    add_ec2(run, "aws-cms", secret=None)
    r = run("profile", "show", "aws-lhcb")
    assert r.code == 3
    assert "unknown profile 'aws-lhcb'" in r.err
    assert "Known profiles: aws-atlas, aws-cms." in r.err


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            '[profiles.a]\nprovider = "ec2"\nregoin = "x"\nregion = "y"\n',
            "profile 'a': key 'regoin': unknown key (did you mean 'region'?)",
        ),
        ('[profiles.a]\nprovider = "ec2"\n', "profile 'a': missing key 'region', required for provider 'ec2'"),
        ('[profiles.a]\nprovider = "gcp"\n', "profile 'a': key 'provider': must be one of ec2, openstack, opennebula"),
        ('[profiles.a]\nregion = "x"\n', "profile 'a': missing key 'provider'"),
        (
            '[profiles.a]\nprovider = "ec2"\nregion = "x"\ntimeout = "30"\n',
            "key 'timeout': expected a positive integer",
        ),
        (
            '[profiles.a]\nprovider = "ec2"\nregion = "x"\npublic_ip = "yes"\n',
            "key 'public_ip': expected true or false",
        ),
        (
            '[profiles.a]\nprovider = "ec2"\nregion = "x"\nnetwork = "n"\n',
            "key 'network': not a setting of provider 'ec2'",
        ),
        (
            '[profiles.a]\nprovider = "opennebula"\nendpoint = "http://h/RPC2"\nsecurity_groups = [1]\n',
            "key 'security_groups': not a setting of provider 'opennebula'",
        ),
        (
            '[profiles.a]\nprovider = "openstack"\nauth_url = "https://k/v3"\nsecurity_groups = [1]\n',
            "key 'security_groups': expected a list of strings",
        ),
        (
            'default_profile = "zz"\n[profiles.a]\nprovider = "ec2"\nregion = "x"\n',
            "default_profile': names no profile",
        ),
        ('colour = "red"\n', "unknown top-level key"),
        ('[profiles.a]\nprovider = "ec2"\nregion = "x"\n[profiles.a.benchmarks]\n"m5.xlarge" = 41.2\n', "needs type ="),
    ],
)
def test_invalid_config_names_file_profile_and_key(run: Run, world: World, table: str, message: str) -> None:
    world.config.parent.mkdir(parents=True)
    world.config.write_text(table)
    r = run("profile", "list")
    assert r.code == 3
    assert str(world.config) in r.err
    assert message in r.err


def test_add_rejects_unknown_and_foreign_keys_with_usage_error(run: Run, world: World) -> None:
    r = run("profile", "add", "x", "--provider", "openstack", "--auth-url", "https://k/v3", "--regoin", "r")
    assert r.code == 2 and "did you mean --region?" in r.err
    r = run("profile", "add", "x", "--provider", "openstack", "--auth-url", "https://k/v3", "--subnet", "s")
    assert r.code == 2 and "not a setting of provider 'openstack'" in r.err
    r = run("profile", "add", "x", "--provider", "ec2")
    assert r.code == 3 and "missing key 'region'" in r.err
    r = run("profile", "add", "x", "--region", "r")
    assert r.code == 2 and "--provider is required" in r.err
    r = run("profile", "add", "bad name", "--provider", "ec2", "--region", "r")
    assert r.code == 3 and "invalid profile name" in r.err
    assert not world.config.exists()


def test_add_existing_profile_is_refused(run: Run) -> None:
    add_ec2(run)
    r = run("profile", "add", "aws-atlas", "--provider", "ec2", "--region", "x")
    assert r.code == 2
    assert "profile edit aws-atlas" in r.err


def test_edit_changes_unsets_and_keeps_comments(run: Run, world: World) -> None:
    world.config.parent.mkdir(parents=True)
    world.config.write_text(
        "# operator notes: do not delete\n"
        'default_profile = "lal-one"\n\n'
        "[profiles.lal-one]  # LAL's OpenNebula\n"
        'provider = "opennebula"\n'
        'endpoint = "https://one.example.org:2633/RPC2"  # via the VPN\n'
        'username = "atlas"\n'
        'vm_template = "atlas-wn"\n'
    )
    r = run("profile", "edit", "lal-one", "--user-data-limit", "32768", "--unset", "vm-template")
    assert r.code == 0, r.err
    text = world.config.read_text()
    assert "# operator notes: do not delete" in text
    assert "# via the VPN" in text
    assert "user_data_limit = 32768" in text
    assert "vm_template" not in text
    r = run("profile", "edit", "lal-one", "--user-data-limit", "many")
    assert r.code == 2 and "expected a whole number" in r.err


def test_edit_secret_from_stdin(run: Run, world: World) -> None:
    add_ec2(run)
    r = run("profile", "edit", "aws-atlas", "--secret-stdin", input="rotated\n")
    assert r.code == 0, r.err
    assert world.secrets()["wlcgcloud/aws-atlas"] == "rotated"
    assert b"rotated" not in world.config.read_bytes()


def test_edit_with_nothing_to_change_off_a_terminal(run: Run) -> None:
    add_ec2(run)
    r = run("profile", "edit", "aws-atlas")
    assert r.code == 2
    assert "nothing to change" in r.err


def test_benchmarks_and_lists_from_options(run: Run) -> None:
    r = run(
        "profile",
        "add",
        "os",
        "--provider",
        "openstack",
        "--auth-url",
        "https://k:5000/v3",
        "--security-groups",
        "default",
        "--security-groups",
        "htcondor",
        "--benchmarks",
        "type=HEPscore23,m1.large=41.2",
        "--no-publish-apel",
    )
    assert r.code == 0, r.err
    shown = run("profile", "show", "os", "-o", "json").json()
    assert isinstance(shown, dict)
    assert shown["security_groups"] == ["default", "htcondor"]
    assert shown["benchmarks"] == {"type": "HEPscore23", "m1.large": 41.2}
    assert shown["publish_apel"] is False


def test_config_and_env_override_paths(run: Run, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    other = world.root / "elsewhere.toml"
    monkeypatch.setenv("WLCGCLOUD_CONFIG", str(other))
    add_ec2(run, "viaenv", secret=None)
    assert other.exists() and not world.config.exists()
    third = world.root / "third.toml"
    r = run("--config", str(third), "profile", "add", "viaflag", "--provider", "ec2", "--region", "x")
    assert r.code == 0, r.err
    assert "viaflag" in third.read_text() and "viaflag" not in other.read_text()


def test_unwritable_config_is_a_configuration_error(run: Run) -> None:
    target = "/proc/wlcgcloud-test-config.toml"  # nobody, not even root, can create files in /proc
    r = run("--config", target, "profile", "add", "a", "--provider", "ec2", "--region", "r")
    assert r.code == 3, r.err
    assert "cannot write the config file" in r.err and "internal error" not in r.err


def test_symlinked_config_is_written_through_the_link(run: Run, world: World) -> None:
    real = world.root / "dotfiles" / "config.toml"
    real.parent.mkdir()
    real.write_text("")
    world.config.parent.mkdir(parents=True)
    world.config.symlink_to(real)
    assert run("profile", "add", "a", "--provider", "ec2", "--region", "r").code == 0
    assert world.config.is_symlink()
    assert "[profiles.a]" in real.read_text()


@pytest.mark.parametrize(
    "text",
    [
        '[profiles]\na = {provider = "ec2", region = "x"}\nb = {provider = "ec2", region = "z"}\n',
        'default_profile = "a"\nprofiles.a.provider = "ec2"\nprofiles.a.region = "x"\n',
    ],
)
def test_edit_and_remove_inline_and_dotted_profiles(run: Run, world: World, text: str) -> None:
    world.config.parent.mkdir(parents=True)
    world.config.write_text(text)
    r = run("profile", "edit", "a", "--benchmarks", "type=HS23,m5.large=10", "--region", "y")
    assert r.code == 0, r.err
    a = load_config(world.config).profile("a")
    assert a.get("region") == "y" and a.get("benchmarks") == {"type": "HS23", "m5.large": 10.0}
    assert run("profile", "remove", "a", "--yes").code == 0
    assert "a" not in load_config(world.config).profiles


def test_profiles_sharing_a_secret_variable_are_refused(run: Run, world: World) -> None:
    assert run("profile", "add", "a-b", "--provider", "ec2", "--region", "r").code == 0
    r = run("profile", "add", "a.b", "--provider", "ec2", "--region", "r")
    assert r.code == 3 and "WLCGCLOUD_SECRET_A_B" in r.err
    assert "a.b" not in world.config.read_text()


def test_declining_a_confirmation_is_not_a_bug_exit(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    import wlcgcloud.cli.common as common

    assert run("profile", "add", "a", "--provider", "ec2", "--region", "r").code == 0
    monkeypatch.setattr(common, "interactive", lambda: True)  # a person at a terminal answers "n"
    r = run("profile", "remove", "a", input="n\n")
    assert r.code == 2 and "not confirmed" in r.err
    assert "a" in load_config().profiles
