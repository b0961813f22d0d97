"""Profiles: the schema, loading and validating config.toml, and saving it atomically.

Reading uses the standard library's `tomllib` (fast, exact line/column on errors). Writing goes
through `tomlkit`, so that a file an operator wrote by hand keeps its comments and layout when
`profile add` or `profile edit` changes one table. A file that does not parse is never written.
Secrets are not here: see `wlcgcloud.secretstore`.
"""

from __future__ import annotations

import contextlib
import difflib
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wlcgcloud import atomic, bounded
from wlcgcloud.clouds import CLOUDS
from wlcgcloud.errors import ConfigError
from wlcgcloud.paths import default_config_path

PROVIDERS = ("ec2", "openstack", "opennebula")
ALL = frozenset(PROVIDERS)
AUTH_TYPES = ("password", "v3applicationcredential", "v3oidcaccesstoken")
PROFILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
DEFAULT_TIMEOUT = 30
# Keys at the top of config.toml, before the [profiles.NAME] tables.
TOP_LEVEL = ("default_profile", "ledger", "ledger_password_file", "profiles")


@dataclass(frozen=True)
class Key:
    """One setting a profile may carry: its TOML type, which clouds accept it, and what it means."""

    name: str
    kind: str  # "str" | "int" | "bool" | "list" | "benchmarks"
    providers: frozenset[str]
    help: str
    required_for: frozenset[str] = frozenset()
    choices: tuple[str, ...] = ()
    url: bool = False  # a str that must be an http(s) URL
    maximum: int = bounded.SETTING_INT_MAX  # the largest value of an int

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def _k(name: str, kind: str, providers: frozenset[str] | str, help: str, **kw: Any) -> Key:
    provs = frozenset({providers}) if isinstance(providers, str) else providers
    return Key(name, kind, provs, help, **kw)


OS, EC2, ONE = "openstack", "ec2", "opennebula"

# The profile schema of the contract (design/cli-contract.md, "Profiles"), in the order shown
# by `profile show`. Keys marked "(extension)" in README.md are our additions to the contract.
KEYS: tuple[Key, ...] = (
    _k("provider", "str", ALL, "cloud kind", choices=PROVIDERS, required_for=ALL),
    _k("auth_url", "str", OS, "Keystone v3 URL", required_for=frozenset({OS}), url=True),
    _k("region", "str", frozenset({OS, EC2}), "cloud region", required_for=frozenset({EC2})),
    _k("endpoint", "str", ONE, "OpenNebula XML-RPC URL", required_for=frozenset({ONE}), url=True),
    _k("endpoint_url", "str", EC2, "EC2-compatible endpoint URL", url=True),
    _k("auth_type", "str", OS, "Keystone auth method", choices=AUTH_TYPES),
    _k("application_credential_id", "str", OS, "application credential id (secret is in the store)"),
    _k("username", "str", frozenset({OS, ONE}), "user name"),
    _k("user_domain", "str", OS, "user's Keystone domain (password auth)"),
    _k("project", "str", OS, "project name"),
    _k("project_id", "str", OS, "project id, instead of project (extension)"),
    _k("project_domain", "str", OS, "project's Keystone domain (password auth)"),
    _k("identity_provider", "str", OS, "federated identity provider (OIDC, extension)"),
    _k("protocol", "str", OS, "federation protocol (OIDC, extension)"),
    _k("access_key_id", "str", EC2, "access key id (secret key is in the store)"),
    _k("subnet", "str", EC2, "VPC subnet id"),
    _k("availability_zone", "str", EC2, "availability zone"),
    _k("public_ip", "bool", EC2, "associate a public IP address"),
    _k("image_owners", "list", EC2, "accounts whose AMIs may carry endorsement tags"),
    _k("vm_template", "str", ONE, "VM template to instantiate"),
    _k(
        "user_data_limit", "int", ONE, "largest user-data in bytes (default 65536)", maximum=bounded.USER_DATA_LIMIT_MAX
    ),
    _k("image_datastore", "int", ONE, "image datastore id for 'image register' (default 1)"),
    _k("network", "str", frozenset({OS, ONE}), "network to attach"),
    _k("security_groups", "list", frozenset({OS, EC2}), "security groups"),
    _k("image", "str", ALL, "default endorsed image for launch (extension)"),
    _k("flavor", "str", ALL, "default flavor / instance type"),
    _k("key_name", "str", frozenset({OS, EC2}), "SSH key pair name"),
    _k("experiment", "str", ALL, "experiment (atlas, cms, alice, lhcb, ...)"),
    _k("site_name", "str", ALL, "APEL SiteName (GOCDB)"),
    _k("compute_service", "str", ALL, "APEL CloudComputeService"),
    _k("publish_apel", "bool", ALL, "write APEL records for this profile"),
    _k("ca_bundle", "str", ALL, "CA bundle file or directory for TLS"),
    _k("timeout", "int", ALL, "seconds per API call (default 30)", maximum=bounded.TIMEOUT_MAX),
    _k("secret_file", "str", ALL, "file holding the secret, readable only by its owner"),
    _k("secret_from", "str", ALL, "file the secret was imported from, read at run time: KIND:FILE[#ENTRY]"),
    _k("benchmarks", "benchmarks", ALL, 'APEL benchmark per flavor: type = "...", "<flavor>" = value'),
)
KEYS_BY_NAME: dict[str, Key] = {k.name: k for k in KEYS}


