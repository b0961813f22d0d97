"""The ledger's schema: versioned in PRAGMA user_version, brought up to date by MIGRATIONS, never downgraded."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from wlcgcloud.errors import ConfigError
from wlcgcloud.ledger import MIGRATIONS, SCHEMA_VERSION, Ledger


def _version_1(path: Path) -> None:
    """A ledger file as wlcgcloud with schema 1 left it, with one unfinished launch."""
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute(
        "INSERT INTO launches (fleet, profile, provider, request_token, image, cloud_image, endorsement, flavor,"
        " requested, options, created, state) VALUES ('f', 'p', 'ec2', 't', 'i', 'ami-1', 'none', 'm5.large', 3,"
        " '{}', '2026-11-01T00:00:00Z', 'intent')"
    )
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()


def test_an_older_ledger_is_migrated_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _version_1(path)
    ledger = Ledger(path)
    try:
        assert ledger.version == SCHEMA_VERSION == 3
        [old] = ledger.launches("f")
        assert old.state == "intent" and old.requested == 3 and old.owner is None and old.calls_until is None
        assert old.uncertain == 0
        ledger.calls_may_land_until(old.id, 2e9)
        assert [r.id for r in ledger.on_the_wire("f", "p", now=1e9)] == [old.id]
        ledger.finish(old.id, "failed")
        assert ledger.on_the_wire("f", "p", now=1e9) == []  # a finished launch has nothing on the wire
    finally:
        ledger.close()


def test_a_ledger_from_a_newer_wlcgcloud_is_refused_and_left_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    _version_1(path)
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(ConfigError, match="Upgrade wlcgcloud"):
        Ledger(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert db.execute("SELECT fleet, state FROM launches").fetchall() == [("f", "intent")]
    assert "owner" not in [c[1] for c in db.execute("PRAGMA table_info(launches)")]  # no migration applied
    db.close()


def test_open_intents_are_adopted_only_once_their_calls_cannot_land(tmp_path: Path) -> None:
    """A launch that may have made instances unseen stays 'intent' until a listing adopts them; a live one never is."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    fields = {"fleet": "f", "profile": "p", "provider": "opennebula", "request_token": "t", "image": "i",
              "cloud_image": "0", "endorsement": "none", "flavor": "atlas-wn", "requested": 12}  # fmt: skip
    try:
        unseen, live, fresh, other, lister = (ledger.record_intent(fields) for _ in range(5))
        ledger.finish(unseen, "intent", "4 may exist", uncertain=4)
        ledger.calls_may_land_until(live, time.time() + 60)  # another process, still making calls
        ledger.finish(other, "intent", "may exist", uncertain=2)
        ledger.db.execute("UPDATE launches SET fleet = 'g' WHERE id = ?", (other,))
        assert [r.uncertain for r in ledger.launches("f") if r.id == unseen] == [4]
        ledger.adopted("p", by=lister, fleet="f")
        states = {r.id: (r.state, r.uncertain) for r in ledger.launches()}
        assert states[unseen] == ("adopted", 0)
        assert states[live] == states[fresh] == states[lister] == ("intent", 0)  # still making (or about to make) calls
        assert states[other] == ("intent", 2)  # another fleet: not listed
        ledger.adopted("p")  # `fleet reconcile`: every fleet of the profile
        assert ledger.launches("g")[0].state == "adopted"
    finally:
        ledger.close()
