"""`wlcgcloud ledger status|locks|export|import|move` and `--wait-lock`, on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from wlcgcloud.ledger import FleetLocked, Ledger
from wlcgcloud.ledger.schema import SCHEMA_VERSION

from conftest import Run, World

FIELDS = {"fleet": "f", "profile": "p", "provider": "ec2", "request_token": "t", "image": "i",
          "cloud_image": "ami-1", "endorsement": "none", "flavor": "m5.large", "requested": 2}  # fmt: skip


def _vm(ident: str) -> SimpleNamespace:
    from datetime import UTC, datetime

    return SimpleNamespace(profile="p", id=ident, fleet="f", provider="ec2", name=ident, flavor="m5.large", vcpus=2,
                           memory_mb=8192, image="ami-1", tags={}, launched_at=datetime(2026, 11, 1, tzinfo=UTC),
                           state="running")  # fmt: skip


@pytest.fixture(params=["sqlite", "postgresql"])
def shared(request: pytest.FixtureRequest, world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The ledger the commands use, named by WLCGCLOUD_LEDGER: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        where = str(world.root / "team" / "ledger.sqlite")
    else:
        database = request.getfixturevalue("pg_database")
        monkeypatch.setenv("WLCGCLOUD_LEDGER_PASSWORD", database.password)
        where = database.url
    monkeypatch.setenv("WLCGCLOUD_LEDGER", where)
    yield where


def test_status_says_which_ledger_and_what_it_holds(run: Run, shared: str) -> None:
    ledger = Ledger(shared)
    try:
        ledger.record_instances([_vm("i-1"), _vm("i-2")], ledger.record_intent(FIELDS))
    finally:
        ledger.close()
    result = run("ledger", "status", "-o", "json")
    assert result.code == 0, result.err
    data = result.json()
    assert data["backend"] == ("postgresql" if shared.startswith("postgresql") else "sqlite")
    assert data["where"] == Ledger.shown(shared) and "?" not in data["where"]  # no query, so no sslrootcert path
    assert (data["launches"], data["instances"], data["instances_not_ended"], data["schema_version"]) == (
        1,
        2,
        2,
        SCHEMA_VERSION,
    )
    table = run("ledger", "status")
    assert table.code == 0 and "schema_version" in table.out and data["backend"] in table.out


def test_locks_lists_the_holder_and_wait_lock_waits_for_it(run: Run, shared: str) -> None:
    other = Ledger(shared)  # another process, or another machine
    try:
        with other.fleet_lock(["atlas-1"], "wlcgcloud fleet scale"):
            held = run("ledger", "locks", "-o", "json")
            assert held.code == 0, held.err
            [lock] = held.json()
            assert (lock["fleet"], lock["pid"], lock["command"]) == ("atlas-1", os.getpid(), "wlcgcloud fleet scale")
            assert {"user", "host", "since", "calls_on_the_wire", "calls_until"} <= set(lock)
            table = run("ledger", "locks")
            assert "atlas-1" in table.out and "wlcgcloud fleet scale" in table.out
        assert run("ledger", "locks", "-o", "json").json() == []
        assert "No fleet is locked." in run("ledger", "locks").err
    finally:
        other.close()


def test_a_changing_command_refuses_while_another_holds_the_fleet_and_waits_with_wait_lock(
    run: Run, shared: str, world: World
) -> None:
    world.config.parent.mkdir(parents=True, exist_ok=True)
    world.config.write_text('[profiles.one]\nprovider = "opennebula"\nendpoint = "http://127.0.0.1:9/RPC2"\n')
    other = Ledger(shared)
    try:
        with other.fleet_lock(["atlas-1"], "wlcgcloud launch"):
            refused = run("fleet", "terminate", "atlas-1", "--yes")
            assert refused.code == 2, refused.err
            assert "fleet 'atlas-1' is being changed by " in refused.err and f"pid {os.getpid()}" in refused.err
            assert "'wlcgcloud launch'" in refused.err and "--wait-lock" in refused.err
            waited = run("--wait-lock", "1s", "fleet", "terminate", "atlas-1", "--yes")
            assert waited.code == 2 and "waiting up to 1 s (--wait-lock)" in waited.err, waited.err
            bad = run("fleet", "terminate", "atlas-1", "--yes", "--wait-lock", "soon")
            assert bad.code == 2 and "--wait-lock" in bad.err and "not a duration" in bad.err
    finally:
        other.close()


def test_export_then_import_twice_merges_once(run: Run, shared: str, world: World) -> None:
    source = Ledger(world.root / "old.sqlite")
    try:
        source.record_instances([_vm("i-1")], source.record_intent({**FIELDS, "options": {"count": 2}}))
    finally:
        source.close()
    dump = world.root / "dump.jsonl"
    os.environ["WLCGCLOUD_LEDGER"] = str(world.root / "old.sqlite")  # put back by monkeypatch afterwards
    exported = run("ledger", "export", str(dump))
    assert exported.code == 0 and "Wrote 2 record(s)" in exported.err, exported.err
    assert dump.stat().st_mode & 0o077 == 0
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert lines[0]["wlcgcloud_ledger"] == SCHEMA_VERSION and [r["table"] for r in lines[1:]] == [
        "launches",
        "instances",
    ]
    os.environ["WLCGCLOUD_LEDGER"] = shared
    first = run("ledger", "import", str(dump), "-o", "json")
    assert first.code == 0 and first.json() == {"launches_added": 1, "launches_known": 0, "instances": 1}, first.err
    second = run("ledger", "import", str(dump), "-o", "json")
    assert second.json() == {"launches_added": 0, "launches_known": 1, "instances": 1}
    # A bad line half-way through: exit 2 naming it, and nothing of the file is imported.
    broken = world.root / "broken.jsonl"
    row = {"table": "launches", "row": {**lines[1]["row"], "id": 7, "request_token": "other"}}
    broken.write_text(json.dumps(row) + "\n" + '{"table": "instances", "row": {"id": 3}}\n')
    refused = run("ledger", "import", str(broken))
    assert refused.code == 2 and "broken.jsonl:2: a row of instances with no profile" in refused.err
    assert run("ledger", "status", "-o", "json").json()["launches"] == 1


def test_move_copies_into_the_new_ledger_sets_the_config_and_is_safe_to_run_again(
    run: Run, world: World, pg_database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WLCGCLOUD_LEDGER_PASSWORD", pg_database.password)
    old = Ledger(world.state / "ledger.sqlite")  # the default: SQLite in the state directory
    try:
        old.record_instances([_vm("i-1"), _vm("i-2")], old.record_intent(FIELDS))
    finally:
        old.close()
    world.config.parent.mkdir(parents=True, exist_ok=True)
    world.config.write_text('# ours\ndefault_profile = "a"\n\n[profiles.a]\nprovider = "ec2"\nregion = "eu-west-1"\n')
    dry = run("ledger", "move", "--to", pg_database.url, "--dry-run", "-o", "json")
    assert dry.code == 0 and dry.json()["instances"] == 2 and "ledger =" not in world.config.read_text()
    moved = run("ledger", "move", "--to", pg_database.url, "-o", "json")
    assert moved.code == 0, moved.err
    assert (moved.json()["launches_added"], moved.json()["instances"]) == (1, 2)
    text = world.config.read_text()
    assert f'ledger = "{pg_database.url}"' in text and text.startswith("# ours") and "[profiles.a]" in text
    assert (world.state / "ledger.sqlite").exists() and "is kept" in moved.err
    status = run("ledger", "status", "-o", "json").json()
    assert (status["backend"], status["instances"]) == ("postgresql", 2)
    # Run again (or after writing `ledger` by hand): the file of this machine is what there is to move.
    again = run("ledger", "move", "--to", pg_database.url, "-o", "json")
    assert again.code == 0 and (again.json()["launches_added"], again.json()["launches_known"]) == (0, 1), again.err
    assert again.json()["from"] == str(world.state / "ledger.sqlite")
    (world.state / "ledger.sqlite").rename(world.root / "elsewhere.sqlite")
    nothing = run("ledger", "move", "--to", pg_database.url)
    assert nothing.code == 0 and "nothing to move" in nothing.err
    rerun = run("ledger", "move", "--from", str(world.root / "elsewhere.sqlite"), "--to", pg_database.url, "-o", "json")
    assert rerun.code == 0 and (rerun.json()["launches_added"], rerun.json()["launches_known"]) == (0, 1)
    missing = run("ledger", "move", "--from", str(world.root / "nothere.sqlite"), "--to", pg_database.url)
    assert missing.code == 2 and "no such SQLite ledger file" in missing.err
    assert not (world.root / "nothere.sqlite").exists()
    same = run(
        "ledger", "move", "--from", str(world.root / "elsewhere.sqlite"), "--to", str(world.root / "elsewhere.sqlite")
    )
    assert same.code == 2 and "the same ledger" in same.err
    secret = run("ledger", "move", "--to", pg_database.url.replace("@", ":hunter2@", 1))
    assert secret.code == 2 and "never sits in the config" in secret.err and "hunter2" not in secret.err


def test_import_reads_stdin(world: World, tmp_path: Path) -> None:
    line = json.dumps({"table": "instances", "row": {"profile": "p", "id": "i-9", "provider": "ec2",
                                                     "last_seen": "2026-11-01T00:00:00Z"}})  # fmt: skip
    env = {**world.env(), "WLCGCLOUD_LEDGER": str(tmp_path / "l.sqlite")}
    done = subprocess.run([sys.executable, "-m", "wlcgcloud", "ledger", "import", "-", "-o", "json"], input=line,
                          env=env, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0 and json.loads(done.stdout)["instances"] == 1, done.stderr


def test_a_ledger_setting_that_is_not_a_string_or_holds_a_password_is_a_config_error(run: Run, world: World) -> None:
    for text, said in [
        ("ledger = 5\n", "expected a non-empty string"),
        ('ledger = "postgresql://ops:s3cret@db/wlcg"\n', "never sits in the config"),
        ('ledger = "postgresql://ops@db/wlcg?password=s3cret"\n', "never sits in the config"),
        ('ledgr = "x"\n', "did you mean 'ledger'"),
        ('ledger = "PostgreSQL://ops@db/wlcg"\n', "neither a postgresql:// URL (lower case"),
        ('ledger = "host=db user=ops password=s3cret"\n', "never sits in the config"),
        ('ledger = "host=db user=ops"\n', "neither a postgresql:// URL"),
        ('ledger = "team/ledger.sqlite"\n', "a relative path"),
        (
            '[profiles.a]\nprovider = "ec2"\nregion = "eu-west-1"\nledger = "postgresql://ops@db/wlcg"\n',
            "'ledger' is a top-level key, not a profile's",
        ),
    ]:
        world.config.parent.mkdir(parents=True, exist_ok=True)
        world.config.write_text(text)
        result = run("ledger", "status")
        assert result.code == 3 and said in result.err and "s3cret" not in result.err, result.err
        assert world.config.read_text() == text  # a broken config is never rewritten


def test_lock_refusal_is_a_usage_error() -> None:
    assert FleetLocked("f", None, "", "x").exit_code == 2


def test_the_password_kept_by_ledger_password_is_used_from_the_keyring_or_its_file(
    run: Run, world: World, pg_database: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WLCGCLOUD_LEDGER", pg_database.url)
    none = run("ledger", "status")
    assert none.code == 3 and "asks for a password, and none was found" in none.err, none.err
    kept = run("ledger", "password", "--stdin", input=pg_database.password + "\n")
    assert kept.code == 0 and world.secrets() == {"wlcgcloud/@ledger": pg_database.password}, kept.err
    assert run("ledger", "status", "-o", "json").json()["backend"] == "postgresql"
    wrong = run("ledger", "password", "--stdin", input="not-it\n")
    assert wrong.code == 0
    refused = run("ledger", "status")
    assert refused.code == 4 and "refused the password (from the keyring;" in refused.err
    assert "not-it" not in refused.err
    assert run("ledger", "password", "--forget").code == 0 and world.secrets() == {}
    file = world.root / "ledger.password"
    kept = run("ledger", "password", "--stdin", "--file", str(file), input=pg_database.password + "\n")
    assert kept.code == 0 and file.stat().st_mode & 0o777 == 0o600, kept.err
    assert f'ledger_password_file = "{file}"' in world.config.read_text()
    assert run("ledger", "status", "-o", "json").json()["backend"] == "postgresql"
    file.chmod(0o644)
    loose = run("ledger", "status")
    assert loose.code == 3 and "readable by others" in loose.err


@pytest.mark.usefixtures("no_keyring")
def test_ledger_password_without_a_keyring_says_what_works_instead(run: Run) -> None:
    result = run("ledger", "password", "--stdin", input="pw\n")
    assert result.code == 3 and "no system keyring" in result.err and "--file FILE" in result.err
    assert "pw" not in result.out
    forgot = run("ledger", "password", "--forget")
    assert forgot.code == 0 and "The keyring holds none." in forgot.err


def test_a_misspelt_or_relative_wlcgcloud_ledger_is_refused_not_made_into_a_new_file(
    run: Run, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(world.root)
    for value, said in [("ledger.sqlite", "a relative path"), ("Postgres://ops@db/x", "neither a postgresql://")]:
        monkeypatch.setenv("WLCGCLOUD_LEDGER", value)
        result = run("ledger", "status")
        assert result.code == 3 and f"WLCGCLOUD_LEDGER: '{value}'" in result.err and said in result.err, result.err
    assert not (world.root / "ledger.sqlite").exists() and not (world.root / "Postgres:").exists()
