"""`profile import` from clouds.yaml, ~/.aws and ONE_AUTH, all written at test time."""

from __future__ import annotations

import pytest

from conftest import Run, World

CLOUDS_YAML = """\
clouds:
  cern-atlas:
    auth_type: v3applicationcredential
    auth:
      auth_url: https://keystone.example.org:5000/v3
      application_credential_id: 4f3c9a0e1c
      application_credential_secret: appcred-SECRET-1
    region_name: RegionOne
    cacert: /etc/grid-security/ca-bundle.pem
  ral-cms:
    auth:
      auth_url: https://openstack.example.ac.uk:5000/v3
      username: operator
      project_name: cms
      user_domain_name: Default
      project_domain_name: Default
    regions:
      - name: RegionOne
      - name: RegionTwo
  legacy-token:
    auth_type: token
    auth:
      auth_url: https://k.example.org/v3
      token: t
"""

SECURE_YAML = """\
clouds:
  ral-cms:
    auth:
      password: pw-SECRET-2
"""

AWS_CONFIG = """\
[default]
region = eu-west-1

[profile atlas-lab]
region = eu-central-1
services = local-ec2

[profile sso-only]
sso_session = cern
region = eu-west-1

[services local-ec2]
ec2 =
  endpoint_url = http://127.0.0.1:5999
"""

AWS_CREDENTIALS = """\
[default]
aws_access_key_id = AKIADEFAULTEXAMPLE
aws_secret_access_key = aws-SECRET-3

[atlas-lab]
aws_access_key_id = AKIALABEXAMPLE
aws_secret_access_key = aws-SECRET-4
"""

ALL_SECRETS = ("appcred-SECRET-1", "pw-SECRET-2", "aws-SECRET-3", "aws-SECRET-4", "one-SECRET-5")


