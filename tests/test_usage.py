"""`usage`: exact core-hours on every peer, split per day across midnight and a month boundary; APEL v0.4."""

from __future__ import annotations

import calendar
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from peers.opennebula import OpenNebulaPeer

from wlcgcloud.ledger import Ledger

from conftest import OpenStackPeer, Run, World, ec2_profile, one_profile, openstack_profile, write_profiles

HALLOWEEN_22H = calendar.timegm((2026, 10, 31, 22, 0, 0))  # two hours before both a midnight and a month's end
TOLERANCE_H = 0.01  # the peer's clock is moved between calls: a few seconds of slack


def near(a: float, b: float, tolerance: float = TOLERANCE_H) -> bool:
    return abs(a - b) <= tolerance


# --------------------------------------------------------------------------- an APEL v0.4 parser, from the spec

APEL_V04 = {
    "VMUUID": "str", "SiteName": "str", "CloudComputeService": "str", "MachineName": "str", "LocalUserId": "str",
    "LocalGroupId": "str", "GlobalUserName": "str", "FQAN": "str", "Status": "status", "StartTime": "int",
    "EndTime": "int", "SuspendDuration": "int", "WallDuration": "int", "CpuDuration": "int", "CpuCount": "decimal",
    "NetworkType": "str", "NetworkInbound": "int", "NetworkOutbound": "int", "PublicIPCount": "int", "Memory": "int",
    "Disk": "int", "BenchmarkType": "str", "Benchmark": "decimal", "StorageRecordId": "str", "ImageId": "str",
    "CloudType": "str",
}  # fmt: skip
MANDATORY = ("VMUUID", "SiteName")


def parse_apel(text: str) -> list[list[dict[str, str]]]:
    """Messages of records; raises AssertionError on anything the v0.4 rules do not allow."""
    messages: list[list[dict[str, str]]] = []
    record: dict[str, str] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if line == "APEL-cloud-message: v0.4":
            assert record is None, f"line {number}: a header inside a record"
            messages.append([])
            continue
        assert messages, f"line {number}: no header before the first record"
        if line == "%%":
            assert record, f"line {number}: an empty record"
            for key in MANDATORY:
                assert record.get(key), f"line {number}: record without {key}"
            messages[-1].append(record)
            record = None
            continue
        key, sep, value = line.partition(": ")
        assert sep, f"line {number}: not 'Key: Value'"
        assert key in APEL_V04, f"line {number}: {key} is not a v0.4 key"
        record = record or {}
        assert key not in record, f"line {number}: {key} twice"
        kind = APEL_V04[key]
        if kind == "int":
            assert re.fullmatch(r"\d+", value), f"line {number}: {key} is not an integer: {value}"
        elif kind == "decimal":
            assert re.fullmatch(r"\d+(\.\d+)?", value), f"line {number}: {key} is not a decimal: {value}"
        elif kind == "status":
            assert value in ("completed", "started", "suspended"), f"line {number}: Status {value}"
        record[key] = value
    assert record is None, "the last record has no %%"
    return messages


# --------------------------------------------------------------------------- OpenNebula: history through the peer


