"""`wlcgcloud usage`: core-hours by profile, fleet, experiment, flavor, image, day or instance; APEL records."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from wlcgcloud import times
from wlcgcloud.cli.common import emit, globals_of, info, read_profiles, report_failures, warn, working
from wlcgcloud.errors import UsageError
from wlcgcloud.output import Column, Streamed

FIGURES = [
    Column("instances", "INSTANCES"),
    Column("wall_hours", "WALL H"),
    Column("core_hours", "CORE H"),
    Column("memory_gb_hours", "MEMORY GB·H"),
]


def usage(
    ctx: typer.Context,
    since: Annotated[
        str | None, typer.Option("--since", help="Start: 2026-11-01, 2026-11-01T12:00Z, 7d, today, last-month.")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="End (exclusive); default now.")] = None,
    by: Annotated[
        str, typer.Option("--by", help="Group by: profile,fleet,experiment,flavor,image,day,instance.")
    ] = "profile",
    chart: Annotated[bool, typer.Option("--chart", help="A bar chart of core-hours per day (terminal).")] = False,
    apel_dir: Annotated[
        Path | None, typer.Option("--apel-dir", help="Write APEL records to this directory queue (ssmsend).")
    ] = None,
) -> None:
    """Usage summaries on every cloud at once (-p narrows), and APEL cloud usage records.

    Rows: instances, wall hours, core-hours (vCPUs x hours), memory GB-hours, and a total. The
    window is [--since, --until), this month by default; what still runs counts up to now; an
    instance that crosses the window's edges is clipped to it; --by day splits at UTC midnight.
    EC2 has no usage API: its figures come from the instances it shows and the ledger's memory.
    -v says where each row's numbers came from, and with --by instance the shutdown message each
    instance left as it ended (see 'fleet drain'), where one was read. -o apel prints APEL v0.4
    records; --apel-dir queues them for the APEL SSM sender, only for profiles with publish_apel = true.

    \b
    Examples:
      wlcgcloud usage
      wlcgcloud usage --since last-month --until this-month --by fleet,day -o csv
      wlcgcloud usage --since 7d --by experiment,flavor --chart
      wlcgcloud usage --since this-month -o apel -p aws-atlas
      wlcgcloud usage --since last-month --until this-month --apel-dir /var/spool/apel/outgoing
    """
    from wlcgcloud import usage as usage_domain  # `usage` is this command's own name
    from wlcgcloud.ledger import open_ledger
    from wlcgcloud.times import stamp

    g = globals_of(ctx)
    now = times.now()
    start, end, notes = usage_domain.window(since, until, now)
    groups = [b.strip() for b in by.split(",") if b.strip()]
    if not groups:
        raise UsageError("--by needs at least one of " + ", ".join(usage_domain.GROUPS) + ".")
    usage_domain.check_groups(groups)
    profiles = read_profiles(g)
    apel_wanted = apel_dir is not None or g.output == "apel"
    with open_ledger(g.config()) as ledger:  # open while APEL records are made: it writes their text
        with working(g, f"Reading usage from {len(profiles)} profile(s) ..."):
            # Summed in the ledger, unless each interval is wanted: -v's sources and messages. -o apel prints
            # no summary (--apel-dir does, after queueing).
            summed_by = None if g.verbose else groups
            collected = usage_domain.collect(profiles, start, end, ledger, summed_by, now, apel=apel_wanted,
                                             summary=g.output != "apel")  # fmt: skip
            said = usage_domain.end_messages(ledger, collected.intervals) if g.verbose and "instance" in groups else {}
        report_failures(g, collected.failures, collected.asked)
        for line in notes + collected.notes:
            warn(line, g)
        if apel_wanted:
            _apel(g, ledger, profiles, collected, (start, end, now), apel_dir)
    exit_code = 7 if collected.failures else 0
    if g.output == "apel":
        raise typer.Exit(exit_code)
    head = {"since": stamp(start), "until": stamp(end), "by": groups}
    if g.output == "json" and not g.query and "day" not in groups and collected.lifetimes:
        # A row per lifetime by instance: each made as it is written, a million never all at once.
        made, summed = usage_domain.streamed(collected.intervals, start, end, groups, now, collected.lifetimes)
        emit(ctx, {**head, "rows": Streamed(made), "total": summed})  # the total is whole once the rows are written
        raise typer.Exit(exit_code)
    every = [life for lives in collected.lifetimes for life in lives]  # any other output holds them (by instance)
    days = None
    if chart and g.output == "table":
        days = usage_domain.aggregate(collected.intervals, start, end, ["day"], now, collected.buckets, every)[0]
    lifetimes = usage_domain.draining(every)  # freed as they are summed
    rows, total = usage_domain.aggregate(collected.intervals, start, end, groups, now, collected.buckets, lifetimes)
    if g.verbose:
        _sources(rows, collected.intervals, groups)
        for row in rows if said else ():  # -v --by instance: why each instance ended, in its own words
            row["said"] = said.get(row["instance"])
    data: dict[str, Any] = {**head, "rows": rows, "total": total}
    if g.output == "json" or g.output == "yaml":
        emit(ctx, data)
    else:
        columns = [Column(b, b.upper()) for b in groups] + FIGURES
        if g.verbose:
            columns.append(Column("sources", "FROM"))
        if said:
            columns.append(Column("said", "ENDED SAYING"))
        shown = [{**r, **_rounded(r)} for r in rows] if g.output == "table" else rows
        if g.output == "table":
            shown.append({groups[0]: "TOTAL", **_rounded(total)})
        emit(ctx, shown, columns)
        if days is not None:
            _chart(days)
    raise typer.Exit(exit_code)


def _apel(
    g: Any, ledger: Any, profiles: list[Any], collected: Any, window: tuple[datetime, datetime, datetime],
    apel_dir: Path | None,
) -> None:  # fmt: skip
    """APEL records, each written as it is made: printed (-o apel), queued (--apel-dir: only the profiles
    with publish_apel), or both."""
    from wlcgcloud import __version__, apel

    chosen = profiles
    queue = None
    if apel_dir is not None:
        chosen, left_out = apel.to_publish(profiles)
        for line in left_out:
            info(line)
        queue = apel.queue(str(apel_dir))
    by_name = {p.name: p for p in chosen}
    months = apel.spans(*window)
    records = messages = 0
    for message, held in apel.messages(ledger, collected.intervals, collected.from_ledger, by_name, months,
                                       __version__):  # fmt: skip
        records += held
        messages += 1
        if queue is not None:
            queue(message)
        if g.output == "apel":
            sys.stdout.write(message)
    if queue is not None:
        info(f"queued {records} APEL record(s) in {messages} message(s) in {apel_dir}.")
    if g.output == "apel" and not records:
        info("No usage in the window: no APEL records.")


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    """Tables show two decimals; JSON and CSV keep every digit."""
    return {k: round(row[k], 2) for k in ("wall_hours", "core_hours", "memory_gb_hours")} | {
        "instances": row["instances"]
    }


def _sources(rows: list[dict[str, Any]], intervals: list[Any], groups: list[str]) -> None:
    """-v: each row says where its numbers came from (a `sources` column)."""
    keys = [b for b in groups if b != "day"]
    seen: dict[tuple[Any, ...], set[str]] = {}
    for iv in intervals:
        seen.setdefault(tuple(getattr(iv, b) for b in keys), set()).add(iv.source)
    for row in rows:
        row["sources"] = sorted(seen.get(tuple(row[b] for b in keys), ()))


def _chart(days: list[dict[str, Any]]) -> None:
    """Core-hours per day as horizontal bars."""
    if not days:
        return
    from rich.console import Console
    from rich.table import Table

    top = max(d["core_hours"] for d in days) or 1.0
    table = Table(show_header=True, box=None, pad_edge=False)
    table.add_column("DAY")
    table.add_column("CORE H", justify="right")
    table.add_column("")
    for d in days:
        table.add_row(d["day"], f"{d['core_hours']:.1f}", "█" * max(1, round(40 * d["core_hours"] / top)))
    Console(file=sys.stdout).print(table)
