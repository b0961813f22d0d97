"""Secret resolution order, secret files, and a machine with no keyring."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from wlcgcloud import secretstore
from wlcgcloud.config import load_config, secret_variable
from wlcgcloud.errors import ConfigError

from conftest import Run, World


def source(world: World, name: str) -> str:
    secret, _ = secretstore.find_secret(load_config(world.config).profile(name))
    return "none" if secret is None else f"{secret.source}={secret.value}"


def test_resolution_order_env_profile_then_ecosystem_then_keyring_then_file(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = world.root / "aws-secret"
    secret_file.write_text("from-file\n")
    secret_file.chmod(0o600)
    r = run(
        "profile", "add", "aws-atlas", "--provider", "ec2", "--region", "eu-west-1", "--secret-file", str(secret_file)
    )
    assert r.code == 0, r.err
    assert source(world, "aws-atlas") == f"secret_file {secret_file}=from-file"
    r = run("profile", "edit", "aws-atlas", "--secret-stdin", input="from-keyring\n")
    assert r.code == 0, r.err
    assert source(world, "aws-atlas") == "system keyring=from-keyring"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "from-aws-env")
    assert source(world, "aws-atlas") == "environment AWS_SECRET_ACCESS_KEY=from-aws-env"
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS_ATLAS", "from-profile-env")
    assert source(world, "aws-atlas") == "environment WLCGCLOUD_SECRET_AWS_ATLAS=from-profile-env"


def test_ecosystem_secret_of_another_identity_is_not_used(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    run("profile", "add", "aws-atlas", "--provider", "ec2", "--region", "r", "--access-key-id", "AKIAMINE")
    run("profile", "add", "os", "--provider", "openstack", "--auth-url", "https://k/v3", "--username", "operator")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAOTHER")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "other-secret")
    monkeypatch.setenv("OS_USERNAME", "someone-else")
    monkeypatch.setenv("OS_PASSWORD", "pw")
    assert source(world, "aws-atlas") == "none"
    assert source(world, "os") == "none"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAMINE")
    monkeypatch.setenv("OS_USERNAME", "operator")
    assert source(world, "aws-atlas") == "environment AWS_SECRET_ACCESS_KEY=other-secret"
    assert source(world, "os") == "environment OS_PASSWORD=pw"


def test_openstack_secret_variable_follows_auth_type(run: Run, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    run(
        "profile",
        "add",
        "ac",
        "--provider",
        "openstack",
        "--auth-url",
        "https://k/v3",
        "--application-credential-id",
        "id1",
    )
    run(
        "profile",
        "add",
        "oidc",
        "--provider",
        "openstack",
        "--auth-url",
        "https://k/v3",
        "--auth-type",
        "v3oidcaccesstoken",
        "--identity-provider",
        "egi",
        "--protocol",
        "openid",
    )
    monkeypatch.setenv("OS_PASSWORD", "pw")
    monkeypatch.setenv("OS_APPLICATION_CREDENTIAL_SECRET", "acs")
    monkeypatch.setenv("OS_ACCESS_TOKEN", "tok")
    assert source(world, "ac") == "environment OS_APPLICATION_CREDENTIAL_SECRET=acs"
    assert source(world, "oidc") == "environment OS_ACCESS_TOKEN=tok"


def test_one_auth_file_gives_user_and_password(run: Run, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    run("profile", "add", "lal", "--provider", "opennebula", "--endpoint", "http://127.0.0.1:2633/RPC2")
    auth = world.root / "one_auth"
    auth.write_text("atlas:onepass\n")
    auth.chmod(0o600)
    monkeypatch.setenv("ONE_AUTH", str(auth))
    secret, _ = secretstore.find_secret(load_config(world.config).profile("lal"))
    assert secret is not None
    assert (secret.username, secret.value) == ("atlas", "onepass")
    assert "onepass" not in repr(secret) and "onepass" not in str(secret)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_secret_file_readable_by_others_is_refused(run: Run, world: World, mode: int) -> None:
    secret_file = world.root / "secret"
    secret_file.write_text("x")
    secret_file.chmod(mode)
    add = ("profile", "add", "a", "--provider", "ec2", "--region", "r", "--secret-file", str(secret_file))
    refused = run(*add)  # named now: checked now, and nothing is saved
    assert refused.code == 3 and "readable by others" in refused.err and not world.config.exists()
    secret_file.chmod(0o600)
    assert run(*add).code == 0
    secret_file.chmod(mode)  # and a file that becomes readable by others later is refused when it is read
    with pytest.raises(ConfigError, match="readable by others") as info:
        secretstore.require_secret(load_config(world.config).profile("a"))
    assert f"chmod 600 {secret_file}" in str(info.value)
    shown = run("profile", "show", "a", "-o", "json").json()
    assert isinstance(shown, dict)
    assert shown["secret"]["found"] is False and "readable by others" in shown["secret"]["problem"]


def test_missing_secret_names_every_way(run: Run, world: World) -> None:
    run("profile", "add", "cern-atlas", "--provider", "openstack", "--auth-url", "https://k/v3")
    with pytest.raises(ConfigError) as info:
        secretstore.require_secret(load_config(world.config).profile("cern-atlas"))
    text = str(info.value)
    assert info.value.exit_code == 3
    for way in ("WLCGCLOUD_SECRET_CERN_ATLAS", "OS_PASSWORD", "--secret-stdin", "secret_file"):
        assert way in text


@pytest.mark.usefixtures("no_keyring")
def test_headless_keyring_add_with_secret_keeps_the_profile_and_says_how_in_one_line(run: Run, world: World) -> None:
    r = run("profile", "add", "aws-atlas", "--provider", "ec2", "--region", "r", "--secret-stdin", input="abc\n")
    assert r.code == 3
    assert len(r.err.strip().splitlines()) == 1
    assert "no system keyring" in r.err and "profile 'aws-atlas' is saved" in r.err
    assert "WLCGCLOUD_SECRET_AWS_ATLAS" in r.err and "--secret-file FILE" in r.err
    assert "abc" not in r.err and "abc" not in world.config.read_text()
    assert "[profiles.aws-atlas]" in world.config.read_text()


@pytest.mark.usefixtures("no_keyring")
def test_headless_keyring_still_resolves_env_and_file(run: Run, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = world.root / "s"
    secret_file.write_text("filesecret")
    secret_file.chmod(0o600)
    assert run("profile", "add", "a", "--provider", "ec2", "--region", "r").code == 0
    with pytest.raises(ConfigError, match=r"no system keyring"):
        secretstore.require_secret(load_config(world.config).profile("a"))
    assert run("profile", "edit", "a", "--secret-file", str(secret_file)).code == 0
    assert source(world, "a") == f"secret_file {secret_file}=filesecret"
    monkeypatch.setenv("WLCGCLOUD_SECRET_A", "envsecret")
    assert source(world, "a") == "environment WLCGCLOUD_SECRET_A=envsecret"


def test_secret_variable_mapping() -> None:
    assert secret_variable("cern-atlas") == "WLCGCLOUD_SECRET_CERN_ATLAS"
    assert secret_variable("lal.one_2") == "WLCGCLOUD_SECRET_LAL_ONE_2"


def test_secret_file_path_expands_home(run: Run, world: World) -> None:
    (world.home / ".one").mkdir()
    f = Path(world.home / ".one" / "one_auth")
    f.write_text("atlas:pw")
    f.chmod(0o600)
    run(
        "profile",
        "add",
        "lal",
        "--provider",
        "opennebula",
        "--endpoint",
        "http://h/RPC2",
        "--secret-file",
        "~/.one/one_auth",
    )
    assert source(world, "lal").endswith("=pw")


def test_edit_secret_prompt_without_a_terminal_is_a_usage_error(run: Run, world: World) -> None:
    assert run("profile", "add", "a", "--provider", "ec2", "--region", "r", "--secret-stdin", input="old\n").code == 0
    r = run("profile", "edit", "a", "--secret")
    assert r.code == 2 and "--secret-stdin" in r.err
    assert world.secrets()["wlcgcloud/a"] == "old"


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
