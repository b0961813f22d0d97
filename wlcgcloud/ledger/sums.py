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
from typing import TYPE_CHECKING, Any

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
                WHERE profile = ? AND {start} < ? AND {stop} > ?{left_out} AND rowid BETWEEN ? AND ?
            ) clipped
            WHERE e > s
        ) dated
        GROUP BY d0, d1{"".join(f", {k}" for k in keys)}
    """  # the day numbers first: SQLite's sorter compares integers faster than text
    params: list[Any] = [lo, lo, lo, lo, lo, hi, lo, profile, hi, lo, *exclude]
    width = len(keys)
    merged: dict[tuple[Any, ...], list[Any]] = {}  # the parts' buckets of one (key, first, last), added up
    cut = width + 2
    for row in ledger.query_tuples(sql, params, parts=PARTS):
        ident = row[:cut]
        known = merged.get(ident)
        if known is None:
            merged[ident] = list(row[cut:])
        else:  # the same group and days in another part
            for k, value in enumerate(row[cut:]):
                known[k] += value
    for ident, v in merged.items():
        yield Bucket(tuple(ident[:width]), int(ident[width]), int(ident[width + 1]), int(v[0]), float(v[1]),
                     float(v[2]), float(v[3]), float(v[4]), float(v[5]), float(v[6]), float(v[7]), float(v[8]),
                     int(v[9]))  # fmt: skip
