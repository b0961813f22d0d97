"""The least the two usage goals of issue 19 still missed would cost on this machine, part by part.

    .venv/bin/python bench/floors.py [--kept DIR] [--intervals 1000000] [--runs 3]

Over the ledger `bench/usage.py --keep DIR` left (or one generated here, the same rows), in this
process, each part alone (median of `--runs`), with `python -c pass` timed in the same run:

- `--by instance -o json`, 1,000,000 rows:
  - reading the clipped lifetimes from the ledger in the rows' order (`ledger.sums.lifetimes`), nothing else;
  - `repr` of the rows' three floats (what any JSON writer in Python calls for each number);
  - json's C encoder over the rows already built in memory, without indentation (the least a
    JSON writer in Python does; the command also indents);
- `-o apel`, one month: SQLite making the records' text (`ledger.sums.months` with the record's
  SQL expression), the rows read and nothing written.

Each sum of parts that must run one after the other on one core is printed beside the 2 s goal.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import usage as usage_bench  # noqa: E402  (bench/usage.py: the same rows, the same windows)

GOAL_S = 2.0


def timed(work: Callable[[], Any], runs: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(runs):
        start = time.perf_counter()
        out = work()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def bare(runs: int) -> float:
    def once() -> None:
        subprocess.run([sys.executable, "-c", "pass"], check=True)

    return timed(once, runs)[0]


def ledger_at(kept: Path | None, intervals: int, scratch: Path) -> Path:
    if kept is not None:
        path = kept / "state" / "ledger.sqlite"
        if not path.is_file():
            raise SystemExit(f"{path} is not there: make it with 'bench/usage.py --backend sqlite --keep {kept}'.")
        return path
    from wlcgcloud.ledger import Ledger

    path = scratch / "ledger.sqlite"
    ledger = Ledger(path)
    try:
        usage_bench.fill(ledger, usage_bench.generate(intervals))
    finally:
        ledger.close()
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=Path, help="a directory `bench/usage.py --keep` filled")
    parser.add_argument("--intervals", type=int, default=1_000_000, help="without --kept: how many to generate")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from wlcgcloud import __version__, apel, usage
    from wlcgcloud.config import Profile
    from wlcgcloud.ledger import Ledger, sums

    scratch = Path(tempfile.mkdtemp(prefix="wlcg-floors-"))
    try:
        ledger = Ledger(ledger_at(args.kept, args.intervals, scratch))
        lo, hi = usage_bench.SINCE.timestamp(), usage_bench.UNTIL.timestamp()

        def read() -> int:
            return sum(1 for _ in sums.lifetimes(ledger, "aws", lo, hi, ["instance"]))

        reading, count = timed(read, args.runs)
        since, until = usage_bench.SINCE, usage_bench.UNTIL
        made, _ = usage.streamed(
            [], since, until, ["instance"], until, [sums.lifetimes(ledger, "aws", lo, hi, ["instance"])]
        )
        rows = list(made)
        floats = [value for row in rows for value in (row["wall_hours"], row["core_hours"], row["memory_gb_hours"])]
        reprs, _ = timed(lambda: sum(len(repr(f)) for f in floats), args.runs)
        encode = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
            None, str, json.encoder.encode_basestring, None, ": ", ", ", False, False, True
        )
        encoding, _ = timed(lambda: sum(len("".join(encode(rows[k : k + 5000], 0))) for k in range(0, len(rows), 5000)),
                            args.runs)  # fmt: skip

        profile = Profile("aws", "ec2", {"site_name": "BENCH-SITE"})
        record, params = apel._record_sql(ledger.backend, profile, __version__)
        # The command's window: `--until` a date is the end of that day (bench/usage.py asks 1 November whole).
        first, last = (
            datetime.fromisoformat(d).replace(tzinfo=UTC) for d in (usage_bench.APEL_SINCE, usage_bench.APEL_UNTIL)
        )
        months = apel.spans(first, last + timedelta(days=1), last + timedelta(days=1))

        def apel_text() -> int:
            return sum(1 for _ in sums.months(ledger, "aws", months, record, params))

        apel_sql, records = timed(apel_text, args.runs)
        ledger.close()
        reference = bare(args.runs)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"python -c pass: {reference * 1000:.0f} ms (median of {args.runs})")
    print(f"--by instance -o json, {count:,} rows, each part alone:")
    for label, seconds in (("reading the lifetimes in order", reading), (f"repr of their {3 * count:,} floats", reprs),
                           ("json's C encoder over the rows built", encoding)):  # fmt: skip
        print(f"  {label + ':':<40}{seconds:5.2f} s")
    print(f"  {'read + encode, one after the other:':<40}{reading + encoding:5.2f} s against the {GOAL_S:.0f} s goal "
          "(the floats' repr is inside the encoder's time)")  # fmt: skip
    print(f"-o apel, one month ({records:,} records): SQLite making their text: {apel_sql:.2f} s; "
          f"with a bare interpreter's start: {apel_sql + reference:.2f} s against the {GOAL_S:.0f} s goal")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
