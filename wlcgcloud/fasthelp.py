"""Help without Typer: `--help` answered from the pages Typer itself printed, generated into cli/help.json.

`wlcgcloud --help`, `wlcgcloud fleet drain -h` and a group alone (`wlcgcloud`, `wlcgcloud fleet`)
are what people type most after completion; importing Typer and building the command tree costs
five times a bare Python start. `python -m wlcgcloud.manpage` renders every page through the
real CLI at a terminal 80 columns wide (Click never wraps wider) and a test keeps them identical
to what Typer prints now. Anything this cannot answer exactly (a narrower terminal, an option it
does not know, a word that is no command) goes to Typer, which says the same or says why not.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

HELP_PATH = Path(__file__).resolve().parent / "cli" / "help.json"
COLUMNS = 80  # the pages' width: Click wraps at min(terminal, 80) - 2
HELP_OPTIONS = ("--help", "-h")


def load() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(HELP_PATH.read_text(encoding="utf-8"))
    return data


def answer(args: Sequence[str], value_options: Collection[str], flags: Collection[str]) -> str | None:
    """The help page `args` ask for, exactly as Typer would print it, or None to let Typer answer.

    `value_options` and `flags` are the global options (the first take a value), which may come
    anywhere and change no page.
    """
    words: list[str] = []
    asked = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in HELP_OPTIONS:
            asked = True
        elif arg in value_options:
            i += 1
        elif arg.startswith("-") and arg not in flags:
            return None  # a command's own option, `--x=y` forms, `--`: Typer parses those
        elif not arg.startswith("-"):
            words.append(arg)
        i += 1
    if shutil.get_terminal_size().columns < COLUMNS:
        return None
    data = load()
    pages, groups = data["pages"], set(data["groups"])
    for cut in range(len(words), -1, -1):
        path = " ".join(words[:cut])
        if path not in pages:
            continue
        if cut == len(words):
            return str(pages[path]) if asked or path in groups else None  # a group alone prints its help
        # Words past a command: its arguments (help wins over them); past a group, a wrong command.
        return str(pages[path]) if asked and path not in groups else None
    return None
