"""The man pages, the shell completion scripts and the completer's command tree, generated from the CLI.

    python -m wlcgcloud.manpage     # writes man/wlcgcloud.1, man/wlcgcloud-<command>.1, completions/*,
                                    # wlcgcloud/cli/tree.json and wlcgcloud/cli/help.json

Never by hand: a test fails when any of them is stale. Not imported at run time: this is the one
module below `wlcgcloud/` that walks the Typer app besides the CLI itself.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "man" / "wlcgcloud.1"
COMPLETIONS = ROOT / "completions"
TREE = Path(__file__).resolve().parent / "cli" / "tree.json"  # what the completer reads

CONTRACT_ORDER = ["profile", "image", "launch", "fleet", "ledger", "instance", "usage", "doctor", "completion"]
EXIT_CODES = (
    ("0", "success"),
    ("1", "unexpected internal error (a bug; a traceback only with --debug)"),
    (
        "2",
        "usage error: a bad option or argument, a confirmation needed without a terminal; "
        "an instance id or fleet that no profile knows (the message names the profiles asked)",
    ),
    ("3", "configuration error: unknown or invalid profile, unreadable config, missing secret"),
    ("4", "authentication or authorisation refused by the cloud"),
    ("5", "refused by policy: not endorsed, endorsement expired or unverifiable, user-data too large"),
    ("6", "cloud unreachable, or an API error after retries"),
    ("7", "partial success: some profiles or instances failed, others succeeded"),
    ("130", "interrupted; what the clouds made is in the ledger and the partial result is reported"),
    ("141", "standard output closed by its reader (| head), as a process killed by SIGPIPE"),
)
ENVIRONMENT = (
    ("WLCGCLOUD_PROFILE", "profiles to use, comma-separated (as -p)"),
    ("WLCGCLOUD_OUTPUT", "output format (as -o)"),
    ("WLCGCLOUD_CONFIG", "the config file (as --config)"),
    ("WLCGCLOUD_STATE_DIR", "the state directory: image lists, downloads, the ledger"),
    (
        "WLCGCLOUD_LEDGER",
        "the ledger: a postgresql:// URL shared by a team and its CI, or a SQLite file (before config.toml's ledger)",
    ),
    (
        "WLCGCLOUD_LEDGER_PASSWORD",
        "the PostgreSQL ledger's password (then the keyring, ledger_password_file, "
        "and libpq's own PGPASSWORD, PGPASSFILE and ~/.pgpass)",
    ),
    ("WLCGCLOUD_WAIT_LOCK", "how long a command that changes a fleet waits for another to release it (as --wait-lock)"),
    ("X509_USER_PROXY", "the X.509 proxy to forward (else /tmp/x509up_u<uid>)"),
    ("BEARER_TOKEN, BEARER_TOKEN_FILE", "the WLCG token to forward (then $XDG_RUNTIME_DIR/bt_u<uid>, /tmp/bt_u<uid>)"),
    ("WLCGCLOUD_SECRET_<PROFILE>", "one profile's secret (profile name upper-cased, other characters as _)"),
    (
        "WLCGCLOUD_SET_<KEY>",
        "a bootstrap setting for fleet maintain, kept out of the spec and of ps (as --set KEY=...)",
    ),
    ("AWS_SECRET_ACCESS_KEY, AWS_ACCESS_KEY_ID", "an EC2 profile's secret key, when the key id is the profile's"),
    ("OS_PASSWORD, OS_APPLICATION_CREDENTIAL_SECRET, OS_ACCESS_TOKEN", "an OpenStack profile's secret, by auth type"),
    ("ONE_AUTH, ONE_XMLRPC", "an OpenNebula user:password file and endpoint (also read by profile import)"),
    ("AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE, OS_CLIENT_CONFIG_FILE", "where profile import looks"),
    ("NO_COLOR", "plain output"),
)


def _roff(text: str) -> str:
    """Text safe in roff: backslashes and leading dots or quotes escaped."""
    text = text.replace("\\", "\\e")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.splitlines())


def _help(command: Any) -> str:
    text = (command.help or "").replace("\b\n", "")
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _text(command: Any) -> str:
    """A command's help and epilog in roff: prose filled, Click's \\b blocks (examples, lists) kept as typed."""
    raw = (command.help or "") + (f"\n\n{command.epilog}" if getattr(command, "epilog", None) else "")
    parts = []
    for paragraph in re.split(r"\n\s*\n", raw.strip()):
        verbatim = paragraph.startswith("\b\n") or paragraph.lstrip().startswith("Examples:")
        lines = [line.rstrip() for line in paragraph.removeprefix("\b\n").splitlines() if line.strip()]
        if not lines:
            continue
        if not verbatim:
            parts.append(_roff("\n".join(line.strip() for line in lines)))
            continue
        head, body = (lines[0].strip(), lines[1:]) if lines[0].rstrip().endswith(":") else ("", lines)
        indent = min((len(line) - len(line.lstrip()) for line in body), default=0)
        block = "\n".join(_roff(line[indent:]) for line in body)
        parts.append((f"{_roff(head)}\n" if head else "") + f".nf\n.RS 4\n{block}\n.RE\n.fi")
    return "\n.PP\n".join(parts) or "."


def _arguments(command: Any) -> str:
    return " ".join(p.human_readable_name.upper() for p in command.params if p.param_type_name == "argument")


def _options(command: Any) -> list[str]:
    lines = []
    for param in command.params:
        if param.param_type_name != "option" or param.hidden:
            continue
        names = ", ".join([*param.opts, *param.secondary_opts])
        value = "" if param.is_flag or param.count else f" {param.metavar or param.name.upper()}"
        lines += [".TP", f"\\fB{_roff(names)}\\fR{_roff(value)}", _roff(param.help or "")]
    return lines


def _commands(command: Any, path: list[str]) -> list[str]:
    out: list[str] = []
    subs = getattr(command, "commands", None)
    if subs:
        for name, sub in subs.items():
            if not sub.hidden:
                out += _commands(sub, [*path, name])
        return out
    out += [".SS", f"\\fB{' '.join(path)}\\fR {_roff(_arguments(command))}".rstrip(), _text(command)]
    out += _options(command)
    return out


def _root() -> Any:
    import typer

    from wlcgcloud.cli import app

    return typer.main.get_command(app)


def _tail() -> list[str]:
    """EXIT STATUS, ENVIRONMENT and FILES: the same on every page."""
    lines = [".SH EXIT STATUS"]
    for code, meaning in EXIT_CODES:
        lines += [".TP", f"\\fB{code}\\fR", meaning]
    lines += [".SH ENVIRONMENT"]
    for name, meaning in ENVIRONMENT:
        lines += [".TP", f"\\fB{name}\\fR", meaning]
    lines += [
        ".SH FILES",
        ".TP",
        "\\fI~/.config/wlcgcloud/config.toml\\fR",
        "profiles (XDG config directory)",
        ".TP",
        "\\fI~/.local/state/wlcgcloud/\\fR",
        "subscribed image lists, downloads, ledger.sqlite (launches and instance lifetimes, unless config.toml's "
        "ledger names a PostgreSQL one) with its fleet locks in ledger.sqlite.locks/, and completion.json "
        "(fleet names, instance ids, flavors and networks per profile, for completion) (XDG state directory)",
        ".TP",
        "\\fIsecret_file\\fR, \\fIsecret_from\\fR",
        "a profile's secret kept in a file of the user's (written 0600 by --secret-stdin --secret-file), or read "
        "from the AWS, clouds.yaml/secure.yaml or ONE_AUTH file it was imported from; refused unless only its "
        "owner can read it",
    ]
    return lines


def command_pages() -> dict[str, str]:
    """One page per command of the contract (`wlcgcloud-launch.1`, ...), named in SEE ALSO of the main page."""
    from wlcgcloud import __version__

    root = _root()
    pages = {}
    for name in _ordered(root.commands):
        command = root.commands[name]
        summary = _help(command).split("\n")[0].rstrip(".")
        title = f"WLCGCLOUD-{name.upper()}"
        lines = [
            f'.TH {title} 1 "" "wlcgcloud {__version__}" "User Commands"',
            ".SH NAME",
            f"wlcgcloud-{name} \\- {_roff(summary)}",
            ".SH SYNOPSIS",
            f"\\fBwlcgcloud {name}\\fR " + _synopsis(command),
            ".SH DESCRIPTION",
            _text(command),
            ".SH COMMANDS" if getattr(command, "commands", None) else ".SH OPTIONS",
            *(_commands(command, ["wlcgcloud", name]) if getattr(command, "commands", None) else _options(command)),
            ".SH GLOBAL OPTIONS",
            "Accepted before or after the command; see \\fBwlcgcloud\\fR(1).",
            *_options(root),
            *_tail(),
            ".SH SEE ALSO",
            "\\fBwlcgcloud\\fR(1)",
        ]
        pages[f"wlcgcloud-{name}.1"] = "\n".join(lines) + "\n"
    return pages


def _synopsis(command: Any) -> str:
    if getattr(command, "commands", None):
        return "\\fICOMMAND\\fR [\\fIOPTIONS\\fR]"
    return f"[\\fIOPTIONS\\fR] {_roff(_arguments(command))}".rstrip()


def _ordered(commands: dict[str, Any]) -> list[str]:
    names = [n for n in commands if not commands[n].hidden]
    return sorted(names, key=lambda n: CONTRACT_ORDER.index(n) if n in CONTRACT_ORDER else 99)


def man_page() -> str:
    """The main man page, in roff."""
    from wlcgcloud import __version__

    root = _root()
    lines = [
        f'.TH WLCGCLOUD 1 "" "wlcgcloud {__version__}" "User Commands"',
        ".SH NAME",
        "wlcgcloud \\- launch endorsed VM images with forwarded grid credentials on EC2, OpenStack and OpenNebula",
        ".SH SYNOPSIS",
        "\\fBwlcgcloud\\fR [\\fIGLOBAL OPTIONS\\fR] \\fICOMMAND\\fR [\\fIOPTIONS\\fR]",
        ".SH DESCRIPTION",
        _roff(_help(root).split("\n\nExamples:")[0]),
        ".SH GLOBAL OPTIONS",
        *_options(root),
        ".SH COMMANDS",
    ]
    commands = root.commands
    for name in _ordered(commands):
        lines += _commands(commands[name], ["wlcgcloud", name])
    lines += _tail()
    lines += [".SH SEE ALSO", ", ".join(f"\\fBwlcgcloud-{n}\\fR(1)" for n in _ordered(commands))]
    return "\n".join(lines) + "\n"


def _option_kinds() -> dict[str, Any]:
    """What an option's value completes to, by its parameter name: a list is a choice, "@kind" a dynamic value."""
    from wlcgcloud.cli.instance import STATES
    from wlcgcloud.cli.launch import CREDENTIALS
    from wlcgcloud.config import PROVIDERS
    from wlcgcloud.usage import GROUPS

    dynamic = ("profile", "bootstrap", "flavor", "network")
    return {
        **{name: f"@{name}" for name in dynamic},
        "output": ["table", "json", "yaml", "csv", "apel"],
        "provider": list(PROVIDERS),
        "source": ["clouds.yaml", "aws", "one"],
        "credential": list(CREDENTIALS),
        "fleet_name": "@fleet",
        "by": list(GROUPS),
        "since": ["today", "this-month", "last-month", "7d", "30d"],
        "until": ["today", "this-month", "last-month", "7d", "30d"],
        "settings": "@setting",
        "state": list(STATES),
        "deadline": ["30m", "1h", "2h", "6h", "1d"],
    }


