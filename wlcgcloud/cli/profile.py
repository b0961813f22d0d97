"""`wlcgcloud profile ...`: add, list, show, edit, remove and import cloud profiles."""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from wlcgcloud import config, secretstore
from wlcgcloud.cli.common import confirm, emit, globals_of, info, interactive, new_app, read_secret, warn, working
from wlcgcloud.errors import ConfigError, UsageError
from wlcgcloud.output import Column

KEY_OPTIONS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _keys_help() -> str:
    lines = []
    for provider in config.PROVIDERS:
        keys = [k for k in config.keys_for(provider) if k.name != "provider"]
        names = ", ".join(k.option + (" (required)" if provider in k.required_for else "") for k in keys)
        lines.append(f"{provider}: {names}")
    return "\n\n".join(lines)


app = new_app("Cloud profiles: one per cloud account (EC2, OpenStack, OpenNebula), in config.toml.")

# ----------------------------------------------------------------------------- key options


def parse_key_options(
    words: list[str], provider: str, *, allow_unset: bool = False
) -> tuple[dict[str, Any], list[str]]:
    """Turn `--region eu-west-1 --public-ip --security-groups a,b ...` into settings by the schema.

    Returns the settings and, with `allow_unset`, the keys named by `--unset KEY`. A key that is
    unknown, or not a setting of this provider, is a usage error naming the provider's keys.
    """
    allowed = {k.name: k for k in config.keys_for(provider) if k.name != "provider"}
    settings: dict[str, Any] = {}
    unset: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--"):
            raise UsageError(f"unexpected argument '{word}'.", "Settings are given as --KEY VALUE.")
        name, eq, inline = word[2:].partition("=")
        key = name.replace("-", "_")
        negated = key.startswith("no_") and key[3:] in allowed and allowed[key[3:]].kind == "bool"
        if negated:
            key = key[3:]
        if allow_unset and key == "unset":
            value, i = (inline, i) if eq else _next_value(words, i, word)
            unset.append(value.replace("-", "_"))
            i += 1
            continue
        spec = allowed.get(key)
        if spec is None:
            known = ", ".join(k.option for k in allowed.values())
            why = f"not a setting of provider '{provider}'" if key in config.KEYS_BY_NAME else "unknown setting"
            match = config.closest(key, list(allowed))
            if match:
                why += f" (did you mean {allowed[match].option}?)"
            raise UsageError(f"--{name}: {why}.", f"Settings of {provider}: {known}.")
        if spec.kind == "bool":
            if eq:
                settings[key] = _parse_bool(inline, word)
            elif not negated and i + 1 < len(words) and words[i + 1].lower() in ("true", "false", "yes", "no"):
                settings[key] = _parse_bool(words[i + 1], word)
                i += 1
            else:
                settings[key] = not negated
            i += 1
            continue
        value, i = (inline, i) if eq else _next_value(words, i, word)
        settings[key] = _parse_value(spec, value, settings.get(key), word)
        i += 1
    return settings, unset


def _next_value(words: list[str], i: int, word: str) -> tuple[str, int]:
    if i + 1 >= len(words):
        raise UsageError(f"{word} needs a value.")
    return words[i + 1], i + 1


def _parse_bool(text: str, word: str) -> bool:
    low = text.lower()
    if low in ("true", "yes", "1"):
        return True
    if low in ("false", "no", "0"):
        return False
    raise UsageError(f"{word}: expected true or false, got '{text}'.")


def _parse_value(spec: config.Key, text: str, previous: Any, word: str) -> Any:
    if spec.kind == "int":
        try:
            return int(text)
        except ValueError:
            raise UsageError(f"{word}: expected a whole number, got '{text}'.") from None
    if spec.kind == "list":  # repeatable and comma-separated
        return [*(previous or []), *(v.strip() for v in text.split(",") if v.strip())]
    if spec.kind == "benchmarks":  # type=HEPscore23,m1.large=41.2
        table = dict(previous or {})
        for pair in text.split(","):
            k, sep, v = pair.partition("=")
            if not sep:
                raise UsageError(f"{word}: expected type=NAME,FLAVOR=SCORE,..., got '{pair}'.")
            try:
                table[k.strip()] = v.strip() if k.strip() == "type" else float(v)
            except ValueError:
                raise UsageError(f"{word}: score for '{k}' is not a number: '{v}'.") from None
        return table
    return text


