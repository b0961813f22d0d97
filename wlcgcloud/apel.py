"""APEL cloud usage records (v0.4): one per instance and month, from the intervals `wlcgcloud.usage` collects.

The format WLCG accounting ingests: a message of `Key: Value` lines after an
`APEL-cloud-message: v0.4` header, `%%` after each record, at most 100 records a message, queued
for the APEL SSM sender (`ssmsend`) in a `dirq` directory queue.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from wlcgcloud.clouds import CLOUDS
from wlcgcloud.config import Profile
from wlcgcloud.errors import ConfigError
from wlcgcloud.usage import Interval, collector_paused, next_month

KEYS = (
    "VMUUID", "SiteName", "CloudComputeService", "MachineName", "LocalUserId", "LocalGroupId", "GlobalUserName",
    "FQAN", "Status", "StartTime", "EndTime", "SuspendDuration", "WallDuration", "CpuDuration", "CpuCount",
    "NetworkType", "NetworkInbound", "NetworkOutbound", "PublicIPCount", "Memory", "Disk", "BenchmarkType",
    "Benchmark", "StorageRecordId", "ImageId", "CloudType",
)  # fmt: skip
PER_MESSAGE = 100


def records(
    intervals: Iterable[Interval], profiles: Mapping[str, Profile], since: datetime, until: datetime, now: datetime,
    version: str, credentials: Mapping[tuple[str, str], Mapping[str, Any]] | None = None,
) -> list[dict[str, str]]:  # fmt: skip
    """One record per instance and month, with the month's cumulative figures, as APEL expects.

    A running VM is reported `started` with its totals so far; it is sent again later with
    larger ones (APEL keys records on VMUUID and month). Only v0.4 keys, none empty.
    """
    with collector_paused():  # a month of a big fleet is half a million records, none in a cycle
        return _records(intervals, profiles, since, until, now, version, credentials or {})


def _records(
    intervals: Iterable[Interval], profiles: Mapping[str, Profile], since: datetime, until: datetime, now: datetime,
    version: str, credentials: Mapping[tuple[str, str], Mapping[str, Any]],
) -> list[dict[str, str]]:  # fmt: skip
    lo, hi = since.timestamp(), min(until, now).timestamp()
    months = _month_starts(lo, hi)
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for iv in intervals:
        start = max(iv.start, lo)
        end = min(iv.end if iv.end is not None else hi, hi)
        if end <= start:
            continue
        for month, a, b in _months(start, end, months):
            key = (iv.profile, iv.instance, month)
            entry = merged.setdefault(key, {"iv": iv, "wall": 0.0, "first": iv.start, "ended": iv.end})
            entry["wall"] += b - a
            entry["first"] = min(entry["first"], iv.start)
            if iv.end is None or (entry["ended"] is not None and iv.end > entry["ended"]):
                entry["ended"] = iv.end
    out = []
    for (profile_name, instance, _month), entry in sorted(merged.items()):
        first: Interval = entry["iv"]
        profile = profiles[profile_name]
        site = profile.get("site_name")
        if not site:
            raise ConfigError(
                f"profile '{profile_name}': APEL records need site_name (the GOCDB site).",
                f"Set it with 'wlcgcloud profile edit {profile_name} --site-name NAME'.",
            )
        benchmarks = dict(profile.get("benchmarks") or {})
        record = {
            "VMUUID": instance,
            "SiteName": str(site),
            "CloudComputeService": profile.get("compute_service"),
            "MachineName": first.name,
            "Status": "completed" if entry["ended"] is not None else "started",
            "StartTime": str(int(entry["first"])),
            "EndTime": str(int(entry["ended"])) if entry["ended"] is not None else None,
            "SuspendDuration": "0",
            "WallDuration": str(int(entry["wall"])),
            "CpuCount": str(first.vcpus) if first.vcpus else None,
            "Memory": str(first.memory_mb) if first.memory_mb else None,
            "ImageId": first.image,
            "CloudType": f"wlcgcloud/{version} ({_title(first.provider)})",
        }
        credential = credentials.get((profile_name, instance), {})
        record["GlobalUserName"] = credential.get("subject")
        record["FQAN"] = credential.get("fqan")
        if first.flavor and first.flavor in benchmarks and benchmarks.get("type"):
            record["BenchmarkType"] = str(benchmarks["type"])
            record["Benchmark"] = str(benchmarks[first.flavor])
        out.append({k: str(v) for k, v in record.items() if v not in (None, "")})
    return out


def to_publish(intervals: Sequence[Interval], profiles: Sequence[Profile]) -> tuple[list[Interval], list[str]]:
    """What a site queues for APEL: the intervals of the profiles with publish_apel set, and a note
    for each profile left out (its site usually publishes its own cloud's use already)."""
    skipped = sorted(p.name for p in profiles if not p.get("publish_apel"))
    notes = [
        f"profile '{name}': publish_apel is not set, so no APEL records for it "
        "(sites usually publish their own clouds' use already)."
        for name in skipped
    ]
    return [iv for iv in intervals if iv.profile not in skipped], notes


def _title(provider: str) -> str:
    """The cloud's name as people write it (APEL's CloudType), or the ledger's word for one we do not know."""
    return CLOUDS[provider].title if provider in CLOUDS else provider


def _month_starts(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """The starts (epoch seconds) and names (2026-11) of the UTC months that meet [lo, hi]."""
    first = datetime.fromtimestamp(lo, UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    starts, names = [], []
    while first.timestamp() <= hi:
        starts.append(first.timestamp())
        names.append(first.strftime("%Y-%m"))
        first = next_month(first)
    return starts, names


def _months(start: float, end: float, months: tuple[list[float], list[str]]) -> list[tuple[str, float, float]]:
    """[start, end) cut at the months' starts (`_month_starts` of a window holding it): (month, from, to)."""
    starts, names = months
    at = bisect_right(starts, start) - 1
    out = []
    while start < end:
        stop = starts[at + 1] if at + 1 < len(starts) and starts[at + 1] < end else end
        out.append((names[at], start, stop))
        start, at = stop, at + 1
    return out


def message(records: Sequence[Mapping[str, str]]) -> str:
    """One APEL cloud message: the v0.4 header, then `Key: Value` lines, `%%` after each record."""
    lines = ["APEL-cloud-message: v0.4"]
    for record in records:
        lines += [f"{key}: {record[key]}" for key in KEYS if key in record]
        lines.append("%%")
    return "\n".join(lines) + "\n"


def write_queue(directory: str, records: Sequence[Mapping[str, str]]) -> list[str]:
    """Messages of at most 100 records, added to the directory queue the APEL SSM sender reads (dirq)."""
    from dirq.QueueSimple import QueueSimple

    queue = QueueSimple(directory)
    return [queue.add(message(records[i : i + PER_MESSAGE])) for i in range(0, len(records), PER_MESSAGE)]
