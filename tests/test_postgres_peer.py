"""The PostgreSQL peer is set up like a site's server: TLS required, scram passwords, one database per test."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from peers.postgres import Database, PostgresServer


def connect(server: PostgresServer, db: Database, **overrides: Any) -> psycopg.Connection[Any]:
    settings: dict[str, Any] = {"host": server.host, "port": server.port, "dbname": db.name, "user": db.user,
                                "password": db.password, "sslmode": "verify-full", "sslrootcert": str(server.ca_file),
                                "connect_timeout": 10}  # fmt: skip
    return psycopg.connect(**{**settings, **overrides})


def test_the_owner_logs_in_over_verified_tls(postgres_server: PostgresServer, pg_database: Database) -> None:
    with psycopg.connect(pg_database.url, password=pg_database.password) as conn:
        who = conn.execute("SELECT current_user, current_database()").fetchone()
        ssl = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        setting = conn.execute("SHOW ssl").fetchone()
    assert who == (pg_database.user, pg_database.name)
    assert ssl == (True,)
    assert setting == ("on",)
    assert pg_database.password not in pg_database.url


def test_the_certificate_is_checked_against_our_ca(postgres_server: PostgresServer, pg_database: Database) -> None:
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(postgres_server, pg_database, sslrootcert="system")  # the public CAs did not sign it


def test_a_wrong_password_is_refused(postgres_server: PostgresServer, pg_database: Database) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(postgres_server, pg_database, password=pg_database.password + "x")


def test_a_connection_without_tls_is_refused(postgres_server: PostgresServer, pg_database: Database) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        connect(postgres_server, pg_database, sslmode="disable")


def test_a_restart_drops_connections_and_takes_new_ones(postgres_server: PostgresServer, pg_database: Database) -> None:
    old = connect(postgres_server, pg_database)
    port = postgres_server.port
    postgres_server.restart()
    with pytest.raises(psycopg.OperationalError):
        old.execute("SELECT 1")
    old.close()
    assert postgres_server.port == port
    with connect(postgres_server, pg_database) as new:
        assert new.execute("SELECT 1").fetchone() == (1,)


def test_terminate_backends_cuts_a_database_s_connections(
    postgres_server: PostgresServer, pg_database: Database
) -> None:
    conn = connect(postgres_server, pg_database)
    assert postgres_server.terminate_backends(pg_database.name) == 1
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()


def test_each_database_is_its_own(postgres_server: PostgresServer) -> None:
    first, second = postgres_server.new_database(), postgres_server.new_database()
    assert len({first.name, second.name, first.user, second.user}) == 4
    with connect(postgres_server, first) as conn:
        conn.execute("CREATE TABLE ledger (id int)")
        conn.execute("INSERT INTO ledger VALUES (1)")
    assert postgres_server.sql("SELECT id FROM ledger", dbname=first.name) == [(1,)]
    assert postgres_server.sql("SELECT to_regclass('ledger')", dbname=second.name) == [(None,)]
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        connect(postgres_server, first, dbname=second.name)  # one owner may not even enter the other's database
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(postgres_server, first, user=second.user)  # nor use the other's role with its own password