def _store_secret(profile: config.Profile, value: str, named_file: str | None, *, saved: bool) -> str:
    """Keep a secret: in the file this command named with --secret-file (written 0600), else the keyring.

    Returns the words for the confirmation line. `saved` tells whether the profile itself is
    already in config.toml, so that a refusal says the profile was kept and how to add the secret.
    """
    if named_file:
        secretstore.write_secret_file(Path(named_file), profile, value)
        secretstore.keyring_delete(profile.name)  # an older copy there would be found first
        return f"secret written to {named_file} (mode 0600)"
    try:
        secretstore.keyring_set(profile.name, value)
    except ConfigError as exc:
        if not saved:
            raise
        raise ConfigError(
            f"profile '{profile.name}' is saved, but its secret is not: {exc.message}", exc.hint
        ) from None
    return "secret stored in the keyring"


def _secret_status(profile: config.Profile) -> dict[str, Any]:
    try:
        secret, notes = secretstore.find_secret(profile)
    except ConfigError as exc:
        return {"found": False, "source": None, "problem": exc.message, "next_step": exc.hint}
    if secret is None:
        return {
            "found": False,
            "source": None,
            "problem": "; ".join(["none found", *notes]),
            "next_step": secretstore.how_to_give(profile, notes),
        }
    return {"found": True, "source": secret.source}


# ----------------------------------------------------------------------------- commands


@app.command(
    "add",
    context_settings=KEY_OPTIONS,
    epilog=(
        "\b\nExamples:\n"
        "  wlcgcloud profile add cern-atlas --provider openstack \\\n"
        "      --auth-url https://keystone.example.org:5000/v3 --auth-type v3applicationcredential \\\n"
        "      --application-credential-id 4f3c... --secret-stdin < secret\n"
        "  wlcgcloud profile add aws-atlas --provider ec2 --region eu-west-1 --access-key-id AKIA... \\\n"
        "      --secret-stdin --secret-file ~/.config/wlcgcloud/aws-atlas.secret < key   (no keyring needed)\n\n"
        "Settings per provider (--KEY VALUE; lists comma-separated or repeated; --no-KEY for false):\n\n" + _keys_help()
    ),
)
def add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Profile name, e.g. cern-atlas.", show_default=False, metavar="NAME")],
    provider: Annotated[
        str | None, typer.Option("--provider", help="ec2 | openstack | opennebula", show_default=False)
    ] = None,
    secret_stdin: Annotated[
        bool, typer.Option("--secret-stdin", help="Read the secret from the first line of stdin.")
    ] = False,
    default: Annotated[bool, typer.Option("--default", help="Make it the default profile.")] = False,
) -> None:
    """Add a profile. The secret goes to the system keyring, or to --secret-file; never to config.toml.

    On a terminal the secret is asked for with a hidden prompt; in scripts use --secret-stdin,
    or give it at run time as WLCGCLOUD_SECRET_<PROFILE> or the cloud's own variables. On a
    machine without a keyring (CI, servers) add --secret-file FILE: with --secret-stdin (or the
    prompt) the secret is written there with mode 0600, and the profile reads it from there.
    Without either, the profile is saved and the command exits 3 saying how to give the secret.
    """
    g = globals_of(ctx)
    if provider is None:
        raise UsageError("--provider is required.", f"One of {', '.join(config.PROVIDERS)}.")
    if provider not in config.PROVIDERS:
        raise UsageError(f"--provider must be one of {', '.join(config.PROVIDERS)}, got '{provider}'.")
    conf = g.config()
    if name in conf.profiles:
        raise UsageError(f"profile '{name}' already exists.", f"Change it with 'wlcgcloud profile edit {name}'.")
    settings, _ = parse_key_options(list(ctx.args), provider)
    settings = {"provider": provider, **settings}
    profile = config.validate_profile(name, settings, conf.path)
    named_file = settings.get("secret_file")
    if not secret_stdin and (named_file or os.environ.get(config.secret_variable(name))):
        # The secret is given already, in the environment or in a file (checked now): nothing to ask for.
        if named_file:
            secretstore.read_secret_file(Path(named_file).expanduser(), profile)
        secret = None
    else:
        secret = read_secret(secretstore.secret_label(profile), secret_stdin)
    stored = None
    if secret is not None and named_file:  # the file first: the profile never names a file that was not written
        stored = _store_secret(profile, secret, named_file, saved=False)
    config.update_config(conf.path, lambda doc: _add_to(doc, name, settings, default or not conf.profiles))
    if secret is not None and stored is None:
        stored = _store_secret(profile, secret, None, saved=True)
    info(f"Added profile '{name}' ({provider}) to {conf.path}" + (f"; {stored}." if stored else "."))
    if secret is None:
        status = _secret_status(profile)
        if not status["found"]:
            info(f"No secret stored. {status['next_step']}")


