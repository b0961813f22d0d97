"""The shared backend: the ledger in a PostgreSQL database, for teams and CI runners.

psycopg 3 is imported here only, and only when `ledger` (config.toml) or WLCGCLOUD_LEDGER
names a postgresql:// URL. The password never sits in the URL: it comes from
WLCGCLOUD_LEDGER_PASSWORD, the keyring, an owner-only `ledger_password_file`, or else from
libpq's own PGPASSWORD, ~/.pgpass and service file. TLS is as the URL says (`sslmode`,
`sslrootcert`), as for psql.

Fleet locks are session advisory locks: the server drops them when the holder's connection
ends, so a killed client, or a machine that vanished, leaves none behind. A connection lost
mid-command (the server restarted) is opened again, and the locks this process held are taken
again, before the statement that noticed is run once more.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from wlcgcloud import bounded
from wlcgcloud.errors import AuthError, CloudError, ConfigError, WlcgError
from wlcgcloud.escape import escape_controls
from wlcgcloud.ledger.schema import SCHEMA_VERSION, for_postgresql, statements

T = TypeVar("T")

PASSWORD_VARIABLE = "WLCGCLOUD_LEDGER_PASSWORD"
KEYRING_USER = "@ledger"  # never a profile's name (those start with a letter or digit)
LOCK_SPACE = 0x574C4347  # "WLCG": the first key of every fleet's advisory lock (the second: a hash of its name)
MIGRATION_KEY = 0
CONNECT_TIMEOUT = 10  # seconds
RECONNECT_FOR = 60.0  # seconds a lost connection is tried again before the command fails
STREAM_CHUNK = 1000  # rows a streamed query's chunk holds (libpq 17's chunked mode)
INSTALL_HINT = (
    "Install the PostgreSQL driver into wlcgcloud's environment: pipx inject wlcgcloud 'psycopg[binary]' "
    "(or, in its venv, pip install 'psycopg[binary]'; from a clone, pip install '.[postgresql]')."
)

_URL = re.compile(r"^postgres(ql)?://")


def is_url(text: str) -> bool:
    return bool(_URL.match(text))


def shown(url: str) -> str:
    """The URL as messages show it: scheme, user, host, port, database; no query."""
    return escape_controls(url.split("?", 1)[0])


def lock_key(fleet: str) -> int:
    return int.from_bytes(hashlib.sha256(fleet.encode()).digest()[:4], "big") & 0x7FFFFFFF


@lru_cache(maxsize=256)
def translated(sql: str) -> str:
    """The ledger's shared SQL (qmark and :named parameters) in psycopg's parameter style."""
    sql = sql.replace("%", "%%").replace("?", "%s")
    return re.sub(r"(?<![:\w]):([A-Za-z_]\w*)", r"%(\1)s", sql)


def _password(password_file: str | None) -> tuple[str | None, str]:
    """The ledger's password and where it came from; (None, "libpq") leaves it to libpq."""
    if os.environ.get(PASSWORD_VARIABLE):
        return os.environ[PASSWORD_VARIABLE], f"environment {PASSWORD_VARIABLE}"
    try:
        import keyring
        import keyring.errors

        stored = keyring.get_password("wlcgcloud", KEYRING_USER)
    except Exception:  # no backend, a locked or broken keyring: the other sources still count
        stored = None
    if stored:
        return stored, "the keyring"
    if password_file:
        return _read_password_file(Path(password_file).expanduser()), f"ledger_password_file {password_file}"
    return None, "libpq (PGPASSWORD, ~/.pgpass or the service file)"


