"""`profile import`: read the files operators already have and turn them into profiles.

- OpenStack `clouds.yaml` (+ `secure.yaml`), searched where openstacksdk searches
  (openstack/config/loader.py): `$OS_CLIENT_CONFIG_FILE`, then the current directory,
  `$XDG_CONFIG_HOME/openstack`, `~/.config/openstack`, `$XDG_CONFIG_DIRS/openstack`
  (default /etc/xdg/openstack) and /etc/openstack; first file found wins, `.yaml`, `.yml`
  or `.json`; `secure.yaml` is found the same way and merged over it.
- AWS `~/.aws/config` and `~/.aws/credentials` (`$AWS_CONFIG_FILE`,
  `$AWS_SHARED_CREDENTIALS_FILE`), `[profile NAME]`/`[default]` and `[NAME]` sections, the
  EC2 endpoint from a `services` section or the profile's `endpoint_url` (botocore's order).
- OpenNebula: the `$ONE_AUTH` file (else ~/.one/one_auth, /var/lib/one/.one/one_auth) holding
  `user:password`, and `$ONE_XMLRPC` (else ~/.one/one_endpoint, else the documented default).

A secret found is never copied: the profile keeps `secret_from`, a reference to the file that holds it,
read again at run time (wlcgcloud.secretstore). `Candidate.secret` only tells that one was there.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from wlcgcloud.errors import ConfigError
from wlcgcloud.toolfiles import load_yaml_or_json, read_ini, read_text, secret_reference

SOURCES = ("clouds.yaml", "aws", "one")
ONE_DEFAULT_ENDPOINT = "http://localhost:2633/RPC2"


@dataclass
class Candidate:
    """A profile found in another tool's files, not yet written."""

    name: str
    settings: dict[str, Any]
    source: str
    secret: str | None = field(default=None, repr=False)
    secret_from: str | None = None  # where the secret is, for the profile's `secret_from` (never the secret)
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- OpenStack


def _openstack_dirs() -> list[Path]:
    home = Path.home()
    xdg_home = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    dirs = [Path.cwd(), xdg_home / "openstack", home / ".config" / "openstack"]
    for d in (os.environ.get("XDG_CONFIG_DIRS") or "/etc/xdg").split(":"):
        if d:
            dirs.append(Path(d) / "openstack")
    dirs.append(Path("/etc/openstack"))
    return list(dict.fromkeys(dirs))


def find_openstack_file(stem: str, env_var: str) -> Path | None:
    """The first `stem`.yaml/.yml/.json openstacksdk would read, or None."""
    override = os.environ.get(env_var)
    candidates = [Path(override).expanduser()] if override else []
    candidates += [d / f"{stem}.{ext}" for d in _openstack_dirs() for ext in ("yaml", "yml", "json")]
    return next((p for p in candidates if p.is_file()), None)


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


AUTH_TYPE_ALIASES = {
    "password": "password",
    "v3password": "password",
    "v3applicationcredential": "v3applicationcredential",
    "v3oidcaccesstoken": "v3oidcaccesstoken",
}


def from_clouds_yaml(path: Path | None = None) -> list[Candidate]:
    """Profiles from clouds.yaml (merged with secure.yaml found the same way)."""
    path = path or find_openstack_file("clouds", "OS_CLIENT_CONFIG_FILE")
    if path is None:
        return []
    data = load_yaml_or_json(path)
    secure_path = find_openstack_file("secure", "OS_CLIENT_SECURE_FILE")
    secure: Mapping[str, Any] = {}
    if secure_path is not None:
        secure = load_yaml_or_json(secure_path)
        data = _merge(data, secure)
    clouds = data.get("clouds")
    if not isinstance(clouds, dict):
        raise ConfigError(f"{path}: no 'clouds' mapping.")
    out = []
    for name, entry in clouds.items():
        cand = _openstack_candidate(name, entry, str(path))
        if cand.secret:  # the secret is read again at run time from whichever file holds it (secure.yaml wins)
            holder = secure_path if secure_path is not None and _has_secret(secure, name, cand.secret) else path
            cand.secret_from = secret_reference("clouds.yaml", holder, str(name))
        out.append(cand)
    return out


def _has_secret(data: Mapping[str, Any], name: str, secret: str) -> bool:
    clouds = data.get("clouds")
    cloud = clouds.get(name) if isinstance(clouds, Mapping) else None
    auth = cloud.get("auth") if isinstance(cloud, Mapping) else None
    return isinstance(auth, Mapping) and secret in auth.values()