def _add_to(doc: Any, name: str, settings: dict[str, Any], make_default: bool) -> None:
    config.set_profile(doc, name, settings)
    if make_default:
        config.set_default(doc, name)


PROFILE_COLUMNS = [
    Column("name", "NAME"),
    Column("provider", "PROVIDER"),
    Column("default", "DEFAULT"),
    Column("where", "WHERE"),
    Column("experiment", "EXPERIMENT"),
    Column("site_name", "SITE"),
]


def _where(p: config.Profile) -> str:
    from wlcgcloud.clouds import cloud_of

    return cloud_of(p).where(p.settings)


@app.command(
    "list", epilog="\b\nExamples:\n  wlcgcloud profile list\n  wlcgcloud profile list -o json --query '[].name'"
)
def list_(ctx: typer.Context) -> None:
    """List profiles (no secrets). `ls` is an alias."""
    g = globals_of(ctx)
    profiles = g.config().profiles.values()
    if g.output == "table" and not g.query:
        rows = [{**p.to_dict(), "where": _where(p), "default": "*" if p.is_default else ""} for p in profiles]
        emit(ctx, rows, PROFILE_COLUMNS)
        if not rows:
            info(f"No profiles in {g.config_path}. Add one with 'wlcgcloud profile add' or 'wlcgcloud profile import'.")
        return
    emit(ctx, [p.to_dict() for p in profiles])


app.command("ls", hidden=True)(list_)


@app.command(
    "show", epilog="\b\nExamples:\n  wlcgcloud profile show cern-atlas\n  wlcgcloud profile show cern-atlas -o json"
)
def show(
    ctx: typer.Context,
    name: Annotated[
        str | None, typer.Argument(help="Profile name (default: -p or default_profile).", metavar="NAME")
    ] = None,
) -> None:
    """Show one profile's settings and where its secret comes from (never the secret itself)."""
    g = globals_of(ctx)
    conf = g.config()
    profile = conf.profile(name) if name else conf.select(g.profiles[:1], all_when_empty=False)[0]
    data = profile.to_dict()
    data["secret"] = _secret_status(profile)
    data["config"] = str(conf.path)
    if g.output in ("table", "csv") and not g.query:
        status = data["secret"]
        data["secret"] = (
            f"from {status['source']}"
            if status["found"]
            else " ".join(filter(None, [f"missing: {status['problem'].rstrip('.')}.", status["next_step"]]))
        )
    emit(ctx, data)


