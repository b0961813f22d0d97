"""A real PostgreSQL server on 127.0.0.1 for the tests of the ledger's PostgreSQL backend.

The shared ledger lives on a site's PostgreSQL, so its tests talk to a real server set up the way
a site's is: TLS on (a certificate for 127.0.0.1 and localhost from a throwaway CA, see tls.py),
connections without TLS refused, every login checked by a scram-sha-256 password. Each test gets
a database of its own with an owner role of its own (new_database); `sql` runs statements as the
superuser, for tests that inspect or tamper with what the ledger wrote; `restart` and
`terminate_backends` cut the client's connections the way an operator or a failover does.

The binaries are Debian's (/usr/lib/postgresql/N/bin; dev/test installs the `postgresql` package).
PostgreSQL refuses to run as root, so under root the server runs as the `postgres` user, in a fresh
directory under /tmp that it owns (pytest's tmp_path sits under root-only directories).
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from peers import tls
from psycopg import sql as pgsql

HOST = "127.0.0.1"
SUPERUSER = "wl_admin"
SERVER_USER = "postgres"  # who runs the server when the tests run as root

HBA = """\
# TYPE    DATABASE USER ADDRESS        METHOD
local     all      all                 scram-sha-256
hostssl   all      all  127.0.0.1/32   scram-sha-256
hostnossl all      all  127.0.0.1/32   reject
"""


class PostgresError(RuntimeError):
    """The server could not be set up, started or restarted; the message carries the log's tail."""


@dataclass(frozen=True)
class Database:
    """A fresh database and its owner; `url` has no password (pass it separately, as a site would)."""

    name: str
    user: str
    password: str
    url: str


