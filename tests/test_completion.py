"""Completion through a real bash, from the committed tree; the tree must match the CLI."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from wlcgcloud.completion import TREE_PATH, build_tree, complete

from conftest import Run, World

BASH = shutil.which("bash")


def test_committed_tree_matches_the_cli() -> None:
    committed = json.loads(TREE_PATH.read_text())
    assert committed == build_tree(), (
        "wlcgcloud/cli/tree.json is stale: run  .venv/bin/python -m wlcgcloud.completion > wlcgcloud/cli/tree.json"
    )


def bash_complete(world: World, line: str) -> list[str]:
    """Type `line` in bash and press TAB: source the script, call its function, read COMPREPLY."""
    assert BASH
    script = subprocess.run(
        [sys.executable, "-m", "wlcgcloud", "completion", "show", "bash"],
        capture_output=True,
        text=True,
        env=world.env(),
        check=True,
    ).stdout
    (world.root / "wlcgcloud.bash").write_text(script)
    words = line.split(" ")
    program = f"""
source {world.root / "wlcgcloud.bash"}
fn=$(complete -p wlcgcloud | sed -E 's/.*-F ([^ ]+) .*/\\1/')
COMP_WORDS=({" ".join(repr(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={line!r}
$fn wlcgcloud "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {**world.env(), "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    out = subprocess.run([BASH, "--norc", "-c", program], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]


@pytest.fixture
def two_profiles(run: Run) -> None:
    assert run("profile", "add", "cern-atlas", "--provider", "openstack", "--auth-url", "https://k/v3").code == 0
    assert run("profile", "add", "aws-cms", "--provider", "ec2", "--region", "eu-west-1").code == 0


@pytest.mark.usefixtures("two_profiles")
def test_bash_completes_commands_options_and_profile_names(world: World) -> None:
    assert bash_complete(world, "wlcgcloud pro") == ["profile"]
    assert bash_complete(world, "wlcgcloud profile s") == ["show"]
    assert bash_complete(world, "wlcgcloud profile show ") == ["aws-cms", "cern-atlas"]
    assert bash_complete(world, "wlcgcloud profile show cern-") == ["cern-atlas"]  # a name with a dash
    assert bash_complete(world, "wlcgcloud -p ") == ["aws-cms", "cern-atlas"]
    assert bash_complete(world, "wlcgcloud profile list -o ") == ["table", "json", "yaml", "csv", "apel"]
    assert bash_complete(world, "wlcgcloud profile add x --prov") == ["--provider"]
    assert bash_complete(world, "wlcgcloud profile add x --provider o") == ["openstack", "opennebula"]
    assert "--auth-url" in bash_complete(world, "wlcgcloud profile add x --au")


def test_complete_function_directly(two_profiles: None) -> None:
    assert complete(["wlcgcloud", "profile", "edit", "cern-atlas", "--unset", "key"], 5) == ["key-name"]
    assert complete(["wlcgcloud", "--config"], 1) == ["--config"]
    assert "launch" in complete(["wlcgcloud", ""], 1)


def test_completion_survives_a_broken_config(world: World) -> None:
    world.config.parent.mkdir(parents=True)
    world.config.write_text("[profiles.a\n")
    assert complete(["wlcgcloud", "profile", "show", ""], 3) == []


def test_completion_show_other_shells_not_yet(run: Run) -> None:
    assert run("completion", "show", "zsh").code == 2
    assert run("completion", "show", "tcsh").code == 2


def test_instance_state_values_complete() -> None:
    assert complete(["wlcgcloud", "instance", "list", "--state", "st"], 4) == ["stopping", "stopped"]
    assert "--fleet" in complete(["wlcgcloud", "instance", "list", "--f"], 3)


@pytest.mark.usefixtures("two_profiles")
def test_launch_completes_credentials_bootstraps_their_settings_and_profiles(world: World) -> None:
    assert bash_complete(world, "wlcgcloud launch x --credential ") == ["auto", "x509", "token", "none"]
    assert bash_complete(world, "wlcgcloud launch x --bootstrap ") == ["htcondor", "script", "list"]
    assert bash_complete(world, "wlcgcloud launch x --bootstrap script --set PILOT_") == [
        "PILOT_ARGS=", "PILOT_SHA256=", "PILOT_URL=", "PILOT_USER=",
    ]  # fmt: skip
    assert bash_complete(world, "wlcgcloud launch x -p aws") == ["aws-cms"]
    assert "--render-user-data" in bash_complete(world, "wlcgcloud launch x --re")


def test_man_page_and_bash_script_are_generated_and_current() -> None:
    """man/wlcgcloud.1 and completions/wlcgcloud.bash come from the CLI: regenerate with python -m wlcgcloud.manpage."""
    from wlcgcloud import manpage

    assert manpage.MAN.read_text(encoding="utf-8") == manpage.man_page(), "stale: python -m wlcgcloud.manpage"
    assert manpage.BASH.read_text(encoding="utf-8") == manpage.bash_script(), "stale: python -m wlcgcloud.manpage"
    page = manpage.MAN.read_text(encoding="utf-8")
    for command in ("wlcgcloud instance list", "wlcgcloud image subscribe", "wlcgcloud profile test"):
        assert f"\\fB{command}\\fR" in page
    assert ".SH EXIT STATUS" in page and "\\fB--fleet, -f\\fR" in page
    pages = manpage.command_pages()
    assert set(pages) == {f"wlcgcloud-{c}.1" for c in manpage.CONTRACT_ORDER}
    committed = {p.name for p in manpage.MAN.parent.glob("wlcgcloud-*.1")}
    assert committed == set(pages), "stale: python -m wlcgcloud.manpage"
    for name, text in pages.items():
        assert (manpage.MAN.parent / name).read_text(encoding="utf-8") == text, f"stale {name}"
    assert "[\\fIOPTIONS\\fR] IMAGE" in pages["wlcgcloud-launch.1"] and ".SH SEE ALSO" in pages["wlcgcloud-launch.1"]


def test_man_pages_render_without_warnings() -> None:
    """`groff -ww` (all warnings) on every page: none, and `man -l` can show them."""
    import shutil
    import subprocess

    from wlcgcloud import manpage

    groff = shutil.which("groff")
    if groff is None:
        pytest.fail("groff is missing (Debian: groff-base, which man-db needs)", pytrace=False)
    for page in sorted(manpage.MAN.parent.glob("*.1")):
        done = subprocess.run([groff, "-ww", "-man", "-Tutf8", str(page)], capture_output=True, text=True)
        assert done.returncode == 0 and done.stderr == "", (page.name, done.stderr)
        assert "EXIT STATUS" in re.sub(".\x08", "", done.stdout)  # (groff marks bold by overstriking)
