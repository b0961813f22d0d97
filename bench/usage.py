"""Usage benchmark: 1,000,000 EC2 ledger intervals, `wlcgcloud usage --by fleet,day`, on SQLite and PostgreSQL.

    .venv/bin/python bench/usage.py [--intervals 1000000] [--runs 3] [--backend sqlite|postgresql|both] [--keep DIR]

Fills a throwaway ledger with N EC2 instance lifetimes (200 fleets, 1 to 40 hours each, spread
over two months so many cross midnight): SQLite in the state directory (ledger.backend.many, in
batches), or a database on a real PostgreSQL server started for the run (tests/peers/postgres.py,
TLS and a scram password; filled with COPY, then VACUUM ANALYZE as autovacuum would). Then, per
backend:

- end to end, from the command line: `wlcgcloud usage --since ... --until ... --by fleet,day
  -o json` over the whole window, a fresh process each run, with an EC2 profile pointed at a moto
  server that shows no instances (EC2 usage is the ledger's memory); its median wall time, the
  ratio to a bare `python -c pass` timed in the same run, and its peak RSS (GNU time, around the
  command alone). Its JSON is checked against the in-process figures.
- the same command with `--by instance` (a row per instance), and with `-o apel` over one month;
- in this process: what the command does, summing the ledger's lifetimes in SQL (`ledger.sums`) and
  splitting the buckets into days (`usage.aggregate`); and, for reference, the way it went before:
  reading every lifetime (`usage._ledger_intervals`) and aggregating them in Python.

Goal: the command <= 2 s end to end for 1,000,000 intervals, on both ledgers (exit 1 otherwise);
its memory, the other figures and PostgreSQL against SQLite are reported for the README.
`--keep DIR` leaves the SQLite ledger, a config pointing at it and DIR/usage.sh, the exact command
line it timed (wlcgcloud and moto_server from PATH), so anyone can time it with their own install.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_S = 2.0
FLEETS = 200
BATCH = 100_000
SINCE, UNTIL = datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC)  # every interval lies inside
APEL_SINCE, APEL_UNTIL = "2026-10-01", "2026-11-01"  # `-o apel`'s window: October, and 1 November (a whole day)
# The columns filled, as the ledger writes them (schema v8: the times as text and as epoch seconds).
COLUMNS = ("profile", "id", "fleet", "provider", "vcpus", "memory_mb", "launched_at", "ended_at", "last_seen",
           "launched_epoch", "ended_epoch", "seen_epoch")  # fmt: skip
INSERT = f"INSERT INTO instances ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"


@dataclass
class Figures:
    backend: str
    fill: float = 0.0
    read: float = 0.0
    aggregate: float = 0.0
    summed: float = 0.0
    command: float = 0.0
    by_instance: float = 0.0
    by_instance_mb: float | None = None
    apel_month: float = 0.0
    apel_mb: float | None = None
    bare: float = 0.0
    peak_mb: float | None = None
    rows: int = 0
    core_hours: float = 0.0


def generate(n: int) -> list[tuple[Any, ...]]:
    """N instance rows in COLUMNS' order, the same for every backend (seeded)."""
    rng = random.Random(7)
    base = SINCE.timestamp()
    rows = []
    for i in range(n):
        start = base + rng.uniform(0, 60 * 86400)
        end = start + rng.uniform(3600, 40 * 3600)
        start, end = float(int(start)), float(int(end))  # whole seconds, as the ledger keeps them
        rows.append(("aws", f"i-{i:017x}", f"fleet-{i % FLEETS}", "ec2", rng.choice((2, 4, 8)), 8192,
                     _z(start), _z(end), _z(end), start, end, end))  # fmt: skip
    return rows


