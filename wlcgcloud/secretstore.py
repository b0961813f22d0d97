"""Where a profile's secret comes from, and where `profile add` puts it.

Resolution order, first match wins:
  1. `WLCGCLOUD_SECRET_<PROFILE>` (this profile only);
  2. the cloud's own environment (`AWS_SECRET_ACCESS_KEY`, `OS_PASSWORD`,
     `OS_APPLICATION_CREDENTIAL_SECRET`, `OS_ACCESS_TOKEN`, the `ONE_AUTH` file), used only when
     the identity it belongs to is the profile's or the profile names none;
  3. the system keyring (service "wlcgcloud", user = profile name);
  4. the profile's `secret_file`, refused unless only its owner can read it;
  5. the profile's `secret_from`: the file `profile import` found the secret in (an AWS
     credentials or config file, clouds.yaml or secure.yaml, a ONE_AUTH file), read again at
     run time under the same owner-only rule: a reference, never a copy.
There is no plaintext fallback: on a machine without a keyring backend we say so and name 1 and 4.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from wlcgcloud import atomic, bounded, toolfiles
from wlcgcloud.clouds import SecretSource, cloud_of
from wlcgcloud.config import Profile, secret_variable
from wlcgcloud.errors import ConfigError

SERVICE = "wlcgcloud"


@dataclass(frozen=True)
class Secret:
    """A secret and where it came from. Its repr and str never show the value."""

    value: str = field(repr=False)
    source: str
    username: str | None = None  # an identity that came with it (the ONE_AUTH file holds user:password)

    def __str__(self) -> str:
        return f"<secret from {self.source}>"


def auth_type(profile: Profile) -> str:
    """The OpenStack auth type: the profile's own, implied by its identity, else OS_AUTH_TYPE.

    The environment decides only for a profile that names no identity of its own, so an
    application credential in the environment never displaces a password profile's login.
    """
    explicit = profile.get("auth_type")
    if explicit:
        return str(explicit)
    if profile.get("application_credential_id"):
        return "v3applicationcredential"
    if profile.get("username"):
        return "password"
    env = os.environ.get("OS_AUTH_TYPE", "")
    if env in ("v3applicationcredential", "v3oidcaccesstoken"):
        return env
    if os.environ.get("OS_APPLICATION_CREDENTIAL_ID") and not os.environ.get("OS_USERNAME"):
        return "v3applicationcredential"
    return "password"


def _source(profile: Profile) -> SecretSource:
    """The profile's kind of login: its cloud's only one, else the one of its auth type."""
    secrets = cloud_of(profile).secrets
    return secrets[""] if "" in secrets else secrets[auth_type(profile)]


def secret_label(profile: Profile) -> str:
    return _source(profile).label


def _same_or_unset(ours: object, theirs: str | None) -> bool:
    return ours is None or theirs is None or ours == theirs


def ecosystem_variables(profile: Profile) -> list[str]:
    """The cloud's own environment variable(s) that can carry this profile's secret."""
    return [_source(profile).variable]


def _from_ecosystem(profile: Profile, notes: list[str]) -> Secret | None:
    """The secret the cloud's own tools would use, when it is this profile's (or the profile names no identity)."""
    source = _source(profile)
    given = os.environ.get(source.variable)
    if not given:
        return None
    ours = profile.get(source.identity_key) if source.identity_key else None
    if source.is_file:  # the variable names a user:secret file (ONE_AUTH)
        try:
            secret = read_secret_file(Path(given).expanduser(), profile, source.variable)
        except ConfigError as exc:
            notes.append(f"{source.variable} not used: {exc}")
            return None
        if _same_or_unset(ours, secret.username):
            return Secret(secret.value, f"{source.variable} file {given}", secret.username)
        return None
    theirs = os.environ.get(source.identity_variable) if source.identity_variable else None
    return Secret(given, f"environment {source.variable}") if _same_or_unset(ours, theirs) else None


def owner_only(path: Path, profile: Profile, what: str) -> None:
    """Refuse a file that holds a secret unless it is ours and no one else may read or write it."""
    try:
        st = path.stat()
    except OSError as exc:
        raise ConfigError(f"profile '{profile.name}': cannot read {what} {path}: {exc.strerror}.") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or st.st_uid != os.geteuid():
        raise ConfigError(
            f"profile '{profile.name}': {what} {path} is readable by others "
            f"(mode {stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}); refused.",
            f"Run 'chmod 600 {path}' as its owner.",
        )


def read_secret_file(path: Path, profile: Profile, what: str = "secret_file") -> Secret:
    """Read a secret file that only its owner may read. OpenNebula files hold `user:password`."""
    owner_only(path, profile, what)
    try:
        text = bounded.read_bytes(path, bounded.SECRET_SIZE).decode("utf-8").strip()
    except bounded.TooLarge:
        raise ConfigError(f"profile '{profile.name}': {what} {path} holds more than a secret "
                          f"(over {bounded.size_text(bounded.SECRET_SIZE)}).") from None  # fmt: skip
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"profile '{profile.name}': cannot read {what} {path}: {reason}.") from None
    if not text:
        raise ConfigError(f"profile '{profile.name}': {what} {path} is empty.")
    if cloud_of(profile).secret_holds_user and ":" in text:
        user, _, password = text.partition(":")
        return Secret(password, f"{what} {path}", user)
    return Secret(text, f"{what} {path}")


# ----------------------------------------------------------------------------- imported files


def read_secret_reference(reference: str, profile: Profile) -> Secret:
    """The secret that `secret_from` points at, read now, under the owner-only rule of secret_file."""
    kind, _, rest = reference.partition(":")
    if kind not in toolfiles.REFERENCE_KINDS or not rest:
        raise ConfigError(
            f"profile '{profile.name}': secret_from '{reference}' is not KIND:FILE[#ENTRY] "
            f"with KIND one of {', '.join(toolfiles.REFERENCE_KINDS)}.",
            f"Run 'wlcgcloud profile import --overwrite' again, or 'wlcgcloud profile edit {profile.name} "
            "--unset secret-from'.",
        )
    what = f"secret_from ({toolfiles.REFERENCE_KINDS[kind]})"
    if kind == "one_auth":
        found = read_secret_file(Path(rest).expanduser(), profile, what)
        return Secret(found.value, f"{toolfiles.REFERENCE_KINDS[kind]} {rest}", found.username)
    path_text, _, entry = rest.rpartition("#")
    path = Path(path_text).expanduser()
    owner_only(path, profile, what)
    value: object = None
    if kind == "aws":
        parser = toolfiles.read_ini(path)
        if parser.has_section(entry):
            value = parser.get(entry, "aws_secret_access_key", fallback=None)
    else:
        clouds = toolfiles.load_yaml_or_json(path).get("clouds")
        cloud = clouds.get(entry) if isinstance(clouds, dict) else None
        auth = cloud.get("auth") if isinstance(cloud, dict) else None
        if isinstance(auth, dict):
            value = auth.get(toolfiles.CLOUDS_SECRET_KEYS[auth_type(profile)])
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(
            f"profile '{profile.name}': {path} holds no secret for '{entry}' any more.",
            f"Import it again with 'wlcgcloud profile import --overwrite', or store one with "
            f"'wlcgcloud profile edit {profile.name} --secret-stdin'.",
        )
    return Secret(value.strip(), f"{toolfiles.REFERENCE_KINDS[kind]} {path} [{entry}]")


# ----------------------------------------------------------------------------- keyring


class KeyringUnavailable(ConfigError):
    """The system keyring has no usable backend (a headless machine)."""


def _no_keyring(profile_name: str) -> KeyringUnavailable:
    return KeyringUnavailable(
        "this machine has no system keyring (keyring found no backend), so the secret cannot be stored.",
        f"Give it in the environment as {secret_variable(profile_name)}, or keep it in a file only you can read: "
        f"'wlcgcloud profile edit {profile_name} --secret-stdin --secret-file FILE' writes FILE with mode 0600.",
    )


def keyring_get(profile_name: str) -> str | None:
    """The keyring's secret for a profile; None when there is none. Raises KeyringUnavailable."""
    import keyring
    import keyring.errors

    try:
        return keyring.get_password(SERVICE, profile_name)
    except keyring.errors.NoKeyringError:
        raise _no_keyring(profile_name) from None
    except keyring.errors.KeyringError as exc:
        raise ConfigError(f"profile '{profile_name}': the system keyring failed: {exc}.") from None