def _openstack_candidate(name: str, entry: Any, source: str) -> Candidate:
    cand = Candidate(name=str(name), settings={"provider": "openstack"}, source=source)
    if not isinstance(entry, dict):
        cand.notes.append("not a mapping; skipped")
        return cand
    auth = entry.get("auth") or {}
    kind = AUTH_TYPE_ALIASES.get(str(entry.get("auth_type", "password")))
    if kind is None:
        cand.notes.append(f"auth_type '{entry.get('auth_type')}' is not supported; skipped")
        return cand
    s = cand.settings
    _put(s, "auth_url", auth.get("auth_url"))
    if "auth_url" not in s:
        cand.notes.append("no auth_url (a vendor 'profile:' is not followed); skipped")
        return cand
    if kind != "password":
        s["auth_type"] = kind
    _put(s, "username", auth.get("username"))
    _put(s, "user_domain", auth.get("user_domain_name") or auth.get("domain_name"))
    _put(s, "project", auth.get("project_name"))
    if "project" not in s:
        _put(s, "project_id", auth.get("project_id"))
    _put(s, "project_domain", auth.get("project_domain_name"))
    for id_key in ("user_domain_id", "project_domain_id", "domain_id"):
        if auth.get(id_key) and id_key.replace("_id", "_name") not in auth:
            cand.notes.append(f"{id_key} is not imported (wlcgcloud names domains); set it with profile edit")
    if kind == "password":
        cand.secret = auth.get("password")
    elif kind == "v3applicationcredential":
        _put(s, "application_credential_id", auth.get("application_credential_id"))
        if "application_credential_id" not in s:
            cand.notes.append("application credentials named rather than given by id are not supported; skipped")
            return cand
        cand.secret = auth.get("application_credential_secret")
    else:
        _put(s, "identity_provider", auth.get("identity_provider"))
        _put(s, "protocol", auth.get("protocol"))
        cand.secret = auth.get("access_token")
        cand.notes.append("an OIDC access token is short-lived: prefer OS_ACCESS_TOKEN in the environment")
    region = entry.get("region_name")
    regions = entry.get("regions")
    if not region and isinstance(regions, list) and regions:
        first = regions[0]
        region = first.get("name") if isinstance(first, dict) else first
        if len(regions) > 1:
            cand.notes.append(f"several regions; imported the first ({region})")
    _put(s, "region", region)
    _put(s, "ca_bundle", entry.get("cacert"))
    if entry.get("verify") is False or entry.get("insecure") is True:
        cand.notes.append("TLS verification is off in clouds.yaml; wlcgcloud always verifies (set ca_bundle)")
    return cand


def _put(settings: dict[str, Any], key: str, value: Any) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)  # YAML reads an unquoted numeric id as a number
    if isinstance(value, str) and value.strip():
        settings[key] = value.strip()


# ----------------------------------------------------------------------------- AWS


def _nested(value: str) -> dict[str, str]:
    """botocore's nested values: a value that starts with a newline holds `key = value` lines."""
    out = {}
    for line in value.strip().splitlines():
        key, sep, val = line.partition("=")
        if sep:
            out[key.strip()] = val.strip()
    return out


