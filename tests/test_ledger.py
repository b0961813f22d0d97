"""The ledger's whole contract, run against both backends: SQLite and a real PostgreSQL server.

Every test takes `where` (a SQLite file, or a fresh database on the session's PostgreSQL with
its password in WLCGCLOUD_LEDGER_PASSWORD) and `raw` (plain SQL on the same store, for setting
up an older schema or looking under the interface).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from wlcgcloud.errors import ConfigError
from wlcgcloud.ledger import MIGRATIONS, SCHEMA_VERSION, FleetLocked, Ledger
from wlcgcloud.ledger.schema import for_postgresql, statements
from wlcgcloud.ledger.transfer import read_lines
from wlcgcloud.times import stamp

Raw = Callable[..., list[tuple[Any, ...]]]

FIELDS = {"fleet": "f", "profile": "p", "provider": "opennebula", "request_token": "t", "image": "i",
          "cloud_image": "0", "endorsement": "none", "flavor": "atlas-wn", "requested": 12}  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """(where, raw): the ledger's location and a function running SQL on it directly."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.sqlite"

        def raw_sqlite(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
            db = sqlite3.connect(path)
            try:
                rows = db.execute(sql, params).fetchall()
                db.commit()
                return rows
            finally:
                db.close()

        yield SimpleNamespace(kind="sqlite", where=str(path), raw=raw_sqlite, ddl=lambda s: s)
        return
    import psycopg

    database = request.getfixturevalue("pg_database")
    monkeypatch.setenv("WLCGCLOUD_LEDGER_PASSWORD", database.password)

    def raw_pg(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(database.url, password=database.password, autocommit=True) as db:
            cursor = db.execute(sql.replace("?", "%s"), params or None)
            return cursor.fetchall() if cursor.description else []

    yield SimpleNamespace(kind="postgresql", where=database.url, raw=raw_pg, ddl=for_postgresql, db=database)


def _version_1(b: Any) -> None:
    """A ledger as wlcgcloud with schema 1 left it, with one unfinished launch."""
    for statement in statements(MIGRATIONS[0]):
        b.raw(b.ddl(statement))
    b.raw(
        "INSERT INTO launches (fleet, profile, provider, request_token, image, cloud_image, endorsement, flavor,"
        " requested, options, created, state) VALUES ('f', 'p', 'ec2', 't', 'i', 'ami-1', 'none', 'm5.large', 3,"
        " '{}', '2026-11-01T00:00:00Z', 'intent')"
    )
    _set_version(b, 1)


def _set_version(b: Any, version: int) -> None:
    if b.kind == "sqlite":
        b.raw(f"PRAGMA user_version = {version}")
    else:
        b.raw("CREATE TABLE IF NOT EXISTS wlcgcloud_schema (version INTEGER NOT NULL)")
        b.raw("DELETE FROM wlcgcloud_schema")
        b.raw("INSERT INTO wlcgcloud_schema VALUES (?)", (version,))


def _vm(ident: str, state: str = "running", **kw: Any) -> SimpleNamespace:
    values = {"profile": "p", "id": ident, "fleet": "f", "provider": "opennebula", "name": ident, "flavor": "wn",
              "vcpus": 4, "memory_mb": 8192, "image": "img", "tags": {"wlcg:experiment": "atlas"},
              "launched_at": datetime(2026, 11, 1, 10, tzinfo=UTC), "state": state}  # fmt: skip
    return SimpleNamespace(**{**values, **kw})


def test_an_older_ledger_is_migrated_in_place_and_keeps_its_rows(backend: Any) -> None:
    _version_1(backend)
    ledger = Ledger(backend.where)
    try:
        assert ledger.version == SCHEMA_VERSION == 8
        ledger.record_cycle(
            "f", "2026-11-01T10:00:00Z", [{"profile": "p", "backoff_level": 0, "fates": "[0, 1]"}]
        )  # v6
        assert ledger.cycle_state("f")["p"]["fates"] == "[0, 1]"
        [old] = ledger.launches("f")
        ledger.record_instances([_vm("i-1", "stopped")])
        ledger.record_end_reasons("p", {"i-1": (300, "No more work")})  # v7: an instance's own last word
        ledger.record_end_reasons("p", {"i-1": (500, "a later read changes nothing")})
        [row] = ledger.instances(ids=["i-1"])
        assert (row["end_code"], row["end_reason"]) == (300, "No more work")
        assert old.state == "intent" and old.requested == 3 and old.owner is None and old.calls_until is None
        assert old.uncertain == 0
        ledger.calls_may_land_until(old.id, 2e9)
        assert [r.id for r in ledger.on_the_wire("f", "p", now=1e9)] == [old.id]
        ledger.finish(old.id, "failed")
        assert ledger.on_the_wire("f", "p", now=1e9) == []  # a finished launch has nothing on the wire
        assert ledger.record_intent(FIELDS) > old.id  # new ids follow the migrated rows
    finally:
        ledger.close()
    Ledger(backend.where).close()  # opening a current ledger again changes nothing
    assert backend.raw("SELECT COUNT(*) FROM launches") == [(2,)]


def test_a_ledger_from_a_newer_wlcgcloud_is_refused_and_left_as_it_is(backend: Any) -> None:
    _version_1(backend)
    _set_version(backend, SCHEMA_VERSION + 1)
    with pytest.raises(ConfigError, match="Upgrade wlcgcloud") as refused:
        Ledger(backend.where)
    assert f"schema version {SCHEMA_VERSION + 1}" in str(refused.value) and "Nothing was written" in str(refused.value)
    assert backend.raw("SELECT fleet, state FROM launches") == [("f", "intent")]
    with pytest.raises(Exception, match="owner"):  # no migration was applied
        backend.raw("SELECT owner FROM launches")


def test_open_intents_are_adopted_only_once_their_calls_cannot_land(backend: Any) -> None:
    """A launch that may have made instances unseen stays 'intent' until a listing adopts them; a live one never is."""
    ledger = Ledger(backend.where)
    try:
        unseen, live, fresh, other, lister = (ledger.record_intent(FIELDS) for _ in range(5))
        ledger.finish(unseen, "intent", "4 may exist", uncertain=4)
        ledger.calls_may_land_until(live, time.time() + 60)  # another process, still making calls
        ledger.finish(other, "intent", "may exist", uncertain=2)
        backend.raw("UPDATE launches SET fleet = 'g' WHERE id = ?", (other,))
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


def test_instances_keep_their_first_launch_start_and_end_while_newer_facts_win(backend: Any) -> None:
    ledger = Ledger(backend.where)
    try:
        first = ledger.record_intent({**FIELDS, "credential_subject": "/DC=ch/CN=pilot", "credential_fqan": "/atlas"})
        second = ledger.record_intent(FIELDS)
        ledger.record_instances([_vm("1"), _vm("2")], first)
        later = datetime(2026, 11, 2, tzinfo=UTC)
        ledger.record_instances([_vm("1", state="stopped", launched_at=later, flavor=None, name="renamed")], second)
        [one] = ledger.instances(ids=["1"])
        assert (one["launch_id"], one["last_state"], one["name"], one["flavor"]) == (first, "stopped", "renamed", "wn")
        assert one["launched_at"] == "2026-11-01T10:00:00Z" and one["ended_at"] is None
        ledger.mark_ended("p", ["1"])
        ended = ledger.instances(ids=["1"])[0]["ended_at"]
        ledger.record_instances([_vm("1", state="terminated")])
        ledger.mark_ended("p", ["1"], state="unknown")
        assert ledger.instances(ids=["1"])[0]["ended_at"] == ended  # an end, once known, stays
        assert ledger.first_launch("p") == "2026-11-01T10:00:00Z" and ledger.first_launch("q") is None
        assert [r["id"] for r in ledger.instances(fleet="f", profile="p")] == ["1", "2"]
    finally:
        ledger.close()


def test_lifetimes_are_in_epoch_seconds_and_only_those_that_overlap_the_window(backend: Any) -> None:
    ledger = Ledger(backend.where)
    start = datetime(2026, 11, 1, 10, tzinfo=UTC)
    try:
        ledger.record_instances([_vm("a"), _vm("b", launched_at=start + timedelta(days=3))])
        backend.raw("UPDATE instances SET ended_at = '2026-11-01T12:30:00Z' WHERE id = 'a'")
        day = start.replace(hour=0).timestamp()
        rows = ledger.lifetimes("p", day, day + 86400)
        assert [(r[0], r[2], r[3], r[4]) for r in rows] == [("a", start.timestamp(), start.timestamp() + 9000, 4)]
        assert ledger.lifetimes("p", day + 13 * 3600, day + 86400) == []  # ended before the window
        assert ledger.lifetimes("q", 0, 4e9) == []
    finally:
        ledger.close()


def test_many_ids_are_asked_in_chunks(backend: Any) -> None:
    ledger = Ledger(backend.where)
    try:
        ledger.record_instances([_vm(str(n)) for n in range(1203)])
        wanted = [str(n) for n in range(0, 1203, 1)] + ["missing"]
        assert len(ledger.instances(ids=wanted)) == 1203
        assert ledger.status()["instances"] == 1203
    finally:
        ledger.close()


# --------------------------------------------------------------------------- fleet locks


def test_a_fleet_lock_names_its_holder_and_is_reentrant_within_one_ledger(backend: Any) -> None:
    mine, theirs = Ledger(backend.where), Ledger(backend.where)  # two connections: two "machines"
    try:
        with mine.fleet_lock(["f"], "wlcgcloud launch"):
            with mine.fleet_lock(["f", "g"], "wlcgcloud fleet scale"):  # re-entrant for f, new for g
                pass
            assert [lock["fleet"] for lock in theirs.locks()] == ["f"]
            mine.calls_may_land_until(mine.record_intent(FIELDS), time.time() + 30)
            with pytest.raises(FleetLocked) as refused, theirs.fleet_lock(["g", "f"], "wlcgcloud fleet terminate"):
                pass
            text = str(refused.value)
            assert refused.value.exit_code == 2 and "fleet 'f' is being changed by " in text
            assert f"(pid {os.getpid()}, 'wlcgcloud launch') since " in text and "--wait-lock" in text
            assert "with calls on the wire on profile(s) p" in text
            [lock] = theirs.locks()
            assert (lock["pid"], lock["command"], lock["calls_on_the_wire"]) == (os.getpid(), "wlcgcloud launch", 1)
            with theirs.fleet_lock(["g"], "wlcgcloud fleet terminate"):  # g was released, with nothing half-held
                pass
        assert theirs.locks() == []
        with theirs.fleet_lock(["f"], "wlcgcloud launch"):
            pass
    finally:
        mine.close()
        theirs.close()


def test_waiting_for_a_fleet_lock_takes_it_once_it_is_released(backend: Any) -> None:
    holder, waiter = Ledger(backend.where), Ledger(backend.where)
    told: list[str] = []
    try:
        with holder.fleet_lock(["f"], "wlcgcloud launch"):
            threading.Timer(0.6, lambda: holder.backend.unlock("f")).start()  # the holder lets go mid-wait
            began = time.monotonic()
            with waiter.fleet_lock(["f"], "wlcgcloud fleet scale", wait=30, waiting=lambda e: told.append(str(e))):
                assert 0.5 < time.monotonic() - began < 10
                assert [lock["command"] for lock in holder.locks()] == ["wlcgcloud fleet scale"]
        assert len(told) == 1 and "being changed by" in told[0]
        with pytest.raises(FleetLocked), holder.fleet_lock(["x"], "a"), waiter.fleet_lock(["x"], "b", wait=0.3):
            pass
    finally:
        holder.close()
        waiter.close()


HOLD = """
import sys, time
from wlcgcloud.ledger import Ledger
ledger = Ledger(sys.argv[1])
with ledger.fleet_lock(["f"], "wlcgcloud launch"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_killed_holder_leaves_no_lock_behind(backend: Any) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLD, backend.where], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ))  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        ledger = Ledger(backend.where)
        try:
            [lock] = ledger.locks()
            assert lock["pid"] == holder.pid
            with pytest.raises(FleetLocked, match=f"pid {holder.pid}"), ledger.fleet_lock(["f"], "wlcgcloud launch"):
                pass
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            # The server (or the kernel) dropped the lock with the process: it is free at once or within a moment.
            with ledger.fleet_lock(["f"], "wlcgcloud launch", wait=10):
                assert [lock["pid"] for lock in ledger.locks()] == [os.getpid()]
            assert ledger.locks() == []
        finally:
            ledger.close()
    finally:
        holder.kill()
        holder.wait()


# --------------------------------------------------------------------------- status, export, import


def test_export_then_import_into_the_other_backend_twice_changes_nothing_the_second_time(
    backend: Any, tmp_path: Path
) -> None:
    source = Ledger(tmp_path / "source.sqlite")
    try:
        launch = source.record_intent({**FIELDS, "options": {"count": 2}})
        source.finish(launch, "launched")
        source.record_instances([_vm("1"), _vm("2")], launch)
        source.mark_ended("p", ["2"])
        lines = [{"table": "launches", "row": {"id": 99, **{k: v for k, v in FIELDS.items()},
                 "options": "{}", "created": "2026-10-01T00:00:00Z", "state": "launched"}}]  # fmt: skip
        exported = [*lines, *source.export()]
    finally:
        source.close()
    target = Ledger(backend.where)
    try:
        target.record_instances([_vm("1", name="known here")])  # what the target knows stays
        first = target.absorb(exported)
        assert first == {"launches_added": 2, "launches_known": 0, "instances": 2}
        again = target.absorb(exported)
        assert again == {"launches_added": 0, "launches_known": 2, "instances": 2}
        status = target.status()
        assert (status["backend"], status["launches"], status["instances"], status["instances_not_ended"]) == (
            backend.kind, 2, 2, 1)  # fmt: skip
        assert status["oldest_record"] == "2026-10-01T00:00:00Z" and status["schema_version"] == SCHEMA_VERSION
        rows = {r["id"]: r for r in target.instances()}
        assert rows["1"]["name"] == "known here" and rows["2"]["ended_at"] is not None
        [copied] = [r for r in target.launches() if r.options == {"count": 2}]
        assert rows["2"]["launch_id"] == copied.id
    finally:
        target.close()


def test_an_export_file_is_read_with_bounds_and_checked_row_by_row(tmp_path: Path) -> None:
    import io

    def read(text: bytes) -> list[Any]:
        return list(read_lines(io.BytesIO(text), "in.jsonl"))

    assert read(b'{"wlcgcloud_ledger": 1}\n\n') == []
    for bad, said in [
        (b"[1]\n", "in.jsonl:1: not a JSON object"),
        (b"{" * 100000 + b"\n", "a line longer than"),
        (b'{"table": "users", "row": {}}\n', "expected"),
        (b'{"table": "instances", "row": {"profile": "p", "id": "1", "provider": "x", "last_seen": "t", "x": 1}}\n',
         "unknown column(s) x"),
        (b'{"table": "instances", "row": {"profile": "p", "id": "1", "provider": "x", "last_seen": {"a": 1}}}\n',
         "not a plain value"),
        (b'{"wlcgcloud_ledger": 999}\n', "exported by a newer wlcgcloud"),
        (b'{"table": "launches", "row": {"id": 1}}\n', "a row of launches with no fleet"),
    ]:  # fmt: skip
        with pytest.raises(Exception, match=said.replace("(", r"\(").replace(")", r"\)")):
            read(bad)


@pytest.mark.parametrize(
    "by",
    [["fleet", "day"], ["day"], ["profile"], ["flavor", "image", "day"], ["instance"], ["day", "fleet", "instance"]],
)
def test_usage_summed_in_the_ledger_equals_usage_summed_from_each_lifetime(
    backend: Any, by: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """ledger.sums (one SQL scan into buckets, split into days in Python) against the intervals path, on
    lifetimes that cross midnights and the window's edges, end exactly at midnight, run for weeks, have
    no recorded end (then they ran until last seen) or no vCPUs, and an instance the cloud still shows.
    Grouped by instance, the command takes each lifetime clipped in SQL (`sums.lifetimes`) instead."""
    import random
    from datetime import timedelta

    from wlcgcloud import usage
    from wlcgcloud.ledger import sums

    rng = random.Random(5)
    since, until = datetime(2026, 10, 1, 6, tzinfo=UTC), datetime(2026, 11, 1, tzinfo=UTC)
    now = datetime(2026, 10, 29, 12, 30, 15, 250000, tzinfo=UTC)  # the window reaches past now
    rows = []
    for n in range(600):
        start = datetime(2026, 9, 25, tzinfo=UTC) + timedelta(seconds=int(rng.uniform(0, 40 * 86400)))
        if n % 9 == 0:  # it ends exactly at a midnight
            end = datetime.combine(start.date() + timedelta(days=rng.randint(1, 3)), datetime.min.time(), UTC)
        else:
            end = start + timedelta(seconds=int(rng.choice((rng.uniform(60, 40 * 3600), rng.uniform(0, 20 * 86400)))))
        rows.append(SimpleNamespace(profile="aws", id=f"i-{n}", fleet=f"f{n % 5}", provider="ec2", name=f"vm{n}",
                                    flavor=rng.choice(("m5.large", "c5.xlarge", None)), image=f"img-{n % 3}",
                                    vcpus=None if n % 17 == 0 else rng.choice((2, 4)), memory_mb=8192,
                                    tags={"wlcg:experiment": "atlas"}, launched_at=start, state="running"))  # fmt: skip
        ends = None if n % 11 == 0 else end
        last_seen = end
        rows[-1].ends, rows[-1].last_seen = ends, last_seen
    ledger = Ledger(backend.where)
    try:
        ledger.record_instances(rows)
        for r in rows:  # the ends and last sightings, as the ledger would have learnt them
            # Half as a v8 ledger writes them (text and epoch seconds), half as rows written before v8 (text only).
            epochs = (
                [None] * 3
                if int(r.id[2:]) % 2
                else [r.launched_at.timestamp(), r.ends.timestamp() if r.ends else None, r.last_seen.timestamp()]
            )
            backend.raw("UPDATE instances SET ended_at = ?, last_seen = ?, launched_epoch = ?, ended_epoch = ?,"
                        " seen_epoch = ? WHERE id = ?",
                        (stamp(r.ends) if r.ends else None, stamp(r.last_seen), *epochs, r.id))  # fmt: skip
        seen = {"i-3"}  # the cloud still shows this one: its own interval counts, not the ledger's
        lo, hi = since.timestamp(), min(until, now).timestamp()
        groups = [g for g in by if g != "day"]
        shown = ledger.instances(profile="aws", ids=seen)
        buckets = sums.without(sums.buckets(ledger, "aws", lo, hi, groups), shown, lo, hi, groups)
        intervals = usage._ledger_intervals("aws", ledger, seen, since, until)
        assert (buckets and len(buckets) < len(intervals)) or by == ["instance"]
        fast = usage.aggregate([], since, until, by, now, buckets)
        for parts in (1, 3):  # SQLite scans in parts at once (one per core), their buckets added up
            monkeypatch.setattr(sums, "PARTS", parts)
            more = sums.without(sums.buckets(ledger, "aws", lo, hi, groups), shown, lo, hi, groups)
            again = usage.aggregate([], since, until, by, now, more)
            assert [r["instances"] for r in again[0]] == [r["instances"] for r in fast[0]], parts
            assert abs(again[1]["core_hours"] - fast[1]["core_hours"]) < 1e-6 * fast[1]["core_hours"], parts
        slow = usage.aggregate(intervals, since, until, by, now)
        if "instance" in by:
            for parts in (1, 2):
                monkeypatch.setattr(sums, "PARTS", parts)
                at = groups.index("instance")
                clipped = [life for life in sums.lifetimes(ledger, "aws", lo, hi, groups) if life[at] not in seen]
                each = usage.aggregate([], since, until, by, now, lifetimes=clipped)
                assert len(each[0]) == len(slow[0]) and each[1]["instances"] == slow[1]["instances"]
                assert [list(r.items())[: len(by)] for r in each[0]] == [list(r.items())[: len(by)] for r in slow[0]]
                for a, b in [*zip(each[0], slow[0], strict=True), (each[1], slow[1])]:
                    assert a.keys() == b.keys() and a["instances"] == b["instances"]
                    assert all(abs(a[k] - b[k]) < 1e-9 * max(1.0, b[k]) for k in ("wall_hours", "core_hours"))
            if "day" not in by:  # -o json makes these rows as it writes them: the same rows, with the clouds' own
                twice = clipped[len(clipped) // 2][0]  # an instance the ledger has, that a cloud reports too
                cloud = [usage.Interval("aws", "ec2", "i-3", lo + 60, lo + 7200, 4, 8192, fleet="f3"),
                         usage.Interval("other", "ec2", twice, lo, lo + 3600, 2, 4096),
                         usage.Interval("aws", "ec2", "zz", lo, None, 1, 1024)]  # fmt: skip
                listed = usage.aggregate(cloud, since, until, by, now, lifetimes=list(clipped))
                assert [life[0] for life in clipped] == sorted(life[0] for life in clipped)  # in the rows' order
                halves = [iter(clipped[::2]), iter(clipped[1::2])]  # two profiles' streams, each in order
                made, total = usage.streamed(cloud, since, until, by, now, halves)
                streamed = list(made)  # the total is summed as the rows are made
                assert [list(r.items())[: len(by)] for r in streamed] == [
                    list(r.items())[: len(by)] for r in listed[0]]  # fmt: skip
                for a, b in [*zip(streamed, listed[0], strict=True), (total, listed[1])]:
                    assert a.keys() == b.keys() and a["instances"] == b["instances"]
                    assert all(abs(a[k] - b[k]) < 1e-9 * max(1.0, b[k]) for k in ("wall_hours", "memory_gb_hours"))
                assert [r["instances"] for r in streamed if r["instance"] == twice] == [2]
                made, total = usage.streamed([], since, until, by, now, [iter(clipped)])  # one profile, no cloud
                alone = usage.aggregate([], since, until, by, now, lifetimes=list(clipped))
                assert list(made) == alone[0] and total.keys() == alone[1].keys()
                assert total["instances"] == alone[1]["instances"] == len(clipped)
                assert all(abs(total[k] - alone[1][k]) < 1e-9 * alone[1][k] for k in ("wall_hours", "core_hours"))
        assert [r | {k: 0 for k in ("wall_hours", "core_hours", "memory_gb_hours")} for r in fast[0]] == [
            r | {k: 0 for k in ("wall_hours", "core_hours", "memory_gb_hours")} for r in slow[0]]  # fmt: skip
        for a, b in [*zip(fast[0], slow[0], strict=True), (fast[1], slow[1])]:
            for k in ("wall_hours", "core_hours", "memory_gb_hours"):
                assert abs(a[k] - b[k]) < 1e-6 * max(1.0, b[k]), (a, b, k)
        assert fast[1]["instances"] == slow[1]["instances"] > 400
        plain = sum(max(0.0, min((r.ends or r.last_seen).timestamp(), hi) - max(r.launched_at.timestamp(), lo))
                    for r in rows if r.id not in seen)  # fmt: skip
        assert abs(fast[1]["wall_hours"] - plain / 3600) < 1e-6 * fast[1]["wall_hours"]
    finally:
        ledger.close()


def test_every_writer_keeps_an_instances_epoch_seconds_with_its_text(backend: Any) -> None:
    """v8: launched_epoch, ended_epoch and seen_epoch say what launched_at, ended_at and last_seen say."""
    from contextlib import contextmanager

    from wlcgcloud.times import use_clock

    @contextmanager
    def at(moment: datetime) -> Iterator[None]:
        use_clock(moment.timestamp)
        try:
            yield
        finally:
            use_clock(None)

    def agree() -> list[tuple[Any, ...]]:
        got = backend.raw("SELECT id, launched_at, launched_epoch, ended_at, ended_epoch, last_seen, seen_epoch"
                          " FROM instances ORDER BY id")  # fmt: skip
        for _, *pairs in got:
            for text, epoch in zip(pairs[::2], pairs[1::2], strict=True):
                assert (text is None) == (epoch is None), got
                assert text is None or datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() == epoch, got
        return got

    ledger = Ledger(backend.where)
    try:
        with at(datetime(2026, 11, 5, 10, 0, 7, 900000, tzinfo=UTC)):
            ledger.record_instances([_vm("i-1"), _vm("i-2")])
        assert [r[4] for r in agree()] == [None, None]
        with at(datetime(2026, 11, 5, 11, 0, 0, 500000, tzinfo=UTC)):
            ledger.mark_ended("p", ["i-1"])
            ledger.record_instances([_vm("i-2", "terminated")])
        with at(datetime(2026, 11, 6, tzinfo=UTC)):  # later sightings change no end
            ledger.mark_ended("p", ["i-1"])
            ledger.record_instances([_vm("i-1", "terminated"), _vm("i-2", "terminated")])
        ends = [r[3] for r in agree()]
        assert ends == ["2026-11-05T11:00:00Z", "2026-11-05T11:00:00Z"]
        exported = list(ledger.export())
    finally:
        ledger.close()
    other = Ledger(backend.where)  # an import merges into the same rows: still in agreement
    try:
        other.absorb([{**r, "row": {**r["row"], "ended_at": "2027-01-01T00:00:00Z", "ended_epoch": 1.0}}
                      if r["table"] == "instances" else r for r in exported])  # fmt: skip
        assert [r[3] for r in agree()] == ends
    finally:
        other.close()


def test_apel_records_made_in_the_ledger_equal_those_made_from_each_interval(backend: Any) -> None:
    """A record's text is one SQL expression (`apel._record_sql`), made where the pieces are: over the
    ledger's lifetimes cut at the months in SQL (`sums.months`, a month of a big fleet) and over the clouds'
    intervals merged in Python (`sums.pieces`). Both give the same records, in order, for lifetimes across
    month ends and the window's edges, names and images empty or missing or with line ends in them, the
    credentials their launches forwarded, rows written before v8, and an instance the cloud still shows."""
    import random

    from wlcgcloud import apel, usage
    from wlcgcloud.config import Profile
    from wlcgcloud.ledger import sums

    rng = random.Random(11)
    since, until = datetime(2026, 9, 28, 12, tzinfo=UTC), datetime(2026, 11, 3, tzinfo=UTC)
    now = datetime(2026, 11, 20, tzinfo=UTC)
    ledger = Ledger(backend.where)
    try:
        launches = [None, ledger.record_intent({**FIELDS, "credential_subject": "/DC=ch/CN=pilot\nFQAN: /forged",
                                                "credential_fqan": "/atlas/Role=pilot"}),
                    ledger.record_intent({**FIELDS, "credential_subject": "/DC=ch/CN=other"}),
                    ledger.record_intent({**FIELDS, "credential_fqan": "/cms"})]  # fmt: skip
        rows = []
        for n in range(240):
            start = datetime(2026, 9, 20, tzinfo=UTC) + timedelta(seconds=int(rng.uniform(0, 50 * 86400)))
            end = start + timedelta(seconds=int(rng.uniform(60, 20 * 86400)))
            rows.append(SimpleNamespace(
                profile="aws", id=f"i-{n:04d}", fleet="f", provider=("ec2", "opennebula", "nimbus")[n % 3],
                name=(None, "", f"vm{n}", "two\nlines\r", "VMUUID: x")[n % 5], flavor=("m5.large", None)[n % 2],
                image=(f"img-{n % 4}", None, "")[n % 3], vcpus=(None, 0, 4)[n % 3], memory_mb=(8192, None)[n % 2],
                tags={}, launched_at=start, state="running", end=end))  # fmt: skip
        for r in rows:
            ledger.record_instances([r], launches[int(r.id[2:]) % 4])
        for r in rows:  # half as a v8 ledger writes them (text and epoch seconds), half as older rows (text only)
            epochs = [None] * 3 if int(r.id[2:]) % 2 else [r.launched_at.timestamp(), r.end.timestamp(), None]
            backend.raw("UPDATE instances SET ended_at = ?, last_seen = ?, launched_epoch = ?, ended_epoch = ?,"
                        " seen_epoch = ? WHERE id = ?", (stamp(r.end), stamp(r.end), *epochs, r.id))  # fmt: skip
        months = apel.spans(since, until, now)
        assert [m[2] for m in months] == ["2026-09", "2026-10", "2026-11"]
        profile = Profile("aws", "ec2", {"site_name": "SITE\nX", "compute_service": "svc",
                                         "benchmarks": {"type": "HEPscore23", "m5.large": 41.5}})  # fmt: skip
        record, params = apel._record_sql(ledger.backend, profile, "9.9")
        seen = {"i-0007"}  # the cloud still shows it: its own intervals count instead
        made = [piece for piece in sums.months(ledger, "aws", months, record, params) if piece[0] not in seen]
        intervals = usage._ledger_intervals("aws", ledger, seen, since, until)
        each = sums.pieces(ledger, "aws", apel._cloud_pieces(intervals, months)["aws"], record, params)
        assert len(made) > 200 and made == each
        assert [piece[:2] for piece in made] == sorted(piece[:2] for piece in made)
        by_id = {r.id: r for r in rows}
        for ident, month, text in made:
            assert text.endswith("\n%%\n") and text.count("\n") == len(text.splitlines())  # only \n ends lines
            fields = dict(line.split(": ", 1) for line in text.splitlines()[:-1])
            assert len(fields) == len(text.splitlines()) - 1  # no key twice: no value made lines of its own
            assert [k for k in apel.KEYS if k in fields] == list(fields)  # in the order of v0.4's keys
            r = by_id[ident]
            lo, hi = next(span[:2] for span in months if span[0] == month)
            wall = min(r.end.timestamp(), hi) - max(r.launched_at.timestamp(), lo)
            assert fields["VMUUID"] == ident and fields["SiteName"] == "SITE X" and fields["Status"] == "completed"
            assert fields["WallDuration"] == str(int(wall)) and fields["EndTime"] == str(int(r.end.timestamp()))
            assert fields.get("CpuCount") == ("4" if r.vcpus else None)
            assert fields.get("MachineName") == (r.name.replace("\n", " ").replace("\r", " ") if r.name else None)
            assert ("Benchmark" in fields) == (r.flavor == "m5.large")
            launch = int(ident[2:]) % 4
            subjects = {1: "/DC=ch/CN=pilot FQAN: /forged", 2: "/DC=ch/CN=other"}
            assert fields.get("GlobalUserName") == subjects.get(launch)
            assert fields.get("FQAN") == ("/atlas/Role=pilot" if launch == 1 else None)  # none without a subject
            assert fields["CloudType"] == {"ec2": "wlcgcloud/9.9 (EC2)", "opennebula": "wlcgcloud/9.9 (OpenNebula)",
                                           "nimbus": "wlcgcloud/9.9 (nimbus)"}[r.provider]  # fmt: skip
        # An instance of several intervals (OpenNebula's history records) is one record a month: their sums.
        lo = datetime(2026, 10, 5, tzinfo=UTC).timestamp()
        one = [usage.Interval("aws", "opennebula", "7", lo + 7200, lo + 9000, 2, 2048, name="a"),
               usage.Interval("aws", "opennebula", "7", lo, lo + 3600, 2, 2048, name="b"),
               usage.Interval("aws", "opennebula", "7", lo + 86400, None, 2, 2048)]  # fmt: skip
        october, november = sums.pieces(ledger, "aws", apel._cloud_pieces(one, months)["aws"], record, params)
        fields = dict(line.split(": ", 1) for line in october[2].splitlines()[:-1])
        assert fields["Status"] == "started" and "EndTime" not in fields and fields["MachineName"] == "a"
        running = months[1][1] - (lo + 86400)  # the third, still running, to the month's end
        assert fields["StartTime"] == str(int(lo)) and fields["WallDuration"] == str(int(1800 + 3600 + running))
        fields = dict(line.split(": ", 1) for line in november[2].splitlines()[:-1])  # on, to the window's end
        assert fields["StartTime"] == str(int(lo + 86400))
        assert fields["WallDuration"] == str(int(months[2][1] - months[2][0]))
    finally:
        ledger.close()


def test_a_streamed_query_is_read_as_it_goes_on_a_connection_of_its_own(backend: Any) -> None:
    """`query_tuples(streamed=True)` (a month of APEL pieces, a million lifetimes by instance) holds no list:
    its rows come as they are read, on a connection of its own, so the ledger's own connection takes other
    statements meanwhile and two streams are read in turn; a stream sees the ledger as its query began."""
    ledger = Ledger(backend.where)
    try:
        ledger.record_instances([_vm(f"{n:04d}") for n in range(2500)])
        query = "SELECT id FROM instances WHERE profile = ? ORDER BY id"
        first = ledger.query_tuples(query, ["p"], streamed=True)
        assert not isinstance(first, list)
        rows = iter(first)
        assert next(rows) == ("0000",)
        ledger.record_instances([_vm("9999")])  # the ledger's connection is free while the stream is half read
        second = list(ledger.query_tuples(query, ["p"], streamed=True))
        assert len(second) == 2501 and second[-1] == ("9999",)
        assert [r[0] for r in rows] == [f"{n:04d}" for n in range(1, 2500)]  # as the query began, in order
    finally:
        ledger.close()
