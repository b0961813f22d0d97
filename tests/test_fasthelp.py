"""Help answered without Typer (wlcgcloud.fasthelp) is exactly what Typer prints, or is left to Typer."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys

import pytest

from wlcgcloud.__main__ import GLOBAL_FLAGS, GLOBAL_VALUE_OPTIONS
from wlcgcloud.fasthelp import HELP_PATH, answer, load


def typer_prints(args: list[str], monkeypatch: pytest.MonkeyPatch, columns: int = 80) -> str:
    """What the Typer CLI itself prints for `args` (global options hoisted, as __main__ does)."""
    from wlcgcloud.__main__ import hoist_global_options
    from wlcgcloud.cli import run

    monkeypatch.setenv("COLUMNS", str(columns))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run(hoist_global_options(args)) == 0
    return printed.getvalue()


def fast(args: list[str]) -> str | None:
    return answer(args, GLOBAL_VALUE_OPTIONS, GLOBAL_FLAGS)


def test_the_committed_pages_are_current() -> None:
    from wlcgcloud.manpage import help_json

    assert HELP_PATH.read_text() == help_json(), "wlcgcloud/cli/help.json is stale: run  python -m wlcgcloud.manpage"


def test_every_page_and_every_way_to_ask_for_it_is_what_typer_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    data = load()
    assert len(data["pages"]) > 40 and "fleet drain" in data["pages"]
    for path in data["pages"]:
        words = path.split()
        asks = [[*words, "--help"], [*words, "-h"], ["-o", "json", *words, "--help"], [*words, "--debug", "-h"]]
        if path in data["groups"]:
            asks.append(words)  # a group alone prints its help
        else:
            asks.append([*words, "an-argument", "--help"])  # help wins over a command's arguments
        for args in asks:
            page = fast(args)
            assert page is not None, args
            assert page == typer_prints(args, monkeypatch), args


def test_what_only_typer_can_answer_is_left_to_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    for args in (
        ["fleet", "nosuch", "--help"],  # an unknown command: Typer's error
        ["launch", "--count", "3", "--help"],  # a command's own option
        ["fleet", "show"],  # a command without its argument: it runs (and says what is missing)
        ["launch", "IMAGE"],
        ["--output=json", "--help"],
    ):
        assert fast(args) is None, args
    monkeypatch.setenv("COLUMNS", "60")  # Click wraps narrower: only Typer knows how
    assert fast(["fleet", "--help"]) is None
    assert typer_prints(["fleet", "--help"], monkeypatch, 60) != json.loads(HELP_PATH.read_text())["pages"]["fleet"]


def test_help_imports_neither_typer_nor_an_sdk() -> None:
    code = (
        "import sys\nfrom wlcgcloud.__main__ import main\n"
        "assert main(['fleet', 'drain', '--help']) == 0 and main([]) == 0\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('typer', 'click', 'rich', 'boto3', 'openstack')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"COLUMNS": "100"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
