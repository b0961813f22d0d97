"""What every command shares: the global options, rendering to stdout, messages to stderr, prompts."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from wlcgcloud import output
from wlcgcloud.config import Config, Profile, load_config
from wlcgcloud.errors import UsageError, WlcgError
from wlcgcloud.escape import escape_controls
from wlcgcloud.paths import default_config_path


@dataclass
class Globals:
    """The global options of the contract, after environment defaults are applied."""

    profiles: list[str] = field(default_factory=list)
    output: str = "table"
    query: str | None = None
    config_path: Path = field(default_factory=default_config_path)
    yes: bool = False
    verbose: int = 0
    debug: bool = False
    no_color: bool = False
    wait_lock: float = 0.0  # seconds a command that changes a fleet waits for another to release it
    _config: Config | None = None

    def config(self) -> Config:
        """The loaded config (read once per invocation)."""
        if self._config is None:
            self._config = load_config(self.config_path)
        return self._config


@contextlib.contextmanager
def changing(ctx: typer.Context, fleets: Sequence[str | None]) -> Iterator[Any]:
    """The ledger, with the lock of each fleet held while the block changes them (none for fleet-less
    instances). Another wlcgcloud holding one is exit 2 naming it, or a wait with --wait-lock."""
    from wlcgcloud.ledger import open_ledger

    g = globals_of(ctx)

    def waiting(refusal: WlcgError) -> None:
        info(f"waiting up to {g.wait_lock:.0f} s (--wait-lock): {refusal.message}")

    names = [f for f in fleets if f]
    with open_ledger(g.config()) as ledger, ledger.fleet_lock(names, ctx.command_path, g.wait_lock, waiting):
        yield ledger


def new_app(help: str, **kw: Any) -> typer.Typer:
    """A Typer (sub-)app with the house settings.

    Plain Click help, not Typer's Rich help: Typer's rich_utils imports rich.markdown and
    markdown-it on every `--help` (+~80 ms), which would break the start-up budget.
    """
    kw.setdefault("no_args_is_help", True)
    return typer.Typer(
        help=help,
        rich_markup_mode=None,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        **kw,
    )


def globals_of(ctx: typer.Context) -> Globals:
    obj = ctx.find_root().obj
    if not isinstance(obj, Globals):  # a command invoked without the root callback (never in normal use)
        obj = Globals()
        ctx.find_root().obj = obj
    return obj


def emit(ctx: typer.Context, data: Any, columns: Sequence[output.Column] | None = None) -> None:
    """Render a command's result to stdout in the format and with the query the user chose."""
    g = globals_of(ctx)
    output.render(data, fmt=g.output, query=g.query, columns=columns, color=not g.no_color)


def _stderr_color(g: Globals | None) -> bool:
    return sys.stderr.isatty() and "NO_COLOR" not in os.environ and not (g and g.no_color)


def info(message: str) -> None:
    """A progress or confirmation line for people: stderr, never stdout."""
    print(escape_controls(message, keep_newlines=True), file=sys.stderr)


def warn(message: str, g: Globals | None = None) -> None:
    prefix = "\x1b[33mwarning:\x1b[0m" if _stderr_color(g) else "warning:"
    print(f"{prefix} {escape_controls(message, keep_newlines=True)}", file=sys.stderr)


def verbose(g: Globals, message: str) -> None:
    if g.verbose:
        print(message, file=sys.stderr)


@contextlib.contextmanager
def working(g: Globals, message: str) -> Iterator[None]:
    """A spinner with `message` on stderr while the clouds are asked, only when a person watches."""
    if not sys.stderr.isatty() or g.debug:
        yield
        return
    from rich.console import Console

    with Console(stderr=True, no_color=g.no_color).status(message):
        yield


def interactive() -> bool:
    """True when a person can answer a prompt: stdin and stderr are terminals."""
    return sys.stdin.isatty() and sys.stderr.isatty()


