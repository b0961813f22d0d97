"""Commands of the contract whose issues have not landed yet.

Each one is in the command tree (so help, completion and man pages show the whole contract)
and says plainly that it is not yet available, with exit code 2. An issue that implements a
command moves it out of here into its own module.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from wlcgcloud.cli.common import new_app
from wlcgcloud.errors import NotYetAvailable

PENDING = {"allow_extra_args": True, "ignore_unknown_options": True}

NOUNS: dict[str, tuple[str, dict[str, str]]] = {}

COMMANDS: dict[str, str] = {}
ORDER = ("image", "launch", "fleet", "instance", "usage", "doctor")  # the contract's


def pending_command(name: str, help_text: str) -> Callable[[typer.Context], None]:
    def command(ctx: typer.Context) -> None:
        raise NotYetAvailable(name)

    command.__doc__ = help_text + "\n\n(Not yet available in this version.)"
    return command


def register(app: typer.Typer, ready: dict[str, typer.Typer | Callable[..., None]]) -> None:
    """Add the pending nouns and commands, and the `ready` sub-apps and commands, in the contract's order."""
    for name in ORDER:
        done = ready.get(name)
        if isinstance(done, typer.Typer):
            app.add_typer(done, name=name)
            continue
        if done is not None:
            app.command(name)(done)
            continue
        if name in COMMANDS:
            app.command(name, context_settings=PENDING)(pending_command(name, COMMANDS[name]))
            continue
        help_text, verbs = NOUNS[name]
        sub = new_app(help_text)
        for verb, verb_help in verbs.items():
            sub.command(verb, context_settings=PENDING)(pending_command(f"{name} {verb}", verb_help))
        app.add_typer(sub, name=name)