def secret_variable(profile_name: str) -> str:
    """The variable that gives one profile its secret: `cern-atlas` -> `WLCGCLOUD_SECRET_CERN_ATLAS`."""
    return "WLCGCLOUD_SECRET_" + re.sub(r"[^A-Z0-9]", "_", profile_name.upper())


def keys_for(provider: str) -> list[Key]:
    """The settings a profile of `provider` may carry."""
    return [k for k in KEYS if provider in k.providers]


@dataclass(frozen=True)
class Profile:
    """A validated profile: its name, cloud kind and non-secret settings."""

    name: str
    provider: str
    settings: Mapping[str, Any]
    is_default: bool = False

    def get(self, key: str, default: Any = None) -> Any:
        return self.settings.get(key, default)

    @property
    def timeout(self) -> int:
        return int(self.settings.get("timeout", DEFAULT_TIMEOUT))

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of `profile list`: name, provider, default, then the settings."""
        out: dict[str, Any] = {"name": self.name, "provider": self.provider, "default": self.is_default}
        out.update({k: v for k, v in self.settings.items() if k != "provider"})
        return out


@dataclass
class Config:
    """The parsed config file. A missing file is an empty config."""

    path: Path
    profiles: dict[str, Profile] = field(default_factory=dict)
    default_profile: str | None = None
    exists: bool = False
    ledger: str | None = None  # a postgresql:// URL or a SQLite file; None: ledger.sqlite in the state directory
    ledger_password_file: str | None = None  # an owner-only file with the PostgreSQL ledger's password

    def profile(self, name: str) -> Profile:
        """The profile `name`, or a configuration error naming the known ones."""
        try:
            return self.profiles[name]
        except KeyError:
            raise ConfigError(f"unknown profile '{name}' in {self.path}.", self.known_hint()) from None

    def known_hint(self) -> str:
        if not self.profiles:
            return "No profiles are configured: add one with 'wlcgcloud profile add' or 'wlcgcloud profile import'."
        return "Known profiles: " + ", ".join(sorted(self.profiles)) + "."

    def select(self, requested: list[str], *, all_when_empty: bool) -> list[Profile]:
        """Profiles a command acts on: the requested ones, else every one (read commands) or the default."""
        if requested:
            return [self.profile(n) for n in dict.fromkeys(requested)]
        if all_when_empty:
            if not self.profiles:
                raise ConfigError(f"no profiles in {self.path}.", self.known_hint())
            return list(self.profiles.values())
        if self.default_profile:
            return [self.profile(self.default_profile)]
        from wlcgcloud.errors import UsageError

        raise UsageError("no profile given and no default_profile set.", "Pass -p PROFILE.")


# Where grid hosts keep their trust anchors (hashed CA certificates and CRLs, kept by fetch-crl).
GRID_CA_DIR = "/etc/grid-security/certificates"


# ----------------------------------------------------------------------------- validation


def _where(path: Path, profile: str | None, key: str | None) -> str:
    where = str(path)
    if profile is not None:
        where += f": profile '{profile}'"
    if key is not None:
        where += f": key '{key}'"
    return where


def closest(word: str, options: list[str]) -> str | None:
    """The option `word` was probably meant to be, for "did you mean" hints."""
    close = difflib.get_close_matches(word, options, n=1)
    return close[0] if close else None


def _did_you_mean(word: str, options: list[str]) -> str:
    match = closest(word, options)
    return f" (did you mean '{match}'?)" if match else ""


def check_value(key: Key, value: Any, where: str) -> Any:
    """Check one value against its key's type and bounds; return it normalised (lists of str, etc.)."""
    kind = key.kind
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{where}: expected a non-empty string, got {_show(value)}.")
        _check_text(value, where)
        if key.choices and value not in key.choices:
            raise ConfigError(f"{where}: must be one of {', '.join(key.choices)}, got {_show(value)}.")
        if key.url:
            _check_url(value, where)
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= key.maximum:
            raise ConfigError(f"{where}: expected a positive integer up to {key.maximum}, got {_show(value)}.")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {_show(value)}.")
        return value
    if kind == "list":
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {_show(value)}.")
        for item in value:
            _check_text(item, where)
        return list(value)
    if kind == "benchmarks":
        if not isinstance(value, dict):
            raise ConfigError(f'{where}: expected a table (type = "HEPscore23", "<flavor>" = number).')
        out: dict[str, Any] = {}
        for flavor, score in value.items():
            _check_text(flavor, where)
            if flavor == "type":
                if not isinstance(score, str) or not score:
                    raise ConfigError(f'{where}.type: expected the benchmark name, e.g. "HEPscore23".')
                _check_text(score, f"{where}.type")
            elif (
                isinstance(score, bool)
                or not isinstance(score, int | float)
                or not 0 < score <= bounded.BENCHMARK_MAX  # also refuses nan and inf
            ):
                top = bounded.BENCHMARK_MAX
                raise ConfigError(f'{where}."{flavor}": expected a positive number up to {top:g}, got {_show(score)}.')
            out[str(flavor)] = score
        if len(out) > 0 and "type" not in out:
            raise ConfigError(f'{where}: needs type = "<benchmark name>" beside the per-flavor values.')
        return out
    raise AssertionError(kind)


