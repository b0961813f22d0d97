"""The embedded backend: one SQLite file in the state directory, for one operator on one machine.

WAL mode, so a reader (`fleet list`) never waits for a launch writing. Fleet locks are flocks
on files beside the ledger (`ledger.sqlite.locks/`): the kernel drops them when their process
dies, however it dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from wlcgcloud.errors import ConfigError
from wlcgcloud.ledger.schema import SCHEMA_VERSION, statements

_HINT = "Move it aside; 'wlcgcloud fleet reconcile' rebuilds what the clouds still know."


class SqliteBackend:
    kind = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.where = str(path)
        self._lock_files: dict[str, int] = {}
        self._depth = 0  # inside transaction(): statements join it
        self.lost: set[str] = set()  # never: a flock cannot be taken from a living process
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.DatabaseError as exc:
            raise self.unusable(exc) from None
        path.chmod(0o600)

    def unusable(self, exc: Exception) -> ConfigError:
        return ConfigError(f"the ledger {self.path} cannot be used ({exc}).", _HINT)

    @contextlib.contextmanager
    def _failing(self) -> Iterator[None]:
        """A statement's database error (a row it cannot decode, a full disk, a lock held too long) as the
        ledger's own one-line error, not as a bug."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"the ledger {self.path} failed ({exc}).",
                f"Check it with: sqlite3 {self.path} 'PRAGMA integrity_check'. Nothing more was written.",
            ) from None

    def close(self) -> None:
        for fd in self._lock_files.values():
            os.close(fd)
        self._lock_files.clear()
        self.db.close()

    # Statements

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        with self._failing():
            cursor = self.db.execute(sql, params)
            names = [d[0] for d in cursor.description or ()]
            return [dict(zip(names, r, strict=True)) for r in cursor.fetchall()]

    def iter_rows(self, sql: str) -> Iterator[dict[str, Any]]:
        """Rows one at a time, for reading a whole table without holding it in memory."""
        with self._failing():
            cursor = self.db.execute(sql)
            names = [d[0] for d in cursor.description or ()]
            for row in cursor:
                yield dict(zip(names, row, strict=True))

    def tuples(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        with self._failing():
            yield from self.db.execute(sql, params)

    def _read_only(self) -> sqlite3.Connection:
        """A connection of its own that only reads, for the thread that makes it (sqlite3's rule)."""
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)

    def stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """The rows of a read-only query as they are wanted, on a read-only connection of its own, made and
        closed in the thread that reads them: a million rows in order, never all held."""
        with self._failing():
            db = self._read_only()
            try:
                yield from db.execute(sql, params)
            finally:
                db.close()

    def tuples_by_parts(self, sql: str, params: Sequence[Any], parts: int) -> list[tuple[Any, ...]]:
        """`sql`, whose last two placeholders bound the instances' rowid (`rowid BETWEEN ? AND ?`), over
        `parts` ranges at once, each on a read-only connection of its own: SQLite runs a query on one
        core, and a big GROUP BY is its sorter's work. The rows of every part, in no order."""
        from concurrent.futures import ThreadPoolExecutor

        low, high = self.db.execute("SELECT MIN(rowid), MAX(rowid) FROM instances").fetchone()
        if low is None:
            return []
        step = (high - low) // parts + 1
        ranges = [(low + k * step, low + (k + 1) * step - 1) for k in range(parts)]

        def part(bounds: tuple[int, int]) -> list[tuple[Any, ...]]:
            with self._failing():
                db = self._read_only()
                try:
                    return db.execute(sql, [*params, *bounds]).fetchall()
                finally:
                    db.close()

        with ThreadPoolExecutor(max_workers=parts, thread_name_prefix="ledger-part") as pool:
            return [row for rows in pool.map(part, ranges) for row in rows]

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> None:
        with self._failing():
            self.db.execute(sql, params)

    def insert(self, sql: str, params: dict[str, Any]) -> int:
        """Run an INSERT into launches; the new row's id."""
        with self._failing():
            return int(self.db.execute(sql, params).lastrowid or 0)

    def many(self, sql: str, rows: Sequence[Any]) -> None:
        """One statement over many rows, in one transaction."""
        with self.transaction(), self._failing():
            self.db.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: the statements run inside (nested ones join the outer one)."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with self._failing():
            self.db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0
        with self._failing():
            try:
                self.db.execute("COMMIT")
            except sqlite3.DatabaseError:
                self.db.rollback()  # a commit that failed (a full disk) leaves nothing half written, nor open
                raise

    @staticmethod
    def epoch(column: str) -> str:
        """SQL for a stored time (ISO 8601 text) as epoch seconds."""
        return f"CAST(strftime('%s', {column}) AS REAL)"

    @staticmethod
    def whole(table: str) -> str:
        """A table read whole (or by rowid ranges): no index, whose lookups would cost a seek per row."""
        return f"{table} NOT INDEXED"

    # Ends a subquery so it is computed once per row, not copied into every use of its columns (SQLite
    # flattens a plain subquery into the outer query: each SUM would evaluate the times again).
    FENCE = " LIMIT -1"
    BYTEWISE = ""  # text compares as bytes unless a column says otherwise (BINARY): as Python compares str

    @staticmethod
    def greatest(a: str, b: str) -> str:
        return f"max({a}, {b})"  # SQLite's max() of several arguments is the scalar one

    @staticmethod
    def least(a: str, b: str) -> str:
        return f"min({a}, {b})"

    @staticmethod
    def day_number(seconds: str) -> str:
        """The UTC day of epoch seconds (never negative here: CAST truncates, as floor would)."""
        return f"CAST({seconds} / 86400 AS INTEGER)"

    @staticmethod
    def integral(number: str) -> str:
        """A number's whole part, as an integer (toward zero, as Python's int())."""
        return f"CAST({number} AS INTEGER)"

    # Schema

    def version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self, steps: Sequence[str], check: Any) -> None:
        """Apply `steps` in one transaction; `check(version)` refuses a newer schema first."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            check(self.version())  # again, under the write lock: another process may have migrated
            for step in steps[self.version() :]:
                for statement in statements(step):
                    self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # Fleet locks

    def _lock_path(self, fleet: str) -> Path:
        digest = hashlib.sha256(fleet.encode()).hexdigest()[:32]
        return self.path.parent / f"{self.path.name}.locks" / f"{digest}.lock"

    def try_lock(self, fleet: str) -> bool:
        path = self._lock_path(fleet)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_files[fleet] = fd
        return True

    def unlock(self, fleet: str) -> None:
        fd = self._lock_files.pop(fleet, None)
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock

    def session(self) -> int:
        return os.getpid()

    def held(self, fleet: str, session: int) -> bool:
        """Whether the process that wrote a holder row still holds that fleet's lock."""
        if fleet in self._lock_files:
            return True
        path = self._lock_path(fleet)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        return False

    def reconnected(self) -> bool:
        return False  # a file does not go away under us