def keyring_set(profile_name: str, value: str) -> None:
    """Store a profile's secret in the system keyring. Raises KeyringUnavailable on a headless machine."""
    import keyring
    import keyring.errors

    try:
        keyring.set_password(SERVICE, profile_name, value)
    except keyring.errors.NoKeyringError:
        raise _no_keyring(profile_name) from None
    except keyring.errors.KeyringError as exc:
        raise ConfigError(f"profile '{profile_name}': the system keyring refused the secret: {exc}.") from None


def keyring_delete(profile_name: str) -> bool:
    """Forget a profile's secret; False when there was none or no keyring exists."""
    import keyring
    import keyring.errors

    try:
        keyring.delete_password(SERVICE, profile_name)
    except keyring.errors.PasswordDeleteError:
        return False
    except keyring.errors.KeyringError:  # NoKeyringError included: nothing could have been stored
        return False
    return True


# ----------------------------------------------------------------------------- resolution


def find_secret(profile: Profile) -> tuple[Secret | None, list[str]]:
    """The profile's secret by the documented order, and notes on the places that were not usable."""
    notes: list[str] = []
    value = os.environ.get(secret_variable(profile.name))
    if value:
        return Secret(value, f"environment {secret_variable(profile.name)}"), notes
    found = _from_ecosystem(profile, notes)
    if found:
        return found, notes
    try:
        value = keyring_get(profile.name)
    except KeyringUnavailable:
        notes.append(NO_KEYRING)
    else:
        if value:
            return Secret(value, "system keyring"), notes
    path = profile.get("secret_file")
    if path:
        return read_secret_file(Path(path).expanduser(), profile), notes
    reference = profile.get("secret_from")
    if reference:
        return read_secret_reference(str(reference), profile), notes
    return None, notes