def store_password(value: str | None) -> bool:
    """Keep the ledger's password in the system keyring; None forgets it, and says whether there was one.

    Storing without a keyring is a ConfigError naming the other ways; forgetting there is nothing to do.
    """
    import keyring
    import keyring.errors

    try:
        if value is None:
            keyring.delete_password("wlcgcloud", KEYRING_USER)
        else:
            keyring.set_password("wlcgcloud", KEYRING_USER, value)
        return True
    except keyring.errors.PasswordDeleteError:
        return False
    except keyring.errors.NoKeyringError:
        if value is None:
            return False
        raise ConfigError(
            "this machine has no system keyring (keyring found no backend), so the password cannot be kept there.",
            f"Give it as {PASSWORD_VARIABLE}, in ~/.pgpass, or with 'wlcgcloud ledger password --stdin --file FILE'.",
        ) from None
    except keyring.errors.KeyringError as exc:
        raise ConfigError(f"the system keyring refused the ledger's password: {exc}.") from None


def _read_password_file(path: Path) -> str:
    try:
        st = path.stat()
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO) or st.st_uid != os.geteuid():
            raise ConfigError(
                f"ledger_password_file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); refused.",
                f"Run 'chmod 600 {path}' as its owner.",
            )
        text = bounded.read_bytes(path, bounded.SECRET_SIZE).decode("utf-8").strip()
    except bounded.TooLarge:
        raise ConfigError(f"ledger_password_file {path} holds more than a password.") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read ledger_password_file {path}: {reason}.") from None
    if not text:
        raise ConfigError(f"ledger_password_file {path} is empty.")
    return text


def _reason(exc: Exception) -> str:
    """libpq's message in one bounded line, without a closing full stop (it never holds the password)."""
    text = " ".join(str(exc).split())
    return escape_controls(text[:300]).rstrip(" .")


