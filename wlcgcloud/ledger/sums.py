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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from wlcgcloud.ledger import Ledger

DAY = 86400
COLUMNS = {"profile": "profile", "fleet": "fleet", "experiment": "experiment", "flavor": "flavor",
           "image": "image", "instance": "id"}  # fmt: skip
PARTS = max(1, min(4, os.cpu_count() or 1))  # SQLite: the scan in this many parts at once, one core each


class Bucket(NamedTuple):
    """Lifetimes of one group that start on day `first` and end on day `last` (UTC day numbers), clipped to
    the window; sums of their starts `s` and ends `e` in seconds after the window's start, of vCPUs `c`
    and memory `m` (MiB), and of those times each. (A tuple: `--by instance` makes one per lifetime.)"""

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


def buckets(ledger: Ledger, profile: str, lo: float, hi: float, groups: Sequence[str]) -> Iterator[Bucket]:
    """The buckets of `profile`'s lifetimes inside [lo, hi) (epoch seconds), grouped by `groups` (keys of
    COLUMNS). An instance gone without a recorded end ran at least until it was last seen (as
    `Ledger.lifetimes`). Instances the cloud still reports itself are taken out with `without`."""
    b = ledger.backend
    keys = [COLUMNS[g] for g in groups]
    picked = "".join(f"{k}, " for k in keys)
    # Placeholders in the order they appear in the text: the outer query's, the middle one's, the clipped ones.
    sql = f"""
        SELECT {picked}d0, d1, COUNT(*), SUM(s), SUM(e), SUM(c), SUM(c * s), SUM(c * e), SUM(m), SUM(m * s),
               SUM(m * e), SUM(CASE WHEN e = d1 * {DAY} - ? THEN 1 ELSE 0 END)
        FROM (
            SELECT {picked}c, m, s, e, {b.day_number("(s + ?)")} AS d0, {b.day_number("(e + ?)")} AS d1
            FROM ({_clipped(ledger, keys)}) clipped
            WHERE e > s
        ) dated
        GROUP BY d0, d1{"".join(f", {k}" for k in keys)}
    """  # the day numbers first: SQLite's sorter compares integers faster than text
    width = len(keys)
    merged: dict[tuple[Any, ...], list[Any]] = {}  # the parts' buckets of one (key, first, last), added up
    cut = width + 2
    for row in ledger.query_tuples(sql, [lo, lo, lo, *_clipped_params(profile, lo, hi, lo)], parts=PARTS):
        ident = row[:cut]
        known = merged.get(ident)
        if known is None:
            merged[ident] = list(row[cut:])
        else:  # the same group and days in another part
            for k, value in enumerate(row[cut:]):
                known[k] += value
    for ident, v in merged.items():  # PostgreSQL's sums of integers are numeric (Decimal)
        s, e, c, cs, ce, m, ms, me = map(float, v[1:9])
        yield Bucket((*ident[:width],), int(ident[width]), int(ident[width + 1]), int(v[0]), s, e, c, cs, ce, m, ms,
                     me, int(v[9]))  # fmt: skip


def lifetimes(ledger: Ledger, profile: str, lo: float, hi: float, groups: Sequence[str]) -> Iterable[tuple[Any, ...]]:
    """Each of `profile`'s lifetimes inside [lo, hi), clipped to it: (the values of `groups`, vCPUs, memory
    MiB, start, end), times in epoch seconds, in the order of usage's rows (the groups' values compared
    as bytes, NULL as the empty text), read as they are wanted. For groups with `instance` in
    them, where a lifetime is a row of its own and summing would only copy (a million are never all held);
    rows of instances the cloud still reports are the caller's to drop."""
    keys = [COLUMNS[g] for g in groups]
    order = ", ".join(f"COALESCE({k}, ''){ledger.backend.BYTEWISE}" for k in keys)
    sql = f"SELECT * FROM ({_clipped(ledger, keys)}) clipped WHERE e > s ORDER BY {order}"
    return ledger.query_tuples(sql, _clipped_params(profile, lo, hi, 0.0), streamed=True)


