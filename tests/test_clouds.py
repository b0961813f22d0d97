"""The per-cloud table (wlcgcloud/clouds.py) is the one place the domain learns a cloud's ways."""

from __future__ import annotations

import ast
from pathlib import Path

from wlcgcloud import config
from wlcgcloud.clouds import CLOUDS, CONSOLE_LOG, SPOT, cloud_of

PACKAGE = Path(config.__file__).parent
# Only the table itself names clouds: everything else asks it.
STILL_NAMING = {"clouds.py"}


def test_every_provider_has_one_entry_and_every_entry_a_provider() -> None:
    assert set(CLOUDS) == set(config.PROVIDERS)
    for name, cloud in CLOUDS.items():
        assert cloud.name == name
        assert cloud.url_key in {k.name for k in config.keys_for(name)}, name
        assert cloud.network_key in {k.name for k in config.keys_for(name)}, name
        assert all(k in {k.name for k in config.keys_for(name)} for k in cloud.flavor_keys), name
        assert all(reason.strip() for reason in cloud.cannot.values()), name


def test_each_login_of_each_cloud_names_its_secret_and_variable() -> None:
    for cloud in CLOUDS.values():
        assert cloud.secrets, cloud.name
        for source in cloud.secrets.values():
            assert source.label and source.variable
            assert source.identity_key is None or source.identity_key in {k.name for k in config.keys_for(cloud.name)}
    assert set(CLOUDS["openstack"].secrets) == set(config.AUTH_TYPES)


def test_what_a_cloud_cannot_do_is_data_with_a_reason() -> None:
    assert CLOUDS["ec2"].can(SPOT) and not CLOUDS["openstack"].can(SPOT) and not CLOUDS["opennebula"].can(SPOT)
    assert "EC2 only" in CLOUDS["opennebula"].cannot[SPOT]
    assert not CLOUDS["opennebula"].can(CONSOLE_LOG) and CLOUDS["openstack"].can(CONSOLE_LOG)


def test_endpoints_and_defaults_come_from_the_table() -> None:
    profile = config.validate_profile("a", {"provider": "ec2", "region": "eu-west-1"}, Path("x.toml"))
    assert cloud_of(profile).endpoint(profile.settings) == "https://ec2.eu-west-1.amazonaws.com"
    assert cloud_of(profile).where(profile.settings) == "eu-west-1"
    one = config.validate_profile(
        "b", {"provider": "opennebula", "endpoint": "https://one.example.org:2633/RPC2", "vm_template": "wn"},
        Path("x.toml"),
    )  # fmt: skip
    assert cloud_of(one).default_flavor(one.settings) == "wn" and cloud_of(one).network_key == "network"


def test_no_module_above_the_providers_compares_with_a_cloud_name() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] == "providers" or relative.name in STILL_NAMING:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                names = [o.value for o in operands if isinstance(o, ast.Constant) and o.value in CLOUDS]
                if names:
                    offenders.append(f"{relative}:{node.lineno} compares with {names[0]!r}")
            if isinstance(node, ast.Dict) and any(isinstance(k, ast.Constant) and k.value in CLOUDS for k in node.keys):
                offenders.append(f"{relative}:{node.lineno} keys a table by cloud name")
    assert not offenders, "ask wlcgcloud.clouds instead:\n" + "\n".join(offenders)
