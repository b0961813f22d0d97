"""`wlcgcloud completion ...`: the shell scripts that call wlcgcloud's own completer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from wlcgcloud.cli.common import emit, new_app
from wlcgcloud.errors import ConfigError, UsageError
from wlcgcloud.output import Column

app = new_app("Shell completion scripts for bash, zsh and fish.")

SHELLS = ("bash", "zsh", "fish")


def _shell(shell: str | None) -> str:
    if shell is None:
        shell = Path(os.environ.get("SHELL", "")).name
        if shell not in SHELLS:
            raise UsageError(
                f"cannot tell your shell from $SHELL ('{shell or 'unset'}'); name it: "
                "wlcgcloud completion install bash|zsh|fish."
            )
    if shell not in SHELLS:
        raise UsageError(f"unknown shell '{shell}'; use one of {', '.join(SHELLS)}.")
    return shell


def install_path(shell: str) -> Path:
    """Where each shell looks for completions on its own (no rc file is edited)."""
    home = Path.home()
    data = Path(os.environ.get("XDG_DATA_HOME") or home / ".local/share")
    config = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    return {
        "bash": data / "bash-completion/completions/wlcgcloud",  # bash-completion loads it on first TAB
        "zsh": data / "zsh/site-functions/_wlcgcloud",
        "fish": config / "fish/completions/wlcgcloud.fish",  # fish loads it on first TAB
    }[shell]


COLUMNS = [Column("shell", "SHELL"), Column("path", "PATH"), Column("next_step", "NEXT STEP")]

NEXT_STEP = {
    "bash": "open a new shell (needs the bash-completion package; else add 'source {path}' to ~/.bashrc)",
    "zsh": "add 'fpath=({dir} $fpath)' before 'compinit' in ~/.zshrc, then open a new shell",
    "fish": "open a new shell",
}


@app.command(
    "show",
    epilog="\b\nExamples:\n  source <(wlcgcloud completion show bash)\n  source <(wlcgcloud completion show zsh)\n"
    "  wlcgcloud completion show fish | source\n"
    "  wlcgcloud completion show bash > ~/.local/share/bash-completion/completions/wlcgcloud",
)
def show(shell: Annotated[str, typer.Argument(help="bash | zsh | fish", metavar="SHELL")]) -> None:
    """Print the completion script for a shell. Completion reads only local files, never the network."""
    from wlcgcloud.completion import SCRIPTS

    print(SCRIPTS[_shell(shell)], end="")


@app.command(
    "install",
    epilog="\b\nExamples:\n  wlcgcloud completion install          # the shell in $SHELL\n"
    "  wlcgcloud completion install zsh -o json",
)
def install(
    ctx: typer.Context,
    shell: Annotated[
        str | None, typer.Argument(help="bash | zsh | fish (default: from $SHELL)", metavar="SHELL")
    ] = None,
) -> None:
    """Write the completion script where your shell finds it (bash-completion, zsh fpath, fish).

    No rc file is edited: for zsh the next step (adding the directory to fpath) is printed.
    """
    from wlcgcloud.completion import SCRIPTS
    from wlcgcloud.config import atomic_write

    chosen = _shell(shell)
    path = install_path(chosen)
    try:
        atomic_write(path, SCRIPTS[chosen], mode=0o644, what="the completion script")
    except ConfigError as exc:
        raise UsageError(f"{exc.message} Print it instead: wlcgcloud completion show {chosen} > FILE") from None
    step = NEXT_STEP[chosen].format(path=path, dir=path.parent)
    emit(ctx, {"shell": chosen, "path": str(path), "next_step": step}, COLUMNS)
