"""Completion through a real bash, from the committed tree; the tree must match the CLI."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from wlcgcloud.completion import TREE_PATH, complete
from wlcgcloud.manpage import build_tree

from conftest import Run, World

BASH = shutil.which("bash")
ZSH = shutil.which("zsh")
FISH = shutil.which("fish")


def test_committed_tree_matches_the_cli() -> None:
    committed = json.loads(TREE_PATH.read_text())
    assert committed == build_tree(), "wlcgcloud/cli/tree.json is stale: run  .venv/bin/python -m wlcgcloud.manpage"


SCRIPTS = Path(__file__).resolve().parent.parent / "completions"


def _env(world: World) -> dict[str, str]:
    return {**world.env(), "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}


def bash_complete(world: World, line: str) -> list[str]:
    """Type `line` in bash and press TAB: source the committed script, call its function, read COMPREPLY."""
    assert BASH
    words = line.split(" ")
    program = f"""
source {SCRIPTS / "wlcgcloud.bash"}
fn=$(complete -p wlcgcloud | sed -E 's/.*-F ([^ ]+) .*/\\1/')
COMP_WORDS=({" ".join(shlex.quote(w) for w in words)})
COMP_CWORD={len(words) - 1}
COMP_LINE={shlex.quote(line)}
$fn wlcgcloud "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    out = subprocess.run([BASH, "--norc", "-c", program], capture_output=True, text=True, env=_env(world), timeout=30)
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]


def zsh_complete(world: World, line: str) -> list[str]:
    """The committed `_wlcgcloud` in a real zsh: `words`/`CURRENT` set as compsys sets them; what reaches compadd.

    compadd and _files exist only inside a completion widget, so they are stood in for by functions that
    print what they were given; everything else (word handling, the call of wlcgcloud) is the script's own.
    """
    assert ZSH, "zsh is missing (Debian: zsh; dev/test installs it)"
    words = line.split(" ")
    program = f"""
compdef() {{ print -r -- "compdef $*" >&2; }}
source {SCRIPTS / "_wlcgcloud"}
compadd() {{ shift; print -rl -- "$@"; }}
_files() {{ print -r -- "<files>"; }}
words=({" ".join(shlex.quote(w) for w in words)})
CURRENT={len(words)}
_wlcgcloud
"""
    out = subprocess.run([ZSH, "-f", "-c", program], capture_output=True, text=True, env=_env(world), timeout=30)
    assert out.returncode == 0 and "compdef _wlcgcloud wlcgcloud" in out.stderr, out.stderr
    return [w for w in out.stdout.splitlines() if w]