def _check_text(text: str, where: str) -> None:
    """A setting's text is one printable line of sane length: no newline, NUL or terminal escape."""
    if len(text) > bounded.SETTING_LENGTH:
        raise ConfigError(f"{where}: longer than {bounded.SETTING_LENGTH} characters.")
    if not text.isprintable():
        raise ConfigError(f"{where}: holds a control or unprintable character: {_show(text)}.")


_PASSWORD_IN_URL = re.compile(r"^[a-z]+://[^/@?#]*:[^/@?#]*@|(^|[?&\s])password\s*=", re.IGNORECASE)


def ledger_url_problem(url: str) -> str | None:
    """Why `url` (a ledger's location) may not be used, or None: a postgresql:// URL with no password in it,
    or the absolute path of a SQLite file (~ allowed); nothing that would quietly become a new, empty ledger."""
    if _PASSWORD_IN_URL.search(url):
        return ("the ledger URL holds a password, and a password never sits in the config; give it as "
                "WLCGCLOUD_LEDGER_PASSWORD, in an owner-only ledger_password_file, or in ~/.pgpass")  # fmt: skip
    if len(url) > bounded.QUERY_LENGTH or not url.isprintable():
        return f"the ledger's location holds a control character or is over {bounded.QUERY_LENGTH} characters"
    if url.startswith(("postgresql://", "postgres://")) or not url:
        return None
    if "://" in url or "=" in url:
        return (f"'{url[:80]}' is neither a postgresql:// URL (lower case, as libpq reads it: "
                "postgresql://USER@HOST:PORT/DB?sslmode=verify-full) nor the path of a SQLite file")  # fmt: skip
    if not url.startswith(("/", "~")):
        return f"'{url[:80]}' is a relative path; give a SQLite ledger's absolute path, or a postgresql:// URL"
    return None