@app.command(
    "edit",
    context_settings=KEY_OPTIONS,
    epilog=(
        "\b\nExamples:\n"
        "  wlcgcloud profile edit cern-atlas --flavor m1.xlarge --unset key-name\n"
        "  wlcgcloud profile edit aws-atlas --secret-stdin < new-secret\n"
        "  wlcgcloud profile edit aws-atlas --secret-stdin --secret-file ~/.config/wlcgcloud/aws.secret < key\n"
        "  wlcgcloud profile edit cern-atlas        (opens $EDITOR on the config file)"
    ),
)
def edit(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Profile name.", show_default=False, metavar="NAME")],
    secret_stdin: Annotated[bool, typer.Option("--secret-stdin", help="Replace the stored secret from stdin.")] = False,
    secret: Annotated[bool, typer.Option("--secret", help="Replace the stored secret (hidden prompt).")] = False,
    default: Annotated[bool, typer.Option("--default", help="Make it the default profile.")] = False,
) -> None:
    """Change a profile's settings (--KEY VALUE, --unset KEY), its secret, or edit it in $EDITOR.

    Settings are those of `profile add`. With nothing to change, on a terminal, the config file
    is opened in $VISUAL/$EDITOR; it is saved only if it still parses and validates.
    """
    g = globals_of(ctx)
    conf = g.config()
    profile = conf.profile(name)
    settings, unset = parse_key_options(list(ctx.args), profile.provider, allow_unset=True)
    if not (settings or unset or secret_stdin or secret or default):
        _edit_in_editor(conf.path)
        return
    for key in unset:
        if key == "provider" or key not in config.KEYS_BY_NAME:
            raise UsageError(f"--unset {key}: not a setting that can be removed.")
    new = {k: v for k, v in profile.settings.items() if k not in unset}
    new.update(settings)
    updated = config.validate_profile(name, new, conf.path)
    label = secretstore.secret_label(updated)
    new_secret = read_secret(label, secret_stdin, required=secret) if (secret_stdin or secret) else None
    if settings.get("secret_file") and new_secret is None:  # a file named now is checked now, before it is saved
        secretstore.read_secret_file(Path(settings["secret_file"]).expanduser(), updated)
    stored = None
    if new_secret is not None and settings.get("secret_file"):
        stored = _store_secret(updated, new_secret, settings["secret_file"], saved=False)
    if settings or unset or default:
        config.update_config(conf.path, lambda doc: _add_to(doc, name, new, default))
    if new_secret is not None and stored is None:
        stored = _store_secret(updated, new_secret, None, saved=True)
    info(f"Updated profile '{name}'" + (f"; {stored}." if stored else "."))


def _edit_in_editor(path: Path) -> None:
    if not interactive():
        raise UsageError("nothing to change.", "Give settings as --KEY VALUE, or run on a terminal to use $EDITOR.")
    text = config.read_text(path) or ""
    fd, tmp = tempfile.mkstemp(prefix="wlcgcloud-config.", suffix=".toml")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    if subprocess.call([*shlex.split(editor), tmp]) != 0:
        raise UsageError(f"the editor '{editor}' failed; your edit is kept in {tmp}.")
    new_text = config.read_text(Path(tmp)) or ""  # the config's bounds: an editor can write anything
    if new_text == text:
        os.unlink(tmp)
        info("No change.")
        return
    try:
        config.parse_config(new_text, Path(tmp))
    except ConfigError as exc:
        raise ConfigError(exc.message, f"Nothing was saved; your edit is kept in {tmp}.") from None
    config.replace_config(path, new_text)
    os.unlink(tmp)
    info(f"Saved {path}.")


@app.command("remove", epilog="\b\nExamples:\n  wlcgcloud profile remove old-site --yes")
def remove(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Profile name.", show_default=False, metavar="NAME")],
) -> None:
    """Remove a profile and its secret in the keyring. `rm` is an alias."""
    g = globals_of(ctx)
    conf = g.config()
    conf.profile(name)
    confirm(g, f"remove profile '{name}' and its stored secret")
    after = config.update_config(conf.path, lambda doc: config.remove_profile(doc, name))
    forgot = secretstore.keyring_delete(name)
    info(f"Removed profile '{name}'" + (" and its secret in the keyring." if forgot else "."))
    if conf.default_profile == name and after.default_profile:
        info(f"'{after.default_profile}' is the default profile now.")
    elif conf.default_profile == name and after.profiles:
        info("There is no default profile now; choose one with 'wlcgcloud profile edit NAME --default'.")


app.command("rm", hidden=True)(remove)


