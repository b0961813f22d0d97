"""The ledger's schema, one list of migrations for both backends.

Each entry brings the schema from version i to i+1. Never edit one that has shipped: add one.
They are written in the SQL that SQLite and PostgreSQL share; `for_postgresql` maps the two
spellings that differ (an auto-numbered key, a double). The version is recorded in the ledger
itself (SQLite: `PRAGMA user_version`; PostgreSQL: the table `wlcgcloud_schema`), and a client
that finds a newer one refuses the ledger rather than write what it does not understand.
"""

from __future__ import annotations

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
    # v4: who holds each fleet's lock. The lock itself is the backend's (an advisory lock of the
    # holder's PostgreSQL session, a flock of the holder's process on SQLite), so a killed holder
    # never leaves one behind; this row only says who it is, and is believed only while that
    # session or process still holds the lock.
    """
    CREATE TABLE fleet_locks (
        fleet TEXT PRIMARY KEY,
        holder TEXT NOT NULL,         -- JSON: user, host, pid, command, since
        session INTEGER NOT NULL      -- PostgreSQL: the holder's backend pid, SQLite: its process id
    );
    """,
    # v5: what `fleet maintain`'s last cycle saw and did on each profile of a fleet, and the
    # back-off it left the profile in (so a maintainer that takes over, here or on another
    # machine, goes on from there).
    """
    CREATE TABLE maintain_state (
        fleet TEXT NOT NULL,
        profile TEXT NOT NULL,
        cycle TEXT NOT NULL,          -- when the last cycle started
        target INTEGER,
        running INTEGER,
        starting INTEGER,
        created INTEGER,
        ended TEXT,                   -- JSON: why -> how many ended since the cycle before
        terminated TEXT,              -- JSON: why -> how many the cycle terminated
        error TEXT,
        backoff_level INTEGER NOT NULL DEFAULT 0,
        backoff_until REAL,
        backoff_reason TEXT,
        decisions TEXT,               -- JSON: what the cycle did, in words
        PRIMARY KEY (fleet, profile)
    );
    """,
    # v6: the fates of a profile's latest VMs (1 fizzled, 0 worked), which decide its fizzle back-off
    """
    ALTER TABLE maintain_state ADD COLUMN fates TEXT
    """,
    # v7: why each VM ended, in its own words (the HEPiX shutdown message it left, issue 18), and
    # which rule judged a profile's last ended VMs (their messages, or their lifetimes)
    """
    ALTER TABLE instances ADD COLUMN end_code INTEGER;
    ALTER TABLE instances ADD COLUMN end_reason TEXT;
    ALTER TABLE maintain_state ADD COLUMN judged_by TEXT
    """,
    # v8: the times of an instance also as epoch seconds, written with their text: `usage` sums a
    # million lifetimes in SQL without parsing two million dates (issue 19). Rows written before
    # have NULL there, and are read through the text, as before. The index finds where a profile's
    # memory begins (`usage` says when that is after the window's start) without a full scan.
    """
    ALTER TABLE instances ADD COLUMN launched_epoch REAL;
    ALTER TABLE instances ADD COLUMN ended_epoch REAL;
    ALTER TABLE instances ADD COLUMN seen_epoch REAL;
    CREATE INDEX instances_profile_launched ON instances (profile, launched_at)
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)


def statements(step: str) -> list[str]:
    """The statements of one migration step (no statement, nor comment, holds a `;`)."""
    return [s.strip() for s in step.split(";") if s.strip()]


def for_postgresql(statement: str) -> str:
    """A migration statement in PostgreSQL's spelling."""
    return statement.replace(
        "id INTEGER PRIMARY KEY,", "id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    ).replace(" REAL", " DOUBLE PRECISION")
