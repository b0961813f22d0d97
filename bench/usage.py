"""Usage aggregation benchmark: 1,000,000 ledger intervals grouped by fleet,day (target <= 2 s).

    .venv/bin/python bench/usage.py [--intervals 1000000] [--runs 3]

Fills a throwaway ledger with N EC2 instance lifetimes (200 fleets, 1 to 40 hours each, spread
over two months so many cross midnight), then times, in this process: reading them from the
ledger into intervals, and `usage.aggregate(..., by=["fleet", "day"])` over them.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_S = 2.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--intervals", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    from wlcgcloud import usage
    from wlcgcloud.ledger import Ledger

    ledger = Ledger(Path(tempfile.mkdtemp(prefix="wlcg-usage-")) / "ledger.sqlite")
    rng = random.Random(7)
    base = datetime(2026, 9, 1, tzinfo=UTC).timestamp()
    rows = []
    for n in range(args.intervals):
        start = base + rng.uniform(0, 60 * 86400)
        end = start + rng.uniform(3600, 40 * 3600)
        rows.append((f"i-{n:017x}", f"fleet-{n % 200}", _z(start), _z(end), rng.choice((2, 4, 8))))
    with ledger._transaction() as db:
        db.executemany(
            "INSERT INTO instances (profile, id, fleet, provider, vcpus, memory_mb, launched_at, ended_at, last_seen)"
            " VALUES ('aws', ?, ?, 'ec2', ?, 8192, ?, ?, ?)",
            [(i, f, c, s, e, e) for i, f, s, e, c in rows],
        )
    since, until = datetime(2026, 9, 1, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    now = datetime.now(UTC)
    reads, sums = [], []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        intervals = usage._ledger_intervals("aws", ledger, set(), since, until)
        t1 = time.perf_counter()
        result, total = usage.aggregate(intervals, since, until, ["fleet", "day"], now)
        t2 = time.perf_counter()
        reads.append(t1 - t0)
        sums.append(t2 - t1)
    print(f"{len(intervals)} intervals -> {len(result)} rows (fleet x day), {total['core_hours']:.0f} core-hours")
    print(f"aggregate by fleet,day: median {statistics.median(sums):.2f} s over {args.runs} runs "
          f"(target <= {TARGET_S} s); reading them from the ledger: {statistics.median(reads):.2f} s")  # fmt: skip
    return 0 if statistics.median(sums) <= TARGET_S else 1


def _z(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


if __name__ == "__main__":
    sys.exit(main())