IMPORT_COLUMNS = [
    Column("name", "NAME"),
    Column("provider", "PROVIDER"),
    Column("action", "ACTION"),
    Column("secret", "SECRET"),
    Column("source", "SOURCE"),
]


@app.command(
    "import",
    epilog=(
        "\b\nExamples:\n"
        "  wlcgcloud profile import                       (every source found)\n"
        "  wlcgcloud profile import --from clouds.yaml --file ./clouds.yaml --overwrite\n"
        "  ONE_AUTH=~/.one/one_auth ONE_XMLRPC=https://one.example.org:2633/RPC2 \\\n"
        "      wlcgcloud profile import --from one --name lal-one"
    ),
)
def import_(
    ctx: typer.Context,
    source: Annotated[
        list[str] | None,
        typer.Option("--from", help="clouds.yaml | aws | one; repeatable (default: all found).", show_default=False),
    ] = None,
    file: Annotated[
        Path | None, typer.Option("--file", readable=False, help="A clouds.yaml to read instead of searching.")
    ] = None,
    one_name: Annotated[str | None, typer.Option("--name", help="Name of the OpenNebula profile.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace profiles that exist.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be imported; write nothing.")] = False,
) -> None:
    """Import profiles from OpenStack clouds.yaml, ~/.aws/config + credentials, and ONE_AUTH/ONE_XMLRPC.

    A secret found there is not copied: the profile keeps a reference to the file that holds it
    (secret_from) and reads it there at run time, so it works without a keyring; that file must
    be readable only by its owner, as secret_file must. Importing into an empty config makes the
    first profile the default. Existing profiles are skipped unless --overwrite.
    """
    from wlcgcloud import importers

    g = globals_of(ctx)
    sources = list(dict.fromkeys(source or importers.SOURCES))
    for s in sources:
        if s not in importers.SOURCES:
            raise UsageError(f"--from {s}: unknown source; use one of {', '.join(importers.SOURCES)}.")
    conf = g.config()
    candidates = importers.gather(sources, file.expanduser() if file else None, one_name)
    if not candidates:
        raise ConfigError(
            f"nothing to import from {', '.join(sources)}.",
            "Looked for clouds.yaml where the OpenStack client does, ~/.aws/config and credentials "
            "(AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE), and ONE_AUTH / ~/.one/one_auth.",
        )
    rows: list[dict[str, Any]] = []
    accepted: dict[str, dict[str, Any]] = {}
    for cand in candidates:
        row = {"name": cand.name, "provider": cand.settings["provider"], "source": cand.source, "secret": "-"}
        rows.append(row)
        for note in cand.notes:
            warn(f"{cand.source}: '{cand.name}': {note}.", g)
        if importers.skipped(cand):
            row["action"] = "skipped"
            continue
        try:
            config.validate_profile(cand.name, cand.settings, conf.path)
        except ConfigError as exc:
            warn(f"{cand.source}: '{cand.name}': {exc.message.split(': ', 2)[-1]} Skipped.", g)
            row["action"] = "skipped"
            continue
        if cand.name in accepted:
            row["action"] = "skipped (duplicate name)"
            continue
        variable = config.secret_variable(cand.name)
        clash = [n for n in [*conf.profiles, *accepted] if n != cand.name and config.secret_variable(n) == variable]
        if clash:
            warn(f"'{cand.name}': its secret variable {variable} is '{clash[0]}''s already; skipped.", g)
            row["action"] = "skipped (name clash)"
            continue
        if cand.name in conf.profiles and not overwrite:
            row["action"] = "skipped (exists; --overwrite replaces it)"
            continue
        row["action"] = ("would " if dry_run else "") + ("overwrite" if cand.name in conf.profiles else "add")
        settings = dict(cand.settings)
        if cand.secret_from:
            # A reference to the file that holds the secret, read at run time: no copy, so a key
            # rotated in ~/.aws/credentials or clouds.yaml is the one used, and no keyring is needed.
            settings["secret_from"] = cand.secret_from
            profile = config.validate_profile(cand.name, settings, conf.path)
            row["secret"] = f"read from {cand.secret_from.partition(':')[2]}"
            try:
                secretstore.read_secret_reference(cand.secret_from, profile)
            except ConfigError as exc:
                why = exc.message.removeprefix(f"profile '{cand.name}': ")
                warn(f"'{cand.name}': its secret cannot be used yet: {why} {exc.hint or ''}".rstrip(), g)
        accepted[cand.name] = settings
    if accepted and not dry_run:
        first = None if conf.profiles else next(iter(accepted))

        def change(doc: Any) -> None:
            for name, settings in accepted.items():
                config.set_profile(doc, name, settings)
            if first is not None:  # into an empty config: the first profile becomes the default
                config.set_default(doc, first)

        config.update_config(conf.path, change)
    emit(ctx, rows, IMPORT_COLUMNS)
    info(
        f"{'Would import' if dry_run else 'Imported'} {len(accepted)} of {len(candidates)} profile(s) into {conf.path}."
    )


