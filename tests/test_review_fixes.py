"""Edge cases found in review: each test failed before its fix."""

from __future__ import annotations

import io
import stat

import pytest

from wlcgcloud import secretstore
from wlcgcloud.__main__ import hoist_global_options
from wlcgcloud.completion import complete
from wlcgcloud.config import load_config
from wlcgcloud.output import render

from conftest import Run, World


def test_values_that_look_like_options_stay_with_their_option(run: Run) -> None:
    argv = ["profile", "add", "x", "--provider", "openstack", "--auth-url", "https://k/v3"]
    argv += ["--username", "-p", "--project", "a"]
    assert hoist_global_options(argv) == argv
    r = run(*argv)
    assert r.code == 0, r.err
    shown = run("profile", "show", "x", "-o", "json").json()
    assert isinstance(shown, dict)
    assert (shown["username"], shown["project"]) == ("-p", "a")


def test_clustered_global_flags_after_the_command(run: Run) -> None:
    assert hoist_global_options(["profile", "list", "-vv"]) == ["-v", "-v", "profile", "list"]
    assert run("profile", "list", "-yv").code == 0


def test_edit_secret_prompt_without_a_terminal_is_a_usage_error(run: Run, world: World) -> None:
    assert run("profile", "add", "a", "--provider", "ec2", "--region", "r", "--secret-stdin", input="old\n").code == 0
    r = run("profile", "edit", "a", "--secret")
    assert r.code == 2 and "--secret-stdin" in r.err
    assert world.secrets()["wlcgcloud/a"] == "old"


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


def test_malformed_aws_credentials_never_echo_the_line(run: Run, world: World) -> None:
    aws = world.home / ".aws"
    aws.mkdir()
    (aws / "config").write_text("[default]\nregion = eu-west-1\n")
    (aws / "credentials").write_text("[default]\naws_access_key_id = AKIA\naws_secret_access_key wJalrTOPSECRET\n")
    r = run("profile", "import", "--from", "aws", "--debug")
    assert r.code == 3
    assert "credentials:3" in r.err
    assert "TOPSECRET" not in r.err and "TOPSECRET" not in r.out
    (aws / "credentials").write_text("aws_secret_access_key = wJalrTOPSECRET\n")
    r = run("profile", "import", "--from", "aws", "--debug")
    assert r.code == 3 and "TOPSECRET" not in r.err


def test_malformed_clouds_yaml_never_echoes_its_text(run: Run, world: World) -> None:
    (world.root / "clouds.yaml").write_text("clouds:\n  a:\n    auth: !secret SUPERSECRET\n")
    r = run("profile", "import", "--from", "clouds.yaml", "--debug")
    assert r.code == 3 and "not valid YAML" in r.err
    assert "SUPERSECRET" not in r.err


def test_application_credential_in_env_does_not_displace_a_password_profile(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("profile", "add", "pw", "--provider", "openstack", "--auth-url", "https://k/v3",
               "--username", "operator", "--secret-stdin", input="my-password\n").code == 0  # fmt: skip
    monkeypatch.setenv("OS_APPLICATION_CREDENTIAL_ID", "other")
    monkeypatch.setenv("OS_APPLICATION_CREDENTIAL_SECRET", "other-secret")
    secret, _ = secretstore.find_secret(load_config(world.config).profile("pw"))
    assert secret is not None and secret.value == "my-password"
    # a profile that names no identity takes its auth type from the environment
    assert run("profile", "add", "ci", "--provider", "openstack", "--auth-url", "https://k/v3").code == 0
    secret, _ = secretstore.find_secret(load_config(world.config).profile("ci"))
    assert secret is not None and secret.source == "environment OS_APPLICATION_CREDENTIAL_SECRET"


def test_profiles_sharing_a_secret_variable_are_refused(run: Run, world: World) -> None:
    assert run("profile", "add", "a-b", "--provider", "ec2", "--region", "r").code == 0
    r = run("profile", "add", "a.b", "--provider", "ec2", "--region", "r")
    assert r.code == 3 and "WLCGCLOUD_SECRET_A_B" in r.err
    assert "a.b" not in world.config.read_text()


def test_unusable_one_auth_does_not_hide_the_keyring_secret(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run("profile", "add", "lal", "--provider", "opennebula", "--endpoint", "http://h/RPC2",
               "--secret-stdin", input="kr\n").code == 0  # fmt: skip
    auth = world.root / "one_auth"
    auth.write_text("atlas:pw")
    auth.chmod(0o644)
    monkeypatch.setenv("ONE_AUTH", str(auth))
    secret, notes = secretstore.find_secret(load_config(world.config).profile("lal"))
    assert secret is not None and secret.value == "kr"
    assert any("readable by others" in n for n in notes)
    assert stat.S_IMODE(auth.stat().st_mode) == 0o644


def test_table_cells_are_not_rich_markup() -> None:
    buf = io.StringIO()
    render([{"url": "https://[fe80::1]:5000/v3", "e": "atlas[x]"}], fmt="table", stream=buf)
    assert "https://[fe80::1]:5000/v3" in buf.getvalue() and "atlas[x]" in buf.getvalue()


def test_declining_a_confirmation_is_not_a_bug_exit(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    import wlcgcloud.cli.common as common

    assert run("profile", "add", "a", "--provider", "ec2", "--region", "r").code == 0
    monkeypatch.setattr(common, "interactive", lambda: True)  # a person at a terminal answers "n"
    r = run("profile", "remove", "a", input="n\n")
    assert r.code == 2 and "not confirmed" in r.err
    assert "a" in load_config().profiles


def test_completion_details(run: Run, world: World) -> None:
    other = world.root / "other.toml"
    other.write_text('[profiles.elsewhere]\nprovider = "ec2"\nregion = "r"\n')
    assert complete(["wlcgcloud", "--config", str(other), "profile", "show", ""], 5) == ["elsewhere"]
    assert complete(["wlcgcloud", "profile", "list", "--output", "=", "j"], 5) == ["json"]
    assert complete(["wlcgcloud", "completion", "show", ""], 3) == ["bash", "zsh", "fish"]
    assert run("profile", "add", "p1", "--provider", "ec2", "--region", "r").code == 0
    assert complete(["wlcgcloud", "profile", "rm", ""], 3) == ["p1"]
