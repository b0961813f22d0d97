"""`wlcgcloud fleet ...`: list, show, terminate, scale, reconcile and reap fleets on every cloud.

Fleets live where their instances' tags say (`wlcg:fleet`); the ledger remembers launches and
ends. Reading commands ask every profile in parallel (-p narrows); changing commands act
wherever the fleet lives. The domain layer is imported inside each command.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from wlcgcloud import times
from wlcgcloud.cli import drain, maintain
from wlcgcloud.cli.common import (
    changing,
    emit,
    globals_of,
    info,
    new_app,
    read_profiles,
    report_failures,
    terminate_confirmed,
    warn,
    working,
)
from wlcgcloud.errors import UsageError
from wlcgcloud.output import Column

if TYPE_CHECKING:
    from wlcgcloud.providers.base import Instance
    from wlcgcloud.shutdown import ShutdownMessage

app = new_app("Fleets: named groups of instances from one launch, across clouds.")

LIST_COLUMNS = [
    Column("fleet", "FLEET"),
    Column("profile", "PROFILE"),
    Column("provider", "PROVIDER"),
    Column("experiment", "EXPERIMENT"),
    Column("image", "IMAGE"),
    Column("flavor", "FLAVOR"),
    Column("created", "CREATED"),
    Column("states", "STATES"),
    Column("total", "TOTAL"),
]
SHOW_COLUMNS = [
    Column("id", "ID"),
    Column("profile", "PROFILE"),
    Column("state", "STATE"),
    Column("flavor", "FLAVOR"),
    Column("launched_at", "SINCE"),
    Column("endorsement", "ENDORSEMENT"),
    Column("credential", "CREDENTIAL"),
    Column("lease_until", "LEASE UNTIL"),
    Column("drain_by", "DRAIN BY"),
    Column("said", "ENDED SAYING"),
]
CHANGE_COLUMNS = [
    Column("id", "ID"),
    Column("fleet", "FLEET"),
    Column("profile", "PROFILE"),
    Column("terminated", "TERMINATED"),
    Column("error", "ERROR"),
]
SHRINK_COLUMNS = [*CHANGE_COLUMNS[:-1], Column("draining", "DRAINING"), Column("drain_by", "DRAIN BY"),
                  CHANGE_COLUMNS[-1]]  # fmt: skip
RECONCILE_COLUMNS = [
    Column("profile", "PROFILE"),
    Column("fleet", "FLEET"),
    Column("id", "ID"),
    Column("finding", "FINDING"),
    Column("action", "ACTION"),
]


@app.command("list")
@app.command("ls", hidden=True)
def list_(ctx: typer.Context) -> None:
    """One row per fleet and profile, with its instances counted by state as the clouds report them.

    \b
    Examples:
      wlcgcloud fleet list
      wlcgcloud fleet list -p cern-atlas -o json --query '[?counts.error].fleet'
    """
    from wlcgcloud import fleet

    g = globals_of(ctx)
    profiles = read_profiles(g)
    with working(g, f"Asking {len(profiles)} profile(s) for their fleets ..."):
        rows, gathered = fleet.list_fleets(profiles)
    report_failures(g, gathered.failures, gathered.asked)
    data = [r.to_dict() for r in rows]
    if g.output == "table":
        if not data:
            info("No fleets.")
        table = [{**d, "states": r.states()} for r, d in zip(rows, data, strict=True)]
        emit(ctx, table, LIST_COLUMNS)
    else:
        emit(ctx, data)
    raise typer.Exit(gathered.exit_code())


@app.command("show")
def show(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Fleet name.")]) -> None:
    """A fleet's instances: where, since when, endorsement, credential fingerprint and lifetime, lease,
    the deadline of a drain, and for VMs that ended, the shutdown message they left (docs/vm-side.md).

    \b
    Examples:
      wlcgcloud fleet show atlas-20261124-1a2b
      wlcgcloud fleet show atlas-20261124-1a2b -o json --query 'launches[].{profile: profile, state: state}'
    """
    from wlcgcloud import drain, fleet
    from wlcgcloud.ledger import open_ledger
    from wlcgcloud.shutdown import parse_stored

    g = globals_of(ctx)
    profiles = read_profiles(g)
    with working(g, f"Looking for fleet {name} on {len(profiles)} profile(s) ..."):
        instances, gathered = fleet.fleet_instances(profiles, [name])
    report_failures(g, gathered.failures, gathered.asked)
    with open_ledger(g.config()) as ledger:
        ended = [i for i in instances if i.state in ("stopped", "error", "terminated")]
        said = drain.read_reasons(profiles, ended, ledger) if ended else {}
        launches = [{k: v for k, v in r.__dict__.items() if k != "options"} for r in ledger.launches(name)]
        remembered = ledger.instances(fleet=name)
    if not instances and not launches:
        asked = ", ".join(p.name for p in profiles)
        raise UsageError(f"no fleet '{name}' on profile(s) {asked}, nor in the ledger.", "See 'wlcgcloud fleet list'.")
    now = times.now()
    rows = [{**_shown(i, now), "said": _said(said.get(i.id))} for i in instances]
    live = {(i.profile, i.id) for i in instances}
    forgotten = [{**r, "said": _said(parse_stored(r.get("end_code"), r.get("end_reason")))}
                 for r in remembered if (r["profile"], r["id"]) not in live]  # fmt: skip
    if g.output == "table":
        said_text = {id(r): f"{r['said']['code']} {r['said']['text']}" for r in rows if r["said"]}
        emit(ctx, [{**r, "said": said_text.get(id(r))} for r in rows], SHOW_COLUMNS)
        if forgotten:
            info(f"{len(forgotten)} more instance(s) in the ledger that the clouds no longer show (ended).")
    else:
        emit(ctx, {"fleet": name, "instances": rows, "launches": launches, "ledger_only": forgotten})
    raise typer.Exit(gathered.exit_code())


def _said(message: ShutdownMessage | None) -> dict[str, object] | None:
    return message.to_dict() if message else None


def _shown(inst: Instance, now: datetime) -> dict[str, Any]:
    from wlcgcloud.times import human_duration

    row = inst.to_dict()
    row["endorsement"] = inst.tags.get("wlcg:endorsement")
    row["lease_until"] = inst.tags.get("wlcg:lease-until")
    row["drain_by"] = inst.tags.get("wlcg:drain-by")
    credential = inst.tags.get("wlcg:credential")
    if credential:
        parts = credential.split(" ")
        kind, fingerprint, until = [*parts, "", "", ""][:3]
        try:
            left = datetime.strptime(until, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) - now
            row["credential"] = f"{kind} {fingerprint}, {human_duration(left.total_seconds())} left"
        except ValueError:
            row["credential"] = credential
    else:
        row["credential"] = None
    return row


@app.command("terminate")
def terminate(
    ctx: typer.Context,
    names: Annotated[list[str], typer.Argument(help="Fleet names.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be terminated; do nothing.")] = False,
) -> None:
    """Terminate whole fleets wherever they live (-p narrows).

    On a terminal it shows what will die and asks; without a terminal --yes is required.
    A fleet with nothing left to terminate is not an error (CI teardown can run twice).

    \b
    Examples:
      wlcgcloud fleet terminate atlas-20261124-1a2b --dry-run
      wlcgcloud fleet terminate atlas-20261124-1a2b cms-20261124-9f0e --yes -o json
    """
    from wlcgcloud import fleet

    g = globals_of(ctx)
    profiles = read_profiles(g)
    with changing(ctx, [] if dry_run else names):  # held from the listing on: no launch can add to them meanwhile
        with working(g, f"Looking for {len(names)} fleet(s) on {len(profiles)} profile(s) ..."):
            instances, gathered = fleet.fleet_instances(profiles, names)
        report_failures(g, gathered.failures, gathered.asked)
        victims = [i for i in instances if i.state != "terminated"]
        terminate_confirmed(ctx, g, victims, f"fleet {', '.join(names)}", dry_run, profiles, CHANGE_COLUMNS)
    raise typer.Exit(gathered.exit_code())


@app.command("scale")
def scale(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Fleet name.")],
    count: Annotated[int, typer.Option("--count", "-n", help="How many instances the fleet should have.")],
    credential: Annotated[
        str | None, typer.Option("--credential", help="Growing: auto | x509 | token | none (default: as launched).")
    ] = None,
    proxy: Annotated[
        Path | None, typer.Option("--proxy", readable=False, help="Growing: the X.509 proxy to forward.")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", readable=False, help="Growing: the token file.")
    ] = None,
    settings: Annotated[
        list[str] | None, typer.Option("--set", help="Growing: bootstrap settings, secret ones again.")
    ] = None,
    deadline: Annotated[
        str, typer.Option("--deadline", help="Shrinking: how long VMs with an agent drain before they go.")
    ] = "2h",
    now: Annotated[bool, typer.Option("--now", help="Shrinking: terminate at once, draining none.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change; do nothing.")] = False,
) -> None:
    """Grow or shrink a fleet to --count instances on its profile.

    Growing launches more of the same (image, flavor, bootstrap, from the ledger) with the
    credential found now; shrinking takes the newest instances first: those launched with a
    shipped bootstrap are asked to drain by --deadline (see 'fleet drain'; 'fleet reap'
    terminates them after it), the others are terminated. Draining VMs no longer count.
    A fleet on several profiles is scaled one profile at a time (-p).

    \b
    Examples:
      wlcgcloud fleet scale atlas-20261124-1a2b --count 50
      wlcgcloud fleet scale atlas-20261124-1a2b -n 0 --yes
      wlcgcloud fleet scale atlas-20261124-1a2b -n 10 --deadline 30m
      wlcgcloud fleet scale atlas-20261124-1a2b -n 30 -p cern-atlas --dry-run
    """
    from wlcgcloud.launch_plan import MAX_COUNT

    g = globals_of(ctx)
    if not 0 <= count <= MAX_COUNT:
        raise UsageError(f"--count {count}: a fleet has from 0 to {MAX_COUNT} instances.")
    profiles = read_profiles(g)
    with changing(ctx, [] if dry_run else [name]) as ledger:  # the count is decided and reached under one lock
        _scale(ctx, g, ledger, profiles, name, count, dry_run,
               {"credential": credential, "proxy": proxy, "token_file": token_file, "settings": settings},
               None if now else times.parse_duration(deadline, "--deadline"))  # fmt: skip


def _scale(
    ctx: typer.Context, g: Any, ledger: Any, profiles: Any, name: str, count: int, dry_run: bool, grow: dict[str, Any],
    deadline: timedelta | None,
) -> None:  # fmt: skip
    from wlcgcloud import fleet, launch_plan
    from wlcgcloud.context.userdata import parse_settings
    from wlcgcloud.launch import run_plan

    with working(g, f"Looking for fleet {name} on {len(profiles)} profile(s) ..."):
        instances, gathered = fleet.fleet_instances(profiles, [name])
    report_failures(g, gathered.failures, gathered.asked)
    scaling = fleet.scale_plan(profiles, name, count, instances, ledger)
    profile = scaling.profile
    info(f"fleet {name} on profile {profile.name}: {len(scaling.alive)} instance(s), to become {count}.")
    draining = [i for i in instances if i.profile == profile.name and i.state != "terminated" and i.drain_by]
    if draining:
        info(f"{len(draining)} more are draining and no longer count ('fleet terminate' or 'instance terminate' "
             "end them now).")  # fmt: skip
    if scaling.victims:
        _shrink(ctx, g, scaling, f"shrink fleet {name} to {count}", dry_run, deadline)
        return
    if not scaling.more:
        info("Nothing to do.")
        emit(ctx, {"fleet": name, "profile": profile.name, "count": count, "changed": 0})
        return
    given = {**grow, "settings": parse_settings(grow["settings"] or [])}
    options = launch_plan.options_to_grow(ledger, name, profile.name, count, given)
    with working(g, f"Checking the launch on profile {profile.name} ..."):
        plan = launch_plan.plan_launch([profile], options)
    for line in plan.warnings:
        warn(line, g)
    if dry_run:
        info(f"dry run: would launch {scaling.more} more instance(s) of fleet {name}.")
        emit(ctx, {"dry_run": True, **plan.to_dict()})
        return
    with working(g, f"Launching {scaling.more} more instance(s) ..."):
        result = run_plan(plan, ledger, resize=True)
    for r in result.results:
        if r.error:
            warn(str(r.error), g)
    from wlcgcloud.cli.launch import COLUMNS

    data = result.to_dict()
    emit(ctx, data if g.output != "table" else data["instances"], COLUMNS)
    raise typer.Exit(result.exit_code())


def _shrink(ctx: typer.Context, g: Any, scaling: Any, what: str, dry_run: bool, deadline: timedelta | None) -> None:
    """Shrink: running VMs with an agent are asked to drain by the deadline, the others terminated; one
    confirmation for both, nothing sent before it. Exits 0, 7 or the failures' class over both."""
    from wlcgcloud import drain, fleet
    from wlcgcloud.cli.common import confirm
    from wlcgcloud.errors import partial_exit

    gently = [i for i in scaling.victims if deadline and i.state == "running" and drain.drainable(i)]
    rest = [i for i in scaling.victims if i not in gently]
    by = (times.now() + (deadline or timedelta())).replace(microsecond=0)
    asked: list[Any] = [drain.Drained(i, by) for i in gently]
    if gently:
        info(f"{'Would ask' if dry_run else 'To ask'}: {len(gently)} instance(s) with an agent to drain by "
             f"{times.stamp(by)} ('fleet reap' terminates them after it):")  # fmt: skip
        for inst in gently:
            info(f"  {inst.id}  fleet {inst.fleet or '-'}  profile {inst.profile}  {inst.state}")
        if not dry_run:
            confirm(g, what + f": drain {len(gently)}" + (f", terminate {len(rest)}" if rest else ""))
            g.yes = True  # asked once, for both
            with working(g, f"Asking {len(gently)} instance(s) to drain ..."):
                asked = drain.request([scaling.profile], gently, by)
    for one in asked:
        if one.error:
            warn(f"{one.instance.id} was not asked to drain: {one.error}", g)
    rows = [{**fleet.Terminated(a.instance, None).to_dict(), "terminated": False, "draining": a.error is None
             and not dry_run, "drain_by": times.stamp(a.deadline), "error": a.error} for a in asked]  # fmt: skip
    code = 0
    if rest:
        try:
            terminate_confirmed(ctx, g, rest, what, dry_run, [scaling.profile], SHRINK_COLUMNS, also=rows)
        except typer.Exit as done:
            code = done.exit_code
    else:
        taken = sum(1 for a in asked if not a.error)
        info(f"{'dry run: would ask' if dry_run else 'Asked'} {taken} instance(s) to drain by {times.stamp(by)}.")
        emit(ctx, rows, SHRINK_COLUMNS)
    failed = [a.code for a in asked if a.error]
    if failed:
        code = partial_exit([*failed, *([code] if code else [])], len(asked) + len(rest))
    raise typer.Exit(code)


