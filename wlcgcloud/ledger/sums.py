"""Usage summed where the ledger's rows are: a million lifetimes become a few thousand buckets in one scan.

`usage --by ...` needs, per group (fleet, flavor, ...) and UTC day, how many instances ran and for
how long. Reading every lifetime into Python costs seconds per million; instead the ledger groups
them by (group, day of the start, day of the end) in SQL, with sums that are linear in the start
and end times (and in those times the vCPUs and the memory), and `wlcgcloud.usage` splits each
bucket into its days exactly: the first day, the whole days between, the last day. Times are
seconds after the window's start, so sums over a million lifetimes keep their precision. The SQL
is the dialect SQLite and PostgreSQL share, with the few words they spell differently taken from
the backend (`epoch`, `greatest`, `least`, `day_number`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from wlcgcloud.times import stamp

if TYPE_CHECKING:
    from wlcgcloud.ledger import Ledger

DAY = 86400
COLUMNS = {"profile": "profile", "fleet": "fleet", "experiment": "experiment", "flavor": "flavor",
           "image": "image", "instance": "id"}  # fmt: skip
PARTS = max(1, min(4, os.cpu_count() or 1))  # SQLite: the scan in this many parts at once, one core each
MAX_EXCLUDED = 20_000  # ids a query may leave out (what the cloud reports itself); more: read lifetimes instead


@dataclass(frozen=True)
class Bucket:
    """Lifetimes of one group that start on day `first` and end on day `last` (UTC day numbers), clipped to
    the window; sums of their starts `s` and ends `e` in seconds after the window's start, of vCPUs `c`
    and memory `m` (MiB), and of those times each."""

    key: tuple[Any, ...]  # the values of the groups asked for, day aside, in their order
    first: int
    last: int
    n: int
    s: float
    e: float
    c: float
    cs: float
    ce: float
    m: float
    ms: float
    me: float
    at_midnight: int  # of them, how many end exactly at the start of day `last` (no piece of that day)


def buckets(
    ledger: Ledger, profile: str, lo: float, hi: float, groups: Sequence[str], exclude: Collection[str]
) -> Iterator[Bucket]:
    """The buckets of `profile`'s lifetimes inside [lo, hi) (epoch seconds), grouped by `groups` (keys of
    COLUMNS), leaving out the instances `exclude` names. An instance gone without a recorded end ran
    at least until it was last seen (as `Ledger.lifetimes`)."""
    from wlcgcloud.ledger import lifetime_sql

    b = ledger.backend
    start, stop = lifetime_sql(b.epoch)
    keys = [COLUMNS[g] for g in groups]
    picked = "".join(f"{k}, " for k in keys)
    left_out = f" AND id NOT IN ({', '.join('?' * len(exclude))})" if exclude else ""
    # Placeholders in the order they appear in the text: the middle query's, the inner query's, its WHERE's.
    sql = f"""
        SELECT {picked}d0, d1, COUNT(*), SUM(s), SUM(e), SUM(c), SUM(c * s), SUM(c * e), SUM(m), SUM(m * s),
               SUM(m * e), SUM(CASE WHEN e = d1 * {DAY} - ? THEN 1 ELSE 0 END)
        FROM (
            SELECT {picked}c, m, s, e, {b.day_number("(s + ?)")} AS d0, {b.day_number("(e + ?)")} AS d1
            FROM (
                SELECT {picked}COALESCE(vcpus, 0) AS c, COALESCE(memory_mb, 0) AS m,
                       {b.greatest(start, "?")} - ? AS s, {b.least(stop, "?")} - ? AS e
                FROM instances
                WHERE profile = ? AND launched_at IS NOT NULL AND launched_at < ?
                      AND COALESCE(ended_at, last_seen) > ?{left_out} AND rowid BETWEEN ? AND ?
            ) clipped
            WHERE e > s
        ) dated
        GROUP BY {picked}d0, d1
    """
    params: list[Any] = [lo, lo, lo, lo, lo, hi, lo, profile, _stamp(hi), _stamp(lo), *exclude]
    width = len(keys)
    merged: dict[tuple[Any, ...], list[float]] = {}  # the parts' buckets of one (key, first, last), added up
    for row in ledger.query_tuples(sql, params, parts=PARTS):
        sums = merged.setdefault((tuple(row[:width]), int(row[width]), int(row[width + 1])), [0.0] * 10)
        for k, value in enumerate(row[width + 2 :]):
            sums[k] += float(value or 0)
    for (key, first, last), v in merged.items():
        yield Bucket(key, first, last, int(v[0]), v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], int(v[9]))


def _stamp(moment: float) -> str:
    return stamp(datetime.fromtimestamp(moment, UTC))