@pytest.fixture
def one_history(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A VM (2 vCPUs, 4 GiB) that ran from 22:00 on 31 October to 02:00 on 1 November, by the peer's clock."""
    with OpenNebulaPeer(deploy_delay=0) as peer:
        write_profiles(world, {"one": one_profile(peer, vm_template="atlas-wn", experiment="atlas",  # type: ignore[arg-type]
                                                  site_name="LAL-TEST", publish_apel=True)})  # fmt: skip
        monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
        yield {"peer": peer}


def test_opennebula_core_hours_split_across_midnight_and_month(run: Run, world: World, one_history: Any) -> None:
    peer = one_history["peer"]
    peer.set_time_offset(HALLOWEEN_22H - time.time())
    made = run("launch", "0", "--allow-unendorsed", "--credential", "none", "-p", "one", "--fleet", "night",
               "-o", "json")  # fmt: skip
    assert made.code == 0, made.err
    [vm] = made.json()["instances"]  # type: ignore[index,call-overload]
    peer.set_time_offset(HALLOWEEN_22H + 4 * 3600 - time.time())
    assert run("instance", "terminate", vm["id"], "-p", "one", "--yes").code == 0
    peer.set_time_offset(0)
    result = run("usage", "--since", "2026-10-31", "--until", "2026-11-01", "--by", "fleet,day", "-o", "json")
    assert result.code == 0, result.err
    data = result.json()
    assert isinstance(data, dict)
    assert data["since"] == "2026-10-31T00:00:00Z" and data["until"] == "2026-11-02T00:00:00Z"  # --until a day: its end
    days = {r["day"]: r for r in data["rows"]}
    assert set(days) == {"2026-10-31", "2026-11-01"}
    for day in days.values():
        assert day["fleet"] == "night" and day["instances"] == 1
        assert near(day["wall_hours"], 2.0) and near(day["core_hours"], 4.0) and near(day["memory_gb_hours"], 8.0)
    assert near(data["total"]["core_hours"], 8.0) and data["total"]["instances"] == 1
    # The window's edge clips: from 1 November only, the two hours after midnight count.
    november = run("usage", "--since", "2026-11-01", "--until", "2026-11-30", "--by", "profile", "-o", "json")
    assert near(november.json()["total"]["core_hours"], 4.0)  # type: ignore[index,call-overload]

    apel = run("usage", "--since", "2026-10-01", "--until", "2026-11-30", "-o", "apel")
    assert apel.code == 0, apel.err
    [records] = parse_apel(apel.out)
    assert len(records) == 2  # keyed by VMUUID and month: one record for October, one for November
    assert {r["VMUUID"] for r in records} == {vm["id"]} and {r["SiteName"] for r in records} == {"LAL-TEST"}
    assert all(r["Status"] == "completed" and r["CpuCount"] == "2" and r["Memory"] == "4096" for r in records)
    assert all(abs(int(r["WallDuration"]) - 7200) <= 30 for r in records)
    assert all(r["CloudType"].startswith("wlcgcloud/") and r["CloudType"].endswith("(OpenNebula)") for r in records)


# --------------------------------------------------------------------------- EC2: the ledger is the memory


def test_ec2_usage_from_the_ledger_with_apel_queue(
    run: Run, world: World, moto_ec2: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_profiles(world, {
        "aws": ec2_profile(moto_ec2, site_name="AWS-ATLAS", compute_service="aws-eu-west-1", publish_apel=True,
                           benchmarks={"type": "HEPscore23", "m5.xlarge": 41.5}),
        "quiet": ec2_profile(moto_ec2),
    })  # fmt: skip
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    monkeypatch.setenv("WLCGCLOUD_SECRET_QUIET", moto_ec2.secret_key)
    Ledger(world.state / "ledger.sqlite").close()  # an empty ledger of the current schema
    db = sqlite3.connect(world.state / "ledger.sqlite")
    gone = [("i-0000000000000ec2a", "2026-10-31T23:00:00Z", "2026-11-01T01:30:00Z"),
            ("i-0000000000000ec2b", "2026-11-01T00:00:00Z", "2026-11-01T06:00:00Z")]  # fmt: skip
    for ident, start, end in gone:
        db.execute(
            "INSERT INTO instances (profile, id, fleet, provider, name, flavor, vcpus, memory_mb, image, experiment,"
            " launched_at, ended_at, last_state, last_seen) VALUES ('aws', ?, 'gone', 'ec2', 'gone', 'm5.xlarge', 4,"
            " 16384, 'img-1', 'atlas', ?, ?, 'terminated', ?)",
            (ident, start, end, end),
        )
    db.commit()
    db.close()
    result = run("usage", "--since", "2026-10-31", "--until", "2026-11-01", "--by", "day", "-p", "aws", "-o", "json",
                 "-v")  # fmt: skip
    assert result.code == 0, result.err
    days = {r["day"]: r for r in result.json()["rows"]}  # type: ignore[index,call-overload]
    assert near(days["2026-10-31"]["core_hours"], 4.0) and near(days["2026-11-01"]["core_hours"], 4 * 7.5)
    assert days["2026-11-01"]["instances"] == 2 and near(days["2026-11-01"]["memory_gb_hours"], 16 * 7.5)
    assert all(r["sources"] == ["ledger"] for r in result.json()["rows"])  # type: ignore[index,call-overload]
    chart = run("usage", "--since", "2026-10-31", "--until", "2026-11-01", "--by", "day", "-p", "aws", "--chart")
    assert chart.code == 0 and "2026-11-01" in chart.out and "█" in chart.out
    old = run("usage", "--since", "2025-01-01", "--until", "2025-02-01", "-p", "aws")
    assert old.code == 0 and "EC2 forgets terminated instances" in old.err

    queue = world.root / "apel-queue"
    queued = run("usage", "--since", "2026-10-01", "--until", "2026-11-01", "--apel-dir", str(queue), "-o", "json")
    assert queued.code == 0, queued.err
    assert "profile 'quiet': publish_apel is not set" in queued.err
    # --apel-dir queues, then prints the summary as without it: both lifetimes, from the ledger
    assert near(queued.json()["total"]["core_hours"], 4 * 2.5 + 4 * 6)  # type: ignore[index,call-overload]
    files = [p for p in queue.rglob("*") if p.is_file()]
    assert len(files) == 1 and re.fullmatch(r"[0-9a-f]{14}", files[0].name)  # a dirq element, as ssmsend reads
    [records] = parse_apel(files[0].read_text())
    assert len(records) == 3  # ec2a in October and in November, ec2b in November
    assert all(r["BenchmarkType"] == "HEPscore23" and r["Benchmark"] == "41.5" for r in records)
    assert all(r["CloudComputeService"] == "aws-eu-west-1" and r["ImageId"] == "img-1" for r in records)
    ec2a = sorted(int(r["WallDuration"]) for r in records if r["VMUUID"].endswith("ec2a"))
    assert ec2a == [3600, 5400]  # October's hour, November's hour and a half


def test_usage_by_instance_is_the_same_made_as_written(run: Run, world: World, moto_ec2: Any, monkeypatch: Any) -> None:
    """`--by instance -o json` makes each row as it writes it (a million need not exist at once): the same
    document as the rows built first (what `--query` and every other format get), an id two profiles
    share one row with both, and the window's edges clipping."""
    write_profiles(world, {"aws": ec2_profile(moto_ec2), "quiet": ec2_profile(moto_ec2)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    monkeypatch.setenv("WLCGCLOUD_SECRET_QUIET", moto_ec2.secret_key)
    Ledger(world.state / "ledger.sqlite").close()
    db = sqlite3.connect(world.state / "ledger.sqlite")
    gone = [
        ("aws", "i-000000000000000b1", "f1", "2026-09-30T22:00:00Z", "2026-10-01T02:00:00Z"),  # crosses the start
        ("aws", "i-000000000000000a2", None, "2026-10-02T00:00:00Z", "2026-10-02T06:30:00Z"),
        ("quiet", "i-000000000000000a2", None, "2026-10-03T00:00:00Z", "2026-10-03T01:00:00Z"),  # the same id
        ("quiet", "i-000000000000000c3", "f1", "2026-10-31T23:00:00Z", "2026-11-01T05:00:00Z"),
    ]  # crosses the end
    for profile, ident, fleet, start, end in gone:
        db.execute("INSERT INTO instances (profile, id, fleet, provider, vcpus, memory_mb, launched_at, ended_at,"
                   " last_state, last_seen) VALUES (?, ?, ?, 'ec2', 2, 4096, ?, ?, 'terminated', ?)",
                   (profile, ident, fleet, start, end, end))  # fmt: skip
    db.commit()
    db.close()
    window = ("usage", "--since", "2026-10-01", "--until", "2026-10-31")
    for by in ("instance", "fleet,instance"):
        made = run(*window, "--by", by, "-o", "json")
        built = run(*window, "--by", by, "-o", "json", "--query", "@")
        assert made.code == built.code == 0, made.err + built.err
        assert made.json() == built.json()
        rows = {r["instance"]: r for r in made.json()["rows"]}  # type: ignore[index,call-overload]
        assert near(rows["i-000000000000000b1"]["wall_hours"], 2.0) and near(
            rows["i-000000000000000c3"]["wall_hours"], 1.0
        )
        assert rows["i-000000000000000a2"]["instances"] == 2 and near(rows["i-000000000000000a2"]["core_hours"], 15.0)
    assert run(*window, "--by", "instance", "-o", "csv").out.count("i-000000000000000") == 3


def test_usage_by_instance_counts_what_a_cloud_still_shows_once(
    run: Run, world: World, moto_ec2: Any, monkeypatch: Any
) -> None:
    """By instance, the ledger's lifetime of an instance its cloud still reports gives way to the cloud's
    own figures, profile by profile (each profile's ledger rows are left out by what its own cloud shows)."""
    write_profiles(world, {"aws": ec2_profile(moto_ec2), "east": ec2_profile(moto_ec2, region="us-east-1")})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    monkeypatch.setenv("WLCGCLOUD_SECRET_EAST", moto_ec2.secret_key)
    client = moto_ec2.client()
    [shown] = client.run_instances(ImageId="ami-03cf127a", InstanceType="m5.large", MinCount=1, MaxCount=1)["Instances"]
    try:
        Ledger(world.state / "ledger.sqlite").close()
        db = sqlite3.connect(world.state / "ledger.sqlite")
        hours_ago = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - h * 3600)) for h in (5, 1)]
        for profile, ident in (("aws", shown["InstanceId"]), ("east", "i-00000000000000e51")):
            db.execute("INSERT INTO instances (profile, id, provider, vcpus, memory_mb, launched_at, last_state,"
                       " last_seen) VALUES (?, ?, 'ec2', 2, 4096, ?, 'running', ?)",
                       (profile, ident, *hours_ago))  # fmt: skip
        db.commit()
        db.close()
        for output in (("-o", "json"), ("-o", "json", "--query", "@")):  # as written, and built first
            result = run("usage", "--since", "1d", "--by", "instance", *output)
            assert result.code == 0, result.err
            rows = {r["instance"]: r for r in result.json()["rows"]}  # type: ignore[index,call-overload]
            assert rows[shown["InstanceId"]]["instances"] == 1  # the cloud's, not also the ledger's 4 hours
            assert rows[shown["InstanceId"]]["wall_hours"] < 1.0
            assert near(rows["i-00000000000000e51"]["wall_hours"], 4.0)
    finally:
        client.terminate_instances(InstanceIds=[shown["InstanceId"]])


def test_apel_messages_hold_at_most_100_records(run: Run, world: World, moto_ec2: Any, monkeypatch: Any) -> None:
    write_profiles(world, {"aws": ec2_profile(moto_ec2, site_name="AWS-ATLAS", publish_apel=True)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    Ledger(world.state / "ledger.sqlite").close()
    db = sqlite3.connect(world.state / "ledger.sqlite")
    db.executemany(
        "INSERT INTO instances (profile, id, fleet, provider, vcpus, memory_mb, launched_at, ended_at, last_seen)"
        " VALUES ('aws', ?, 'many', 'ec2', 1, 1024, '2026-09-10T00:00:00Z', '2026-09-10T01:00:00Z', "
        "'2026-09-10T01:00:00Z')",
        [(f"i-{n:017x}",) for n in range(250)],
    )
    db.commit()
    db.close()
    printed = run("usage", "--since", "2026-09-01", "--until", "2026-09-30", "-o", "apel")
    messages = parse_apel(printed.out)
    assert [len(m) for m in messages] == [100, 100, 50]


def test_apel_needs_the_site_name_before_it_writes_anything(
    run: Run, world: World, moto_ec2: Any, monkeypatch: Any
) -> None:
    """A profile with records but no site_name (APEL's SiteName, mandatory) stops -o apel before its first
    message, whatever other profiles come first; a profile without records needs none."""
    write_profiles(world, {"a-site": ec2_profile(moto_ec2, site_name="AWS-ATLAS"), "b-none": ec2_profile(moto_ec2)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_A_SITE", moto_ec2.secret_key)
    monkeypatch.setenv("WLCGCLOUD_SECRET_B_NONE", moto_ec2.secret_key)
    Ledger(world.state / "ledger.sqlite").close()
    db = sqlite3.connect(world.state / "ledger.sqlite")
    for profile in ("a-site", "b-none"):
        db.execute("INSERT INTO instances (profile, id, provider, vcpus, memory_mb, launched_at, ended_at, last_seen)"
                   " VALUES (?, 'i-00000000000000a51', 'ec2', 1, 1024, '2026-09-10T00:00:00Z', '2026-09-10T01:00:00Z',"
                   " '2026-09-10T01:00:00Z')", (profile,))  # fmt: skip
    db.commit()
    db.close()
    window = ("usage", "--since", "2026-09-01", "--until", "2026-09-30", "-o", "apel")
    refused = run(*window)
    assert refused.code == 3 and refused.out == "", refused.err
    errors = [line for line in refused.err.splitlines() if line.startswith("error:")]
    assert errors == [refused.err.splitlines()[-1]] and "Traceback" not in refused.err  # (after the warnings)
    assert errors[0].startswith("error: profile 'b-none': APEL records need site_name")
    assert "--site-name NAME" in refused.err
    alone = run(*window, "-p", "a-site")
    assert alone.code == 0 and [len(m) for m in parse_apel(alone.out)] == [1], alone.err
    empty = run("usage", "--since", "2026-10-01", "--until", "2026-10-30", "-o", "apel", "-p", "b-none")
    assert empty.code == 0 and empty.out == "" and "no APEL records" in empty.err


def test_apel_values_from_a_cloud_cannot_add_lines(run: Run, world: World, moto_ec2: Any, monkeypatch: Any) -> None:
    """A VM's name is anybody's text: with a line end in it, it must not make a record's line of its own (a
    forged FQAN, a second VMUUID). Through both ways a record is made: a running VM the cloud reports, and
    one only the ledger remembers."""
    write_profiles(world, {"aws": ec2_profile(moto_ec2, site_name="AWS-ATLAS")})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    client = moto_ec2.client()
    forged = "vm\nFQAN: /atlas/Role=production\r\nVMUUID: i-forged"
    [shown] = client.run_instances(
        ImageId="ami-03cf127a", InstanceType="m5.large", MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": forged}]}],
    )["Instances"]  # fmt: skip
    try:
        Ledger(world.state / "ledger.sqlite").close()
        db = sqlite3.connect(world.state / "ledger.sqlite")
        hours_ago = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - h * 3600)) for h in (5, 1)]
        db.execute("INSERT INTO instances (profile, id, provider, name, vcpus, memory_mb, launched_at, ended_at,"
                   " last_state, last_seen) VALUES ('aws', 'i-00000000000000e52', 'ec2', ?, 2, 4096, ?, ?,"
                   " 'terminated', ?)", (forged, hours_ago[0], hours_ago[1], hours_ago[1]))  # fmt: skip
        db.commit()
        db.close()
        printed = run("usage", "--since", "1d", "-o", "apel")
        assert printed.code == 0, printed.err
        records = [r for message in parse_apel(printed.out) for r in message]  # (moto may hold others' VMs)
        mine = {r["VMUUID"]: r for r in records if r["VMUUID"] in (shown["InstanceId"], "i-00000000000000e52")}
        lines = printed.out.splitlines()
        forged_lines = [line for line in lines if line.startswith("FQAN") or line == "VMUUID: i-forged"]
        assert len(mine) == 2 and not forged_lines
        for record in mine.values():  # (XML, EC2's wire, makes the name's CR LF one LF)
            assert re.fullmatch(r"vm FQAN: /atlas/Role=production {1,2}VMUUID: i-forged", record["MachineName"])
        assert mine[shown["InstanceId"]]["Status"] == "started" and mine["i-00000000000000e52"]["Status"] == "completed"
    finally:
        client.terminate_instances(InstanceIds=[shown["InstanceId"]])


# --------------------------------------------------------------------------- OpenStack: Nova's own accounting


def one_server(run: Run, world: World, peer: OpenStackPeer, monkeypatch: pytest.MonkeyPatch, fleet: str) -> Any:
    """One running server of `fleet` on the OpenStack peer, launched through wlcgcloud; its JSON."""
    write_profiles(world, {"osk": openstack_profile(peer, flavor="m1.small")})
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
    made = run("launch", peer.image_id, "--allow-unendorsed", "--credential", "none", "-p", "osk",
               "--fleet", fleet, "--wait", "--timeout", "2m", "-o", "json")  # fmt: skip
    assert made.code == 0, made.err
    [server] = made.json()["instances"]  # type: ignore[index,call-overload]
    return server


@pytest.mark.openstack
def test_openstack_usage_matches_novas_launch_time(
    run: Run, world: World, openstack_peer: OpenStackPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = one_server(run, world, openstack_peer, monkeypatch, "metered")
    try:
        time.sleep(5)
        result = run("usage", "--since", "1d", "--by", "instance", "-p", "osk", "-o", "json")
        asked = datetime.now(UTC)
        assert result.code == 0, result.err
        [row] = [r for r in result.json()["rows"] if r["instance"] == server["id"]]  # type: ignore[index,call-overload]
        import openstack

        admin = openstack_peer.admin
        conn = openstack.connect(
            auth_url=admin["OS_AUTH_URL"], username=admin["OS_USERNAME"], password=admin["OS_PASSWORD"],
            project_name=admin["OS_PROJECT_NAME"], user_domain_name=admin.get("OS_USER_DOMAIN_NAME", "Default"),
            project_domain_name=admin.get("OS_PROJECT_DOMAIN_NAME", "Default"), region_name="RegionOne",
            load_yaml_config=False, load_envvars=False,
        )  # fmt: skip
        launched = conn.compute.get_server(server["id"]).launched_at
        started = datetime.fromisoformat(launched.replace("Z", "")).replace(tzinfo=UTC)
        expected = (asked - started).total_seconds() / 3600 * server["vcpus"]
        assert abs(row["core_hours"] - expected) <= 5 / 3600 * server["vcpus"] + 0.002, (row, expected)
    finally:
        run("fleet", "terminate", "metered", "-p", "osk", "--yes")


# --------------------------------------------------------------------------- bad input


def test_bad_windows_are_clear_errors_or_warnings(run: Run, world: World, moto_ec2: Any, monkeypatch: Any) -> None:
    write_profiles(world, {"aws": ec2_profile(moto_ec2)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    backwards = run("usage", "--since", "2026-11-10", "--until", "2026-11-01")
    assert backwards.code == 2 and "is not before --until" in backwards.err and "Traceback" not in backwards.err
    nonsense = run("usage", "--since", "yesterdayish")
    assert nonsense.code == 2 and "is not a date" in nonsense.err
    wrong_group = run("usage", "--by", "planet")
    assert wrong_group.code == 2 and "group by one of" in wrong_group.err
    decade = run("usage", "--since", "2016-11-01", "--until", "2026-11-01")
    assert decade.code == 0 and "expect it to be partial" in decade.err
    relative = run("usage", "--since", "7d", "-o", "json")
    assert relative.code == 0
    window = relative.json()
    assert isinstance(window, dict)
    assert (datetime.fromisoformat(window["until"].replace("Z", "+00:00"))
            - datetime.fromisoformat(window["since"].replace("Z", "+00:00"))).days == 7  # fmt: skip
    assert Path(world.state / "ledger.sqlite").exists()


def test_aggregate_agrees_with_a_plain_computation() -> None:
    """The fast aggregation against a second-by-day computation with datetimes, on random intervals."""
    import random
    from datetime import timedelta

    from wlcgcloud.usage import Interval, aggregate

    rng = random.Random(11)
    since, until = datetime(2026, 10, 30, tzinfo=UTC), datetime(2026, 11, 3, 12, tzinfo=UTC)
    now = datetime(2026, 11, 2, 18, tzinfo=UTC)  # the window reaches past now: what runs counts up to now
    intervals = []
    for n in range(300):
        start = datetime(2026, 10, 29, tzinfo=UTC) + timedelta(seconds=rng.uniform(0, 6 * 86400))
        end = None if n % 7 == 0 else start + timedelta(seconds=rng.uniform(60, 50 * 3600))
        provider = "opennebula" if n % 5 == 0 else "ec2"
        instance = str(n // 2) if provider == "opennebula" else f"i-{n}"  # OpenNebula: two records per VM
        intervals.append(Interval("p1" if n % 3 else "p2", provider, instance, start.timestamp(),
                                  end.timestamp() if end else None, rng.choice((1, 2, 8)), 2048,
                                  fleet=f"f{n % 4}"))  # fmt: skip
    rows, total = aggregate(intervals, since, until, ["profile", "day"], now)
    expected: dict[tuple[str, str], list[Any]] = {}
    for iv in intervals:
        a = max(datetime.fromtimestamp(iv.start, UTC), since)
        b = min(datetime.fromtimestamp(iv.end, UTC) if iv.end else now, until, now)
        while a < b:
            midnight = datetime.combine(a.date() + timedelta(days=1), datetime.min.time(), UTC)
            piece = min(b, midnight) - a
            cell = expected.setdefault((iv.profile, a.strftime("%Y-%m-%d")), [set(), 0.0])
            cell[0].add((iv.profile, iv.instance))
            cell[1] += piece.total_seconds() * iv.vcpus / 3600
            a = min(b, midnight)
    got = {(r["profile"], r["day"]): r for r in rows}
    assert set(got) == set(expected)
    for key, (instances, core_hours) in expected.items():
        assert got[key]["instances"] == len(instances) and abs(got[key]["core_hours"] - core_hours) < 1e-6
    assert abs(total["core_hours"] - sum(c for _, c in expected.values())) < 1e-6
    assert total["instances"] == len(set().union(*(cell[0] for cell in expected.values())))


@pytest.mark.openstack
def test_openstack_history_set_in_novas_database_splits_across_midnight_and_month(
    run: Run, world: World, openstack_peer: OpenStackPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose life Nova records (in its own database) as 22:00 on 31 October to 02:00 on 1 November."""
    import shutil
    import subprocess

    mysql = shutil.which("mysql")
    if mysql is None:
        pytest.fail("the mysql client is missing: the OpenStack peer's up.sh installs it", pytrace=False)
    server = one_server(run, world, openstack_peer, monkeypatch, "halloween")
    try:
        sql = ("UPDATE instances SET launched_at = '2026-10-31 22:00:00', terminated_at = '2026-11-01 02:00:00' "
               f"WHERE uuid = '{server['id']}'")  # fmt: skip
        subprocess.run([mysql, "-h", "127.0.0.1", "-u", "osk", "-posk-db-pw", "nova", "-e", sql], check=True)
        result = run("usage", "--since", "2026-10-31", "--until", "2026-11-01", "--by", "instance,day", "-p", "osk",
                     "-o", "json")  # fmt: skip
        assert result.code == 0, result.err
        rows = [r for r in result.json()["rows"] if r["instance"] == server["id"]]  # type: ignore[index,call-overload]
        days = {r["day"]: r for r in rows}
        assert set(days) == {"2026-10-31", "2026-11-01"}
        for day in days.values():
            assert near(day["wall_hours"], 2.0, 1e-6) and near(day["core_hours"], 2.0 * server["vcpus"], 1e-6)
    finally:
        run("fleet", "terminate", "halloween", "-p", "osk", "--yes")
