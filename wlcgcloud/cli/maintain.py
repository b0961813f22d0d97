"""`wlcgcloud fleet spec | maintain | status`: fleets that keep themselves at their target.

Registered on the `fleet` app by wlcgcloud.cli.fleet. The domain is wlcgcloud.maintain (one
cycle) and wlcgcloud.fleet_spec (the spec file); this module parses, loops, logs and renders.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from wlcgcloud.cli.common import changing, emit, globals_of, info, warn
from wlcgcloud.errors import UsageError
from wlcgcloud.output import Column

STATUS_COLUMNS = [
    Column("profile", "PROFILE"),
    Column("target", "TARGET"),
    Column("running", "RUNNING"),
    Column("starting", "STARTING"),
    Column("draining", "DRAINING"),
    Column("ended", "ENDED"),
    Column("judged_by", "JUDGED BY"),
    Column("backoff_until", "BACKING OFF UNTIL"),
    Column("backoff_reason", "WHY"),
    Column("last_cycle", "LAST CYCLE"),
]
CYCLE_COLUMNS = [
    Column("fleet", "FLEET"),
    Column("profile", "PROFILE"),
    Column("target", "TARGET"),
    Column("running", "RUNNING"),
    Column("starting", "STARTING"),
    Column("created", "CREATED"),
    Column("ended", "ENDED"),
    Column("terminated", "TERMINATED"),
    Column("backoff_until", "BACKING OFF UNTIL"),
]
LOG_FORMATS = ("text", "json")
SETTING_PREFIX = "WLCGCLOUD_SET_"  # WLCGCLOUD_SET_POOL_TOKEN=...: a setting kept out of the spec and of ps


def spec(ctx: typer.Context, name: Annotated[str, typer.Argument(help="Fleet name.")]) -> None:
    """Write the spec of an existing fleet (from the ledger) for 'fleet maintain': TOML on stdout.

    The latest launch on each profile says what and how many. Secret bootstrap settings are
    never written (give them to 'fleet maintain --set').

    \b
    Examples:
      wlcgcloud fleet spec atlas-20261124-1a2b > atlas.toml
      wlcgcloud fleet spec atlas-20261124-1a2b -o json
    """
    from wlcgcloud.fleet_spec import from_ledger, to_toml
    from wlcgcloud.ledger import open_ledger

    g = globals_of(ctx)
    with open_ledger(g.config()) as ledger:
        found = from_ledger(ledger, name)
    if g.output == "table":
        sys.stdout.write(to_toml(found))
        return
    emit(ctx, {k: v for k, v in found.items() if not k.startswith("_")})


def maintain(
    ctx: typer.Context,
    specs: Annotated[
        list[Path], typer.Argument(help="Fleet spec files (TOML).", show_default=False, metavar="SPEC...")
    ],
    once: Annotated[
        bool, typer.Option("--once", help="One cycle, then exit: 0 when the target is met, else 7 (5: credential).")
    ] = False,
    interval: Annotated[str, typer.Option("--interval", help="Time between cycles.", metavar="DUR")] = "60s",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="One cycle that says what it would do; does nothing.")
    ] = False,
    settings: Annotated[
        list[str] | None, typer.Option("--set", help="A bootstrap setting the spec may not hold (secrets): KEY=VALUE.")
    ] = None,
    proxy: Annotated[Path | None, typer.Option("--proxy", readable=False, help="The X.509 proxy to forward.")] = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", readable=False, help="The token file.")] = None,
    log_format: Annotated[str, typer.Option("--log-format", help="text | json (one object per line).")] = "text",
    metrics_port: Annotated[
        int | None, typer.Option("--metrics-port", help="Serve Prometheus metrics on this port.", show_default=False)
    ] = None,
    metrics_address: Annotated[
        str, typer.Option("--metrics-address", help="The address --metrics-port listens on.")
    ] = "127.0.0.1",
    reset_backoff: Annotated[
        bool, typer.Option("--reset-backoff", help="Forget the profiles' back-off first (after fixing its cause).")
    ] = False,
) -> None:
    """Hold fleets at their target: replace VMs that end, back off where they fizzle or cannot be made.

    Each cycle lists the fleet on every profile of its spec in parallel, records what ended and
    why, terminates VMs stuck starting, in error, powered off or past their lease, spreads the
    target over the profiles by share (what a full or failing profile cannot hold goes to the
    others), retires the surplus oldest first, and creates what is missing through the same
    path as 'launch', at most create_per_cycle VMs a cycle. A profile whose VMs end young, or
    that fails to create, backs off (doubling, up to backoff_max) while the others carry the
    target. The credential is found again for every creation. One maintainer per fleet: a second
    one says who holds it (exit 2). SIGTERM or Ctrl-C end it after the cycle under way.

    VMs launched with a shipped bootstrap carry an agent: the surplus, and VMs retired for their
    credential or image, are drained (drain_deadline) rather than killed, and their replacements
    come at once. Such a VM leaves a HEPiX shutdown message as it ends, and that judges it before
    its lifetime does: 100 and 200 are fine, 300 (no more work) counts as a fizzle, 400-699
    (banned, site or grid problem) back the profile off at once with the VM's own words; with no
    message, or 700, the lifetime decides (fizzle_after). 'fleet status' says which rule judged.

    \b
    Examples:
      wlcgcloud fleet maintain atlas.toml --dry-run
      wlcgcloud fleet maintain atlas.toml --once -o json          # from cron or CI: exit 0 when met
      wlcgcloud fleet maintain atlas.toml cms.toml --interval 2m --log-format json
      WLCGCLOUD_SET_POOL_TOKEN=... wlcgcloud fleet maintain atlas.toml --token-file /run/atlas.token
    """
    from wlcgcloud import maintain as maintaining
    from wlcgcloud.context.userdata import parse_settings
    from wlcgcloud.cycle_state import RunTime
    from wlcgcloud.fleet_spec import read_spec
    from wlcgcloud.providers import reusing
    from wlcgcloud.times import parse_duration

    g = globals_of(ctx)
    if log_format not in LOG_FORMATS:
        raise UsageError(f"--log-format '{log_format}': use text or json.")
    pause = parse_duration(interval, "--interval").total_seconds()
    if pause < 1:
        raise UsageError(f"--interval {interval}: at least 1s between cycles (each asks every cloud).")
    if metrics_port is not None and not 1 <= metrics_port <= 65535:
        raise UsageError(f"--metrics-port {metrics_port}: a port is from 1 to 65535.")
    read = [read_spec(path.expanduser()) for path in specs]
    names = [s.fleet for s in read]
    if len(set(names)) != len(names):
        raise UsageError(f"two specs name the same fleet ({_twice(names)}); one maintainer holds one fleet.")
    config = g.config()
    profiles = {s.fleet: [config.profile(name) for name in s.profiles()] for s in read}
    from_env = {k.removeprefix(SETTING_PREFIX): v for k, v in os.environ.items() if k.startswith(SETTING_PREFIX)}
    given = RunTime({**parse_settings([f"{k}={v}" for k, v in from_env.items()]), **parse_settings(settings or [])},
                    proxy.expanduser() if proxy else None,
                    token_file.expanduser() if token_file else None)  # fmt: skip
    for one in read:  # what would make every creation fail is said now, once, not as a back-off every cycle
        maintaining.check_run_time(one, given)
    stop = threading.Event()
    cycles: list[dict[str, Any]] = []
    with (
        changing(ctx, [] if dry_run else names) as ledger,
        reusing(),  # one login and one client per profile for as long as it runs
        _stopped_by_signals(stop),
        _served(metrics_port, metrics_address, log_format) as metrics,
    ):
        for one in read if reset_backoff and not dry_run else ():  # under the lock: no other maintainer's state
            ledger.clear_backoff(one.fleet)
        while True:
            for one in read:
                done = maintaining.cycle(one, profiles[one.fleet], ledger, given, dry_run=dry_run).to_dict()
                cycles.append(done)
                _log(g, done, log_format)
                if metrics is not None:
                    metrics.observe(done)
                lost = ledger.lock_lost(one.fleet)
                if lost is not None:  # another maintainer holds the fleet now: this one must not go on
                    raise lost
            if once or dry_run or stop.wait(pause):
                break
            cycles.clear()
    if once or dry_run:
        if g.output == "table":  # the account is on stderr already: the table is a row per fleet and profile
            rows = [{"fleet": c["fleet"], **p, "ended": _counts(p["ended"]), "terminated": _counts(p["terminated"])}
                    for c in cycles for p in c["profiles"]]  # fmt: skip
            emit(ctx, rows, CYCLE_COLUMNS)
        else:
            emit(ctx, cycles if len(cycles) > 1 else cycles[0])
        refused = any(c["error"] for c in cycles)  # the credential to forward may not go: exit 5, as launch's
        raise typer.Exit(0 if all(c["met"] for c in cycles) else 5 if refused else 7)
    _say(log_format, "stopped", "fleet maintain: stopped after the cycle under way.")


@contextlib.contextmanager
def _served(port: int | None, address: str, log_format: str) -> Iterator[Any]:
    """The Prometheus endpoint, when asked for, for as long as the maintainer runs."""
    if port is None:
        yield None
        return
    from wlcgcloud.metrics import FleetMetrics

    metrics = FleetMetrics(port, address)
    _say(log_format, "metrics", f"Prometheus metrics on http://{address}:{port}/metrics")
    try:
        yield metrics
    finally:
        metrics.close()


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {why}" for why, n in counts.items()) or "-"


def _twice(names: list[str]) -> str:
    return next(n for n in names if names.count(n) > 1)


class _stopped_by_signals:
    """SIGTERM and the first Ctrl-C set `stop`: the cycle under way ends and is recorded. A second Ctrl-C interrupts."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.before: dict[int, Any] = {}

    def __enter__(self) -> None:
        def handler(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT and self.stop.is_set():
                raise KeyboardInterrupt
            self.stop.set()  # only that: writing here could land inside a write of the cycle's own

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.before[sig] = signal.signal(sig, handler)

    def __exit__(self, *exc: object) -> None:
        for sig, old in self.before.items():
            signal.signal(sig, old)


def _say(log_format: str, event: str, text: str) -> None:
    """A maintainer's own event on stderr: a line, or with --log-format json an object like the cycles'."""
    if log_format == "json":
        print(json.dumps({"event": event, "message": text}, sort_keys=True), file=sys.stderr, flush=True)
    else:
        info(text)


def _log(g: Any, cycle: dict[str, Any], log_format: str) -> None:
    """One cycle's account on stderr: a line per profile, or one JSON object."""
    if log_format == "json":
        print(json.dumps(cycle, sort_keys=True), file=sys.stderr, flush=True)
        return
    head = "dry run: " if cycle["dry_run"] else ""
    info(f"{head}fleet {cycle['fleet']}: {cycle['alive']} of {cycle['target']} alive"
         f"{' (target met)' if cycle['met'] else ''}, cycle {cycle['seconds']:.1f} s.")  # fmt: skip
    for p in cycle["profiles"]:
        ended = ", ".join(f"{n} {why}" for why, n in p["ended"].items())
        line = f"  {p['profile']}: target {p['target']}, running {p['running']}, starting {p['starting']}"
        line += (f"; ended: {ended}" if ended else "") + (f"; created {p['created']}" if p["created"] else "")
        if p["backoff_until"]:
            line += f"; backing off until {p['backoff_until']}: {p['backoff_reason']}"
        info(line)
        for decision in p["decisions"]:
            info(f"    {decision}")
        if p["error"]:
            prefix = f"profile '{p['profile']}': "
            warn(prefix + p["error"].removeprefix(prefix), g)
    if cycle["error"]:
        warn(f"fleet {cycle['fleet']}: creating nothing: {cycle['error']}", g)


def status(ctx: typer.Context, spec_file: Annotated[Path, typer.Argument(help="A fleet spec file.")]) -> None:
    """What the maintainer's last cycle saw and did, per profile (from the ledger; no cloud is asked).

    Target, running, starting, draining, what ended since the cycle before (and why), what judged
    the VMs that ended (their shutdown messages, their lifetimes, or both) and what they said,
    backing off until when and why, when the last cycle ran, and its decisions (-o json).

    \b
    Examples:
      wlcgcloud fleet status atlas.toml
      wlcgcloud fleet status atlas.toml -o json --query '[?backoff_until].profile'
    """
    from wlcgcloud import maintain as maintaining
    from wlcgcloud.fleet_spec import read_spec
    from wlcgcloud.ledger import open_ledger

    g = globals_of(ctx)
    one = read_spec(spec_file.expanduser())
    with open_ledger(g.config()) as ledger:
        rows = maintaining.status(one, ledger)
    if g.output == "table":
        if not any(r["last_cycle"] for r in rows):
            info(f"No cycle of fleet {one.fleet} is recorded: run 'wlcgcloud fleet maintain {spec_file}'.")
        table = [{**r, "ended": ", ".join(f"{n} {why}" for why, n in r["ended"].items()) or "-"} for r in rows]
        emit(ctx, table, STATUS_COLUMNS)
        return
    emit(ctx, rows)
