"""`wlcgcloud instance ...`: list, show, console-log and terminate instances on every cloud at once.

The domain layer (`wlcgcloud.fleet`, and through it the providers) is imported inside each
command, so `--help` and completion never pay for it.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from wlcgcloud.cli.common import (
    emit,
    globals_of,
    info,
    new_app,
    read_profiles,
    report_failures,
    terminate_confirmed,
    working,
)
from wlcgcloud.output import Column

# The contract's normalised states (wlcgcloud.providers.base.STATES; a test keeps them equal).
STATES = ("pending", "running", "stopping", "stopped", "terminated", "error", "unknown")

app = new_app("Instances across every profile at once.")

COLUMNS = [
    Column("id", "ID"),
    Column("name", "NAME"),
    Column("fleet", "FLEET"),
    Column("profile", "PROFILE"),
    Column("state", "STATE"),
    Column("flavor", "FLAVOR"),
    Column("vcpus", "VCPUS"),
    Column("memory_mb", "MEMORY MB"),
    Column("addresses", "ADDRESSES"),
    Column("launched_at", "LAUNCHED"),
]
TERMINATE_COLUMNS = [
    Column("id", "ID"),
    Column("name", "NAME"),
    Column("profile", "PROFILE"),
    Column("terminated", "TERMINATED"),
    Column("error", "ERROR"),
]


@app.command("list")
@app.command("ls", hidden=True)
def list_(
    ctx: typer.Context,
    fleet_name: Annotated[str | None, typer.Option("--fleet", "-f", help="Only this fleet's instances.")] = None,
    state: Annotated[
        str | None, typer.Option("--state", "-s", help=f"Only instances in this state: {', '.join(STATES)}.")
    ] = None,
    everything: Annotated[
        bool, typer.Option("--all", "-a", help="Every instance the credentials can see, not only fleets'.")
    ] = False,
) -> None:
    """List instances of fleets on every profile at once (-p narrows).

    Profiles that do not answer are named on stderr; the others still answer and the exit code is 7.

    \b
    Examples:
      wlcgcloud instance list
      wlcgcloud instance list --fleet atlas-20261124-1a2b -o json
      wlcgcloud instance list --all --state error -p cern-atlas
      wlcgcloud instance list -o json --query '[?state==`running`].id'
    """
    from wlcgcloud import fleet

    g = globals_of(ctx)
    profiles = read_profiles(g)
    with working(g, f"Asking {len(profiles)} profile(s) for their instances ..."):
        gathered = fleet.list_instances(profiles, fleet=fleet_name, everything=everything, state=state)
    report_failures(g, gathered.failures, gathered.asked)
    if not gathered.instances and g.output == "table":
        info("No instances." if everything else "No fleet instances. Use --all to see every instance.")
    emit(ctx, [i.to_dict() for i in gathered.instances], COLUMNS)
    raise typer.Exit(gathered.exit_code())


@app.command("show")
def show(ctx: typer.Context, instance_id: Annotated[str, typer.Argument(help="Instance id.")]) -> None:
    """Show one instance, wherever it lives (-p narrows where to look); for one that ended, the
    shutdown message it left (its code and text: see docs/vm-side.md), where it left one.

    \b
    Examples:
      wlcgcloud instance show i-0a1b2c3d4e5f67890
      wlcgcloud instance show 42 -p lal-one -o json
    """
    from wlcgcloud import fleet

    g = globals_of(ctx)
    profiles = read_profiles(g)
    with working(g, f"Looking for {instance_id} on {len(profiles)} profile(s) ..."):
        inst, gathered = fleet.find_instance(profiles, instance_id)
    report_failures(g, gathered.failures, gathered.asked)
    data = inst.to_dict()
    data["extra"] = {k: v for k, v in inst.extra.items() if v is not None}
    if inst.state in ("stopped", "terminated"):  # why it ended, in its own words (docs/vm-side.md)
        from wlcgcloud import drain
        from wlcgcloud.ledger import open_ledger

        with open_ledger(g.config()) as ledger:
            said = drain.read_reasons(profiles, [inst], ledger).get(inst.id)
        data["said"] = said.to_dict() if said else None
    emit(ctx, data if g.output != "table" else _as_rows(data))


def _as_rows(data: dict[str, object]) -> list[dict[str, object]]:
    flat = {k: v for k, v in data.items() if k not in ("tags", "extra")}
    flat.update({k: v for k, v in dict(data.get("tags") or {}).items()})  # type: ignore[call-overload]
    flat.update({k: v for k, v in dict(data.get("extra") or {}).items()})  # type: ignore[call-overload]
    return [{"field": k, "value": v} for k, v in flat.items()]


@app.command("console-log")
def console_log(
    ctx: typer.Context,
    instance_id: Annotated[str, typer.Argument(help="Instance id.")],
    lines: Annotated[
        int | None, typer.Option("--lines", "-n", min=1, help="Only the last N lines (at least 1).")
    ] = None,
) -> None:
    """Print an instance's console log (the cloud's serial console output).

    OpenNebula has no console-log call in its API; for its instances this says so.

    \b
    Examples:
      wlcgcloud instance console-log i-0a1b2c3d4e5f67890 -n 50
      wlcgcloud instance console-log 6f1c... -p cern-atlas
    """
    from wlcgcloud import fleet

    g = globals_of(ctx)
    inst, text = fleet.console_log(read_profiles(g), instance_id, lines)
    if g.output == "table":
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    else:
        emit(ctx, {"id": inst.id, "profile": inst.profile, "output": text})


@app.command("terminate")
def terminate(
    ctx: typer.Context,
    instance_ids: Annotated[list[str], typer.Argument(help="Instance ids.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be terminated; do nothing.")] = False,
) -> None:
    """Terminate instances by id, wherever they live (-p narrows where to look).

    Every id is looked up first; if one is unknown or ambiguous nothing is terminated. Asks for
    confirmation unless --yes; without a terminal, --yes is required.

    \b
    Examples:
      wlcgcloud instance terminate i-0a1b2c3d4e5f67890 i-0fedcba987654321f --yes
      wlcgcloud instance terminate 42 43 -p lal-one --dry-run
    """
    from wlcgcloud import fleet

    g = globals_of(ctx)
    profiles = read_profiles(g)
    with working(g, f"Looking up {len(instance_ids)} instance(s) on {len(profiles)} profile(s) ..."):
        targets, gathered = fleet.resolve_instances(profiles, instance_ids)
    report_failures(g, gathered.failures, gathered.asked)
    chosen = [i for batch in targets.values() for i in batch]
    terminate_confirmed(ctx, g, chosen, "by id", dry_run, profiles, TERMINATE_COLUMNS)
