"""APEL cloud usage records (v0.4): one per instance and month, from what `wlcgcloud.usage` collects.

The format WLCG accounting ingests: a message of `Key: Value` lines after an
`APEL-cloud-message: v0.4` header, `%%` after each record, at most 100 records a message, queued
for the APEL SSM sender (`ssmsend`) in a `dirq` directory queue.

A month of a big fleet is half a million records: each is written as it is made, by one SQL
expression (`_record_sql`) run where the pieces are, an instance's use in a month each: over the
ledger's lifetimes, cut at the months in SQL and read in order (`wlcgcloud.ledger.sums.months`), and
over the clouds' own intervals, merged per instance and month here (`ledger.sums.pieces`).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from wlcgcloud.clouds import CLOUDS
from wlcgcloud.config import Profile
from wlcgcloud.errors import ConfigError
from wlcgcloud.ledger import sums as ledger_sums
from wlcgcloud.usage import Interval, collector_paused, next_month, unseen

if TYPE_CHECKING:
    from wlcgcloud.ledger import Ledger

KEYS = (
    "VMUUID", "SiteName", "CloudComputeService", "MachineName", "LocalUserId", "LocalGroupId", "GlobalUserName",
    "FQAN", "Status", "StartTime", "EndTime", "SuspendDuration", "WallDuration", "CpuDuration", "CpuCount",
    "NetworkType", "NetworkInbound", "NetworkOutbound", "PublicIPCount", "Memory", "Disk", "BenchmarkType",
    "Benchmark", "StorageRecordId", "ImageId", "CloudType",
)  # fmt: skip
PER_MESSAGE = 100
HEADER = "APEL-cloud-message: v0.4\n"
NL = "\n"


def spans(since: datetime, until: datetime, now: datetime) -> list[tuple[float, float, str]]:
    """The UTC months the window [since, min(until, now)) meets, each clipped to it: (from, to, name),
    epoch seconds and `2026-11`, in order."""
    lo, hi = since.timestamp(), min(until, now).timestamp()
    first = datetime.fromtimestamp(lo, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    out = []
    while first.timestamp() < hi:
        after = next_month(first)
        start, stop = max(first.timestamp(), lo), min(after.timestamp(), hi)
        if start < stop:
            out.append((start, stop, first.strftime("%Y-%m")))
        first = after
    return out


def messages(
    ledger: Ledger, intervals: Iterable[Interval], from_ledger: Mapping[str, set[str]],
    profiles: Mapping[str, Profile], months: Sequence[tuple[float, float, str]], version: str,
) -> Iterator[tuple[str, int]]:  # fmt: skip
    """The APEL cloud messages of `profiles`' records, each with how many records it holds: the v0.4
    header, then at most 100 records, one per instance and month in the order of profile, instance and
    month; each message made as it is wanted (the ledger's own pieces read on connections of their own).

    From the clouds' `intervals`, and, for each profile in `from_ledger` (what `usage.collect` gives for
    a cloud that forgets ended instances), the ledger's lifetimes but those of the ids its cloud still
    reports. A running VM is reported `started` with its totals so far; it is sent again later with larger
    ones (APEL keys records on VMUUID and month). Only v0.4 keys, none empty. A profile with records but no
    site_name is a ConfigError before any message is made.
    """
    with collector_paused():
        cloud = _cloud_pieces((iv for iv in intervals if iv.profile in profiles), months)
    streams = []
    for name in sorted(profiles):
        record, params = _record_sql(ledger.backend, profiles[name], version)
        made = ledger_sums.pieces(ledger, name, cloud.get(name, []), record, params)
        found: Iterable[tuple[str, float, str]] = made
        if name in from_ledger:
            kept = unseen(ledger_sums.months(ledger, name, months, record, params), 0, from_ledger[name])
            found = heapq.merge(made, kept, key=ledger_sums.ORDER) if made else kept
        pieces = iter(found)
        if not profiles[name].get("site_name"):
            if next(pieces, None) is None:
                continue
            raise ConfigError(
                f"profile '{name}': APEL records need site_name (the GOCDB site).",
                f"Set it with 'wlcgcloud profile edit {name} --site-name NAME'.",
            )
        streams.append(pieces)

    def batched() -> Iterator[tuple[str, int]]:
        batch: list[str] = []
        for pieces in streams:
            for piece in pieces:
                batch.append(piece[2])
                if len(batch) == PER_MESSAGE:
                    yield HEADER + "".join(batch), PER_MESSAGE
                    batch.clear()
        if batch:
            yield HEADER + "".join(batch), len(batch)

    return batched()


def queue(directory: str) -> Callable[[str], str]:
    """How to add a message to the directory queue the APEL SSM sender reads (dirq); it says the name."""
    from dirq.QueueSimple import QueueSimple

    add: Callable[[str], str] = QueueSimple(directory).add  # dirq has no types
    return add


def to_publish(profiles: Sequence[Profile]) -> tuple[list[Profile], list[str]]:
    """What a site queues for APEL: the profiles with publish_apel set, and a note for each left out (its
    site usually publishes its own cloud's use already)."""
    notes = [
        f"profile '{p.name}': publish_apel is not set, so no APEL records for it "
        "(sites usually publish their own clouds' use already)."
        for p in sorted(profiles, key=lambda p: p.name)
        if not p.get("publish_apel")
    ]
    return [p for p in profiles if p.get("publish_apel")], notes


def _cloud_pieces(
    intervals: Iterable[Interval], months: Sequence[tuple[float, float, str]]
) -> dict[str, list[tuple[Any, ...]]]:
    """The clouds' intervals as pieces (`ledger.sums.PIECE`), by profile: the intervals of an instance
    (OpenNebula: a history record each) added up per month; its first interval says the rest."""
    if not months:
        return {}
    lo, hi = months[0][0], months[-1][1]
    froms = [m[0] for m in months]
    merged: dict[tuple[str, str, float], list[Any]] = {}
    for iv in intervals:
        start = max(iv.start, lo)
        end = min(iv.end if iv.end is not None else hi, hi)
        at = bisect_right(froms, start) - 1
        while start < end:
            month_from, month_to, _ = months[at]
            stop = month_to if month_to < end else end
            key = (iv.profile, iv.instance, month_from)
            entry = merged.get(key)
            if entry is None:
                merged[key] = [iv, iv.start, iv.end, stop - start]
            else:
                entry[1] = min(entry[1], iv.start)
                if iv.end is None or (entry[2] is not None and iv.end > entry[2]):
                    entry[2] = iv.end
                entry[3] += stop - start
            start, at = stop, at + 1
    out: dict[str, list[tuple[Any, ...]]] = {}
    for (profile, instance, month), (iv, first, ended, wall) in merged.items():
        out.setdefault(profile, []).append(
            (instance, month, iv.name, first, ended, wall, iv.vcpus, iv.memory_mb, iv.image, iv.provider, iv.flavor)
        )
    return out


def _record_sql(backend: Any, profile: Profile, version: str) -> tuple[str, list[Any]]:
    """The SQL expression that writes a piece's record (`ledger.sums.months`), and its parameters in the
    order of their placeholders: `Key: Value` lines in the order of KEYS, a line only where there is a
    value, then `%%`. The record's one definition, for the ledger's half a million pieces of a month and
    the clouds' few alike: the ledger makes each text where the data is, in C. A value from a cloud or a
    profile (a VM's name, an image, a DN) is kept to one line, so it cannot add lines of its own."""
    whole = backend.integral
    params: list[Any] = []

    def given(value: Any) -> str:
        params.append(str(value))
        return _one_line("?")

    def line(key: str, column: str) -> str:  # the line where the text column has a value
        return f"CASE WHEN {column} <> '' THEN '{key}: ' || {_one_line(column)} || '{NL}' ELSE '' END"

    parts = [f"'VMUUID: ' || {_one_line('p.id')} || '{NL}SiteName: '", given(profile.get("site_name")), f"'{NL}'"]
    if profile.get("compute_service"):
        parts += ["'CloudComputeService: '", given(profile.get("compute_service")), f"'{NL}'"]
    parts += [line("MachineName", "p.name"), line("GlobalUserName", "p.subject"), line("FQAN", "p.fqan")]
    parts.append(f"CASE WHEN p.ended IS NULL THEN 'Status: started{NL}StartTime: ' || {whole('p.first')} || '{NL}' "
                 f"ELSE 'Status: completed{NL}StartTime: ' || {whole('p.first')} || '{NL}EndTime: ' || "
                 f"{whole('p.ended')} || '{NL}' END")  # fmt: skip
    parts.append(f"'SuspendDuration: 0{NL}WallDuration: ' || {whole('p.wall')} || '{NL}'")
    parts.append(f"CASE WHEN p.c <> 0 THEN 'CpuCount: ' || {whole('p.c')} || '{NL}' ELSE '' END")
    parts.append(f"CASE WHEN p.m <> 0 THEN 'Memory: ' || {whole('p.m')} || '{NL}' ELSE '' END")
    benchmarks = dict(profile.get("benchmarks") or {})
    scores = {flavor: score for flavor, score in benchmarks.items() if flavor != "type" and score not in (None, "")}
    if benchmarks.get("type") and scores:
        cases = []
        for flavor, score in sorted(scores.items()):
            params.append(flavor)
            kind, value = given(benchmarks["type"]), given(score)
            cases.append(f"WHEN ? THEN 'BenchmarkType: ' || {kind} || '{NL}Benchmark: ' || {value} || '{NL}'")
        parts.append(f"CASE p.flavor {' '.join(cases)} ELSE '' END")
    parts.append(line("ImageId", "p.image"))
    cases = []
    for name, cloud in sorted(CLOUDS.items()):
        params.append(name)
        cases.append(f"WHEN ? THEN 'CloudType: wlcgcloud/' || {given(version)} || ' (' || {given(cloud.title)} || "
                     f"'){NL}%%{NL}'")  # fmt: skip
    parts.append(f"CASE p.provider {' '.join(cases)} ELSE 'CloudType: wlcgcloud/' || {given(version)} || ' (' || "
                 f"{_one_line('p.provider')} || '){NL}%%{NL}' END")  # fmt: skip
    return " || ".join(parts), params


def _one_line(text: str) -> str:
    """SQL for a text with its line ends (LF, CR) made spaces."""
    return f"replace(replace({text}, '{NL}', ' '), '\r', ' ')"