@pytest.fixture
def files(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    osdir = world.home / ".config" / "openstack"
    osdir.mkdir(parents=True)
    (osdir / "clouds.yaml").write_text(CLOUDS_YAML)
    (osdir / "secure.yaml").write_text(SECURE_YAML)
    aws = world.home / ".aws"
    aws.mkdir()
    (aws / "config").write_text(AWS_CONFIG)
    (aws / "credentials").write_text(AWS_CREDENTIALS)
    one = world.home / ".one"
    one.mkdir()
    (one / "one_auth").write_text("atlas:one-SECRET-5\n")
    (one / "one_auth").chmod(0o600)
    monkeypatch.setenv("ONE_XMLRPC", "https://one.example.org:2633/RPC2")
    return world


def profiles(run: Run) -> dict[str, dict[str, object]]:
    listed = run("profile", "list", "-o", "json").json()
    assert isinstance(listed, list)
    return {p["name"]: p for p in listed}


def test_import_everything_found(run: Run, files: World) -> None:
    r = run("profile", "import", "-o", "json")
    assert r.code == 0, r.err
    actions = {row["name"]: row["action"] for row in r.json()}  # type: ignore[union-attr]
    assert actions == {
        "cern-atlas": "add",
        "ral-cms": "add",
        "legacy-token": "skipped",
        "default": "add",
        "atlas-lab": "add",
        "sso-only": "skipped",
        "one-one-example-org": "add",
    }
    assert "auth_type 'token' is not supported" in r.err
    assert "uses sso_session" in r.err
    assert "several regions" in r.err

    p = profiles(run)
    osdir, aws, one = files.home / ".config" / "openstack", files.home / ".aws", files.home / ".one"
    assert p["cern-atlas"] == {
        "name": "cern-atlas",
        "provider": "openstack",
        "default": True,  # imported into an empty config: the first profile is the default
        "auth_url": "https://keystone.example.org:5000/v3",
        "auth_type": "v3applicationcredential",
        "application_credential_id": "4f3c9a0e1c",
        "region": "RegionOne",
        "ca_bundle": "/etc/grid-security/ca-bundle.pem",
        "secret_from": f"clouds.yaml:{osdir / 'clouds.yaml'}#cern-atlas",
    }
    assert p["ral-cms"]["username"] == "operator"
    assert p["ral-cms"]["project"] == "cms"
    assert p["ral-cms"]["user_domain"] == "Default"
    assert p["ral-cms"]["region"] == "RegionOne"
    assert "auth_type" not in p["ral-cms"]  # password is the default
    assert p["default"]["region"] == "eu-west-1"
    assert p["default"]["access_key_id"] == "AKIADEFAULTEXAMPLE"
    assert p["atlas-lab"]["endpoint_url"] == "http://127.0.0.1:5999"
    assert p["atlas-lab"]["region"] == "eu-central-1"
    assert p["one-one-example-org"]["endpoint"] == "https://one.example.org:2633/RPC2"
    assert p["one-one-example-org"]["username"] == "atlas"

    # No copy anywhere: each profile names the file (and entry) that holds its secret.
    assert files.secrets() == {}
    assert p["ral-cms"]["secret_from"] == f"clouds.yaml:{osdir / 'secure.yaml'}#ral-cms"  # secure.yaml holds it
    assert p["default"]["secret_from"] == f"aws:{aws / 'credentials'}#default"
    assert p["atlas-lab"]["secret_from"] == f"aws:{aws / 'credentials'}#atlas-lab"
    assert p["one-one-example-org"]["secret_from"] == f"one_auth:{one / 'one_auth'}"
    assert [x["name"] for x in p.values() if x["default"]] == ["cern-atlas"]
    text = files.config.read_text()
    for secret in ALL_SECRETS:
        assert secret not in text
        assert secret not in r.out and secret not in r.err


def test_import_skips_existing_unless_overwrite(run: Run, files: World) -> None:
    assert run("profile", "add", "cern-atlas", "--provider", "openstack", "--auth-url", "https://old/v3").code == 0
    r = run("profile", "import", "--from", "clouds.yaml", "-o", "json")
    assert r.code == 0, r.err
    rows = {row["name"]: row for row in r.json()}  # type: ignore[union-attr]
    assert rows["cern-atlas"]["action"].startswith("skipped (exists")
    assert profiles(run)["cern-atlas"]["auth_url"] == "https://old/v3"
    r = run("profile", "import", "--from", "clouds.yaml", "--overwrite", "-o", "json")
    rows = {row["name"]: row for row in r.json()}  # type: ignore[union-attr]
    assert rows["cern-atlas"]["action"] == "overwrite"
    assert profiles(run)["cern-atlas"]["auth_url"] == "https://keystone.example.org:5000/v3"


def test_import_dry_run_writes_nothing(run: Run, files: World) -> None:
    r = run("profile", "import", "--dry-run", "-o", "json")
    assert r.code == 0, r.err
    assert {row["action"] for row in r.json()} == {"would add", "skipped"}  # type: ignore[union-attr]
    assert not files.config.exists()
    assert files.secrets() == {}


def test_import_from_explicit_paths_and_env(run: Run, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    clouds = world.root / "site-clouds.yml"
    clouds.write_text(CLOUDS_YAML)
    monkeypatch.setenv("OS_CLIENT_CONFIG_FILE", str(clouds))
    cfg = world.root / "awsconf"
    cfg.write_text("[profile ci]\nregion = us-east-1\nendpoint_url = http://127.0.0.1:5998\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(world.root / "none"))
    auth = world.root / "auth"
    auth.write_text("lhcb:pw")
    auth.chmod(0o600)
    monkeypatch.setenv("ONE_AUTH", str(auth))
    r = run("profile", "import", "--name", "lal-one")
    assert r.code == 0, r.err
    p = profiles(run)
    # a section with no access key could sign nothing: skipped, saying why, not a profile that fails every listing
    assert "ci" not in p and "'ci': no aws_access_key_id in the credentials or config file; skipped" in r.err
    assert p["lal-one"]["endpoint"] == "http://localhost:2633/RPC2"  # the documented default
    assert p["lal-one"]["username"] == "lhcb"
    assert "cern-atlas" in p


@pytest.mark.usefixtures("no_keyring")
def test_import_on_headless_machine_reads_secrets_where_they_are_and_says_when_it_cannot(
    run: Run, files: World
) -> None:
    credentials = files.home / ".aws" / "credentials"
    credentials.chmod(0o644)  # as many are: then the reference cannot be used until it is owner-only
    r = run("profile", "import", "--from", "aws")
    assert r.code == 0, r.err
    assert "'atlas-lab': its secret cannot be used yet" in r.err and f"chmod 600 {credentials}" in r.err
    assert "aws-SECRET-4" not in files.config.read_text() and "aws-SECRET-4" not in r.err + r.out
    assert set(profiles(run)) == {"default", "atlas-lab"}
    credentials.chmod(0o600)
    shown = run("profile", "show", "atlas-lab", "-o", "json").json()
    assert isinstance(shown, dict)
    assert shown["secret"] == {"found": True, "source": f"AWS credentials file {credentials} [atlas-lab]"}


def test_import_nothing_found(run: Run) -> None:
    r = run("profile", "import", "--from", "aws")
    assert r.code == 3
    assert "nothing to import" in r.err


def test_import_broken_clouds_yaml_reports_position(run: Run, world: World) -> None:
    bad = world.root / "clouds.yaml"
    bad.write_text("clouds:\n  a:\n    auth: [unclosed\n")
    r = run("profile", "import", "--from", "clouds.yaml")
    assert r.code == 3
    assert f"{bad}:" in r.err and "not valid YAML" in r.err


def test_import_unknown_source_is_usage_error(run: Run) -> None:
    r = run("profile", "import", "--from", "gcp")
    assert r.code == 2


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