def from_aws() -> list[Candidate]:
    """EC2 profiles from ~/.aws/config and ~/.aws/credentials."""
    config_path = Path(os.environ.get("AWS_CONFIG_FILE") or "~/.aws/config").expanduser()
    creds_path = Path(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials").expanduser()
    # What exists is read (and refused in one line if it is a directory, a device, too large ...).
    if not config_path.exists() and not creds_path.exists():
        return []
    config = read_ini(config_path) if config_path.exists() else configparser.RawConfigParser()
    creds = read_ini(creds_path) if creds_path.exists() else configparser.RawConfigParser()
    sections: dict[str, dict[str, str]] = {}
    services: dict[str, dict[str, str]] = {}
    for section in config.sections():
        parts = section.split()
        if section == "default":
            sections["default"] = dict(config.items(section))
        elif len(parts) == 2 and parts[0] == "profile":
            sections[parts[1]] = dict(config.items(section))
        elif len(parts) == 2 and parts[0] == "services":
            services[parts[1]] = dict(config.items(section))
    names = list(dict.fromkeys([*sections, *creds.sections()]))
    default_region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    out = []
    for name in names:
        conf = sections.get(name, {})
        cred = dict(creds.items(name)) if creds.has_section(name) else {}
        source = ", ".join(str(p) for p, d in ((config_path, conf), (creds_path, cred)) if d)
        cand = _aws_candidate(name, conf, cred, services, default_region, source)
        if cand.secret:
            in_credentials = bool(cred.get("aws_secret_access_key"))
            section = name if in_credentials or name == "default" else f"profile {name}"
            cand.secret_from = secret_reference("aws", creds_path if in_credentials else config_path, section)
        out.append(cand)
    return out


def _aws_candidate(
    name: str,
    conf: Mapping[str, str],
    cred: Mapping[str, str],
    services: Mapping[str, Mapping[str, str]],
    default_region: str | None,
    source: str,
) -> Candidate:
    cand = Candidate(name=name, settings={"provider": "ec2"}, source=source)
    s = cand.settings
    region = conf.get("region") or default_region
    if not region:
        cand.notes.append("no region in the profile, AWS_REGION or AWS_DEFAULT_REGION; skipped")
        return cand
    s["region"] = region
    endpoint = conf.get("endpoint_url")
    service_section = conf.get("services")
    if service_section:
        ec2 = services.get(service_section, {}).get("ec2")
        if ec2:
            endpoint = _nested(ec2).get("endpoint_url") or endpoint
    _put(s, "endpoint_url", endpoint)
    _put(s, "ca_bundle", conf.get("ca_bundle"))
    key_id = cred.get("aws_access_key_id") or conf.get("aws_access_key_id")
    secret = cred.get("aws_secret_access_key") or conf.get("aws_secret_access_key")
    if cred.get("aws_session_token") or conf.get("aws_session_token"):
        cand.notes.append("session credentials are temporary: give them through AWS_* in the environment; skipped")
        return cand
    if not key_id:
        indirect = [k for k in ("role_arn", "sso_session", "sso_start_url", "credential_process") if k in conf]
        if indirect:
            cand.notes.append(f"uses {indirect[0]}; only static access keys are imported; skipped")
        else:  # a region-only section: as a profile it could sign nothing, and every listing would warn of it
            cand.notes.append("no aws_access_key_id in the credentials or config file; skipped")
        return cand
    _put(s, "access_key_id", key_id)
    cand.secret = secret
    return cand


# ----------------------------------------------------------------------------- OpenNebula


def _first_file(paths: Iterable[Path]) -> Path | None:
    return next((p for p in paths if p.is_file()), None)


def from_one(name: str | None = None) -> list[Candidate]:
    """One OpenNebula profile from ONE_AUTH and ONE_XMLRPC (or the files the ONE CLI falls back to)."""
    env_auth = os.environ.get("ONE_AUTH")
    auth_path = _first_file(
        [
            *([Path(env_auth).expanduser()] if env_auth else []),
            Path.home() / ".one" / "one_auth",
            Path("/var/lib/one/.one/one_auth"),
        ]
    )
    if auth_path is None:
        return []
    endpoint = os.environ.get("ONE_XMLRPC")
    endpoint_source = "ONE_XMLRPC"
    if not endpoint:
        ep_file = _first_file([Path.home() / ".one" / "one_endpoint", Path("/var/lib/one/.one/one_endpoint")])
        if ep_file is not None:
            endpoint, endpoint_source = read_text(ep_file).strip(), str(ep_file)
    if not endpoint:
        endpoint, endpoint_source = ONE_DEFAULT_ENDPOINT, "the default endpoint"
    host = urlparse(endpoint).hostname or "localhost"
    cand = Candidate(
        name=name or "one-" + re.sub(r"[^a-z0-9]+", "-", host.lower()).strip("-"),
        settings={"provider": "opennebula", "endpoint": endpoint},
        source=f"{auth_path}, {endpoint_source}",
    )
    try:
        text = read_text(auth_path).strip()
    except ConfigError as exc:
        cand.notes.append(f"{exc.message.rstrip('.')}; skipped")
        return [cand]
    user, sep, password = text.partition(":")
    if not sep or not user or not password:
        cand.notes.append(f"{auth_path} does not hold 'user:password'; skipped")
        return [cand]
    cand.settings["username"] = user
    cand.secret = password
    cand.secret_from = secret_reference("one_auth", auth_path)
    return [cand]


def gather(sources: Iterable[str], clouds_file: Path | None = None, one_name: str | None = None) -> list[Candidate]:
    """Every candidate from the named sources, in source order."""
    out: list[Candidate] = []
    for source in sources:
        if source == "clouds.yaml":
            out += from_clouds_yaml(clouds_file)
        elif source == "aws":
            out += from_aws()
        elif source == "one":
            out += from_one(one_name)
    return out


def skipped(cand: Candidate) -> bool:
    return any(note.endswith("skipped") for note in cand.notes)