# A piece: an instance's use in one month (APEL writes a record of each), as the columns a record's SQL reads.
PIECE = ("id", "month", "name", "first", "ended", "wall", "c", "m", "image", "provider", "flavor")
PIECE_TYPES = ("TEXT", "DOUBLE PRECISION", "TEXT", "DOUBLE PRECISION", "DOUBLE PRECISION", "DOUBLE PRECISION",
               "BIGINT", "BIGINT", "TEXT", "TEXT", "TEXT")  # fmt: skip
ORDER = itemgetter(0, 1)  # the order of (id, month, text) pieces, as `months` gives them


def months(
    ledger: Ledger, profile: str, spans: Sequence[tuple[float, float, str]], record: str, params: Sequence[Any]
) -> Iterable[tuple[str, float, str]]:
    """Each of `profile`'s lifetimes cut at the months of `spans` ((from, to, name) in order: the months
    a window meets, each clipped to it), as the text the SQL expression `record` (with `params`) makes of
    each piece: (id, the month's `from`, text). `record` reads the columns PIECE of a table `p`, and
    `p.subject` and `p.fqan` (the credential the launch forwarded); `first` and `ended` are the lifetime's
    own, not clipped; `wall` is its seconds in the month. Ordered by id (as bytes) and month; read as they
    are wanted, on a connection of their own: a month of a big fleet is half a million pieces, never all
    held."""
    from wlcgcloud.ledger import lifetime_sql

    if not spans:
        return ()
    b = ledger.backend
    start, stop = lifetime_sql(b.epoch)
    # Every lifetime is read once (the whole table, as `_clipped`), then met with the few months (a CROSS
    # JOIN keeps that order of the loops on SQLite); VALUES' columns are column1.. in both dialects. The
    # pieces are sorted before their text is made, so the sorter moves small rows; the outer query only
    # adds a column, which both engines do in the order they read (APEL does not need the order: its
    # records are keyed by id and month; it keeps the output the same from run to run).
    sql = f"""
        SELECT p.id, p.month, {record} FROM (
            SELECT i.id, m.column1 AS month, i.name, i.s AS first, i.e AS ended,
                   {b.least("i.e", "m.column2")} - {b.greatest("i.s", "m.column1")} AS wall, i.c, i.m, i.image,
                   i.provider, i.flavor, {_CREDENTIAL}
            FROM (SELECT id, name, {start} AS s, {stop} AS e, COALESCE(vcpus, 0) AS c, COALESCE(memory_mb, 0) AS m,
                         image, provider, flavor, launch_id
                  FROM {b.whole("instances")} WHERE profile = ? AND {start} < ? AND {stop} > ?{b.FENCE}) i
            CROSS JOIN (VALUES {", ".join("(?, ?)" for _ in spans)}) AS m
            LEFT JOIN launches l ON l.id = i.launch_id
            WHERE i.s < m.column2 AND i.e > m.column1 AND i.e > i.s
            ORDER BY i.id{b.BYTEWISE}, m.column1{b.FENCE}
        ) p"""
    bounds = [value for span in spans for value in span[:2]]
    return ledger.query_tuples(sql, [*params, profile, spans[-1][1], spans[0][0], *bounds], streamed=True)


