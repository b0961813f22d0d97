"""Moving a ledger's rows between ledgers: `ledger export` / `import` (JSON lines) and `ledger move`.

An import merges, so it is safe to run twice, or to run over a ledger in use: a launch already
there (same fleet, profile, request token and creation time) keeps its id and the imported
instances point at it; an instance already there keeps every fact it has, and gains only the
ones it lacked (an end, a flavor). Nothing imported can displace what this ledger knows.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from wlcgcloud.errors import UsageError
from wlcgcloud.ledger.schema import SCHEMA_VERSION
from wlcgcloud.times import stamp

if TYPE_CHECKING:
    from wlcgcloud.ledger import Ledger

LINE_SIZE = 64 * 1024  # one row of JSON: a launch's options are the largest part
BATCH = 1000
INSTANCE_COLUMNS = ("profile", "id", "fleet", "launch_id", "provider", "name", "flavor", "vcpus", "memory_mb", "image",
                    "experiment", "launched_at", "ended_at", "last_state", "last_seen",
                    "end_code", "end_reason", "launched_epoch", "ended_epoch", "seen_epoch")  # fmt: skip
EPOCH_OF = {"launched_epoch": "launched_at", "ended_epoch": "ended_at", "seen_epoch": "last_seen"}
REQUIRED = {
    "launches": ("id", "fleet", "profile", "provider", "request_token", "image", "cloud_image", "endorsement",
                 "flavor", "requested", "options", "created", "state"),
    "instances": ("profile", "id", "provider", "last_seen"),
}  # fmt: skip

_MERGE_INSTANCE = (
    f"INSERT INTO instances ({', '.join(INSTANCE_COLUMNS)}) VALUES ({', '.join(':' + c for c in INSTANCE_COLUMNS)})"
    " ON CONFLICT (profile, id) DO UPDATE SET "
    + ", ".join(
        # An epoch goes with its text: it is taken only where the text is (so a merge never splits them).
        f"{c} = CASE WHEN instances.{EPOCH_OF[c]} IS NULL THEN excluded.{c} ELSE instances.{c} END"
        if c in EPOCH_OF
        else f"{c} = COALESCE(instances.{c}, excluded.{c})"
        for c in INSTANCE_COLUMNS[2:]
    )
)


def _launch_columns() -> tuple[str, ...]:
    from wlcgcloud.ledger import LaunchRecord

    return tuple(f.name for f in dataclasses.fields(LaunchRecord))


def header(where: str) -> dict[str, Any]:
    return {"wlcgcloud_ledger": SCHEMA_VERSION, "exported": stamp(datetime.now(UTC)), "from": where}


def read_lines(stream: IO[bytes], name: str) -> Iterator[dict[str, Any]]:
    """The records of an export, each line bounded and checked (flat rows of plain values only)."""
    for number, raw in enumerate(iter(lambda: stream.readline(LINE_SIZE + 1), b""), start=1):
        where = f"{name}:{number}"
        if len(raw) > LINE_SIZE:
            raise UsageError(f"{where}: a line longer than {LINE_SIZE // 1024} KiB; a ledger export has none.")
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            raise UsageError(f"{where}: not a JSON object; is this a 'wlcgcloud ledger export' file?") from None
        if not isinstance(record, dict):
            raise UsageError(f"{where}: not a JSON object; is this a 'wlcgcloud ledger export' file?")
        if "wlcgcloud_ledger" in record:
            version = record["wlcgcloud_ledger"]
            if not isinstance(version, int) or version > SCHEMA_VERSION:
                raise UsageError(f"{where}: exported by a newer wlcgcloud (schema {version!r}); upgrade this one.")
            continue
        yield _checked(record, where)


def _checked(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    table, row = record.get("table"), record.get("row")
    if table not in REQUIRED or not isinstance(row, dict):
        raise UsageError(f'{where}: expected {{"table": "launches" | "instances", "row": {{...}}}}.')
    allowed = _launch_columns() if table == "launches" else INSTANCE_COLUMNS
    unknown = sorted(set(row) - set(allowed))
    missing = [c for c in REQUIRED[table] if row.get(c) is None]
    if unknown or missing:
        what = f"unknown column(s) {', '.join(unknown)[:200]}" if unknown else f"no {', '.join(missing)}"
        raise UsageError(f"{where}: a row of {table} with {what}.")
    for column, value in row.items():
        if isinstance(value, bool) or (value is not None and not isinstance(value, str | int | float)):
            raise UsageError(f"{where}: {table}.{column} is not a plain value.")
    if not isinstance(row["id"], int if table == "launches" else str):
        raise UsageError(f"{where}: {table}.id has the wrong type.")
    return {"table": table, "row": {c: row.get(c) for c in allowed}}


def absorb(ledger: Ledger, records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    """Merge `records` into `ledger` (the caller holds its statement lock)."""
    backend = ledger.backend
    ours = {(r.fleet, r.profile, r.request_token, r.created): r.id for r in ledger.launches()}
    ids: dict[int, int] = {}  # their launch id -> ours
    counts = {"launches_added": 0, "launches_known": 0, "instances": 0}
    batch: list[dict[str, Any]] = []
    for record in records:
        row = dict(record["row"])
        if record["table"] == "launches":
            if isinstance(row["options"], str):
                json.loads(row["options"])  # stored as JSON text: it must be that
            key = (row["fleet"], row["profile"], row["request_token"], row["created"])
            theirs = row.pop("id")
            if key in ours:
                counts["launches_known"] += 1
            else:
                columns = [c for c in row if row[c] is not None]
                ours[key] = backend.insert(
                    f"INSERT INTO launches ({', '.join(columns)}) VALUES ({', '.join(':' + c for c in columns)})",
                    {c: row[c] for c in columns},
                )
                counts["launches_added"] += 1
            ids[theirs] = ours[key]
            continue
        row["launch_id"] = ids.get(row["launch_id"]) if row["launch_id"] is not None else None
        batch.append(row)
        counts["instances"] += 1
        if len(batch) >= BATCH:
            backend.many(_MERGE_INSTANCE, batch)
            batch = []
    if batch:
        backend.many(_MERGE_INSTANCE, batch)
    return counts
