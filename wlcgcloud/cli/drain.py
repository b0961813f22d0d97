"""`wlcgcloud fleet drain`: ask a fleet's VMs to stop taking work and power off by a deadline.

Registered on the `fleet` app by wlcgcloud.cli.fleet. The domain is wlcgcloud.drain; the VM's
side (its agent, Machine/Job Features, the shutdown message) is described in docs/vm-side.md.
"""

from __future__ import annotations

from typing import Annotated

import typer

from wlcgcloud.cli.common import changing, emit, globals_of, info, read_profiles, report_failures, warn, working
from wlcgcloud.errors import UsageError
from wlcgcloud.output import Column

DRAIN_COLUMNS = [
    Column("id", "ID"),
    Column("profile", "PROFILE"),
    Column("drain_by", "DRAIN BY"),
    Column("agent", "AGENT"),
    Column("asked", "ASKED"),
    Column("error", "ERROR"),
]


def drain(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Fleet name.")],
    instance_ids: Annotated[
        list[str] | None, typer.Argument(help="Instances of the fleet to drain (else --count of them).")
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, help="Drain this many: running ones first, the newest first.")
    ] = None,
    deadline: Annotated[str, typer.Option("--deadline", help="Power off by then at the latest (30m, 2h, 1d).")] = "2h",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say which VMs would be asked; ask none.")] = False,
) -> None:
    """Ask VMs of a fleet to stop taking work and power off when done, by a deadline.

    Sets wlcg:drain-by on each VM, where its agent reads it: EC2 instance tags (instance
    metadata), Nova server metadata (the metadata service), OpenNebula USER_TEMPLATE (OneGate).
    VMs launched with a shipped bootstrap (--bootstrap htcondor|script) stop taking work
    (HTCondor: condor_off -peaceful), move $MACHINEFEATURES/shutdowntime to the deadline, and
    power off when their work is done, leaving a shutdown message that 'fleet show' reads.
    A draining VM no longer counts as the fleet's; 'fleet reap' and 'fleet maintain' terminate
    it once the deadline has passed. VMs without the agent are only terminated then. Asking a
    VM again can bring its deadline forward, never later (its agent would not take it).

    \b
    The shutdown message a VM leaves as it ends (HEPiX codes; 'fleet show' reads it back from
    the console, or on OpenNebula from OneGate's WLCG_SHUTDOWN_CODE and _MESSAGE):
      100 shutdown requested by the host   200 intended work completed   300 no more work
      400 banned or disabled   500 site or environment problem   600 grid-wide problem
      700 VM or application error

    \b
    Examples:
      wlcgcloud fleet drain atlas-20261124-1a2b --count 5 --deadline 1h
      wlcgcloud fleet drain atlas-20261124-1a2b i-0a1b2c3d4e5f67890 --deadline 30m -o json
      wlcgcloud fleet drain atlas-20261124-1a2b -n 10 --dry-run
    """
    from wlcgcloud import drain as draining
    from wlcgcloud import fleet, times
    from wlcgcloud.errors import partial_exit

    g = globals_of(ctx)
    ids = list(instance_ids or [])
    if ids and count is not None:
        raise UsageError("give --count or instance ids, not both.")
    by = (times.now() + times.parse_duration(deadline, "--deadline")).replace(microsecond=0)
    profiles = read_profiles(g)
    with changing(ctx, [] if dry_run else [name]):
        with working(g, f"Looking for fleet {name} on {len(profiles)} profile(s) ..."):
            instances, gathered = fleet.fleet_instances(profiles, [name])
        report_failures(g, gathered.failures, gathered.asked)
        if not instances:
            asked = ", ".join(p.name for p in profiles)
            raise UsageError(f"no fleet '{name}' on profile(s) {asked}.", "See 'wlcgcloud fleet list'.")
        victims = draining.choose(instances, count, ids)
        blind = [i for i in victims if not draining.drainable(i)]
        if blind:
            warn(f"{len(blind)} of them carry no agent (launched without --bootstrap): nothing in them acts on "
                 "the request; 'fleet reap' terminates them once the deadline has passed.", g)  # fmt: skip
        if dry_run or not victims:
            info(f"{'dry run: would ask' if dry_run else 'Nothing to ask:'} {len(victims)} instance(s) of fleet "
                 f"{name} to drain by {times.stamp(by)}.")  # fmt: skip
            emit(ctx, [{**draining.Drained(i, by).to_dict(), "asked": False} for i in victims], DRAIN_COLUMNS)
            raise typer.Exit(gathered.exit_code())
        with working(g, f"Asking {len(victims)} instance(s) to drain ..."):
            results = draining.request(profiles, victims, by)
    failed = [r for r in results if r.error]
    for r in failed:
        reason = (r.error or "").removeprefix(f"profile '{r.instance.profile}': ")
        warn(f"profile '{r.instance.profile}': {r.instance.id} was not asked to drain: {reason}", g)
    info(f"Asked {len(results) - len(failed)} instance(s) of fleet {name} to drain by {times.stamp(by)}.")
    emit(ctx, [r.to_dict() for r in results], DRAIN_COLUMNS)
    raise typer.Exit(partial_exit([r.code for r in failed], len(results)) or gathered.exit_code())
