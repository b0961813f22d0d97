"""Shell completion answered without Typer, Rich or any cloud SDK, and the cache it reads.

The command tree is generated from the CLI itself into `cli/tree.json` by the generator
(`python -m wlcgcloud.manpage`, which never runs at completion time; a test fails when the file
is stale). Completing reads
that file, the config file (profile names), the subscribed image lists (endorsed identifiers
and titles) and the completion cache (`completion.json` in the state directory: fleet names,
instance ids, flavors and networks per profile): never the network.

The cache (wlcgcloud.completion_cache) is written by the commands that learn those names from
the clouds (`instance list`, `fleet list|show`, `launch`, `doctor`); this module only reads it.

Protocol: the shell script sets `_WLCGCLOUD_COMPLETE=<shell>`, `COMP_WORDS` (the words,
joined by newlines) and `COMP_CWORD` (the index of the word being completed), runs `wlcgcloud`,
and reads one candidate per line from stdout. The same protocol serves bash, zsh and fish.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wlcgcloud import bounded
from wlcgcloud.completion_cache import CACHED_KINDS, read_cache
from wlcgcloud.paths import default_config_path, state_dir

TREE_PATH = Path(__file__).parent / "cli" / "tree.json"
FLAG, VALUE = 0, 1  # option kinds in the tree; a list is a choice, "@kind" a dynamic value
ALIASES = {"ls": "list", "rm": "remove"}  # hidden short forms of the contract's verbs

BASH_SCRIPT = """\
# bash completion for wlcgcloud; load with: source <(wlcgcloud completion show bash)
_wlcgcloud_complete() {
    local words c
    local -a found
    printf -v words '%s\\n' "${COMP_WORDS[@]}"
    mapfile -t found < <(COMP_WORDS="$words" COMP_CWORD="$COMP_CWORD" _WLCGCLOUD_COMPLETE=bash \\
                         "${COMP_WORDS[0]}" 2>/dev/null)
    local IFS=$'\\n'
    if [[ "${found[*]}" != *[\\ $'\\t']* ]]; then
        COMPREPLY=("${found[@]}")
    else
        COMPREPLY=()
        for c in "${found[@]}"; do
            [[ $c == *[[:space:]]* ]] && printf -v c '%q' "$c"  # an image title: one word
            COMPREPLY+=("$c")
        done
    fi
}
complete -o default -F _wlcgcloud_complete wlcgcloud
"""

ZSH_SCRIPT = """\
#compdef wlcgcloud
# zsh completion for wlcgcloud; load with: source <(wlcgcloud completion show zsh)
# or put it in a directory of $fpath as _wlcgcloud (wlcgcloud completion install zsh)
_wlcgcloud() {
    local -a found
    found=("${(@f)$(COMP_WORDS="${(pj:\\n:)${(@Q)words}}" COMP_CWORD=$((CURRENT - 1)) \\
                    _WLCGCLOUD_COMPLETE=zsh "${words[1]}" 2>/dev/null)}")
    found=("${(@)found:#}")
    if (( ${#found} )); then
        compadd -- "${found[@]}"
    else
        _files
    fi
}
if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
    _wlcgcloud "$@"
else
    compdef _wlcgcloud wlcgcloud
fi
"""

FISH_SCRIPT = """\
# fish completion for wlcgcloud; load with: wlcgcloud completion show fish | source
# or install it: wlcgcloud completion install fish
function __wlcgcloud_complete
    set -l words (commandline -opc)
    set -l current (commandline -ct | string unescape)
    set -lx COMP_WORDS (string join \\n -- $words $current | string collect)
    set -lx COMP_CWORD (count $words)
    set -lx _WLCGCLOUD_COMPLETE fish
    set -l found ($words[1] 2>/dev/null)
    if test (count $found) -gt 0
        printf '%s\\n' $found
    else
        __fish_complete_path $current
    end
end
complete -c wlcgcloud -f -a '(__wlcgcloud_complete)'
"""

SCRIPTS = {"bash": BASH_SCRIPT, "zsh": ZSH_SCRIPT, "fish": FISH_SCRIPT}
SCRIPT_NAMES = {"bash": "wlcgcloud.bash", "zsh": "_wlcgcloud", "fish": "wlcgcloud.fish"}  # in completions/


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
    config = Path(path).expanduser() if path else default_config_path()
    try:  # the config's own bounds (wlcgcloud.config reads it the same way): a TAB never hangs on /dev/zero
        text = bounded.read_bytes(config, bounded.CONFIG_SIZE).decode("utf-8")
        if bounded.too_deep(text, dotted_keys=True):
            return []
        profiles = tomllib.loads(text).get("profiles", {})
    except (OSError, ValueError, RecursionError):
        return []
    return sorted(profiles) if isinstance(profiles, dict) else []


def _subscriptions(words: list[str]) -> list[dict[str, Any]]:
    """The subscribed image lists' records (no signature work: completion only reads the index)."""
    found = []
    for meta in sorted((state_dir() / "image-lists").glob("*.json")):
        try:
            found.append(bounded.read_state_json(meta))
        except (OSError, ValueError):
            continue
    return [f for f in found if isinstance(f, dict)]


def _endorsed(words: list[str]) -> list[str]:
    """Endorsed identifiers and titles, so `launch "ATLAS wo<TAB>` works as well as a UUID."""
    found: set[str] = set()
    for s in _subscriptions(words):
        for image in s.get("images", []):
            found.update(str(image[k]) for k in ("identifier", "title") if image.get(k))
    return sorted(found)


def _lists(words: list[str]) -> list[str]:
    return sorted(str(s["name"]) for s in _subscriptions(words) if "name" in s)


def _line_profiles(words: list[str]) -> list[str]:
    """Profiles named before the word being completed (`-p a -p b`, `--profile=a`, `profile edit NAME`)."""
    named = []
    before = words[:-1]
    for i, word in enumerate(before):
        if word in ("-p", "--profile") and i + 1 < len(before):
            named.append(before[i + 1])
        elif word.startswith("--profile="):
            named.append(word.split("=", 1)[1])
        elif word.startswith("-p") and len(word) > 2 and not word.startswith("--"):
            named.append(word[2:])
    if not named and before[1:3] == ["profile", "edit"] and len(before) > 3:
        named.append(before[3])
    return named


def _cached(kind: str) -> Callable[[list[str]], list[str]]:
    def values(words: list[str]) -> list[str]:
        profiles = read_cache()
        found: set[str] = set()
        for name in _line_profiles(words) or list(profiles):
            entry = profiles.get(name)
            if isinstance(entry, dict) and isinstance(entry.get(kind), list):
                found.update(v for v in entry[kind] if isinstance(v, str))
        return sorted(found)

    return values


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
           "@setting": _settings, **{f"@{kind}": _cached(kind) for kind in CACHED_KINDS}}  # fmt: skip


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
    while i < min(cword, len(words)):
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
    current = re.sub(r"\\(.)", r"\1", current.lstrip("'\""))  # bash passes the word as typed: "ATLAS\ wo
    previous = words[cword - 1] if cword >= 1 else ""
    if previous == "=" and cword >= 2:  # bash splits `--output=` at "=" (COMP_WORDBREAKS)
        previous = words[cword - 2]
    name, equals, value = current.partition("=")
    if cword > 1 and previous.startswith("-") and options.get(previous, FLAG) != FLAG:
        candidates = _values(options[previous], words)
    elif current.startswith("--") and equals and options.get(name, FLAG) != FLAG:  # zsh, fish: --output=js
        return [f"{name}={v}" for v in _values(options[name], words) if v.startswith(value)]
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
    words += [""] * (cword + 1 - len(words))  # the word being completed may be empty and not passed (fish)
    for candidate in complete(words, cword):
        print(candidate)
    return 0
