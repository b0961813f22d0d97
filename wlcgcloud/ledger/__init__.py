"""The ledger: the memory of launches and instance lifetimes, in SQLite or in a shared PostgreSQL.

Cloud tags are the truth about which instances exist; the ledger is the memory: what a launch
meant to make (recorded *before* the first API call), what it made (recorded as soon as the
cloud answers), and when each instance ended, for clouds that forget terminated instances (EC2
after about an hour) and for usage accounting. It never holds a secret: no credential, no
user-data, no setting whose name says it is secret.

One interface, two backends with the same schema and migrations (`schema.py`): SQLite in the
state directory by default (`sqlite.py`), PostgreSQL when config.toml's `ledger` or
WLCGCLOUD_LEDGER names one (`postgresql.py`), so a team and its CI share launches, heartbeats,
fleet locks, usage and APEL records. The SQL below is written once, in the dialect both read.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wlcgcloud import times
from wlcgcloud.config import ledger_url_problem
from wlcgcloud.errors import CloudError, ConfigError
from wlcgcloud.ledger.locks import WAIT_STEP, FleetLocked, Holder
from wlcgcloud.ledger.schema import MIGRATIONS, SCHEMA_VERSION
from wlcgcloud.times import stamp, stamp_or_none

if TYPE_CHECKING:
    from wlcgcloud.config import Config
    from wlcgcloud.ledger.postgresql import PostgresBackend
    from wlcgcloud.ledger.sqlite import SqliteBackend

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "FleetLocked", "Holder", "LaunchRecord", "Ledger", "open_ledger"]

FILE_NAME = "ledger.sqlite"
LOCATION_VARIABLE = "WLCGCLOUD_LEDGER"
TABLES = ("launches", "instances")
SAYS_WHO_WITHIN = 2.0  # seconds: a lock's holder writes who it is right after taking it


def _now() -> str:
    return stamp(times.now())


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


def location(config: Config | None) -> tuple[str, str | None]:
    """Where the ledger is (WLCGCLOUD_LEDGER, else config.toml's `ledger`, else the state directory),
    and the password file config.toml names for it."""
    from wlcgcloud.paths import state_dir

    given = os.environ.get(LOCATION_VARIABLE)
    problem = ledger_url_problem(given) if given else None
    if problem:
        raise ConfigError(f"{LOCATION_VARIABLE}: {problem}.")
    where = given or (config.ledger if config else None)
    password_file = config.ledger_password_file if config else None
    return (where or str(state_dir() / FILE_NAME)), password_file


class Ledger:
    """A ledger, opened (and migrated) at once; `where` is a postgresql:// URL or a SQLite file."""

    def __init__(self, where: Path | str, password_file: str | None = None) -> None:
        from wlcgcloud.ledger import postgresql

        self._lock = threading.RLock()  # one connection shared by a command's threads: one statement at a time
        self._held: dict[str, int] = {}  # fleet locks this ledger holds, and how many times (re-entrant)
        self.backend: SqliteBackend | PostgresBackend
        if isinstance(where, str) and postgresql.is_url(where):
            problem = ledger_url_problem(where)
            if problem:
                raise ConfigError(problem + ".")
            self.backend = postgresql.PostgresBackend(where, password_file)
        else:
            from wlcgcloud.ledger.sqlite import SqliteBackend

            path = Path(where).expanduser()
            self.backend = SqliteBackend(path)
        self.where = self.backend.where
        try:
            self._migrate()
        except Exception as exc:
            self.backend.close()
            if isinstance(exc, ConfigError) or not _is_database_error(exc):
                raise
            raise self.backend.unusable(exc) from None

    @staticmethod
    def shown(where: str | Path) -> str:
        """A location as messages show it (a URL without its query)."""
        from wlcgcloud.ledger import postgresql

        if isinstance(where, str) and postgresql.is_url(where):
            return postgresql.shown(where)
        return str(Path(where).expanduser())

    @property
    def kind(self) -> str:
        return self.backend.kind

    def close(self) -> None:
        with self._lock:
            self.backend.close()

    def _migrate(self) -> None:
        def check(version: int) -> None:
            if version > SCHEMA_VERSION:
                raise ConfigError(
                    f"the ledger {self.where} has schema version {version}; this wlcgcloud knows {SCHEMA_VERSION}. "
                    "Nothing was written.",
                    "Upgrade wlcgcloud.",
                )

        version = self.backend.version()
        check(version)
        if version < SCHEMA_VERSION:
            self.backend.migrate(MIGRATIONS, check)

    @property
    def version(self) -> int:
        with self._lock:
            return self.backend.version()

    def _rows(self, sql: str, params: Any = ()) -> list[dict[str, Any]]:
        with self._lock:
            return self.backend.rows(sql, params)

    def _execute(self, sql: str, params: Any = ()) -> None:
        with self._lock:
            self.backend.execute(sql, params)

    # Launches

    def record_intent(self, fields: Mapping[str, Any]) -> int:
        """A launch about to be made on one profile; its id. Written before the first API call."""
        row = {**fields, "options": json.dumps(fields.get("options") or {}, sort_keys=True)}
        row.setdefault("created", _now())
        row.setdefault("owner", this_process())
        row["state"] = "intent"
        columns = ", ".join(row)
        marks = ", ".join(f":{k}" for k in row)
        with self._lock:
            return self.backend.insert(f"INSERT INTO launches ({columns}) VALUES ({marks})", row)

    def finish(self, launch_id: int, state: str, error: str | None = None, uncertain: int = 0) -> None:
        """The end of a launch's calls. With `uncertain` instances it may have made unseen, give state 'intent'."""
        self._execute(
            "UPDATE launches SET state = ?, error = ?, finished = ?, calls_until = NULL, uncertain = ? WHERE id = ?",
            (state, error, _now(), uncertain, launch_id),
        )

    def adopted(self, profile: str, by: int | None = None, fleet: str | None = None) -> None:
        """A full listing of `fleet` (or of every fleet) on `profile` has been recorded: close the open intents
        there whose calls can no longer land (finished with instances unseen, or of a killed process).

        `by` is the launch that listed, left as it is; a launch still making calls is never touched.
        """
        query = """
            UPDATE launches SET state = 'adopted', uncertain = 0
            WHERE profile = ? AND state = 'intent' AND id <> ?
              AND (finished IS NOT NULL OR (calls_until IS NOT NULL AND calls_until <= ?))
        """
        args: list[Any] = [profile, -1 if by is None else by, time.time()]
        if fleet is not None:
            query += " AND fleet = ?"
            args.append(fleet)
        self._execute(query, args)

    def calls_may_land_until(self, launch_id: int, until: float) -> None:
        """The heartbeat of a launch making calls: what it sent may reach the cloud until `until`."""
        self._execute("UPDATE launches SET calls_until = ? WHERE id = ?", (until, launch_id))

    def on_the_wire(self, fleet: str, profile: str | None, now: float) -> list[LaunchRecord]:
        """Unfinished launches of this fleet (on `profile`, or on any) whose calls may still land after `now`."""
        # In SQL: a fleet maintained for weeks has thousands of launches, and this is asked every cycle.
        query = "SELECT * FROM launches WHERE fleet = ? AND state = 'intent' AND calls_until > ?"
        return [r for r in self._launches(query, (fleet, now)) if profile in (None, r.profile)]

    def launches(self, fleet: str | None = None) -> list[LaunchRecord]:
        query = "SELECT * FROM launches" + (" WHERE fleet = ?" if fleet else "")
        return self._launches(query, (fleet,) if fleet else ())

    def _launches(self, query: str, args: Sequence[Any]) -> list[LaunchRecord]:
        rows = self._rows(query + " ORDER BY id", args)
        return [LaunchRecord(**{**r, "options": json.loads(r["options"])}) for r in rows]

    # Instances

    def record_instances(self, instances: Iterable[Any], launch_id: int | None = None) -> None:
        """Instances as a cloud reported them (our `Instance` objects); newer facts win, an end stays."""
        moment = times.now()
        now, now_s = stamp(moment), float(int(moment.timestamp()))  # the epoch of the very second written
        rows = []
        for i in instances:
            ended = now if i.state == "terminated" else None
            rows.append({
                "profile": i.profile, "id": i.id, "fleet": i.fleet, "launch_id": launch_id, "provider": i.provider,
                "name": i.name, "flavor": i.flavor, "vcpus": i.vcpus, "memory_mb": i.memory_mb, "image": i.image,
                "experiment": i.tags.get("wlcg:experiment"),
                "launched_at": stamp_or_none(i.launched_at),
                "ended_at": ended, "last_state": i.state, "last_seen": now,
                "launched_epoch": float(int(i.launched_at.timestamp())) if i.launched_at else None,
                "ended_epoch": now_s if ended else None, "seen_epoch": now_s,
            })  # fmt: skip
        self._upsert_instances(rows)

    def _upsert_instances(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        with self._lock:
            self.backend.many(_UPSERT_INSTANCE, rows)

    def lock_lost(self, fleet: str | None) -> CloudError | None:
        """The error for a fleet whose lock this ledger held and lost (its connection broke, and another
        client took the fleet before it was back), or None."""
        if fleet not in self.backend.lost:
            return None
        return CloudError(
            f"this command lost the lock of fleet '{fleet}': its connection to the ledger {self.where} broke, and "
            "another wlcgcloud took the fleet meanwhile. It stopped; what it made is recorded.",
            f"See 'wlcgcloud ledger locks' and 'wlcgcloud fleet show {fleet}' before going on.",
        )

    def mark_ended(self, profile: str, instance_ids: Iterable[str], state: str = "terminated") -> None:
        """Instances we terminated, or that the clouds no longer know: their life ends now (if not before)."""
        moment = times.now()
        rows = [(float(int(moment.timestamp())), stamp(moment), state, profile, i) for i in instance_ids]
        if rows:
            with self._lock:
                self.backend.many(  # both see the row as it was: the epoch is set only with the text
                    "UPDATE instances SET ended_epoch = CASE WHEN ended_at IS NULL THEN ? ELSE ended_epoch END,"
                    " ended_at = COALESCE(ended_at, ?), last_state = ? WHERE profile = ? AND id = ?",
                    rows,
                )

    def record_end_reasons(self, profile: str, reasons: Mapping[str, tuple[int, str]]) -> None:
        """The HEPiX code and text each instance left as it ended (the first one read stays)."""
        rows = [(code, text, profile, i) for i, (code, text) in reasons.items()]
        if rows:
            with self._lock:
                self.backend.many(
                    "UPDATE instances SET end_code = COALESCE(end_code, ?), end_reason = COALESCE(end_reason, ?)"
                    " WHERE profile = ? AND id = ?",
                    rows,
                )

    def lifetimes(self, profile: str, since: float, until: float) -> list[tuple[Any, ...]]:
        """(id, provider, start, end, vcpus, memory_mb, flavor, image, fleet, experiment, name) of the
        profile's instances that ran inside [since, until), times in epoch seconds.

        An instance gone without a recorded end ran at least until it was last seen.
        """
        start, stop = lifetime_sql(self.backend.epoch)
        query = f"""
            SELECT id, provider, {start} AS start, {stop} AS stop,
                   vcpus, memory_mb, flavor, image, fleet, experiment, name
            FROM instances
            WHERE profile = ? AND launched_at IS NOT NULL AND launched_at < ? AND COALESCE(ended_at, last_seen) > ?
        """
        bounds = (stamp(datetime.fromtimestamp(until, UTC)), stamp(datetime.fromtimestamp(since, UTC)))
        with self._lock:
            return list(self.backend.tuples(query, (profile, *bounds)))

    def query_tuples(self, sql: str, params: Sequence[Any], parts: int = 1, streamed: bool = False) -> Iterable[Any]:
        """The rows of a read-only query written by the ledger's own modules (ledger.sums). Its WHERE may end
        `AND rowid BETWEEN ? AND ?` (bounds not in `params`): with `parts`, SQLite runs it in that many
        parts at once; else, and on PostgreSQL (in parallel as it sees fit), it runs whole. `streamed`: the
        rows are read as they are wanted, on a connection of its own."""
        from wlcgcloud.ledger.sqlite import SqliteBackend

        if isinstance(self.backend, SqliteBackend) and parts > 1 and not streamed:
            with self._lock:
                return self.backend.tuples_by_parts(sql, params, parts)
        sql = sql.replace("AND rowid BETWEEN ? AND ?", "")  # one part: all rows
        if streamed:
            return self.backend.stream(sql, params)
        with self._lock:
            return list(self.backend.tuples(sql, params))

    def first_launch(self, profile: str) -> str | None:
        """When the ledger first saw an instance of `profile` start (its memory begins there)."""
        rows = self._rows("SELECT MIN(launched_at) AS first FROM instances WHERE profile = ?", (profile,))
        return rows[0]["first"] if rows else None

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
        return self._rows(query + " ORDER BY launched_at, id", args)

    # Fleet locks

    @contextmanager
    def fleet_lock(
        self,
        fleets: Iterable[str],
        command: str,
        wait: float = 0.0,
        waiting: Callable[[FleetLocked], None] | None = None,
    ) -> Iterator[None]:
        """Hold the lock of each fleet (in name order) while the block changes them.

        A fleet another process holds is exit 2 naming the holder (FleetLocked), or, with `wait`
        seconds, tried again until then (`waiting` is told once). Re-entrant within this ledger.
        """
        taken: list[str] = []
        try:
            for fleet in sorted(set(fleets)):
                if fleet in self._held:
                    self._held[fleet] += 1
                else:
                    self._take(fleet, command, time.monotonic() + wait, waiting)
                    self._held[fleet] = 1
                taken.append(fleet)
            yield
        finally:
            for fleet in reversed(taken):
                self._held[fleet] -= 1
                if not self._held[fleet]:
                    del self._held[fleet]
                    self._release(fleet)

    def _take(self, fleet: str, command: str, deadline: float, waiting: Callable[[FleetLocked], None] | None) -> None:
        told = False
        silent_since: float | None = None
        while True:
            with self._lock:
                if self.backend.try_lock(fleet):
                    holder = Holder.this_process(command)
                    self.backend.execute(
                        "INSERT INTO fleet_locks (fleet, holder, session) VALUES (?, ?, ?) ON CONFLICT (fleet) DO "
                        "UPDATE SET holder = excluded.holder, session = excluded.session",
                        (fleet, holder.to_json(), self.backend.session()),
                    )
                    return
            refusal = FleetLocked(fleet, self.holder(fleet), self._calls_text(fleet), self.where)
            now = time.monotonic()
            if refusal.holder is None and (silent_since is None or now - silent_since < SAYS_WHO_WITHIN):
                silent_since = silent_since or now  # a holder says who it is a moment after it takes the lock
                time.sleep(WAIT_STEP / 5)
                continue
            if now >= deadline:
                raise refusal
            if waiting and not told:
                waiting(refusal)
                told = True
            time.sleep(WAIT_STEP)

    def _release(self, fleet: str) -> None:
        with self._lock:
            try:
                self.backend.execute("DELETE FROM fleet_locks WHERE fleet = ? AND session = ?",
                                     (fleet, self.backend.session()))  # fmt: skip
            finally:
                self.backend.unlock(fleet)

    def holder(self, fleet: str) -> Holder | None:
        """Who holds the fleet's lock now, if its holder still does and has said so."""
        return next((holder for _, holder in self._holders(fleet)), None)

    def _holders(self, fleet: str | None = None) -> list[tuple[str, Holder]]:
        """(fleet, holder) of the locks held now (of `fleet`, or of every fleet): a row is believed only while
        the session or process that wrote it still holds the lock."""
        query = "SELECT fleet, holder, session FROM fleet_locks" + (" WHERE fleet = ?" if fleet else "")
        out = []
        for row in self._rows(query + " ORDER BY fleet", (fleet,) if fleet else ()):
            with self._lock:
                live = self.backend.held(row["fleet"], int(row["session"]))
            holder = Holder.from_json(row["holder"]) if live else None
            if holder is not None:
                out.append((row["fleet"], holder))
        return out

    def locks(self) -> list[dict[str, Any]]:
        """The fleet locks held now, each with its holder and the calls it may still have on the wire."""
        out = []
        for fleet, holder in self._holders():
            landing, until = self._landing(fleet)
            out.append({"fleet": fleet, **holder.to_dict(), "calls_on_the_wire": len(landing), "calls_until": until})
        return out

    def _landing(self, fleet: str) -> tuple[list[LaunchRecord], str | None]:
        """The fleet's launches whose calls may still land, and until when (the last of them)."""
        landing = self.on_the_wire(fleet, None, time.time())
        until = max((r.calls_until or 0 for r in landing), default=0)
        return landing, stamp(datetime.fromtimestamp(until, UTC)) if landing else None

    def _calls_text(self, fleet: str) -> str:
        landing, until = self._landing(fleet)
        if not landing:
            return ""
        profiles = ", ".join(sorted({r.profile for r in landing}))
        return f", with calls on the wire on profile(s) {profiles} that may land until {until}"

    # Maintained fleets

    def cycle_state(self, fleet: str) -> dict[str, dict[str, Any]]:
        """What the last `fleet maintain` cycle recorded for each profile of `fleet`."""
        return {r["profile"]: r for r in self._rows("SELECT * FROM maintain_state WHERE fleet = ?", (fleet,))}

    def clear_backoff(self, fleet: str) -> None:
        """Forget the back-off of every profile of `fleet` (`fleet maintain --reset-backoff`)."""
        self._execute(
            "UPDATE maintain_state SET backoff_level = 0, backoff_until = NULL, backoff_reason = NULL WHERE fleet = ?",
            (fleet,),
        )

    def record_cycle(self, fleet: str, started: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """One cycle's state per profile, replacing the cycle before."""
        columns = ("profile", "target", "running", "starting", "created", "ended", "terminated", "error",
                   "backoff_level", "backoff_until", "backoff_reason", "decisions", "fates", "judged_by")  # fmt: skip
        values = [{"fleet": fleet, "cycle": started, **{c: r.get(c) for c in columns}} for r in rows]
        if not values:
            return
        names = ("fleet", "cycle", *columns)
        updates = ", ".join(f"{c} = excluded.{c}" for c in names[1:] if c != "profile")
        with self._lock:
            self.backend.many(
                f"INSERT INTO maintain_state ({', '.join(names)}) VALUES ({', '.join(':' + c for c in names)})"
                f" ON CONFLICT (fleet, profile) DO UPDATE SET {updates}",
                values,
            )

    # The whole ledger: status, export, import

    def status(self) -> dict[str, Any]:
        counts = self._rows(
            "SELECT (SELECT COUNT(*) FROM launches) AS launches, (SELECT COUNT(*) FROM instances) AS instances,"
            " (SELECT COUNT(*) FROM instances WHERE ended_at IS NULL) AS live,"
            " (SELECT MIN(created) FROM launches) AS oldest_launch,"
            " (SELECT MIN(launched_at) FROM instances) AS oldest_instance"
        )[0]
        return {
            "backend": self.kind, "where": self.where, "schema_version": self.version,
            "launches": int(counts["launches"]), "instances": int(counts["instances"]),
            "instances_not_ended": int(counts["live"]),
            "oldest_record": min(filter(None, (counts["oldest_launch"], counts["oldest_instance"])), default=None),
            "locks_held": len(self.locks()),
        }  # fmt: skip

    def export(self) -> Iterator[dict[str, Any]]:
        """Every row, launches first, as {"table": ..., "row": {...}}: the JSON lines of `ledger export`."""
        for table in TABLES:
            order = "id" if table == "launches" else "profile, id"
            with self._lock:
                for row in self.backend.iter_rows(f"SELECT * FROM {table} ORDER BY {order}"):
                    yield {"table": table, "row": row}

    def absorb(self, records: Iterable[Mapping[str, Any]]) -> dict[str, int]:
        """Rows from another ledger (`export`), merged so that doing it twice changes nothing.

        A launch is the same launch when fleet, profile, request token and creation time agree:
        it keeps the id it has here, and the other ledger's instances are pointed at it.
        """
        from wlcgcloud.ledger.transfer import absorb

        with self._lock, self.backend.transaction():  # a bad line half-way leaves the ledger as it was
            return absorb(self, records)


def _is_database_error(exc: Exception) -> bool:
    import sqlite3

    if isinstance(exc, sqlite3.DatabaseError):
        return True
    return type(exc).__module__.startswith("psycopg")


_UPSERT_INSTANCE = """
    INSERT INTO instances (profile, id, fleet, launch_id, provider, name, flavor, vcpus, memory_mb,
                           image, experiment, launched_at, ended_at, last_state, last_seen,
                           launched_epoch, ended_epoch, seen_epoch)
    VALUES (:profile, :id, :fleet, :launch_id, :provider, :name, :flavor, :vcpus, :memory_mb,
            :image, :experiment, :launched_at, :ended_at, :last_state, :last_seen,
            :launched_epoch, :ended_epoch, :seen_epoch)
    ON CONFLICT (profile, id) DO UPDATE SET
        fleet = COALESCE(excluded.fleet, instances.fleet),
        launch_id = COALESCE(instances.launch_id, excluded.launch_id),
        name = excluded.name, flavor = COALESCE(excluded.flavor, instances.flavor),
        vcpus = COALESCE(excluded.vcpus, instances.vcpus),
        memory_mb = COALESCE(excluded.memory_mb, instances.memory_mb),
        image = COALESCE(excluded.image, instances.image),
        experiment = COALESCE(excluded.experiment, instances.experiment),
        launched_epoch = CASE WHEN instances.launched_at IS NULL THEN excluded.launched_epoch
                              ELSE instances.launched_epoch END,
        launched_at = COALESCE(instances.launched_at, excluded.launched_at),
        ended_epoch = CASE WHEN instances.ended_at IS NULL THEN excluded.ended_epoch ELSE instances.ended_epoch END,
        ended_at = COALESCE(instances.ended_at, excluded.ended_at),
        last_state = excluded.last_state, last_seen = excluded.last_seen, seen_epoch = excluded.seen_epoch
"""


def lifetime_sql(epoch: Callable[[str], str]) -> tuple[str, str]:
    """SQL for an instance's start and its end (or last sighting) in epoch seconds: the stored numbers,
    else (rows written before v8) the text parsed, with the backend's `epoch`."""
    return (f"COALESCE(launched_epoch, {epoch('launched_at')})",
            f"COALESCE(ended_epoch, {epoch('ended_at')}, seen_epoch, {epoch('last_seen')})")  # fmt: skip


_shared: dict[str, tuple[Ledger, int]] = {}
_shared_lock = threading.Lock()


@contextmanager
def open_ledger(config: Config | None = None) -> Iterator[Ledger]:
    """The ledger `config` (and WLCGCLOUD_LEDGER) names, shared by every user in this process:
    nested uses get the same connection, so the fleet locks one takes are the others' too."""
    where, password_file = location(config)
    with _shared_lock:
        if where in _shared:
            ledger, users = _shared[where]
        else:
            ledger, users = Ledger(where, password_file), 0
        _shared[where] = (ledger, users + 1)
    try:
        yield ledger
    finally:
        with _shared_lock:
            ledger, users = _shared[where]
            if users == 1:
                del _shared[where]
                ledger.close()
            else:
                _shared[where] = (ledger, users - 1)