TEST_COLUMNS = [
    Column("profile", "PROFILE"),
    Column("check", "CHECK"),
    Column("status", "RESULT"),
    Column("ms", "MS"),
    Column("detail", "DETAIL"),
    Column("hint", "NEXT STEP"),
]

DOCTOR_EPILOG = """\b
Checks, in order (a step an earlier failure makes pointless is skipped):
  secret    found in the environment, the keyring, secret_file or the imported file
  dns       the endpoint's host resolves (within the profile's timeout)
  tcp       a connection opens
  tls       the chain verifies against ca_bundle (else the default bundle), the host name
            matches, days to expiry (warns under 14)
  clock     the server's Date header is within 30 s (warn) / 5 min (fail) of this clock
  login     the cloud accepts the credentials
  api       API version / Nova microversion range, against what wlcgcloud uses
  flavor    the profile's flavor exists (and refreshes flavor completion)
  quota     room for one more instance of that flavor: instances, cores, RAM
  image     the profile's default image is endorsed and has a cloud copy
  key pair  key_name exists (EC2, OpenStack)
  network   network (OpenStack, OpenNebula) or subnet (EC2) exists (refreshes completion)

Exit status: 0 when nothing failed, else the most severe class found: 3 configuration,
4 credentials, 6 unreachable (DNS, TCP, TLS, clock), 5 policy (quota, image).

\b
Examples:
  wlcgcloud doctor
  wlcgcloud doctor cern-atlas -o json
  wlcgcloud doctor -o json --query '[].checks[?status==`fail`][]'
"""


@app.command("test", epilog=DOCTOR_EPILOG)
def test(
    ctx: typer.Context, names: Annotated[list[str] | None, typer.Argument(help="Profiles (default: all).")] = None
) -> None:
    """Check each profile end to end: the same checklist as `wlcgcloud doctor`.

    Every profile (or the NAMEs, or -p) in parallel, each step timed, with the next step for
    each failure.
    """
    _check(ctx, names)


def doctor(
    ctx: typer.Context, names: Annotated[list[str] | None, typer.Argument(help="Profiles (default: all).")] = None
) -> None:
    """Say why a site does or does not work: a checklist per profile, with the next step for each failure.

    Every profile (or the PROFILEs, or -p) in parallel, each step timed. `-o json` gives
    [{"profile","provider","ok","exit_code","reason","checks":[{"check","status","seconds","detail","hint"}]}].
    """
    _check(ctx, names)


def _check(ctx: typer.Context, names: list[str] | None) -> None:
    from wlcgcloud.doctor import diagnose_all, exit_code

    g = globals_of(ctx)
    profiles = g.config().select(list(names or []) or g.profiles, all_when_empty=True)
    with working(g, f"Checking {len(profiles)} profile(s) ..."):
        results = diagnose_all(profiles)
    if g.output == "table":
        rows = [{"profile": r.profile.name, **s.to_dict(), "ms": round(s.seconds * 1000)} for r in results
                for s in r.steps]  # fmt: skip
        emit(ctx, rows, TEST_COLUMNS)
    else:
        emit(ctx, [r.to_dict() for r in results])
    raise typer.Exit(exit_code(results))