def pieces(
    ledger: Ledger, profile: str, rows: Sequence[tuple[Any, ...]], record: str, params: Sequence[Any]
) -> list[tuple[str, float, str]]:
    """Pieces made elsewhere (the clouds' own intervals, as tuples in PIECE's order) as `months` gives the
    ledger's: (id, month, the text of `record`), with the credential the ledger knows for each id, ordered."""
    out: list[tuple[str, float, str]] = []
    columns = ", ".join(f"CAST(v.column{k + 1} AS {t}) AS {name}"
                        for k, (name, t) in enumerate(zip(PIECE, PIECE_TYPES, strict=True)))  # fmt: skip
    for at in range(0, len(rows), 50):  # SQLite's variable limit: at most 11 a row, and the record's
        chunk = rows[at : at + 50]
        values = ", ".join("(" + ", ".join("?" * len(PIECE)) + ")" for _ in chunk)
        sql = f"""
            SELECT p.id, p.month, {record} FROM (
                SELECT {columns}, {_CREDENTIAL}
                FROM (VALUES {values}) AS v
                LEFT JOIN instances i ON i.profile = ? AND i.id = CAST(v.column1 AS TEXT)
                LEFT JOIN launches l ON l.id = i.launch_id
            ) p"""
        out += ledger.query_tuples(sql, [*params, *(value for row in chunk for value in row), profile])
    out.sort(key=ORDER)  # as `months` orders them: Python compares text by code point
    return out


_CREDENTIAL = ("l.credential_subject AS subject, "
               "CASE WHEN l.credential_subject IS NOT NULL THEN l.credential_fqan END AS fqan")  # fmt: skip


def _clipped(ledger: Ledger, keys: Sequence[str]) -> str:
    """SQL for the lifetimes of a profile that meet a window, clipped to it: the `keys` columns, then `c`
    (vCPUs), `m` (MiB), `s` and `e` (seconds after an origin), each row's times computed once (fenced)."""
    from wlcgcloud.ledger import lifetime_sql

    b = ledger.backend
    start, stop = lifetime_sql(b.epoch)
    return f"""
        SELECT {"".join(f"{k}, " for k in keys)}COALESCE(vcpus, 0) AS c, COALESCE(memory_mb, 0) AS m,
               {b.greatest(start, "?")} - ? AS s, {b.least(stop, "?")} - ? AS e
        FROM {b.whole("instances")}
        WHERE profile = ? AND {start} < ? AND {stop} > ? AND rowid BETWEEN ? AND ?{b.FENCE}"""


def _clipped_params(profile: str, lo: float, hi: float, origin: float) -> list[Any]:
    return [lo, origin, hi, origin, profile, hi, lo]


def without(found: Iterable[Bucket], rows: Iterable[Mapping[str, Any]], lo: float, hi: float,
            groups: Sequence[str]) -> list[Bucket]:  # fmt: skip
    """`found` less the lifetimes of `rows` (the ledger's rows of instances the cloud still reports, whose
    own figures count instead), each taken out of its bucket exactly as the SQL of `buckets` put it in.
    So the ledger's sums can start before the cloud has answered."""
    index = {(b.key, b.first, b.last): b for b in found}
    for r in rows:
        start = _seconds(r.get("launched_epoch"), r.get("launched_at"))
        stop = _seconds(r.get("ended_epoch"), r.get("ended_at"))
        stop = stop if stop is not None else _seconds(r.get("seen_epoch"), r.get("last_seen"))
        if start is None or stop is None or not (start < hi and stop > lo):
            continue
        s, e = max(start, lo), min(stop, hi)
        if e <= s:
            continue
        first, last = int(s // DAY), int(e // DAY)
        ident = (tuple(r.get(COLUMNS[g]) for g in groups), first, last)
        b = index.get(ident)
        if b is None:
            continue
        c, m, s, e = float(r.get("vcpus") or 0), float(r.get("memory_mb") or 0), s - lo, e - lo
        index[ident] = b._replace(n=b.n - 1, s=b.s - s, e=b.e - e, c=b.c - c, cs=b.cs - c * s, ce=b.ce - c * e,
                               m=b.m - m, ms=b.ms - m * s, me=b.me - m * e,
                               at_midnight=b.at_midnight - (e == last * DAY - lo))  # fmt: skip
    return [b for b in index.values() if b.n > 0]


def _seconds(epoch: Any, text: Any) -> float | None:
    if epoch is not None:
        return float(epoch)
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() if isinstance(text, str) else None
