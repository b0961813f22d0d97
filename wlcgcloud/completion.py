"""Shell completion answered without Typer, Rich or any cloud SDK.

The command tree is generated from the CLI itself into `cli/tree.json` (`python -m
wlcgcloud.completion > wlcgcloud/cli/tree.json`; a test fails when it is stale). Completing reads
that file and, for dynamic values such as profile names, the config file: never the network.

Protocol: the shell script sets `_WLCGCLOUD_COMPLETE=bash`, `COMP_WORDS` (the words, joined by
newlines) and `COMP_CWORD` (the index of the word being completed), runs `wlcgcloud`, and reads
one candidate per line from stdout.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

TREE_PATH = Path(__file__).parent / "cli" / "tree.json"
FLAG, VALUE = 0, 1  # option kinds in the tree; a list is a choice, "@kind" a dynamic value
ALIASES = {"ls": "list", "rm": "remove"}  # hidden short forms of the contract's verbs

BASH_SCRIPT = """\
# bash completion for wlcgcloud; load with: source <(wlcgcloud completion show bash)
_wlcgcloud_complete() {
    local IFS=$'\\n'
    local words
    printf -v words '%s\\n' "${COMP_WORDS[@]}"
    COMPREPLY=( $(COMP_WORDS="$words" COMP_CWORD="$COMP_CWORD" _WLCGCLOUD_COMPLETE=bash \\
                  "${COMP_WORDS[0]}" 2>/dev/null) )
}
complete -o default -F _wlcgcloud_complete wlcgcloud
"""


def load_tree() -> dict[str, Any]:
    """The generated command tree: options (with their kinds), arguments and subcommands."""
    tree: dict[str, Any] = json.loads(TREE_PATH.read_text(encoding="utf-8"))
    return tree


def child(node: dict[str, Any], word: str) -> dict[str, Any] | None:
    """The subcommand node `word` names under `node` (aliases included), or None."""
    name = node.get("aliases", {}).get(word, word)
    sub: dict[str, Any] | None = node.get("commands", {}).get(name)
    return sub


def _profiles(words: list[str]) -> list[str]:
    """Profile names from the config file (`--config` on the line wins); nothing when it is broken."""
    import tomllib

    path = os.environ.get("WLCGCLOUD_CONFIG")
    for i, word in enumerate(words[:-1]):
        if word == "--config":
            path = words[i + 1]
        elif word.startswith("--config="):
            path = word.split("=", 1)[1]
    if path:
        config = Path(path).expanduser()
    else:
        base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
        config = Path(base) / "wlcgcloud" / "config.toml"
    try:
        profiles = tomllib.loads(config.read_text(encoding="utf-8")).get("profiles", {})
    except (OSError, ValueError):
        return []
    return sorted(profiles) if isinstance(profiles, dict) else []


def _state_dir() -> Path:
    env = os.environ.get("WLCGCLOUD_STATE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "wlcgcloud"


def _subscriptions(words: list[str]) -> list[dict[str, Any]]:
    """The subscribed image lists' records (no signature work: completion only reads the index)."""
    found = []
    for meta in sorted((_state_dir() / "image-lists").glob("*.json")):
        try:
            found.append(json.loads(meta.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    return [f for f in found if isinstance(f, dict)]


def _endorsed(words: list[str]) -> list[str]:
    return sorted({i["identifier"] for s in _subscriptions(words) for i in s.get("images", []) if "identifier" in i})


def _lists(words: list[str]) -> list[str]:
    return sorted(str(s["name"]) for s in _subscriptions(words) if "name" in s)


def _fleets(words: list[str]) -> list[str]:
    """Fleet names the ledger knows (read-only, no network; nothing when there is no ledger)."""
    import sqlite3

    path = _state_dir() / "ledger.sqlite"
    if not path.exists():
        return []
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            rows = db.execute(
                "SELECT fleet FROM launches UNION SELECT fleet FROM instances WHERE fleet IS NOT NULL"
            ).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return []
    return sorted(str(r[0]) for r in rows)


BOOTSTRAPS = Path(__file__).parent / "context" / "bootstraps"


def _bootstraps(words: list[str]) -> list[str]:
    return [*sorted(p.stem for p in BOOTSTRAPS.glob("*.sh")), "list"]


def _settings(words: list[str]) -> list[str]:
    """`KEY=` for the settings of the bootstrap named on the line (all bootstraps' when none is)."""
    chosen = next((words[i + 1] for i, w in enumerate(words[:-1]) if w == "--bootstrap"), None)
    keys = set()
    for script in BOOTSTRAPS.glob("*.sh"):
        if chosen in (None, script.stem):
            for line in script.read_text(encoding="utf-8").splitlines():
                if line.startswith("# set "):
                    keys.add(line[6:].split("=")[0].split(" ")[0].split(":")[0] + "=")
    return sorted(keys)


DYNAMIC = {"@profile": _profiles, "@endorsed": _endorsed, "@list": _lists, "@bootstrap": _bootstraps,
           "@setting": _settings, "@fleet": _fleets}  # fmt: skip


def _values(spec: Any, words: list[str]) -> list[str]:
    if isinstance(spec, list):
        return [str(v) for v in spec]
    if isinstance(spec, str) and spec in DYNAMIC:
        return DYNAMIC[spec](words)
    return []


def complete(words: list[str], cword: int) -> list[str]:
    """Candidates for `words[cword]`, given the words before it (words[0] is the program)."""
    tree = load_tree()
    node = tree
    options: dict[str, Any] = dict(tree["options"])  # global options work at every level
    positional = 0
    i = 1
    while i < cword:
        word = words[i]
        if word.startswith("-"):
            if "=" not in word and options.get(word, FLAG) != FLAG:
                i += 1  # skip the option's value
        elif (sub := child(node, word)) is not None:
            node = sub
            options.update(node.get("options", {}))
            positional = 0
        else:
            positional += 1
        i += 1
    current = words[cword] if cword < len(words) else ""
    previous = words[cword - 1] if cword >= 1 else ""
    if previous == "=" and cword >= 2:  # bash splits `--output=` at "=" (COMP_WORDBREAKS)
        previous = words[cword - 2]
    if cword > 1 and previous.startswith("-") and options.get(previous, FLAG) != FLAG:
        candidates = _values(options[previous], words)
    elif current.startswith("-"):
        candidates = sorted(options)
    elif node.get("commands"):
        candidates = list(node["commands"])
    else:
        args = node.get("args", [])
        candidates = _values(args[min(positional, len(args) - 1)], words) if args else []
    return [c for c in candidates if c.startswith(current)]


def complete_from_environment() -> int:
    """Answer one completion request from the shell script (see the module docstring)."""
    words = os.environ.get("COMP_WORDS", "").split("\n")
    if words and words[-1] == "":
        words.pop()
    try:
        cword = int(os.environ.get("COMP_CWORD", "0"))
    except ValueError:
        return 1
    for candidate in complete(words, cword):
        print(candidate)
    return 0


def build_tree() -> dict[str, Any]:
    """Walk the Typer app (imports it) and describe commands, options and argument kinds."""
    import typer

    from wlcgcloud.cli import app
    from wlcgcloud.config import KEYS, PROVIDERS

    def option_spec(param: Any) -> Any:
        if param.is_flag or param.count:
            return FLAG
        if param.name in ("profile",):
            return "@profile"
        if param.name == "output":
            return ["table", "json", "yaml", "csv", "apel"]
        if param.name == "provider":
            return list(PROVIDERS)
        if param.name == "source":
            return ["clouds.yaml", "aws", "one"]
        if param.name == "credential":
            from wlcgcloud.cli.launch import CREDENTIALS

            return list(CREDENTIALS)
        if param.name == "bootstrap":
            return "@bootstrap"
        if param.name == "fleet_name":
            return "@fleet"
        if param.name == "by":
            from wlcgcloud.usage import GROUPS

            return list(GROUPS)
        if param.name in ("since", "until"):
            return ["today", "this-month", "last-month", "7d", "30d"]
        if param.name == "settings":
            return "@setting"
        if param.name == "state":
            from wlcgcloud.cli.instance import STATES

            return list(STATES)
        return VALUE

    def describe(cmd: Any, path: tuple[str, ...]) -> dict[str, Any]:
        node: dict[str, Any] = {"options": {}}
        for param in cmd.params:
            if param.param_type_name == "option":
                for name in [*param.opts, *param.secondary_opts]:
                    node["options"][name] = option_spec(param)
            elif param.param_type_name == "argument":
                is_profile = path[:1] == ("profile",) and path[-1] != "add" and param.name in ("name", "names")
                kind: Any = "@profile" if is_profile else ""
                if path[:1] == ("image",):
                    kind = {"image_id": "@endorsed", "name": "@list", "names": "@list"}.get(param.name, kind)
                if path == ("launch",) and param.name == "image":
                    kind = "@endorsed"
                if path[:1] == ("fleet",) and param.name in ("name", "names"):
                    kind = "@fleet"
                if path[:1] == ("completion",) and param.name == "shell":
                    kind = ["bash", "zsh", "fish"]
                node.setdefault("args", []).append(kind)
        if path in (("profile", "add"), ("profile", "edit")):
            for key in KEYS:
                if key.name == "provider":
                    continue
                node["options"][key.option] = FLAG if key.kind == "bool" else (list(key.choices) or VALUE)
                if key.kind == "bool":
                    node["options"]["--no-" + key.option[2:]] = FLAG
            if path == ("profile", "edit"):
                node["options"]["--unset"] = [k.name.replace("_", "-") for k in KEYS if k.name != "provider"]
        commands = getattr(cmd, "commands", None)
        if commands:
            node["commands"] = {name: describe(sub, (*path, name)) for name, sub in commands.items() if not sub.hidden}
            aliases = {name: ALIASES[name] for name, sub in commands.items() if sub.hidden and name in ALIASES}
            if aliases:
                node["aliases"] = aliases
        return node

    return describe(typer.main.get_command(app), ())


if __name__ == "__main__":
    json.dump(build_tree(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
