"""The command tree of the contract: one Typer sub-app per noun, global options on the root.

Thin by design: each command parses, calls one domain function, renders. No cloud SDK is
imported here.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any

import typer

from wlcgcloud import __version__
from wlcgcloud.cli import completion, fleet, image, instance, launch, ledger, profile, usage
from wlcgcloud.cli.common import Globals, new_app
from wlcgcloud.errors import UsageError

OUTPUTS = ("table", "json", "yaml", "csv", "apel")
# wlcgcloud's own environment variables (and WLCGCLOUD_SECRET_<PROFILE>): any other WLCGCLOUD_ name is a typo
# that would silently change nothing (a misspelt WLCGCLOUD_LEDGER would split a team's ledger in two).
PER_NAME = ("WLCGCLOUD_SECRET_", "WLCGCLOUD_SET_")  # a profile's secret; a bootstrap setting for fleet maintain
VARIABLES = ("WLCGCLOUD_CONFIG", "WLCGCLOUD_STATE_DIR", "WLCGCLOUD_PROFILE", "WLCGCLOUD_OUTPUT", "WLCGCLOUD_LEDGER",
             "WLCGCLOUD_LEDGER_PASSWORD", "WLCGCLOUD_WAIT_LOCK", "WLCGCLOUD_COMPLETE")  # fmt: skip

app = new_app(
    "Launch endorsed VM images with forwarded grid credentials on EC2, OpenStack and "
    "OpenNebula; list, resize and account for the fleets.\n\n"
    "Global options may also be given after the command.",
    name="wlcgcloud",
    epilog=(
        "\b\nExamples:\n"
        "  wlcgcloud profile import\n"
        "  wlcgcloud profile list -o json\n"
        "  wlcgcloud instance list -p cern-atlas --query '[].id'\n\n"
        "\b\nExit codes: 0 ok, 2 usage, 3 configuration, 4 authentication, 5 refused by policy,\n"
        "6 cloud unreachable, 7 partial success, 130 interrupted."
    ),
)


def _show_version(value: bool) -> None:
    if value:  # normally answered earlier by wlcgcloud.__main__, before Typer is imported
        print(f"wlcgcloud {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    profile: Annotated[
        list[str] | None,
        typer.Option(
            "--profile", "-p", help="Profile(s) to use; repeatable. [env: WLCGCLOUD_PROFILE, comma-separated]"
        ),
    ] = None,
    output: Annotated[
        str,
        typer.Option("--output", "-o", envvar="WLCGCLOUD_OUTPUT", help="table | json | yaml | csv (usage: apel)"),
    ] = "table",
    query: Annotated[str | None, typer.Option("--query", help="JMESPath applied to the JSON form.")] = None,
    config: Annotated[
        Path | None,
        # readable=False: a config we cannot read is a configuration error (3) said by load_config, not a usage error.
        typer.Option("--config", envvar="WLCGCLOUD_CONFIG", readable=False, help="Config file.", show_default=False),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Answer yes to confirmations.")] = False,
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More detail on stderr.")] = 0,
    debug: Annotated[bool, typer.Option("--debug", help="Tracebacks on errors (never secrets).")] = False,
    no_color: Annotated[bool, typer.Option("--no-color", help="Plain output. [env: NO_COLOR]")] = False,
    wait_lock: Annotated[
        str | None,
        typer.Option(
            "--wait-lock",
            envvar="WLCGCLOUD_WAIT_LOCK",
            metavar="DUR",
            help="When another wlcgcloud is changing the fleet, wait up to DUR (30s, 10m) instead of exiting 2.",
        ),
    ] = None,
    version: Annotated[
        bool, typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    if output not in OUTPUTS:
        formats = ", ".join(OUTPUTS[:-1])
        raise UsageError(f"unknown output format '{output}'; use one of {formats} ('apel': usage only).")
    if query is not None:
        from wlcgcloud.output import compile_query

        compile_query(query)  # a bad expression is refused before any cloud is asked
    profiles = list(profile or [])
    if not profiles and os.environ.get("WLCGCLOUD_PROFILE"):
        profiles = [p for p in re.split(r"[,\s]+", os.environ["WLCGCLOUD_PROFILE"]) if p]
    g = Globals(profiles=profiles, output=output, query=query, yes=yes, verbose=verbose, debug=debug)
    _warn_unknown_variables(g)
    g.no_color = no_color or "NO_COLOR" in os.environ
    if wait_lock is not None:
        from wlcgcloud.times import parse_duration

        g.wait_lock = parse_duration(wait_lock, "--wait-lock").total_seconds()
    if config is not None:
        g.config_path = config.expanduser()
    ctx.obj = g


def _warn_unknown_variables(g: Globals) -> None:
    from wlcgcloud.cli.common import warn
    from wlcgcloud.config import closest

    for name in sorted(os.environ):
        if name.startswith("WLCGCLOUD_") and name not in VARIABLES and not name.startswith(PER_NAME):
            near = closest(name, list(VARIABLES))
            warn(f"{name} is not a variable wlcgcloud reads" + (f"; did you mean {near}?" if near else "."), g)


# In the contract's order (the man pages and the completion tree follow it).
app.add_typer(profile.app, name="profile")
app.add_typer(image.app, name="image")
app.command("launch")(launch.launch)
app.add_typer(fleet.app, name="fleet")
app.add_typer(ledger.app, name="ledger")
app.add_typer(instance.app, name="instance")
app.command("usage")(usage.usage)
app.command("doctor", epilog=profile.DOCTOR_EPILOG)(profile.doctor)
app.add_typer(completion.app, name="completion")


def run(argv: list[str]) -> int:
    """Run the command tree on `argv` (global options already hoisted); return the exit code.

    Click's own usage errors become one line with a pointer to `--help`; our WlcgError and
    anything unexpected propagate to `wlcgcloud.__main__`, which owns the messages.
    """
    from typer._click import exceptions as click_exc  # vendored click in Typer 0.28

    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="wlcgcloud", standalone_mode=False)
    except click_exc.UsageError as exc:
        if exc.ctx is not None and _names_no_command(exc):
            # `wlcgcloud`, `wlcgcloud fleet`, `wlcgcloud --debug`: a noun alone asks what it can do.
            print(exc.ctx.get_help())
            return 0
        where = exc.ctx.command_path if exc.ctx else "wlcgcloud"
        raise UsageError(_sentence(exc.format_message()), f"Run '{where} --help'.") from None
    except click_exc.ClickException as exc:
        raise UsageError(exc.format_message()) from None
    except typer.Abort:
        raise KeyboardInterrupt from None
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    return result if isinstance(result, int) else 0


def _names_no_command(exc: Any) -> bool:
    """A group was called with no command: with no arguments at all, or with only options (`--debug`)."""
    from typer._click import exceptions as click_exc
    from typer.core import TyperGroup

    if isinstance(exc, click_exc.NoArgsIsHelpError):
        return True
    # Typer's own words when a group's callback ran but no command followed (typer.core.TyperGroup.invoke).
    return isinstance(exc.ctx.command, TyperGroup) and exc.format_message() == "Missing command."


def _sentence(message: str) -> str:
    """Click's message as one sentence: a full stop added only where it has no end of its own."""
    message = message.strip()
    return message if message.endswith((".", "?", "!")) else message + "."