# What an argument completes to: by (command path prefix, parameter name); the longest prefix wins.
ARGUMENT_KINDS: dict[tuple[tuple[str, ...], str], Any] = {
    (("profile",), "name"): "@profile",
    (("profile",), "names"): "@profile",
    (("profile", "add"), "name"): "",  # a new name: nothing to complete
    (("image",), "image_id"): "@endorsed",
    (("image",), "name"): "@list",
    (("image",), "names"): "@list",
    (("launch",), "image"): "@endorsed",
    (("fleet",), "name"): "@fleet",
    (("fleet",), "names"): "@fleet",
    (("fleet", "drain"), "instance_ids"): "@instance",
    (("instance",), "instance_id"): "@instance",
    (("instance",), "instance_ids"): "@instance",
    (("doctor",), "names"): "@profile",
    (("completion",), "shell"): ["bash", "zsh", "fish"],
}


def _argument_kind(path: tuple[str, ...], name: str) -> Any:
    for depth in range(len(path), 0, -1):
        if (path[:depth], name) in ARGUMENT_KINDS:
            return ARGUMENT_KINDS[(path[:depth], name)]
    return ""


def _key_options(edit: bool) -> dict[str, Any]:
    """`profile add|edit` take every config key as an option (dashes for underscores; --no-KEY for booleans)."""
    from wlcgcloud.completion import FLAG, VALUE
    from wlcgcloud.config import KEYS

    options: dict[str, Any] = {}
    for key in (k for k in KEYS if k.name != "provider"):
        if key.kind == "bool":
            options[key.option] = options["--no-" + key.option[2:]] = FLAG
        else:
            options[key.option] = list(key.choices) or (f"@{key.name}" if key.name in ("flavor", "network") else VALUE)
    if edit:
        options["--unset"] = [k.name.replace("_", "-") for k in KEYS if k.name != "provider"]
    return options