@app.command("reconcile")
def reconcile(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report the differences; change nothing.")] = False,
    every: Annotated[
        bool, typer.Option("--all", help="Every profile in config.toml, whatever -p or WLCGCLOUD_PROFILE say.")
    ] = False,
) -> None:
    """Compare the ledger with what the clouds report, and bring the ledger in line.

    Finds instances the ledger does not know (recorded now), fleets launched from another
    machine, and ledger entries the clouds no longer have (their life is ended now). Cloud tags
    are the truth; the ledger is the memory: after a ledger is lost (a CI runner, a new
    machine), 'fleet reconcile --all' learns every live fleet again from the tags.

    \b
    Examples:
      wlcgcloud fleet reconcile
      wlcgcloud fleet reconcile --dry-run -o json
      wlcgcloud fleet reconcile --all       # a new or lost ledger: learn every live fleet from the tags
    """
    from wlcgcloud import fleet
    from wlcgcloud.ledger import open_ledger

    g = globals_of(ctx)
    profiles = g.config().select([], all_when_empty=True) if every else read_profiles(g)
    with open_ledger(g.config()) as ledger, working(g, f"Comparing the ledger with {len(profiles)} profile(s) ..."):
        findings, gathered = fleet.reconcile(profiles, ledger, write=not dry_run)
    report_failures(g, gathered.failures, gathered.asked)
    if g.output == "table" and not findings:
        info("The ledger agrees with the clouds.")
    emit(ctx, [f.to_dict() for f in findings], RECONCILE_COLUMNS)
    raise typer.Exit(gathered.exit_code())


