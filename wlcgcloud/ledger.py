"""The local ledger: SQLite in the state directory, remembering launches and instance lifetimes.

Cloud tags are the truth about which instances exist; the ledger is the memory: what a launch
meant to make (recorded *before* the first API call), what it made (recorded as soon as the
cloud answers), and when each instance ended, for clouds that forget terminated instances (EC2
after about an hour) and for usage accounting. It never holds a secret: no credential, no
user-data, no setting whose name says it is secret.

WAL mode, so a reader (`fleet list`) never waits for a launch writing; `PRAGMA user_version`
carries the schema version and `MIGRATIONS` bring an older file up to date in one transaction.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wlcgcloud.errors import ConfigError
from wlcgcloud.times import stamp, stamp_or_none

FILE_NAME = "ledger.sqlite"

# Each entry brings the schema from version i to i+1. Never edit one that has shipped: add one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE launches (
        id INTEGER PRIMARY KEY,
        fleet TEXT NOT NULL,
        profile TEXT NOT NULL,
        provider TEXT NOT NULL,
        request_token TEXT NOT NULL,
        image TEXT NOT NULL,          -- the endorsed identifier, or the raw cloud image with --allow-unendorsed
        cloud_image TEXT NOT NULL,
        endorsement TEXT NOT NULL,    -- verified | none
        flavor TEXT NOT NULL,
        requested INTEGER NOT NULL,
        experiment TEXT,
        credential TEXT,              -- kind, fingerprint and end of life: never the credential
        credential_subject TEXT,      -- its identity (DN, or the token's sub), for APEL GlobalUserName
        credential_fqan TEXT,         -- its first VOMS FQAN or token group, for APEL FQAN
        lease_until TEXT,
        options TEXT NOT NULL,        -- the launch's options as JSON, secret settings left out
        created TEXT NOT NULL,
        state TEXT NOT NULL,          -- intent | launched | partial | failed
        error TEXT,
        finished TEXT
    );
    CREATE INDEX launches_fleet ON launches (fleet);
    CREATE TABLE instances (
        profile TEXT NOT NULL,
        id TEXT NOT NULL,
        fleet TEXT,
        launch_id INTEGER REFERENCES launches (id),
        provider TEXT NOT NULL,
        name TEXT,
        flavor TEXT,
        vcpus INTEGER,
        memory_mb INTEGER,
        image TEXT,
        experiment TEXT,
        launched_at TEXT,
        ended_at TEXT,
        last_state TEXT,
        last_seen TEXT NOT NULL,
        PRIMARY KEY (profile, id)
    );
    CREATE INDEX instances_fleet ON instances (fleet);
    """,
    # v2: which process makes a launch's calls, and until when calls it sent may still land
    # (a heartbeat moves it on while the process lives; NULL once the launch is finished).
    """
    ALTER TABLE launches ADD COLUMN owner TEXT;
    ALTER TABLE launches ADD COLUMN calls_until REAL;
    """,
    # v3: how many instances a launch may have made that no answer showed (answers lost, and
    # looking for them failed). Such a launch stays in state 'intent' until a later listing of
    # the fleet on its profile (a re-run, `fleet reconcile`) adopts what it made: state
    # 'adopted', uncertain 0. A killed launch whose calls can no longer land is adopted so too.
    """
    ALTER TABLE launches ADD COLUMN uncertain INTEGER NOT NULL DEFAULT 0;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def _now() -> str:
    return stamp(datetime.now(UTC))


@dataclass(frozen=True)
class LaunchRecord:
    """One profile's part of a launch, as the ledger remembers it."""

    id: int
    fleet: str
    profile: str
    provider: str
    request_token: str
    image: str
    cloud_image: str
    endorsement: str
    flavor: str
    requested: int
    experiment: str | None
    credential: str | None
    credential_subject: str | None
    credential_fqan: str | None
    lease_until: str | None
    options: Mapping[str, Any]
    created: str
    state: str
    error: str | None
    finished: str | None
    owner: str | None = None  # host:pid of the process that made the calls
    calls_until: float | None = None  # epoch seconds: its calls may land until then
    uncertain: int = 0  # instances it may have made that no answer showed, until a listing adopts them


def this_process() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


