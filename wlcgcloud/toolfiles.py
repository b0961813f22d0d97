"""The files other cloud tools keep (AWS config and credentials, clouds.yaml and secure.yaml, ONE_AUTH),
read under our bounds, and the `secret_from` reference that points into them.

Below both its users: `profile import` (wlcgcloud.importers) reads profiles from these files, and
the secret store (wlcgcloud.secretstore) reads a secret from them again at run time. No error
here ever quotes such a file: it may hold a secret.
"""

from __future__ import annotations

import configparser
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from wlcgcloud import bounded
from wlcgcloud.errors import ConfigError

# `secret_from` = KIND:PATH[#ENTRY], written by `profile import`.
REFERENCE_KINDS = {
    "aws": "AWS credentials file",  # ENTRY: the section ("atlas", "profile atlas" in ~/.aws/config)
    "clouds.yaml": "OpenStack clouds file",  # ENTRY: the cloud's name
    "one_auth": "ONE_AUTH file",  # no ENTRY: the file holds user:password
}
CLOUDS_SECRET_KEYS = {
    "password": "password",
    "v3applicationcredential": "application_credential_secret",
    "v3oidcaccesstoken": "access_token",
}


def secret_reference(kind: str, path: Path, entry: str | None = None) -> str:
    """The `secret_from` value for a secret in `path` (an absolute path: the profile must not depend on cwd)."""
    return f"{kind}:{path.expanduser().absolute()}" + (f"#{entry}" if entry is not None else "")


def read_text(path: Path) -> str:
    """An imported file's text, bounded (bounded.IMPORTED_FILE_SIZE: never `/dev/zero` to the end) and shallow."""
    try:
        text = bounded.read_bytes(path, bounded.IMPORTED_FILE_SIZE).decode("utf-8")
    except bounded.TooLarge:
        raise ConfigError(f"{path}: larger than {bounded.size_text(bounded.IMPORTED_FILE_SIZE)}; not read.") from None
    except UnicodeDecodeError:  # its text would quote the file
        raise ConfigError(f"{path}: not UTF-8 text; not read.") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}.") from None
    if bounded.too_deep(text):  # YAML's and JSON's parsers recurse on nesting
        raise ConfigError(f"{path}: nested more than {bounded.MAX_DEPTH} levels deep; not read.")
    return text


def load_yaml_or_json(path: Path) -> Mapping[str, Any]:
    """clouds.yaml or secure.yaml (or their .json forms): a mapping, or a one-line error that quotes nothing."""
    text = read_text(path)
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to read.") from None
    except ValueError as exc:  # JSON, or text that is not UTF-8; the message would quote the file
        raise ConfigError(
            f"{path}: not valid {path.suffix.lstrip('.').upper() or 'YAML'} ({type(exc).__name__})."
        ) from None
    except Exception as exc:  # yaml.YAMLError, imported lazily; its text can quote the file: say only where
        mark = getattr(exc, "problem_mark", None)
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError(f"{at}: not valid YAML.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with a 'clouds' key.")
    return data


def read_ini(path: Path) -> configparser.RawConfigParser:
    """An AWS config or credentials file; an error names the line but never shows it (it may hold a key)."""
    parser = configparser.RawConfigParser()
    text = read_text(path)
    try:
        parser.read_string(text, source=str(path))
    except configparser.Error as exc:
        # configparser quotes the offending line, which may hold a secret key: say only where.
        line = getattr(exc, "lineno", None) or next(iter(getattr(exc, "errors", [])), (None,))[0]
        at = f"{path}:{line}" if line else str(path)
        raise ConfigError(
            f"{at}: cannot parse ({type(exc).__name__}); the line is not shown, it may hold a secret."
        ) from None
    return parser