def fill(ledger: Any, rows: list[tuple[Any, ...]]) -> None:
    if ledger.kind == "postgresql":  # COPY: executemany of a million rows over the wire is minutes
        db = ledger.backend.db
        with db.cursor() as cursor, cursor.copy(f"COPY instances ({', '.join(COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        db.execute("VACUUM ANALYZE instances")
    else:
        for i in range(0, len(rows), BATCH):
            ledger.backend.many(INSERT, rows[i : i + BATCH])


def in_process(ledger: Any, runs: int, figures: Figures) -> tuple[int, float]:
    """Median times into `figures`: summed in SQL, and read-then-aggregate; the rows and core-hours they
    gave (which must agree)."""
    from wlcgcloud import usage
    from wlcgcloud.ledger import sums

    now = datetime.now(UTC)
    reads, aggregates, summed = [], [], []
    for _ in range(runs):
        t0 = time.perf_counter()
        buckets = list(sums.buckets(ledger, "aws", SINCE.timestamp(), UNTIL.timestamp(), ["fleet"]))
        fast, fast_total = usage.aggregate([], SINCE, UNTIL, ["fleet", "day"], now, buckets)
        summed.append(time.perf_counter() - t0)
    for _ in range(max(1, runs // 3)):  # the old way, for reference: slow, so fewer runs
        t0 = time.perf_counter()
        intervals = usage._ledger_intervals("aws", ledger, set(), SINCE, UNTIL)
        t1 = time.perf_counter()
        result, total = usage.aggregate(intervals, SINCE, UNTIL, ["fleet", "day"], now)
        t2 = time.perf_counter()
        reads.append(t1 - t0)
        aggregates.append(t2 - t1)
        del intervals
    figures.read, figures.aggregate = statistics.median(reads), statistics.median(aggregates)
    figures.summed = statistics.median(summed)
    if len(fast) != len(result) or abs(fast_total["core_hours"] - total["core_hours"]) > 1e-6 * total["core_hours"]:
        raise SystemExit(f"{figures.backend}: summed in SQL {len(fast)} rows, {fast_total['core_hours']} core-hours; "
                         f"from each lifetime {len(result)}, {total['core_hours']}")  # fmt: skip
    return len(fast), fast_total["core_hours"]


def command_line(env: dict[str, str], runs: int, figures: Figures, expected: tuple[int, float], records: int) -> None:
    """`wlcgcloud usage` as a fresh process, against `python -c pass` in the same runs."""
    from fleets import PYTHON, WLCGCLOUD

    gnu_time = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    argv = [WLCGCLOUD, "usage", "--since", _z(SINCE.timestamp()), "--until", _z(UNTIL.timestamp()),
            "--by", "fleet,day", "-o", "json"]  # fmt: skip
    _timed(argv, env, None)  # warm-up, untimed: moto builds its EC2 region on the first call, the OS caches
    commands, bares, peaks = [], [], []
    for _ in range(runs):
        bares.append(_timed([PYTHON, "-c", "pass"], env, None)[0])
        elapsed, peak, out = _timed(argv, env, gnu_time)
        commands.append(elapsed)
        peaks.append(peak)
        data = json.loads(out)
        got = (len(data["rows"]), data["total"]["core_hours"])
        if got[0] != expected[0] or abs(got[1] - expected[1]) > 1e-6 * max(1.0, expected[1]):
            raise SystemExit(f"{figures.backend}: the command gave {got}, in process {expected}")
    figures.command, figures.bare = statistics.median(commands), statistics.median(bares)
    known = [p for p in peaks if p is not None]
    figures.peak_mb = max(known) / 1024 if known else None
    figures.rows, figures.core_hours = expected
    by_instance = [*argv[:-4], "--by", "instance", "-o", "json"]
    timed = [_timed(by_instance, env, gnu_time) for _ in range(runs)]
    figures.by_instance = statistics.median(t[0] for t in timed)
    known_peaks = [t[1] for t in timed if t[1] is not None]
    figures.by_instance_mb = max(known_peaks) / 1024 if known_peaks else None
    month = [WLCGCLOUD, "usage", "--since", APEL_SINCE, "--until", APEL_UNTIL, "-o", "apel"]
    timed = [_timed(month, env, gnu_time) for _ in range(runs)]
    for _, _, out in timed:
        printed = out.count("\n%%\n")  # a record's end: its own line (no value holds a line end)
        if printed != records:
            raise SystemExit(f"{figures.backend}: -o apel printed {printed} records, not {records}")
    figures.apel_month = statistics.median(t[0] for t in timed)
    known_peaks = [t[1] for t in timed if t[1] is not None]
    figures.apel_mb = max(known_peaks) / 1024 if known_peaks else None


def apel_records(rows: list[tuple[Any, ...]]) -> int:
    """How many APEL records `usage -o apel` over APEL_SINCE..APEL_UNTIL must print: one per instance and UTC
    month it ran in, inside the window (--until a date: to the end of that day)."""
    lo = datetime.fromisoformat(APEL_SINCE + "T00:00:00+00:00").timestamp()
    hi = datetime.fromisoformat(APEL_UNTIL + "T00:00:00+00:00").timestamp() + 86400
    cuts = [datetime(2026, month, 1, tzinfo=UTC).timestamp() for month in range(9, 13)]
    count = 0
    for row in rows:
        start, end = max(row[9], lo), min(row[10], hi)
        if end > start:
            count += 1 + sum(1 for cut in cuts if start < cut < end)
    return count


def _timed(argv: list[str], env: dict[str, str], gnu_time: str | None) -> tuple[float, int | None, str]:
    """Wall time, peak RSS in kB (GNU time around the command alone; else the children's), stdout."""
    import resource

    with tempfile.NamedTemporaryFile("r") as peak_file:
        wrapped = [gnu_time, "-f", "%M", "-o", peak_file.name, *argv] if gnu_time else argv
        start = time.perf_counter()
        done = subprocess.run(wrapped, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-1500:]}")
        if gnu_time:
            peak: int | None = int(peak_file.read().split()[-1])
        else:  # the largest child so far, this benchmark's fork included: an upper bound
            peak = int(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    return elapsed, peak, done.stdout


def run_backend(backend: str, rows: list[tuple[Any, ...]], moto: Any, runs: int, keep: Path | None = None) -> Figures:
    from fleets import World

    from wlcgcloud.ledger import Ledger
    from wlcgcloud.ledger.postgresql import PASSWORD_VARIABLE

    figures = Figures(backend)
    world = World()
    world.profiles({"aws": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": moto.url,
                            "access_key_id": moto.access_key, "site_name": "BENCH-SITE"}},
                   {"aws": moto.secret_key})  # fmt: skip
    server = None
    try:
        if backend == "postgresql":
            from peers.postgres import PostgresServer

            server = PostgresServer.start()
            db = server.new_database()
            where: str = db.url
            world.env.update({"WLCGCLOUD_LEDGER": db.url, PASSWORD_VARIABLE: db.password})
            os.environ[PASSWORD_VARIABLE] = db.password  # for the in-process Ledger
        else:
            where = str(Path(world.env["WLCGCLOUD_STATE_DIR"]) / "ledger.sqlite")
        ledger = Ledger(where)
        try:
            start = time.perf_counter()
            fill(ledger, rows)
            figures.fill = time.perf_counter() - start
            expected = in_process(ledger, runs, figures)
        finally:
            ledger.close()
        command_line(world.env, runs, figures, expected, apel_records(rows))
        if keep is not None and backend == "sqlite":
            keep_world(Path(where), keep)
    finally:
        if server is not None:
            server.stop()
            os.environ.pop(PASSWORD_VARIABLE, None)
        shutil.rmtree(world.tmp, ignore_errors=True)
    return figures


def keep_world(ledger: Path, keep: Path) -> None:
    """DIR/state/ledger.sqlite, DIR/config.toml and DIR/usage.sh: the command as timed, on a moto of its own."""
    from peers.ec2 import free_port

    keep.mkdir(parents=True, exist_ok=True)
    (keep / "state").mkdir(exist_ok=True)
    shutil.copy2(ledger, keep / "state" / "ledger.sqlite")
    port = free_port()
    (keep / "config.toml").write_text(
        f'[profiles.aws]\nprovider = "ec2"\nregion = "eu-west-1"\nendpoint_url = "http://127.0.0.1:{port}"\n'
        'access_key_id = "bench"\nsite_name = "BENCH-SITE"\n'
    )
    script = keep / "usage.sh"
    script.write_text(f"""#!/bin/sh
# The command bench/usage.py timed, over the ledger it generated here. Needs wlcgcloud and moto_server
# (pip install 'moto[server]') on PATH; EC2's usage is the ledger's memory, so moto shows no instance.
set -eu
cd "$(dirname "$0")"
export WLCGCLOUD_CONFIG="$PWD/config.toml" WLCGCLOUD_STATE_DIR="$PWD/state" HOME="$PWD" \\
       WLCGCLOUD_SECRET_AWS=bench AWS_EC2_METADATA_DISABLED=true
moto_server -H 127.0.0.1 -p {port} >moto.log 2>&1 &
moto=$!
trap 'kill $moto' EXIT
python3 -c 'import socket, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", {port}), 1).close(); break
    except OSError:
        time.sleep(0.1)'
time wlcgcloud usage --since {_z(SINCE.timestamp())} --until {_z(UNTIL.timestamp())} --by fleet,day -o json >usage.json
""")
    script.chmod(0o755)
    print(f"kept the ledger, config.toml and usage.sh in {keep}", flush=True)


def report(all_figures: list[Figures], n: int, runs: int) -> None:
    print(f"\nwlcgcloud usage --by fleet,day -o json over {n:,} EC2 ledger intervals "
          f"({_z(SINCE.timestamp())} .. {_z(UNTIL.timestamp())}), median of {runs}:")  # fmt: skip
    head = ("backend", "fill s", "command s", "x python", "peak MB", "summed s", "before: read+agg s",
            "--by instance s", "its peak MB", "apel 1 month s", "its peak MB")  # fmt: skip
    print("  " + "".join(f"{h:>{max(10, len(h) + 2)}}" for h in head))
    for f in all_figures:
        peak = f"{f.peak_mb:.0f}" if f.peak_mb is not None else "n/a"
        its_peak = f"{f.by_instance_mb:.0f}" if f.by_instance_mb is not None else "n/a"
        cells = (f.backend, f"{f.fill:.1f}", f"{f.command:.2f}", f"{f.command / f.bare:.0f}", peak, f"{f.summed:.2f}",
                 f"{f.read:.1f}+{f.aggregate:.1f}", f"{f.by_instance:.2f}", its_peak,
                 f"{f.apel_month:.2f}", f"{f.apel_mb:.0f}" if f.apel_mb is not None else "n/a")  # fmt: skip
        print("  " + "".join(f"{c:>{max(10, len(h) + 2)}}" for c, h in zip(cells, head, strict=True)))
    first = all_figures[0]
    print(f"  {first.rows} rows (fleet x day), {first.core_hours:,.0f} core-hours; target: the command <= {TARGET_S} s "
          "end to end (fresh process, moto, ledger); 'summed' and 'before' are in this process")  # fmt: skip
    if len(all_figures) == 2:
        sq, pg = all_figures
        print(f"  postgresql / sqlite: command {pg.command / sq.command:.2f}x, summed {pg.summed / sq.summed:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--keep", type=Path, help="leave the SQLite ledger, a config and usage.sh in this directory")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "bench"))
    from fleets import World  # also puts tests/ on sys.path, for the peers
    from peers import ec2

    for name in ("WLCGCLOUD_LEDGER", "WLCGCLOUD_LEDGER_PASSWORD"):
        os.environ.pop(name, None)  # the throwaway worlds say which ledger
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    start = time.perf_counter()
    rows = generate(args.intervals)
    print(f"generated {len(rows):,} intervals in {time.perf_counter() - start:.1f} s", flush=True)
    scratch = World()
    moto = ec2.start(scratch.tmp / "moto.log")
    try:
        results = []
        for backend in backends:
            results.append(run_backend(backend, rows, moto, args.runs, args.keep))
            print(f"{backend}: done", flush=True)
    finally:
        moto.stop()
        shutil.rmtree(scratch.tmp, ignore_errors=True)
    report(results, args.intervals, args.runs)
    if any(abs(f.core_hours - results[0].core_hours) > 1e-6 * results[0].core_hours for f in results):
        print("  the backends disagree on the core-hours!")
        return 1
    return 0 if all(f.command <= TARGET_S for f in results) else 1


def _z(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
