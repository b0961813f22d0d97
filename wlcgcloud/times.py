"""Durations as users write them (`90m`, `12h`, `7d`) and as we print them back; the clock decisions are taken by."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from wlcgcloud.bounded import EARLIEST_YEAR, LATEST_YEAR, MAX_DURATION_DAYS
from wlcgcloud.errors import UsageError

MAX_DURATION = timedelta(days=MAX_DURATION_DAYS)
EARLIEST = datetime(EARLIEST_YEAR, 1, 1, tzinfo=UTC)
LATEST = datetime(LATEST_YEAR, 1, 1, tzinfo=UTC)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
DURATION = re.compile(r"(\d+)([smhdw])", re.ASCII)


def parse_duration(text: str, option: str = "duration") -> timedelta:
    """`90m`, `12h`, `7d`, `1d12h` or plain seconds, up to 100 years; a UsageError (exit 2) for anything else.

    An empty text is an error too: an option given as `''` never falls back to its default.
    """
    spec = text.strip().lower()
    if spec.isascii() and spec.isdigit():
        spec += "s"
    parts = DURATION.findall(spec)
    if not spec or "".join(n + u for n, u in parts) != spec:
        raise UsageError(f"{option}: {shown(text)} is not a duration.", "Write it as 90m, 12h, 7d or 1d12h.")
    # More than 12 digits outlasts the bound in any unit: such a number never reaches int().
    seconds = sum(int(n) * UNITS[u] for n, u in parts) if all(len(n) <= 12 for n, _ in parts) else None
    if seconds is None or seconds > MAX_DURATION.total_seconds():
        raise UsageError(f"{option}: {shown(text)} is longer than {MAX_DURATION.days} days.", "Give a shorter one.")
    return timedelta(seconds=seconds)


_clock: Callable[[], float] = time.time


def now() -> datetime:
    """The moment every decision is taken at: leases, credential ends, VM ages, back-offs, the ledger's stamps.

    It is the system clock. A simulation (bench/maintain_sim.py) runs the real code on a clock of its
    own through `use_clock`; what times calls on the wire (timeouts, heartbeats) stays on the system's.
    """
    return datetime.fromtimestamp(_clock(), UTC)


def use_clock(source: Callable[[], float] | None) -> None:
    """Take decisions by `source` (Unix seconds) from now on; None: the system clock again."""
    global _clock
    _clock = source or time.time


def check_moment(moment: datetime, option: str) -> datetime:
    """`moment` when it lies between 1970 and 2200; a UsageError (exit 2) naming `option` otherwise."""
    if not EARLIEST <= moment <= LATEST:
        raise UsageError(f"{option}: {moment.date().isoformat()} is not between {EARLIEST.date()} and {LATEST.date()}.")
    return moment


def shown(text: str, width: int = 40) -> str:
    """`text` quoted for a message, cut to `width` characters: a hostile value never floods the line."""
    return repr(text if len(text) <= width else text[: width - 3] + "...")


def stamp(moment: datetime) -> str:
    """ISO 8601 UTC with `Z`, to the second: how the contract, the ledger and tags write times.

    A naive datetime is taken as UTC.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp_or_none(value: datetime | None) -> str | None:
    """`stamp`, or None for no time (JSON null)."""
    return None if value is None else stamp(value)


def human_duration(seconds: float) -> str:
    """`2d 3h`, `5h 20m`, `14m`, `40s`; negative spans read as `expired 3h ago`."""
    if seconds < 0:
        return f"expired {human_duration(-seconds)} ago"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m" if minutes else f"{s}s"