def write_secret_file(path: Path, profile: Profile, value: str) -> None:
    """Keep a secret in the file the user named: created owner-only (0600), replaced atomically.

    An existing file is replaced only when it is ours; nothing is ever written with wider
    permissions, even for a moment (the temporary file is made 0600 before the secret goes in).
    """
    path = path.expanduser()
    if path.exists() or path.is_symlink():
        try:
            st = path.lstat()
        except OSError as exc:
            raise ConfigError(f"profile '{profile.name}': cannot use secret_file {path}: {exc.strerror}.") from None
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise ConfigError(
                f"profile '{profile.name}': secret_file {path} is not a regular file of yours; nothing written.",
                "Name a new file, e.g. ~/.config/wlcgcloud/NAME.secret.",
            )
    if cloud_of(profile).secret_holds_user and profile.get("username") and ":" not in value:
        value = f"{profile.get('username')}:{value}"  # a ONE_AUTH-style file: user:password
    try:
        atomic.write(path, value + "\n", mode=0o600)
    except OSError as exc:
        raise ConfigError(f"profile '{profile.name}': cannot write secret_file {path}: {exc.strerror}.") from None


NO_KEYRING = "this machine has no system keyring"


def how_to_give(profile: Profile, notes: Sequence[str] = ()) -> str:
    """The next step for a profile with no secret: only the ways that work on this machine."""
    ways = " or ".join([secret_variable(profile.name), *ecosystem_variables(profile)])
    keep_in_file = f"'wlcgcloud profile edit {profile.name} --secret-stdin --secret-file FILE' (written with mode 0600)"
    if NO_KEYRING in notes:
        return f"Set {ways}, or keep it in a file of yours: {keep_in_file}."
    return (
        f"Set {ways}, store it in the keyring with 'wlcgcloud profile edit {profile.name} --secret-stdin', "
        f"or keep it in a secret_file: {keep_in_file}."
    )


def require_secret(profile: Profile) -> Secret:
    """The profile's secret, or a configuration error that names every way to give one."""
    secret, notes = find_secret(profile)
    if secret is not None:
        return secret
    why = f" ({'; '.join(notes)})" if notes else ""
    raise ConfigError(f"profile '{profile.name}': no {secret_label(profile)} found{why}.", how_to_give(profile, notes))