def _check_url(text: str, where: str) -> None:
    """An http:// or https:// URL with a host (and, if any, a port that is a number)."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(text)
        url.port  # noqa: B018 -- raises ValueError for a port that is not a number from 0 to 65535
    except ValueError as exc:
        raise ConfigError(f"{where}: not a URL ({exc}): {_show(text)}.") from None
    if url.scheme not in ("http", "https") or not url.hostname or any(c.isspace() for c in text):
        raise ConfigError(f"{where}: expected an http:// or https:// URL, got {_show(text)}.")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def validate_profile(name: str, table: Any, path: Path) -> Profile:
    """Validate one `[profiles.NAME]` table: provider, its required key, known keys, types."""
    where = _where(path, name, None)
    if not PROFILE_NAME.match(name):
        raise ConfigError(
            f"{where}: invalid profile name; use letters, digits, '-', '_' or '.', starting with a letter or digit."
        )
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: expected a table.")
    provider = table.get("provider")
    if provider is None:
        raise ConfigError(f"{where}: missing key 'provider' (one of {', '.join(PROVIDERS)}).")
    provider = check_value(KEYS_BY_NAME["provider"], provider, _where(path, name, "provider"))
    allowed = {k.name: k for k in keys_for(provider)}
    settings: dict[str, Any] = {}
    for key, value in table.items():
        spec = allowed.get(key)
        if spec is None:
            if key in KEYS_BY_NAME:
                raise ConfigError(f"{_where(path, name, key)}: not a setting of provider '{provider}'.")
            if key in TOP_LEVEL:  # appended to the file, it landed in the last table
                raise ConfigError(
                    f"{_where(path, name, key)}: '{key}' is a top-level key, not a profile's.",
                    "Move it above the first [profiles...] table ('wlcgcloud ledger move' writes 'ledger' there).",
                )
            raise ConfigError(f"{_where(path, name, key)}: unknown key{_did_you_mean(key, list(allowed))}.")
        settings[key] = check_value(spec, value, _where(path, name, key))
    for spec in allowed.values():
        if provider in spec.required_for and spec.name not in settings:
            raise ConfigError(f"{where}: missing key '{spec.name}', required for provider '{provider}'.")
    cloud = CLOUDS[provider]
    if cloud.region_pattern and "region" in settings and not re.fullmatch(cloud.region_pattern, settings["region"]):
        raise ConfigError(
            f"{_where(path, name, 'region')}: not an {cloud.title} region name (like eu-west-1): "
            f"{_show(settings['region'])}."
        )
    return Profile(name=name, provider=provider, settings=settings)


def validate_document(data: Mapping[str, Any], path: Path) -> Config:
    """Validate a parsed config document into a Config."""
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{_where(path, None, key)}: unknown top-level key{_did_you_mean(key, list(TOP_LEVEL))}.")
    for key in ("ledger", "ledger_password_file"):
        value = data.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"{_where(path, None, key)}: expected a non-empty string, got {_show(value)}.")
        if isinstance(value, str):
            _check_text(value, _where(path, None, key))
    problem = ledger_url_problem(data.get("ledger") or "")
    if problem:
        raise ConfigError(f"{_where(path, None, 'ledger')}: {problem}.", "The file was left as it is.")
    tables = data.get("profiles", {})
    if not isinstance(tables, dict):
        raise ConfigError(f"{_where(path, None, 'profiles')}: expected tables [profiles.NAME].")
    profiles = {name: validate_profile(name, table, path) for name, table in tables.items()}
    by_variable: dict[str, str] = {}
    for name in profiles:
        variable = secret_variable(name)
        if variable in by_variable:
            raise ConfigError(
                f"{path}: profiles '{by_variable[variable]}' and '{name}' would share the secret variable "
                f"{variable}; rename one of them."
            )
        by_variable[variable] = name
    default = data.get("default_profile")
    if default is not None:
        if not isinstance(default, str) or default not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ConfigError(
                f"{_where(path, None, 'default_profile')}: names no profile ({_show(default)}); known: {known}."
            )
        profiles[default] = Profile(default, profiles[default].provider, profiles[default].settings, True)
    return Config(path=path, profiles=profiles, default_profile=default, exists=True, ledger=data.get("ledger"),
                  ledger_password_file=data.get("ledger_password_file"))  # fmt: skip


# ----------------------------------------------------------------------------- reading


def _parse_error(path: Path, source: str, exc: tomllib.TOMLDecodeError) -> ConfigError:
    # Python 3.11-3.13 put the position only in the message: "Invalid value (at line 3, column 9)".
    text = str(exc)
    m = re.search(r"\(at line (\d+), column (\d+)\)", text)
    if m:
        line, col = int(m.group(1)), int(m.group(2))
    elif "(at end of document)" in text:
        lines = source.split("\n")
        line, col = len(lines), len(lines[-1]) + 1
    else:
        line, col = getattr(exc, "lineno", 0), getattr(exc, "colno", 0)
    reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", text)
    at = f"{path}:{line}:{col}" if line else str(path)
    return ConfigError(f"{at}: TOML syntax error: {reason}.", "The file was left as it is; fix it and run again.")


def read_text(path: Path) -> str | None:
    """The config file's text, or None when it does not exist; never more than the bound is read."""
    try:
        return bounded.read_bytes(path, bounded.CONFIG_SIZE).decode("utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}.") from None
    except bounded.TooLarge:
        raise _too_large(path) from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read the config file: it is not UTF-8 text.") from None