class PostgresBackend:
    kind = "postgresql"

    def __init__(self, url: str, password_file: str | None = None) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigError(
                f"the ledger is on PostgreSQL ({shown(url)}), and psycopg is not installed.", INSTALL_HINT
            ) from None
        self._psycopg = psycopg
        self.url = url
        self.where = shown(url)
        self._password, self._password_from = _password(password_file)
        self._locks: dict[str, int] = {}
        self.lost: set[str] = set()  # fleets whose lock another client took while our connection was down
        self._depth = 0  # inside transaction(): a lost connection loses it, so no statement is run again
        self.db = self._connect()

    def _connect(self) -> Any:
        from psycopg.rows import dict_row

        psycopg = self._psycopg
        try:
            db = psycopg.connect(
                self.url, password=self._password, connect_timeout=CONNECT_TIMEOUT,
                application_name="wlcgcloud", autocommit=True, row_factory=dict_row,
                keepalives=1, keepalives_idle=30, keepalives_interval=10, keepalives_count=3,
            )  # fmt: skip
        except psycopg.OperationalError as exc:
            raise self._connect_error(exc) from None
        except psycopg.ProgrammingError as exc:  # a URL libpq cannot parse
            raise ConfigError(f"the ledger URL {self.where} is not one libpq accepts ({_reason(exc)}).") from None
        # The server drops a session's advisory locks when it finds the session dead: with these it finds a
        # vanished machine in about a minute and a half, not after the system's two hours of silence.
        try:
            for name, seconds in (("tcp_keepalives_idle", 60), ("tcp_keepalives_interval", 10),
                                  ("tcp_keepalives_count", 3)):  # fmt: skip
                db.execute(f"SET {name} = {seconds}")
        except psycopg.Error:
            pass  # a server that will not take them (a Unix socket, a pooler) keeps its own
        return db

    def _connect_error(self, exc: Exception) -> WlcgError:
        reason = _reason(exc)
        if "password authentication failed" in reason or "authentication failed" in reason:
            return AuthError(
                f"the ledger {self.where} refused the password (from {self._password_from}; {reason}).",
                f"Check the password in {PASSWORD_VARIABLE}, ledger_password_file, the keyring or ~/.pgpass.",
            )
        if "no password supplied" in reason:
            return ConfigError(
                f"the ledger {self.where} asks for a password, and none was found.",
                f"Give it as {PASSWORD_VARIABLE}, with 'wlcgcloud ledger password', or in ~/.pgpass.",
            )
        if "does not exist" in reason:  # the server answered: no such database or role
            return ConfigError(
                f"the ledger {self.where} is not there ({reason}).",
                "Check the user and the database in the URL (config.toml's ledger, or WLCGCLOUD_LEDGER).",
            )
        if "certificate" in reason or "SSL" in reason:
            return CloudError(
                f"the ledger {self.where} cannot be reached over TLS ({reason}).",
                "Check sslmode and sslrootcert in the URL: sslrootcert=/path/to/your-site-ca.pem, or "
                "sslrootcert=system for the system's CAs.",
            )
        return CloudError(
            f"the ledger {self.where} cannot be reached ({reason}).",
            "Check that the server runs, and the URL in config.toml (ledger) or WLCGCLOUD_LEDGER.",
        )

    def unusable(self, exc: Exception) -> ConfigError:
        return ConfigError(f"the ledger {self.where} failed ({_reason(exc)}).")

    def close(self) -> None:
        self.db.close()

    # Statements: each runs once more on a new connection when the old one was lost

    def _call(self, work: Callable[[], T]) -> T:
        psycopg = self._psycopg
        try:
            return work()
        except psycopg.OperationalError as exc:
            if self._depth or (not self.db.broken and not self.db.closed):
                raise self.unusable(exc) from None
        except psycopg.Error as exc:
            raise self.unusable(exc) from None
        self._reconnect()
        try:
            return work()
        except psycopg.Error as exc:
            raise self.unusable(exc) from None

    def _reconnect(self) -> None:
        deadline = time.monotonic() + RECONNECT_FOR
        while True:
            try:
                self.db = self._connect()
                break
            except CloudError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)
        for fleet, key in list(self._locks.items()):
            if not self.db.execute("SELECT pg_try_advisory_lock(%s, %s) AS ok", (LOCK_SPACE, key)).fetchone()["ok"]:
                del self._locks[fleet]
                self.lost.add(fleet)
                raise CloudError(
                    f"the connection to the ledger {self.where} was lost, and another wlcgcloud took "
                    f"fleet '{fleet}' meanwhile.",
                    "Run 'wlcgcloud ledger locks' to see who; the launch resumes safely when run again.",
                )
            self.db.execute("UPDATE fleet_locks SET session = pg_backend_pid() WHERE fleet = %s", (fleet,))

    def reconnected(self) -> bool:
        return True

    def rows(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[dict[str, Any]]:
        return self._call(lambda: self.db.execute(translated(sql), params or None).fetchall())

    def iter_rows(self, sql: str) -> Iterator[dict[str, Any]]:
        """Rows one at a time (libpq's row-by-row mode), for reading a whole table without holding it in memory."""
        try:
            with self.db.cursor() as cursor:
                yield from cursor.stream(translated(sql))
        except self._psycopg.Error as exc:
            raise self.unusable(exc) from None

    def tuples(self, sql: str, params: Sequence[Any] = ()) -> Iterator[tuple[Any, ...]]:
        from psycopg.rows import tuple_row

        def fetch() -> list[tuple[Any, ...]]:
            with self.db.cursor(row_factory=tuple_row) as cursor:
                return list(cursor.stream(translated(sql), params or None))

        yield from self._call(fetch)

    def stream(self, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
        """The rows of a read-only query as they are wanted, on a connection of its own, closed when they are
        all read: the ledger's connection stays free, and several streams can be read in turn; a million
        rows in order, never all held. A connection lost midway is an error (rows were already used)."""
        from psycopg.rows import tuple_row

        psycopg = self._psycopg
        db = self._connect()
        try:
            with db.cursor(row_factory=tuple_row) as cursor:
                # libpq 17 sends rows in chunks; before, one at a time
                size = STREAM_CHUNK if psycopg.pq.version() >= 170000 else 1
                yield from cursor.stream(translated(sql), params or None, size=size)
        except psycopg.Error as exc:
            raise self.unusable(exc) from None
        finally:
            db.close()

    def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> None:
        self._call(lambda: self.db.execute(translated(sql), params or None))

    def insert(self, sql: str, params: dict[str, Any]) -> int:
        return int(self._call(lambda: self.db.execute(translated(sql) + " RETURNING id", params).fetchone()["id"]))

    def many(self, sql: str, rows: Sequence[Any]) -> None:
        def work() -> None:
            with self.db.transaction(), self.db.cursor() as cursor:
                cursor.executemany(translated(sql), rows)

        self._call(work)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """All or nothing: the statements run inside (nested ones join the outer one as a savepoint)."""
        with self.db.transaction():
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1

    @staticmethod
    def epoch(column: str) -> str:
        return f"CAST(EXTRACT(EPOCH FROM CAST({column} AS TIMESTAMPTZ)) AS DOUBLE PRECISION)"

    @staticmethod
    def whole(table: str) -> str:
        return table  # the planner chooses a sequential scan for a whole table itself

    FENCE = " OFFSET 0"  # PostgreSQL's way to keep a subquery from being pulled up into the outer one
    BYTEWISE = ' COLLATE "C"'  # text ordered by its bytes (UTF-8: by code point, as Python compares str)

    @staticmethod
    def greatest(a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"

    @staticmethod
    def least(a: str, b: str) -> str:
        return f"LEAST({a}, {b})"

    @staticmethod
    def day_number(seconds: str) -> str:
        return f"CAST(FLOOR({seconds} / 86400) AS BIGINT)"  # CAST alone rounds in PostgreSQL

    @staticmethod
    def integral(number: str) -> str:
        return f"CAST(TRUNC({number}) AS BIGINT)"

    # Schema

    def version(self) -> int:
        def read() -> int:
            exists = self.db.execute("SELECT to_regclass('wlcgcloud_schema') IS NOT NULL AS yes").fetchone()["yes"]
            if not exists:
                return 0
            row = self.db.execute("SELECT version FROM wlcgcloud_schema").fetchone()
            return int(row["version"]) if row else 0

        return self._call(read)

    def migrate(self, steps: Sequence[str], check: Callable[[int], None]) -> None:
        def work() -> None:
            with self.db.transaction():
                self.db.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_SPACE, MIGRATION_KEY))
                self.db.execute("CREATE TABLE IF NOT EXISTS wlcgcloud_schema (version INTEGER NOT NULL)")
                version = self.version()
                check(version)  # again, under the lock: another client may have migrated meanwhile
                for step in steps[version:]:
                    for statement in statements(step):
                        self.db.execute(for_postgresql(statement))
                self.db.execute("DELETE FROM wlcgcloud_schema")
                self.db.execute("INSERT INTO wlcgcloud_schema (version) VALUES (%s)", (SCHEMA_VERSION,))

        self._call(work)

    # Fleet locks

    def try_lock(self, fleet: str) -> bool:
        key = lock_key(fleet)
        query = "SELECT pg_try_advisory_lock(%s, %s) AS ok"
        ok = bool(self._call(lambda: self.db.execute(query, (LOCK_SPACE, key)).fetchone()["ok"]))
        if ok:
            self._locks[fleet] = key
        return ok

    def unlock(self, fleet: str) -> None:
        key = self._locks.pop(fleet, None)
        if key is not None and not self.db.closed and not self.db.broken:
            self.db.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_SPACE, key))

    def session(self) -> int:
        return int(self._call(lambda: self.db.execute("SELECT pg_backend_pid() AS pid").fetchone()["pid"]))

    def held(self, fleet: str, session: int) -> bool:
        query = """
            SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = %s
                           AND CAST(classid AS BIGINT) = %s AND CAST(objid AS BIGINT) = %s AND objsubid = 2) AS yes
        """
        args = (session, LOCK_SPACE, lock_key(fleet))
        return bool(self._call(lambda: self.db.execute(query, args).fetchone()["yes"]))