@app.command("reap")
def reap(
    ctx: typer.Context,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be terminated; do nothing.")] = False,
) -> None:
    """Terminate every instance past its fleet's lease (wlcg:lease-until), past the deadline of a drain
    asked of it (wlcg:drain-by, and 10 minutes for its own power-off), or powered off after a drain,
    on every cloud (-p narrows). The message a drained VM left is read first (its console goes with it).

    \b
    Examples:
      wlcgcloud fleet reap --dry-run
      wlcgcloud fleet reap --yes            # e.g. from cron
    """
    from wlcgcloud import fleet

    g = globals_of(ctx)
    profiles = read_profiles(g)
    with working(g, f"Looking for expired leases on {len(profiles)} profile(s) ..."):
        gathered = fleet.list_instances(profiles)
    report_failures(g, gathered.failures, gathered.asked)
    from wlcgcloud import drain

    now = times.now()
    expired = fleet.expired_leases(gathered.instances, now)
    victims = expired + [i for i in drain.overdue(gathered.instances, now) if i not in expired]
    ended = [i for i in victims if i.state in ("stopped", "error")]
    if ended and not dry_run:  # their word first: a console goes with its VM
        from wlcgcloud.ledger import open_ledger

        with open_ledger(g.config()) as ledger:
            drain.read_reasons(profiles, ended, ledger)
    terminate_confirmed(ctx, g, victims, "past their lease or drain deadline", dry_run, profiles, CHANGE_COLUMNS)
    raise typer.Exit(gathered.exit_code())


# Fleets that keep themselves (wlcgcloud.cli.maintain): after the commands above, in the contract's order.
app.command("spec")(maintain.spec)
app.command("maintain")(maintain.maintain)
app.command("status")(maintain.status)
app.command("drain")(drain.drain)