def _too_large(path: Path) -> ConfigError:
    return ConfigError(
        f"{path}: larger than {bounded.size_text(bounded.CONFIG_SIZE)}; no config file is that big.",
        "Check that --config or WLCGCLOUD_CONFIG names the right file.",
    )


def parse_config(text: str, path: Path) -> Config:
    """Parse and validate config text; errors name `path`, with line and column for syntax."""
    if len(text) > bounded.CONFIG_SIZE:
        raise _too_large(path)
    return validate_document(load_toml(text, path, "no profile needs that"), path)


def load_toml(text: str, path: Path, nobody: str) -> dict[str, Any]:
    """Bounded TOML: nesting refused before the parser sees it (tomllib recurses once per nested
    array or inline table, and dotted keys cost it memory by the square of their length), and every
    parser error one ConfigError naming `path` (syntax with line and column). `nobody` says who
    would never nest that deep ("no profile needs that")."""
    if bounded.too_deep(text, dotted_keys=True):
        raise ConfigError(
            f"{path}: nested more than {bounded.MAX_DEPTH} levels deep (arrays, tables or dotted keys); {nobody}.",
            "The file was left as it is; fix it and run again.",
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _parse_error(path, text, exc) from None
    except ValueError as exc:  # an integer of more than 4300 digits
        raise ConfigError(f"{path}: a value does not read as TOML: {str(exc)[:80]}.") from None
    except RecursionError:  # the last line: too_deep() is the bound
        raise ConfigError(f"{path}: nested too deeply to read.") from None


def load_config(path: Path | None = None) -> Config:
    """Load and validate the config file; a missing file is an empty config."""
    path = path or default_config_path()
    text = read_text(path)
    if text is None:
        return Config(path=path)
    return parse_config(text, path)


# ----------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write cycles of two wlcgcloud processes on the same config."""
    try:
        with atomic.locked(path):
            yield
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the config file: {exc.strerror}.") from None


def atomic_write(path: Path, text: str, mode: int = 0o600, what: str = "the config file") -> None:
    """Write `text` to `path` whole or not at all (wlcgcloud.atomic); a failure is a ConfigError naming `what`."""
    try:
        atomic.write(path, text, mode)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write {what}: {exc.strerror}.") from None


def update_config(path: Path, change: Callable[[Any], None]) -> Config:
    """Apply `change` to the config document and save it atomically; return the new Config.

    `change` receives a tomlkit document (a dict-like that keeps comments) and edits it in place.
    The current file must parse and the result must validate, or nothing is written.
    """
    import tomlkit

    with _locked(path):
        text = read_text(path)
        if text is not None:
            parse_config(text, path)  # a broken file is reported, never overwritten
        doc = tomlkit.parse(text or "")
        change(doc)
        new_text = tomlkit.dumps(doc)
        config = parse_config(new_text, path)
        atomic_write(path, new_text)
        return config


def replace_config(path: Path, new_text: str) -> Config:
    """Save a whole new config text (from $EDITOR) if it validates; else raise and write nothing."""
    config = parse_config(new_text, path)
    with _locked(path):
        atomic_write(path, new_text)
    return config


def set_profile(doc: Any, name: str, settings: Mapping[str, Any]) -> None:
    """Make `[profiles.NAME]` in a tomlkit document hold exactly `settings`.

    An existing table is edited key by key, so comments on the keys that stay are kept. A profile
    written as an inline table or with dotted keys cannot be edited that way: the document is
    then rebuilt with ordinary `[profiles.NAME]` tables (its comments are lost, its values kept).
    """
    import tomlkit

    def edit() -> None:
        if "profiles" not in doc:
            doc["profiles"] = tomlkit.table(is_super_table=True)
        if name not in doc["profiles"]:
            doc["profiles"][name] = tomlkit.table()
        _sync_table(doc["profiles"][name], settings)

    expected = tomllib.loads(tomlkit.dumps(doc))
    expected.setdefault("profiles", {})[name] = dict(settings)
    _edit_or_rebuild(doc, expected, edit)


def _edit_or_rebuild(doc: Any, expected: Mapping[str, Any], edit: Callable[[], None]) -> None:
    """Run `edit` on the document; if it fails or the result does not read back as `expected`, rebuild."""
    import tomlkit

    try:
        edit()
        ok = tomllib.loads(tomlkit.dumps(doc)) == expected
    except (ValueError, TypeError, KeyError, tomllib.TOMLDecodeError):
        ok = False
    if not ok:
        _rebuild(doc, expected)


def _rebuild(doc: Any, data: Mapping[str, Any]) -> None:
    import tomlkit

    doc.clear()
    if "default_profile" in data:
        doc["default_profile"] = data["default_profile"]
    profiles = tomlkit.table(is_super_table=True)
    for pname, table in data.get("profiles", {}).items():
        profiles[pname] = tomlkit.table()
        _sync_table(profiles[pname], table)
    doc["profiles"] = profiles
    for key, value in data.items():
        if key not in ("default_profile", "profiles"):
            doc[key] = value  # validation will name it


def _sync_table(table: Any, values: Mapping[str, Any]) -> None:
    import tomlkit

    for key in [k for k in table if k not in values]:
        del table[key]
    for key, value in values.items():
        if isinstance(value, Mapping):
            if not isinstance(table.get(key), Mapping):
                table[key] = tomlkit.table()
            _sync_table(table[key], value)
        elif key not in table or table[key] != value:
            table[key] = value


def set_default(doc: Any, name: str) -> None:
    """Set `default_profile` (tomlkit keeps a new top-level key above the tables)."""
    doc["default_profile"] = name


def remove_profile(doc: Any, name: str) -> None:
    """Drop `[profiles.NAME]` (rebuilding as set_profile does). When it was the default, the one
    profile left, if only one is, becomes the default; with several left there is none."""
    import tomlkit

    expected = tomllib.loads(tomlkit.dumps(doc))
    expected.get("profiles", {}).pop(name, None)
    successor = None
    if expected.get("default_profile") == name:
        del expected["default_profile"]
        left = list(expected.get("profiles", {}))
        if len(left) == 1:
            successor = expected["default_profile"] = left[0]

    def edit() -> None:
        if "profiles" in doc and name in doc["profiles"]:
            del doc["profiles"][name]
        if doc.get("default_profile") == name:
            del doc["default_profile"]
            if successor is not None:
                doc["default_profile"] = successor

    _edit_or_rebuild(doc, expected, edit)
