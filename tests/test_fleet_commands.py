"""`fleet list | show | scale | terminate | reconcile | reap` on all three peers."""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Any

import pytest

from wlcgcloud.completion import complete

from conftest import (
    Run,
    World,
    create_instances,
    one_profile,
    write_profiles,
)


@pytest.fixture
def one_only(world: World, one_endorsed: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    write_profiles(world, {"one": one_profile(one_endorsed, vm_template="atlas-wn", experiment="atlas")})  # type: ignore[arg-type]
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    return {"one": one_endorsed}


def wait_for_total(run: Run, fleet: str, total: int) -> None:
    """Until the clouds list `total` live instances of `fleet` (deletes may finish after they are accepted)."""
    deadline = time.monotonic() + 60
    while True:
        rows = run("instance", "list", "--fleet", fleet, "-o", "json").json()
        if len([i for i in rows if i["state"] != "terminated"]) == total:  # type: ignore[union-attr]
            return
        assert time.monotonic() < deadline, rows
        time.sleep(1)


def launched(run: Run, profile: str, fleet: str, count: int, *extra: str) -> list[str]:
    result = run("launch", "ATLAS worker node 1", "-p", profile, "-n", str(count), "--fleet", fleet,
                 "--credential", "none", "-o", "json", *extra)  # fmt: skip
    assert result.code == 0, result.err
    return [i["id"] for i in result.json()["instances"]]  # type: ignore[index,call-overload]


@pytest.mark.openstack
def test_fleets_on_three_clouds_listed_shown_scaled_and_terminated(
    run: Run, world: World, three_clouds: dict[str, Any]
) -> None:
    fleets = {p: f"fc-{p}-{int(time.time()) % 100000}" for p in ("aws", "osk", "one")}
    for profile, name in fleets.items():
        launched(run, profile, name, 3)
    listing = run("fleet", "list", "-o", "json")
    assert listing.code == 0, listing.err
    rows = {(r["fleet"], r["profile"]): r for r in listing.json()}  # type: ignore[union-attr]
    for profile, name in fleets.items():
        row = rows[(name, profile)]
        assert row["total"] == 3 and sum(row["counts"].values()) == 3 and row["experiment"] == "atlas"
        assert row["provider"] == {"aws": "ec2", "osk": "openstack", "one": "opennebula"}[profile]
        assert row["image"] and row["flavor"] and row["created"]
    table = run("fleet", "list")
    assert fleets["one"] in table.out and "STATES" in table.out

    shown = run("fleet", "show", fleets["aws"], "-o", "json")
    assert shown.code == 0, shown.err
    data = shown.json()
    assert isinstance(data, dict) and len(data["instances"]) == 3
    assert {i["endorsement"] for i in data["instances"]} == {"verified"}
    assert [launch["state"] for launch in data["launches"]] == ["launched"]
    # Completion knows the fleets from the ledger, without asking any cloud.
    assert fleets["one"] in complete(["wlcgcloud", "fleet", "show", "fc-one"], 3)

    for profile, name in fleets.items():
        down = run("fleet", "scale", name, "-n", "1", "--yes", "-o", "json")
        assert down.code == 0, (profile, down.err)
        gone = [r for r in down.json() if r["terminated"]]  # type: ignore[union-attr]
        assert len(gone) == 2
        wait_for_total(run, name, 1)  # Nova deletes asynchronously
        up = run("fleet", "scale", name, "-n", "2", "-o", "json")
        assert up.code == 0, (profile, up.err)
        grown = up.json()
        assert isinstance(grown, dict) and (grown["resumed"], grown["launched"]) == (1, 1)  # found 1, started 1
        if profile == "one":  # the resized fleet is its new size: the launch at that count resumes it
            assert len(launched(run, profile, name, 2)) == 2
            other = run(
                "launch", "ATLAS worker node 1", "-p", profile, "-n", "3", "--fleet", name, "--credential", "none"
            )
            assert other.code == 2

    not_tty = run("fleet", "terminate", *fleets.values())
    assert not_tty.code == 2 and "--yes" in not_tty.err
    dry = run("fleet", "terminate", *fleets.values(), "--dry-run", "-o", "json")
    assert dry.code == 0 and len(dry.json()) == 6  # type: ignore[arg-type]
    done = run("fleet", "terminate", *fleets.values(), "--yes", "-o", "json")
    assert done.code == 0, done.err
    assert len(done.json()) == 6 and all(r["terminated"] for r in done.json())  # type: ignore[union-attr,arg-type]
    for name in fleets.values():
        wait_for_total(run, name, 0)  # Nova deletes asynchronously: until then its servers are "stopping"
    again = run("fleet", "terminate", *fleets.values(), "--yes")
    assert again.code == 0 and "Nothing to terminate" in again.err
    db = sqlite3.connect(world.state / "ledger.sqlite")
    open_rows = db.execute("SELECT count(*) FROM instances WHERE ended_at IS NULL").fetchone()[0]
    db.close()
    assert open_rows == 0  # every instance this test made is ended in the ledger


def test_reap_terminates_what_is_past_its_lease(run: Run, world: World, one_only: dict[str, Any]) -> None:
    short = launched(run, "one", "short-lease", 2, "--lease", "1s")
    kept = launched(run, "one", "long-lease", 1, "--lease", "12h")
    time.sleep(2.2)  # lease-until is written to the second: be past it whatever the fraction
    dry = run("fleet", "reap", "-p", "one", "--dry-run", "-o", "json")
    assert dry.code == 0 and {r["id"] for r in dry.json()} == set(short)  # type: ignore[union-attr]
    reaped = run("fleet", "reap", "-p", "one", "--yes", "-o", "json")
    assert reaped.code == 0 and {r["id"] for r in reaped.json() if r["terminated"]} == set(short)  # type: ignore[union-attr]
    left = run("instance", "list", "-p", "one", "-o", "json")
    alive = {i["id"] for i in left.json() if i["state"] != "terminated"}  # type: ignore[union-attr]
    assert set(kept) <= alive and not set(short) & alive


def test_reconcile_records_strangers_and_ends_the_forgotten(
    run: Run, world: World, one_only: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    ours = launched(run, "one", "known", 2)
    # A fleet made by another machine (our tags, not our ledger), and one of ours deleted behind our back.
    strangers = create_instances(world, "one", "0", "atlas-wn", 2, "from-elsewhere")
    import xmlrpc.client

    proxy = xmlrpc.client.ServerProxy(one_only["one"].url)
    assert proxy.one.vm.action("atlas:secret", "terminate-hard", int(ours[0]))[0]
    report = run("fleet", "reconcile", "-p", "one", "--dry-run", "-o", "json")
    assert report.code == 0, report.err
    findings = {(f["id"], f["finding"]) for f in report.json()}  # type: ignore[union-attr]
    assert {(s, "launched elsewhere (another machine or tool)") for s in strangers} <= findings
    fixed = run("fleet", "reconcile", "-p", "one", "-o", "json")
    assert fixed.code == 0
    db = sqlite3.connect(world.state / "ledger.sqlite")
    known = {r[0]: r[1] for r in db.execute("SELECT id, ended_at FROM instances")}
    db.close()
    assert set(strangers) <= set(known) and known[ours[0]] is not None and known[ours[1]] is None
    quiet = run("fleet", "reconcile", "-p", "one")
    assert quiet.code == 0 and "agrees" in quiet.err
    # The ledger lost (a CI runner's, a new machine): --all relearns every live fleet of every profile from
    # the tags, whatever WLCGCLOUD_PROFILE narrows to.
    for leftover in world.state.glob("ledger.sqlite*"):
        if leftover.is_file():
            leftover.unlink()
    monkeypatch.setenv("WLCGCLOUD_PROFILE", "elsewhere")
    assert run("fleet", "reconcile").code == 3
    relearnt = run("fleet", "reconcile", "--all", "-o", "json")
    assert relearnt.code == 0, relearnt.err
    found = {(f["id"], f["fleet"]) for f in relearnt.json()}  # type: ignore[union-attr]
    assert {(ours[1], "known"), *((i, "from-elsewhere") for i in strangers)} <= found
    db = sqlite3.connect(world.state / "ledger.sqlite")
    assert {r[0] for r in db.execute("SELECT id FROM instances WHERE ended_at IS NULL")} >= {ours[1], *strangers}
    db.close()


def test_fleet_list_on_ec2_reads_tags_and_states_not_whole_instances(
    run: Run, world: World, moto_own: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our fleets come from DescribeTags + DescribeInstanceStatus; only a fleet without wlcg:flavor
    (another tool's) is described in full, and the rows are the same as from full descriptions."""
    from peers.faultproxy import FaultProxy

    from conftest import ec2_profile

    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_own.secret_key)
    client: Any = moto_own.client()
    with FaultProxy(moto_own.url, preserve_host=True) as proxy:
        write_profiles(world, {"aws": ec2_profile(moto_own, endpoint_url=proxy.url, experiment="atlas")})
        result = run("launch", "ami-03cf127a", "-p", "aws", "--allow-unendorsed", "--credential", "none", "-n", "3",
                     "--flavor", "t3.micro", "--fleet", "ours", "-o", "json")  # fmt: skip
        assert result.code == 0, result.err
        ids = [i["id"] for i in result.json()["instances"]]  # type: ignore[index,call-overload]
        assert run("instance", "terminate", ids[0], "--yes").code == 0
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "wlcg:fleet", "Value": "theirs"}]}]
        foreign = client.run_instances(ImageId="ami-03cf127a", InstanceType="t3.small", MinCount=1, MaxCount=1,
                                       TagSpecifications=tags)["Instances"][0]["InstanceId"]  # fmt: skip
        before = proxy.forwarded("Action=DescribeInstances&")
        light = run("fleet", "list", "-o", "json")
        described = proxy.bodies("Action=DescribeInstances&")[before:]
        full = run("instance", "list", "-o", "json").json()
    assert light.code == 0, light.err
    rows = {r["fleet"]: r for r in light.json()}  # type: ignore[union-attr]
    assert rows["ours"]["counts"] == {"running": 2, "terminated": 1} and rows["ours"]["flavor"] == "t3.micro"
    assert rows["ours"]["created"] and rows["ours"]["experiment"] == "atlas" and rows["ours"]["total"] == 3
    assert rows["theirs"]["counts"] == {"running": 1} and rows["theirs"]["flavor"] == "t3.small"
    assert len(described) == 1 and foreign.encode() in described[0] and ids[1].encode() not in described[0]
    # the same rows as built from whole instance descriptions
    for name in ("ours", "theirs"):
        live = [i for i in full if i["fleet"] == name]  # type: ignore[union-attr]
        assert {i["flavor"] for i in live} == {rows[name]["flavor"]}
        assert len([i for i in live if i["state"] == "running"]) == rows[name]["counts"]["running"]