def bindir() -> Path:
    """The newest installed PostgreSQL's bin directory."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        raise PostgresError("no PostgreSQL found (/usr/lib/postgresql/*/bin/initdb): install Debian's `postgresql`")

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(part) for part in Path(path).parts[-3].split(".") if part.isdigit())

    return Path(max(found, key=version)).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One running server; make it with `PostgresServer.start()`, end it with `stop()`."""

    host = HOST

    def __init__(self, root: Path, binaries: Path, owner: pwd.struct_passwd | None) -> None:
        self.root = root  # everything of this server: /tmp/wlcgcloud-pg-*
        self.datadir = root / "data"
        self.log_file = root / "postgres.log"
        self.port = 0
        self.superuser = SUPERUSER
        self._password = secrets.token_urlsafe(24)
        self._bin = binaries
        self._owner = owner  # None: the server runs as we do
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self._stopped = False
        self._files = tls.make_server_files(root / "tls", (HOST, "localhost"))
        self.ca_file = self._files.ca_file

    @classmethod
    def start(cls) -> PostgresServer:
        """initdb a fresh cluster, start it on a free port, and wait until it takes connections."""
        binaries = bindir()
        try:
            owner = pwd.getpwnam(SERVER_USER) if os.geteuid() == 0 else None
        except KeyError:
            raise PostgresError(f"running as root, but there is no {SERVER_USER!r} user to run PostgreSQL") from None
        root = Path(tempfile.mkdtemp(prefix="wlcgcloud-pg-"))
        try:
            server = cls(root, binaries, owner)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        try:
            server._init()
            server._launch()
        except BaseException:
            server.stop()
            raise
        atexit.register(server.stop)  # when the session ends without the fixture's teardown
        return server

    # ------------------------------------------------------------------ setting up

    def _chown(self, path: Path) -> None:
        if self._owner is not None:
            os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def _init(self) -> None:
        self.root.chmod(0o755)  # the CA file is for everyone; the data directory is 0700 itself
        self._chown(self.root)
        self._chown(self._files.key_file)  # PostgreSQL wants its key owned by itself, mode 0600
        pwfile = self.root / "superuser.pw"
        pwfile.write_text(self._password + "\n")
        pwfile.chmod(0o600)
        self._chown(pwfile)
        try:
            self._run("initdb", "-D", str(self.datadir), "-U", SUPERUSER, f"--pwfile={pwfile}",
                      "--auth=scram-sha-256", "-E", "UTF8", "--no-locale", "--no-sync")  # fmt: skip
        finally:
            pwfile.unlink()
        (self.datadir / "pg_hba.conf").write_text(HBA)
        with (self.datadir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'wlcgcloud.conf'  # the test peer's settings (tests/peers/postgres.py)\n")

    def _configure(self, port: int) -> None:
        conf = self.datadir / "wlcgcloud.conf"
        conf.write_text(
            f"port = {port}\n"
            f"listen_addresses = '{HOST}'\n"
            f"unix_socket_directories = '{self.datadir}'\n"
            "max_connections = 100\n"
            "fsync = off\n"
            "ssl = on\n"
            f"ssl_cert_file = '{self._files.cert_file}'\n"
            f"ssl_key_file = '{self._files.key_file}'\n"
        )
        self._chown(conf)

    def _launch(self) -> None:
        for attempt in range(5):
            port = free_port()
            self._configure(port)
            done = self._run("pg_ctl", "-w", "-D", str(self.datadir), "-l", str(self.log_file), "start", check=False)
            if done.returncode == 0:
                self.port = port
                break
            clash = "could not bind" in self._log_tail() or "already in use" in self._log_tail()
            if not clash or attempt == 4:
                raise PostgresError(self._failure("pg_ctl start", done))
        deadline = time.monotonic() + 30
        while True:  # pg_ctl -w waited for "ready"; this proves a login over TLS works too
            try:
                self.sql("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise PostgresError(f"the server does not take connections: {exc}{self._log_tail()}") from exc
                time.sleep(0.1)

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self._bin / program), *args]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner.pw_name, "--", *command]
        done = subprocess.run(command, cwd=self.root, env=self._env, capture_output=True, text=True, timeout=120)
        if check and done.returncode != 0:
            raise PostgresError(self._failure(program, done))
        return done

    def _failure(self, what: str, done: subprocess.CompletedProcess[str]) -> str:
        output = (done.stdout + done.stderr).strip()
        return f"{what} failed (exit status {done.returncode}) in {self.root}:\n{output}{self._log_tail()}"

    def _log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return ""
        return f"\n--- {self.log_file}, last lines:\n" + "\n".join(tail)

    # ------------------------------------------------------------------ for tests

    def _connect(self, dbname: str = "postgres") -> psycopg.Connection[Any]:
        return psycopg.connect(host=HOST, port=self.port, user=SUPERUSER, password=self._password, dbname=dbname,
                               sslmode="verify-full", sslrootcert=str(self.ca_file), autocommit=True,
                               connect_timeout=10)  # fmt: skip

    def sql(
        self, statement: str | pgsql.SQL | pgsql.Composed, params: Any = None, dbname: str = "postgres"
    ) -> list[Any]:
        """Run one statement as the superuser (autocommit) in `dbname`; its rows, if it returns any."""
        with self._connect(dbname) as conn:
            cur = conn.execute(statement, params)
            return cur.fetchall() if cur.description is not None else []

    def new_database(self) -> Database:
        """A fresh role with a random password, and a fresh database it owns that no one else may enter."""
        token = secrets.token_hex(6)
        name, user, password = f"wl_{token}", f"wl_{token}_owner", secrets.token_urlsafe(24)
        with self._connect() as conn:
            conn.execute(pgsql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(pgsql.Identifier(user), password))
            conn.execute(
                pgsql.SQL("CREATE DATABASE {} OWNER {}").format(pgsql.Identifier(name), pgsql.Identifier(user))
            )
            conn.execute(pgsql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(pgsql.Identifier(name)))
        url = (
            f"postgresql://{user}@{HOST}:{self.port}/{name}?sslmode=verify-full&sslrootcert={quote(str(self.ca_file))}"
        )
        return Database(name, user, password, url)

    def terminate_backends(self, dbname: str) -> int:
        """Cut every connection to `dbname` (but this one); how many there were."""
        rows = self.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
        return len(rows)

    def restart(self) -> None:
        """A fast restart on the same port: every client connection is dropped."""
        self._run("pg_ctl", "-w", "-D", str(self.datadir), "-l", str(self.log_file), "-m", "fast", "restart")

    def stop(self) -> None:
        """Stop the server at once and remove its directory; stopping again does nothing."""
        if self._stopped:
            return
        self._stopped = True
        if (self.datadir / "postmaster.pid").exists():
            self._run("pg_ctl", "-w", "-D", str(self.datadir), "-m", "immediate", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