def build_tree() -> dict[str, Any]:
    """cli/tree.json: walk the Typer app and describe commands, options and argument kinds for the completer."""
    import typer

    from wlcgcloud.cli import app
    from wlcgcloud.completion import ALIASES, FLAG, VALUE

    kinds = _option_kinds()

    def describe(cmd: Any, path: tuple[str, ...]) -> dict[str, Any]:
        node: dict[str, Any] = {"options": {}}
        for param in cmd.params:
            if param.param_type_name == "option":
                spec = FLAG if param.is_flag or param.count else kinds.get(param.name, VALUE)
                node["options"].update(dict.fromkeys([*param.opts, *param.secondary_opts], spec))
            elif param.param_type_name == "argument":
                node.setdefault("args", []).append(_argument_kind(path, param.name))
        if len(path) == 2 and path[0] == "profile" and path[1] in ("add", "edit"):
            node["options"].update(_key_options(edit=path[1] == "edit"))
        commands = getattr(cmd, "commands", None) or {}
        if commands:
            node["commands"] = {name: describe(sub, (*path, name)) for name, sub in commands.items() if not sub.hidden}
        aliases = {name: ALIASES[name] for name, sub in commands.items() if sub.hidden and name in ALIASES}
        if aliases:
            node["aliases"] = aliases
        return node

    return describe(typer.main.get_command(app), ())


