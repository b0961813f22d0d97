"""What one cycle of `fleet maintain` saw and did, and how it is kept in the ledger between cycles.

Plain records: `maintain` fills them, `fleet status` and the metrics read them back.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from wlcgcloud.times import stamp


@dataclass
class ProfileCycle:
    """One profile's part of a cycle: what was there, what happened, what was done."""

    profile: str
    target: int = 0
    running: int = 0
    starting: int = 0
    ended: Counter[str] = field(default_factory=Counter)  # why -> how many, since the last cycle
    terminated: Counter[str] = field(default_factory=Counter)  # why -> how many this cycle terminated
    created: int = 0
    backoff_level: int = 0
    backoff_until: float | None = None
    backoff_reason: str | None = None
    error: str | None = None
    decisions: list[str] = field(default_factory=list)
    proven: bool = False  # a VM of it runs past the fizzle time: its back-off may be forgotten
    fates: list[int] = field(default_factory=list)  # its latest VMs' fates, oldest first: 1 fizzled, 0 worked
    last_cycle: str | None = None  # when the cycle before started
    draining: int = 0  # asked to drain: on their way out, not counted as alive
    drained: Counter[str] = field(default_factory=Counter)  # why -> how many this cycle asked to drain
    said: Counter[str] = field(default_factory=Counter)  # shutdown message -> how many VMs that ended left it
    judged_by: str | None = None  # what judged the VMs that ended: "messages", "lifetimes" or "both"

    @property
    def alive(self) -> int:
        return self.running + self.starting

    def backing_off(self, now: float) -> bool:
        return self.backoff_until is not None and self.backoff_until > now

    def to_dict(self) -> dict[str, Any]:
        return {
            "profile": self.profile, "target": self.target, "running": self.running, "starting": self.starting,
            "ended": dict(self.ended), "terminated": dict(self.terminated), "created": self.created,
            "backoff_until": stamp(datetime.fromtimestamp(self.backoff_until, UTC)) if self.backoff_until else None,
            "backoff_reason": self.backoff_reason, "error": self.error, "decisions": self.decisions,
            "draining": self.draining, "drained": dict(self.drained), "said": dict(self.said),
            "judged_by": self.judged_by,
        }  # fmt: skip


@dataclass
class Cycle:
    fleet: str
    started: datetime
    profiles: list[ProfileCycle]
    target: int
    seconds: float = 0.0
    dry_run: bool = False
    error: str | None = None  # why nothing could be created on any profile (the credential to forward)

    @property
    def met(self) -> bool:
        """Every profile holds its share of the target (starting VMs count) and the whole is there."""
        return (
            self.error is None
            and all(p.alive >= p.target and p.error is None for p in self.profiles)
            and (sum(p.alive for p in self.profiles) >= self.target)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet, "started": stamp(self.started), "seconds": round(self.seconds, 3),
            "target": self.target, "alive": sum(p.alive for p in self.profiles), "met": self.met,
            "dry_run": self.dry_run, "error": self.error, "profiles": [p.to_dict() for p in self.profiles],
        }  # fmt: skip


@dataclass(frozen=True)
class RunTime:
    """What a maintainer is given on the command line, not in the spec: secret settings, credential files."""

    settings: Mapping[str, str] = field(default_factory=dict)
    proxy: Any = None
    token_file: Any = None


def carried(profile: str, row: Mapping[str, Any] | None) -> ProfileCycle:
    """A profile's part of a new cycle, with the back-off the last cycle left it in."""
    part = ProfileCycle(profile)
    if row:
        part.backoff_level = int(row.get("backoff_level") or 0)
        part.backoff_until = row.get("backoff_until")
        part.backoff_reason = row.get("backoff_reason")
        part.last_cycle = row.get("cycle")
        fates = json.loads(row.get("fates") or "[]")
        part.fates = [int(f) for f in fates if f in (0, 1)] if isinstance(fates, list) else []
        last = judgement(row)
        part.judged_by = last.get("rule")
        said = last.get("said")
        part.said = Counter({str(k): int(v) for k, v in said.items()}) if isinstance(said, dict) else Counter()
    return part


def judgement(row: Mapping[str, Any]) -> dict[str, Any]:
    """The last judgement kept in the ledger: {"rule": ..., "said": {message: count}}."""
    kept = json.loads(row.get("judged_by") or "{}")
    return kept if isinstance(kept, dict) else {}


def state_row(part: ProfileCycle) -> dict[str, Any]:
    return {
        "profile": part.profile, "target": part.target, "running": part.running, "starting": part.starting,
        "ended": json.dumps(dict(part.ended), sort_keys=True), "created": part.created,
        "terminated": json.dumps(dict(part.terminated), sort_keys=True), "error": part.error,
        "backoff_level": part.backoff_level, "backoff_until": part.backoff_until, "backoff_reason": part.backoff_reason,
        "decisions": json.dumps(part.decisions), "fates": json.dumps(part.fates),
        "judged_by": json.dumps({"rule": part.judged_by, "said": dict(part.said), "draining": part.draining}),
    }  # fmt: skip