class Ledger:
    """The ledger file, opened (and migrated) on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()  # one connection shared by a launch's threads: one transaction at a time
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"the ledger {path} cannot be used ({exc}).",
                "Move it aside; 'wlcgcloud fleet reconcile' rebuilds what the clouds still know.",
            ) from None
        path.chmod(0o600)

    @classmethod
    def default(cls) -> Ledger:
        from wlcgcloud.paths import state_dir

        return cls(state_dir() / FILE_NAME)

    def close(self) -> None:
        self.db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _migrate(self) -> None:
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"the ledger {self.path} has schema version {version}; this wlcgcloud knows {SCHEMA_VERSION}.",
                "Upgrade wlcgcloud.",
            )
        if version == SCHEMA_VERSION:
            return
        with self._transaction() as db:
            for step in MIGRATIONS[version:]:
                for statement in step.split(";"):
                    if statement.strip():
                        db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    # Launches

    def record_intent(self, fields: Mapping[str, Any]) -> int:
        """A launch about to be made on one profile; its id. Written before the first API call."""
        row = {**fields, "options": json.dumps(fields.get("options") or {}, sort_keys=True)}
        row.setdefault("created", _now())
        row.setdefault("owner", this_process())
        row["state"] = "intent"
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._transaction() as db:
            cursor = db.execute(f"INSERT INTO launches ({columns}) VALUES ({marks})", row)
        return int(cursor.lastrowid or 0)

    def finish(self, launch_id: int, state: str, error: str | None = None, uncertain: int = 0) -> None:
        """The end of a launch's calls. With `uncertain` instances it may have made unseen, give state 'intent'."""
        with self._transaction() as db:
            db.execute(
                "UPDATE launches SET state = ?, error = ?, finished = ?, calls_until = NULL, uncertain = ?"
                " WHERE id = ?",
                (state, error, _now(), uncertain, launch_id),
            )

    def adopted(self, profile: str, by: int | None = None, fleet: str | None = None) -> None:
        """A full listing of `fleet` (or of every fleet) on `profile` has been recorded: close the open intents
        there whose calls can no longer land (finished with instances unseen, or of a killed process).

        `by` is the launch that listed, left as it is; a launch still making calls is never touched.
        """
        query = """
            UPDATE launches SET state = 'adopted', uncertain = 0
            WHERE profile = ? AND state = 'intent' AND id IS NOT ?
              AND (finished IS NOT NULL OR (calls_until IS NOT NULL AND calls_until <= ?))
        """
        args: list[Any] = [profile, by, time.time()]
        if fleet is not None:
            query += " AND fleet = ?"
            args.append(fleet)
        with self._transaction() as db:
            db.execute(query, args)

    def calls_may_land_until(self, launch_id: int, until: float) -> None:
        """The heartbeat of a launch making calls: what it sent may reach the cloud until `until`."""
        with self._transaction() as db:
            db.execute("UPDATE launches SET calls_until = ? WHERE id = ?", (until, launch_id))

    def on_the_wire(self, fleet: str, profile: str, now: float) -> list[LaunchRecord]:
        """Unfinished launches of this fleet and profile whose calls may still land after `now`."""
        return [r for r in self.launches(fleet) if r.profile == profile and r.state == "intent"
                and r.calls_until is not None and r.calls_until > now]  # fmt: skip

    def launches(self, fleet: str | None = None) -> list[LaunchRecord]:
        query = "SELECT * FROM launches" + (" WHERE fleet = ?" if fleet else "") + " ORDER BY id"
        with self._lock:
            rows = self.db.execute(query, (fleet,) if fleet else ()).fetchall()
        return [LaunchRecord(**{**dict(r), "options": json.loads(r["options"])}) for r in rows]

    # Instances

    def record_instances(self, instances: Iterable[Any], launch_id: int | None = None) -> None:
        """Instances as a cloud reported them (our `Instance` objects); newer facts win, an end stays."""
        now = _now()
        rows = []
        for i in instances:
            ended = now if i.state == "terminated" else None
            rows.append({
                "profile": i.profile, "id": i.id, "fleet": i.fleet, "launch_id": launch_id, "provider": i.provider,
                "name": i.name, "flavor": i.flavor, "vcpus": i.vcpus, "memory_mb": i.memory_mb, "image": i.image,
                "experiment": i.tags.get("wlcg:experiment"),
                "launched_at": stamp_or_none(i.launched_at),
                "ended_at": ended, "last_state": i.state, "last_seen": now,
            })  # fmt: skip
        if not rows:
            return
        with self._transaction() as db:
            db.executemany(
                """
                INSERT INTO instances (profile, id, fleet, launch_id, provider, name, flavor, vcpus, memory_mb,
                                       image, experiment, launched_at, ended_at, last_state, last_seen)
                VALUES (:profile, :id, :fleet, :launch_id, :provider, :name, :flavor, :vcpus, :memory_mb,
                        :image, :experiment, :launched_at, :ended_at, :last_state, :last_seen)
                ON CONFLICT (profile, id) DO UPDATE SET
                    fleet = COALESCE(excluded.fleet, fleet),
                    launch_id = COALESCE(launch_id, excluded.launch_id),
                    name = excluded.name, flavor = COALESCE(excluded.flavor, flavor),
                    vcpus = COALESCE(excluded.vcpus, vcpus), memory_mb = COALESCE(excluded.memory_mb, memory_mb),
                    image = COALESCE(excluded.image, image), experiment = COALESCE(excluded.experiment, experiment),
                    launched_at = COALESCE(launched_at, excluded.launched_at),
                    ended_at = COALESCE(ended_at, excluded.ended_at),
                    last_state = excluded.last_state, last_seen = excluded.last_seen
                """,
                rows,
            )

    def mark_ended(self, profile: str, instance_ids: Iterable[str], state: str = "terminated") -> None:
        """Instances we terminated, or that the clouds no longer know: their life ends now (if not before)."""
        now = _now()
        with self._transaction() as db:
            db.executemany(
                "UPDATE instances SET ended_at = COALESCE(ended_at, ?), last_state = ? WHERE profile = ? AND id = ?",
                [(now, state, profile, i) for i in instance_ids],
            )

    def credentials(self) -> dict[tuple[str, str], dict[str, Any]]:
        """For each instance the ledger knows, the identity of the credential its launch forwarded."""
        query = """
            SELECT i.profile, i.id, l.credential_subject AS subject, l.credential_fqan AS fqan
            FROM instances i JOIN launches l ON i.launch_id = l.id
            WHERE l.credential_subject IS NOT NULL
        """
        with self._lock:
            rows = self.db.execute(query).fetchall()
        return {(r["profile"], r["id"]): {"subject": r["subject"], "fqan": r["fqan"]} for r in rows}

    def lifetimes(self, profile: str, since: float, until: float) -> list[tuple[Any, ...]]:
        """(id, provider, start, end, vcpus, memory_mb, flavor, image, fleet, experiment, name) of the
        profile's instances that ran inside [since, until), times in epoch seconds.

        An instance gone without a recorded end ran at least until it was last seen.
        """
        query = """
            SELECT id, provider, CAST(strftime('%s', launched_at) AS REAL) AS start,
                   CAST(strftime('%s', COALESCE(ended_at, last_seen)) AS REAL) AS stop,
                   vcpus, memory_mb, flavor, image, fleet, experiment, name
            FROM instances
            WHERE profile = ? AND launched_at IS NOT NULL
              AND launched_at < strftime('%Y-%m-%dT%H:%M:%SZ', ?, 'unixepoch')
              AND COALESCE(ended_at, last_seen) > strftime('%Y-%m-%dT%H:%M:%SZ', ?, 'unixepoch')
        """
        with self._lock:
            return [tuple(r) for r in self.db.execute(query, (profile, until, since))]

    def first_launch(self, profile: str) -> str | None:
        """When the ledger first saw an instance of `profile` start (its memory begins there)."""
        with self._lock:
            row = self.db.execute("SELECT MIN(launched_at) FROM instances WHERE profile = ?", (profile,)).fetchone()
        return row[0] if row else None

    def instances(
        self, fleet: str | None = None, profile: str | None = None, ids: Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """Instance rows, all or those of a fleet, a profile, and (with `ids`) only those ids."""
        if ids is not None:
            wanted = list(ids)
            chunks = [wanted[i : i + 500] for i in range(0, len(wanted), 500)]  # SQLite's variable limit
            return [row for chunk in chunks for row in self._instances(fleet, profile, chunk)]
        return self._instances(fleet, profile, None)

    def _instances(self, fleet: str | None, profile: str | None, ids: list[str] | None) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[Any] = []
        if ids is not None:
            where.append(f"id IN ({', '.join('?' * len(ids))})")
            args += ids
        if fleet:
            where.append("fleet = ?")
            args.append(fleet)
        if profile:
            where.append("profile = ?")
            args.append(profile)
        query = "SELECT * FROM instances" + (" WHERE " + " AND ".join(where) if where else "")
        with self._lock:
            return [dict(r) for r in self.db.execute(query + " ORDER BY launched_at, id", args).fetchall()]


@contextmanager
def open_ledger() -> Iterator[Ledger]:
    """The default ledger, closed afterwards."""
    ledger = Ledger.default()
    try:
        yield ledger
    finally:
        ledger.close()