@pytest.mark.openstack
def test_growing_a_fleet_again_after_another_loss_makes_new_instances(
    run: Run, world: World, three_clouds: dict[str, Any]
) -> None:
    """The second `fleet scale` by one, after a loss, is a new request: it must not adopt the first one's
    instance (same count, same next name, same credential: the same idempotency token before)."""
    name = f"fc-again-{uuid.uuid4().hex[:8]}"
    launched(run, "osk", name, 3)  # Nova names them name-1, name-2, name-3

    def by_name() -> dict[str, str]:
        rows = run("instance", "list", "--fleet", name, "-o", "json").json()
        return {i["name"]: i["id"] for i in rows if i["state"] != "terminated"}  # type: ignore[union-attr]

    try:
        for lost in (f"{name}-1", f"{name}-2"):  # each time the fleet keeps name-3, the highest number
            assert run("instance", "terminate", by_name()[lost], "--yes").code == 0
            wait_for_total(run, name, 2)
            up = run("fleet", "scale", name, "-n", "3", "-o", "json")
            assert up.code == 0, up.err
            assert (up.json()["resumed"], up.json()["launched"]) == (2, 1), up.json()  # type: ignore[call-overload,index]
            wait_for_total(run, name, 3)
    finally:
        run("fleet", "terminate", name, "--yes")
