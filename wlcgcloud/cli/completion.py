"""`wlcgcloud completion ...`: the shell scripts that call wlcgcloud's own completer."""

from __future__ import annotations

from typing import Annotated

import typer

from wlcgcloud.cli.common import new_app
from wlcgcloud.errors import NotYetAvailable, UsageError

app = new_app("Shell completion scripts for bash, zsh and fish.")

SHELLS = ("bash", "zsh", "fish")


@app.command(
    "show",
    epilog="\b\nExamples:\n  source <(wlcgcloud completion show bash)\n"
    "  wlcgcloud completion show bash > ~/.local/share/bash-completion/completions/wlcgcloud",
)
def show(shell: Annotated[str, typer.Argument(help="bash | zsh | fish", metavar="SHELL")]) -> None:
    """Print the completion script for a shell. Completion reads only local files, never the network."""
    from wlcgcloud.completion import BASH_SCRIPT

    if shell not in SHELLS:
        raise UsageError(f"unknown shell '{shell}'; use one of {', '.join(SHELLS)}.")
    if shell != "bash":
        raise NotYetAvailable(f"completion show {shell}")
    print(BASH_SCRIPT, end="")


@app.command("install")
def install(shell: Annotated[str | None, typer.Argument(help="bash | zsh | fish", metavar="SHELL")] = None) -> None:
    """Install the completion script for your shell. Not yet available: use 'completion show bash'."""
    raise NotYetAvailable("completion install")