def confirm(g: Globals, action: str) -> None:
    """Ask before `action` (e.g. "remove profile 'x'"); `--yes` skips it; no terminal and no `--yes`: exit 2."""
    if g.yes:
        return
    if not interactive():
        raise UsageError(f"to {action}, confirmation is needed and stdin is not a terminal.", "Pass --yes.")
    print(f"Really {action}? [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise UsageError(f"not confirmed; did not {action}.")


def read_secret(label: str, from_stdin: bool, required: bool = False) -> str | None:
    """A secret from `--secret-stdin`, else a hidden prompt on a terminal, else none.

    With `required` (the user asked to be prompted), no terminal is a usage error, not a silent skip.
    """
    if from_stdin:
        from wlcgcloud import bounded

        line = sys.stdin.readline(bounded.SECRET_SIZE + 1)  # bounded: `< /dev/zero` must not fill memory
        if len(line) > bounded.SECRET_SIZE:
            limit = bounded.size_text(bounded.SECRET_SIZE)
            raise UsageError(f"--secret-stdin: the first line is longer than {limit}; not a secret.")
        value = line.rstrip("\r\n")
        if not value:
            raise UsageError("--secret-stdin was given but standard input was empty.")
        return value
    if not interactive():
        if required:
            raise UsageError("cannot prompt for the secret: stdin is not a terminal.", "Use --secret-stdin.")
        return None
    import getpass

    try:
        value = getpass.getpass(f"{label} (input hidden; empty to skip): ")
    except EOFError:  # Ctrl-D: the same as an empty answer
        print(file=sys.stderr)
        return None
    return value or None


def read_profiles(g: Globals) -> list[Profile]:
    """Read commands use every profile unless -p or WLCGCLOUD_PROFILE narrows them."""
    return g.config().select(g.profiles, all_when_empty=True)


def report_failures(g: Globals, failures: Sequence[tuple[str, WlcgError]], asked: int) -> None:
    """Profiles that did not answer, one warning line each; when none answered, the first is the error."""
    rest = list(failures)
    if rest and len(rest) == asked:
        first = rest.pop(0)[1]
        for _, error in rest:
            warn(str(error), g)
        raise first
    for _, error in rest:
        warn(str(error), g)


def terminate_confirmed(
    ctx: typer.Context,
    g: Globals,
    victims: Sequence[Any],
    what: str,
    dry_run: bool,
    profiles: Sequence[Profile],
    columns: Sequence[output.Column],
    also: Sequence[dict[str, Any]] = (),
) -> None:
    """The one way instances are terminated from the CLI (`instance terminate`, `fleet terminate|scale|reap`).

    Shows what will die, stops there with --dry-run, asks (or --yes), terminates per profile in
    parallel (the ledger records the ends), warns per failure; exits 0, 7 or the failures' class.
    `also`: rows of the same command about instances it did not terminate (asked to drain instead).
    """
    from wlcgcloud import fleet
    from wlcgcloud.errors import partial_exit

    if victims:
        info(f"{'Would terminate' if dry_run else 'To terminate'}: {len(victims)} instance(s) ({what}):")
    for inst in victims:
        since = inst.to_dict()["launched_at"] or "-"
        name = f"  {inst.name}" if inst.name and inst.name != inst.id and inst.name != inst.fleet else ""
        info(f"  {inst.id}{name}  fleet {inst.fleet or '-'}  profile {inst.profile}  {inst.state}  since {since}")
    if dry_run:
        info(f"dry run: would terminate {len(victims)} instance(s) ({what}).")
        emit(ctx, [*({**fleet.Terminated(i, None).to_dict(), "terminated": False} for i in victims), *also], columns)
        return
    if not victims:
        info(f"Nothing to terminate ({what}).")
        emit(ctx, list(also), columns)
        return
    confirm(g, f"terminate {len(victims)} instance(s) ({what})")
    with changing(ctx, [i.fleet for i in victims]) as ledger, working(g, f"Terminating {len(victims)} instance(s) ..."):
        results = fleet.terminate(profiles, fleet.by_profile(victims), ledger)
    failed = [r for r in results if r.error]
    for r in failed:
        reason = (r.error or "").removeprefix(f"profile '{r.instance.profile}': ")
        warn(f"profile '{r.instance.profile}': {r.instance.id} was not terminated: {reason}", g)
    emit(ctx, [*(r.to_dict() for r in results), *also], columns)
    raise typer.Exit(partial_exit([r.code for r in failed], len(results)))
