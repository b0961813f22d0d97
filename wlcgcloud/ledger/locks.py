"""Who holds a fleet's lock, and the one error a second writer gets: exit 2, naming the holder."""

from __future__ import annotations

import getpass
import json
import os
import socket
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from wlcgcloud.errors import UsageError
from wlcgcloud.escape import escape_controls
from wlcgcloud.times import human_duration, stamp

WAIT_STEP = 0.25  # seconds between tries while --wait-lock waits


@dataclass(frozen=True)
class Holder:
    """The process that holds a fleet's lock, as it said when it took it."""

    user: str
    host: str
    pid: int
    command: str
    since: str  # ISO 8601 UTC

    @classmethod
    def this_process(cls, command: str) -> Holder:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = str(os.geteuid())
        return cls(user, socket.gethostname(), os.getpid(), command, stamp(datetime.now(UTC)))

    @classmethod
    def from_json(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(str(data["user"]), str(data["host"]), int(data["pid"]), str(data["command"]), str(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        try:
            age = time.time() - datetime.fromisoformat(self.since.replace("Z", "+00:00")).timestamp()
            held = f" ({human_duration(max(age, 0))})"
        except ValueError:
            held = ""
        return escape_controls(
            f"{self.user} on {self.host} (pid {self.pid}, '{self.command}') since {self.since}{held}"
        )


class FleetLocked(UsageError):
    """Another wlcgcloud changes this fleet now (exit 2)."""

    def __init__(self, fleet: str, holder: Holder | None, on_the_wire: str, where: str) -> None:
        who = holder.describe() if holder else "another wlcgcloud that has not yet said who it is"
        hint = (
            "A maintainer holds its fleet for as long as it runs: stop it, or change the fleet through its spec."
            if holder and "fleet maintain" in holder.command
            else "Wait for it, or add --wait-lock DUR (e.g. --wait-lock 10m); 'wlcgcloud ledger locks' lists the "
            "locks held now."
        )
        super().__init__(f"fleet '{escape_controls(fleet)}' is being changed by {who}{on_the_wire} (ledger {where}).",
                         hint)  # fmt: skip
        self.fleet = fleet
        self.holder = holder