def tree_json() -> str:
    """The text of cli/tree.json, as committed."""
    return json.dumps(build_tree(), indent=1, sort_keys=True) + "\n"


def help_json() -> str:
    """The text of cli/help.json: every visible command's --help as the CLI prints it at 80 columns."""
    import contextlib
    import io
    import os

    from wlcgcloud.cli import run
    from wlcgcloud.fasthelp import COLUMNS

    pages: dict[str, str] = {}
    groups: list[str] = []

    def walk(cmd: Any, path: tuple[str, ...]) -> None:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            run([*path, "--help"])
        pages[" ".join(path)] = printed.getvalue()
        commands = {name: sub for name, sub in (getattr(cmd, "commands", None) or {}).items() if not sub.hidden}
        if commands:
            groups.append(" ".join(path))
        for name, sub in commands.items():
            walk(sub, (*path, name))

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(COLUMNS)
    try:
        walk(_root(), ())
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return json.dumps({"groups": sorted(groups), "pages": pages}, indent=0, sort_keys=True) + "\n"


def completion_scripts() -> dict[str, str]:
    """completions/wlcgcloud.bash, _wlcgcloud (zsh) and wlcgcloud.fish, by file name."""
    from wlcgcloud.completion import SCRIPT_NAMES, SCRIPTS

    return {SCRIPT_NAMES[shell]: text for shell, text in SCRIPTS.items()}


def main() -> int:
    MAN.parent.mkdir(exist_ok=True)
    COMPLETIONS.mkdir(exist_ok=True)
    MAN.write_text(man_page(), encoding="utf-8")
    pages = command_pages()
    for stale in MAN.parent.glob("wlcgcloud-*.1"):
        if stale.name not in pages:
            stale.unlink()
    for name, text in pages.items():
        (MAN.parent / name).write_text(text, encoding="utf-8")
    scripts = completion_scripts()
    for name, text in scripts.items():
        (COMPLETIONS / name).write_text(text, encoding="utf-8")
    TREE.write_text(tree_json(), encoding="utf-8")
    from wlcgcloud.fasthelp import HELP_PATH

    HELP_PATH.write_text(help_json(), encoding="utf-8")
    print(f"wrote {MAN.relative_to(ROOT)}, {len(pages)} command pages, {len(scripts)} completion scripts, "
          f"{TREE.relative_to(ROOT)} and {HELP_PATH.relative_to(ROOT)}", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