def fish_complete(world: World, line: str) -> list[str]:
    """fish's own completion engine (`complete -C`) with the committed wlcgcloud.fish loaded."""
    assert FISH, "fish is missing (Debian: fish; dev/test installs it)"
    program = f"source {shlex.quote(str(SCRIPTS / 'wlcgcloud.fish'))}; complete -C {shlex.quote(line)}"
    env = {**_env(world), "XDG_DATA_HOME": str(world.root / "fish-data")}
    out = subprocess.run([FISH, "--no-config", "-c", program], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    return [w.split("\t")[0] for w in out.stdout.splitlines() if w]


SHELL_COMPLETERS = {"bash": bash_complete, "zsh": zsh_complete, "fish": fish_complete}


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


def test_completion_show_prints_the_committed_scripts(run: Run) -> None:
    for shell, name in (("bash", "wlcgcloud.bash"), ("zsh", "_wlcgcloud"), ("fish", "wlcgcloud.fish")):
        shown = run("completion", "show", shell)
        assert shown.code == 0 and shown.out == (SCRIPTS / name).read_text()
    refused = run("completion", "show", "tcsh")
    assert refused.code == 2 and "bash, zsh, fish" in refused.err


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


def test_man_pages_and_completion_scripts_are_generated_and_current() -> None:
    """man/*.1 and completions/* come from the CLI: regenerate with python -m wlcgcloud.manpage."""
    from wlcgcloud import manpage

    assert manpage.MAN.read_text(encoding="utf-8") == manpage.man_page(), "stale: python -m wlcgcloud.manpage"
    scripts = manpage.completion_scripts()
    assert set(scripts) == {p.name for p in manpage.COMPLETIONS.iterdir()}, "stale: python -m wlcgcloud.manpage"
    for name, text in scripts.items():
        assert (manpage.COMPLETIONS / name).read_text(encoding="utf-8") == text, f"stale {name}"
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
    pages = sorted(manpage.MAN.parent.glob("*.1"))
    assert pages, f"no man pages in {manpage.MAN.parent}"
    for page in pages:
        done = subprocess.run([groff, "-ww", "-man", "-Tutf8", str(page)], capture_output=True, text=True)
        assert done.returncode == 0 and done.stderr == "", (page.name, done.stderr)
        assert "EXIT STATUS" in re.sub(".\x08", "", done.stdout)  # (groff marks bold by overstriking)


# ----------------------------------------------------------------------------- bash, zsh and fish


def _cache(world: World, profiles: dict[str, dict[str, list[str]]]) -> None:
    world.state.mkdir(parents=True, exist_ok=True)
    (world.state / "completion.json").write_text(json.dumps({"version": 1, "profiles": profiles}))


@pytest.mark.parametrize("shell", sorted(SHELL_COMPLETERS))
@pytest.mark.usefixtures("two_profiles")
def test_every_shell_completes_commands_options_profiles_and_cached_fleets(world: World, shell: str) -> None:
    """The same cases through each committed script, in the real shell."""
    complete_in = SHELL_COMPLETERS[shell]
    _cache(world, {"cern-atlas": {"fleet": ["atlas-20261124-1a2b", "atlas-20261124-ffee"], "instance": ["5f1c-a"]},
                   "aws-cms": {"fleet": ["cms-20261124-0c0c"], "instance": ["i-0a1b2c3d4e5f67890"]}})  # fmt: skip
    assert complete_in(world, "wlcgcloud pro") == ["profile"]
    assert complete_in(world, "wlcgcloud profile s") == ["show"]
    assert complete_in(world, "wlcgcloud fleet list --o") == ["--output"]
    assert complete_in(world, "wlcgcloud profile show cern-") == ["cern-atlas"]  # a name with a dash
    assert sorted(complete_in(world, "wlcgcloud -p ")) == ["aws-cms", "cern-atlas"]
    assert sorted(complete_in(world, "wlcgcloud fleet show ")) == [
        "atlas-20261124-1a2b", "atlas-20261124-ffee", "cms-20261124-0c0c",
    ]  # fmt: skip
    assert complete_in(world, "wlcgcloud fleet terminate atlas-20261124-f") == ["atlas-20261124-ffee"]
    assert complete_in(world, "wlcgcloud -p aws-cms fleet show ") == ["cms-20261124-0c0c"]  # that profile's only
    assert complete_in(world, "wlcgcloud instance show -p cern-atlas ") == ["5f1c-a"]
    if shell != "bash":  # bash splits "--output=" at "=" itself (COMP_WORDBREAKS): the value is its own word
        assert complete_in(world, "wlcgcloud fleet list --output=j") == ["--output=json"]


@pytest.mark.parametrize("shell", sorted(SHELL_COMPLETERS))
def test_every_shell_falls_back_to_file_names_for_free_values(world: World, shell: str) -> None:
    (world.root / "proxy-for-completion.pem").write_text("x")
    found = SHELL_COMPLETERS[shell](world, f"wlcgcloud launch x --proxy {world.root}/proxy-for")
    if shell == "zsh":
        assert found == ["<files>"]  # zsh's _files does the rest inside the widget
    elif shell == "bash":  # an empty COMPREPLY under `complete -o default` makes readline offer file names
        assert found == []
        program = f"source {SCRIPTS / 'wlcgcloud.bash'}; complete -p wlcgcloud"
        registered = subprocess.run([BASH, "--norc", "-c", program], capture_output=True, text=True).stdout
        assert "-o default" in registered
    else:
        assert found == [f"{world.root}/proxy-for-completion.pem"]


@pytest.mark.parametrize("shell", sorted(SHELL_COMPLETERS))
def test_endorsed_titles_complete_as_one_word(world: World, shell: str) -> None:
    lists = world.state / "image-lists"
    lists.mkdir(parents=True)
    images = [{"identifier": "9bf762b9-4657-5c01-902d-d7ed4d0364fc", "title": "ATLAS worker node 1"}]
    (lists / "atlas.json").write_text(json.dumps({"name": "atlas", "images": images}))
    found = SHELL_COMPLETERS[shell](world, "wlcgcloud launch ATL")
    assert found == [{"bash": "ATLAS\\ worker\\ node\\ 1"}.get(shell, "ATLAS worker node 1")]
    assert SHELL_COMPLETERS[shell](world, "wlcgcloud image show 9bf") == [images[0]["identifier"]]


def test_zsh_completion_through_compsys_in_a_terminal(world: World, tmp_path: Path) -> None:
    """The whole path in an interactive zsh under tmux: compinit, fpath, TAB, what appears on the screen."""
    tmux = shutil.which("tmux")
    assert tmux and ZSH, "tmux and zsh are needed (dev/test installs zsh; tmux is on the machine)"
    _cache(world, {"p": {"fleet": ["atlas-20261124-1a2b"]}})
    zdot = tmp_path / "zdot"
    zdot.mkdir()
    (zdot / ".zshrc").write_text(
        f"fpath=({SCRIPTS} $fpath)\nautoload -U compinit && compinit -u -D\nPROMPT='$ '\n"
        f"export PATH={shlex.quote(os.path.dirname(sys.executable))}:$PATH\n"
    )
    env = {**_env(world), "ZDOTDIR": str(zdot), "TERM": "xterm"}
    socket = str(tmp_path / "tmux.sock")
    subprocess.run([tmux, "-S", socket, "new-session", "-d", "-x", "150", "-y", "20", ZSH, "-i"], env=env, check=True)
    try:
        screen = ""
        for typed, expected in (("wlcgcloud fleet sh", "$ wlcgcloud fleet show"), ("atl", "show atlas-20261124-1a2b")):
            subprocess.run([tmux, "-S", socket, "send-keys", typed, "Tab"], check=True)
            for _ in range(100):
                time.sleep(0.1)
                pane = [tmux, "-S", socket, "capture-pane", "-p"]
                screen = subprocess.run(pane, capture_output=True, text=True).stdout
                if expected in screen:
                    break
            assert expected in screen, screen
        assert "$ wlcgcloud fleet show atlas-20261124-1a2b" in screen, screen
    finally:
        subprocess.run([tmux, "-S", socket, "kill-server"], capture_output=True)


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_install_writes_where_the_shell_looks(run: Run, world: World, shell: str) -> None:
    done = run("completion", "install", shell, "-o", "json")
    assert done.code == 0, done.err
    report: Any = done.json()
    path = Path(report["path"])
    expected = {"bash": "wlcgcloud.bash", "zsh": "_wlcgcloud", "fish": "wlcgcloud.fish"}[shell]
    assert path.read_text() == (SCRIPTS / expected).read_text()
    assert path.is_relative_to(world.home) and report["next_step"]
    if shell == "zsh":
        assert f"fpath=({path.parent} $fpath)" in report["next_step"]


def test_completion_install_takes_the_shell_from_SHELL(run: Run, world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHELL", "/usr/bin/fish")
    done = run("completion", "install")
    assert done.code == 0 and (world.home / ".config/fish/completions/wlcgcloud.fish").exists()
    monkeypatch.setenv("SHELL", "/bin/tcsh")
    refused = run("completion", "install")
    assert refused.code == 2 and "bash|zsh|fish" in refused.err


def test_completion_install_into_an_unwritable_place_says_what_to_do(run: Run, world: World) -> None:
    (world.home / ".local").write_text("a file where a directory should be")
    refused = run("completion", "install", "bash")
    assert refused.code == 2 and "completion show bash" in refused.err


# ----------------------------------------------------------------------------- the cache


def test_the_cache_is_replaced_by_full_listings_and_added_to_by_narrow_ones(world: World) -> None:
    from wlcgcloud.completion_cache import remember

    remember("a", {"fleet": ["f1", "f2"], "instance": ["i1"]}, complete=True)
    remember("a", {"fleet": ["f3"]})
    assert complete(["wlcgcloud", "fleet", "show", ""], 3) == ["f1", "f2", "f3"]
    remember("a", {"fleet": ["f2"], "instance": []}, complete=True)
    assert complete(["wlcgcloud", "fleet", "show", ""], 3) == ["f2"]
    assert complete(["wlcgcloud", "instance", "show", ""], 3) == []
    assert (world.state / "completion.json").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError):
        remember("a", {"secret": ["x"]})


def test_a_broken_cache_completes_nothing_and_is_rewritten(world: World) -> None:
    from wlcgcloud.completion_cache import remember

    world.state.mkdir(parents=True)
    (world.state / "completion.json").write_text("{not json")
    assert complete(["wlcgcloud", "fleet", "show", ""], 3) == []
    remember("a", {"fleet": ["f1"]})
    assert complete(["wlcgcloud", "fleet", "show", ""], 3) == ["f1"]


def test_listings_and_launches_refresh_the_cache_from_the_cloud(
    run: Run, world: World, moto_ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """instance list (all of a profile: replaces) and fleet show (one fleet: adds) against moto."""
    from conftest import create_instances, ec2_profile, write_profiles

    write_profiles(world, {"aws-cms": ec2_profile(moto_ec2)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS_CMS", moto_ec2.secret_key)
    fleet = "cmp-" + os.urandom(4).hex()
    ids = create_instances(world, "aws-cms", "ami-03cf127a", "t3.micro", 2, fleet)
    _cache(world, {"aws-cms": {"fleet": ["long-gone"], "instance": ["i-long-gone"]}})
    assert run("fleet", "show", fleet, "-o", "json").code == 0
    cached = complete(["wlcgcloud", "fleet", "show", ""], 3)
    assert fleet in cached and "long-gone" in cached  # a one-fleet look adds
    assert run("instance", "list", "-o", "json").code == 0
    cached = complete(["wlcgcloud", "fleet", "show", ""], 3)
    assert fleet in cached and "long-gone" not in cached  # a full listing replaces
    assert set(ids) <= set(complete(["wlcgcloud", "instance", "terminate", "-p", "aws-cms", ""], 5))
    assert run("instance", "terminate", *ids, "--yes").code == 0
    assert run("instance", "list").code == 0
    assert fleet not in complete(["wlcgcloud", "fleet", "show", ""], 3)  # what ended is forgotten


def test_completion_details(run: Run, world: World) -> None:
    other = world.root / "other.toml"
    other.write_text('[profiles.elsewhere]\nprovider = "ec2"\nregion = "r"\n')
    assert complete(["wlcgcloud", "--config", str(other), "profile", "show", ""], 5) == ["elsewhere"]
    assert complete(["wlcgcloud", "profile", "list", "--output", "=", "j"], 5) == ["json"]
    assert complete(["wlcgcloud", "completion", "show", ""], 3) == ["bash", "zsh", "fish"]
    assert run("profile", "add", "p1", "--provider", "ec2", "--region", "r").code == 0
    assert complete(["wlcgcloud", "profile", "rm", ""], 3) == ["p1"]
