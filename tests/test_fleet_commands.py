"""`fleet list | show | scale | terminate | reconcile | reap` on all three peers."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest
from peers.opennebula import OpenNebulaPeer

from wlcgcloud.completion import complete

from conftest import (
    OpenStackPeer,
    Run,
    World,
    create_instances,
    ec2_profile,
    one_profile,
    openstack_profile,
    own_marked_ami,
    write_profiles,
)


@pytest.fixture
def one(endorsed: dict[str, Any]) -> Iterator[OpenNebulaPeer]:
    images = [{"id": 0, "name": "atlas-wn", "owner": "atlas", "size": 1,
               "template": f'WLCG_ENDORSED_ID="{endorsed["first"]}"\n'}]  # fmt: skip
    with OpenNebulaPeer(images=images) as peer:
        yield peer


@pytest.fixture
def clouds(
    world: World,
    endorsed: dict[str, Any],
    moto_ec2: Any,
    openstack_peer: OpenStackPeer,
    one: OpenNebulaPeer,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    own_marked_ami(moto_ec2.client(), endorsed["first"])
    write_profiles(world, {
        "aws": ec2_profile(moto_ec2, flavor="m5.large", experiment="atlas"),
        "osk": openstack_profile(openstack_peer, flavor="m1.large", experiment="atlas"),
        "one": one_profile(one, vm_template="atlas-wn", experiment="atlas"),  # type: ignore[arg-type]
    })  # fmt: skip
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", openstack_peer.appcred["OS_APPLICATION_CREDENTIAL_SECRET"])
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    return {"aws": moto_ec2, "osk": openstack_peer, "one": one}


@pytest.fixture
def one_only(world: World, one: OpenNebulaPeer, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    write_profiles(world, {"one": one_profile(one, vm_template="atlas-wn", experiment="atlas")})  # type: ignore[arg-type]
    monkeypatch.setenv("WLCGCLOUD_SECRET_ONE", "secret")
    return {"one": one}


def launched(run: Run, profile: str, fleet: str, count: int, *extra: str) -> list[str]:
    result = run("launch", "ATLAS worker node 1", "-p", profile, "-n", str(count), "--fleet", fleet,
                 "--credential", "none", "-o", "json", *extra)  # fmt: skip
    assert result.code == 0, result.err
    return [i["id"] for i in result.json()["instances"]]  # type: ignore[index,call-overload]


@pytest.mark.openstack
def test_fleets_on_three_clouds_listed_shown_scaled_and_terminated(
    run: Run, world: World, clouds: dict[str, Any]
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
        up = run("fleet", "scale", name, "-n", "2", "-o", "json")
        assert up.code == 0, (profile, up.err)
        assert up.json()["launched"] == 2 and up.json()["profiles"][0]["resumed"] == 1  # type: ignore[index,call-overload]

    not_tty = run("fleet", "terminate", *fleets.values())
    assert not_tty.code == 2 and "--yes" in not_tty.err
    dry = run("fleet", "terminate", *fleets.values(), "--dry-run", "-o", "json")
    assert dry.code == 0 and len(dry.json()) == 6  # type: ignore[arg-type]
    done = run("fleet", "terminate", *fleets.values(), "--yes", "-o", "json")
    assert done.code == 0, done.err
    assert len(done.json()) == 6 and all(r["terminated"] for r in done.json())  # type: ignore[union-attr,arg-type]
    again = run("fleet", "terminate", *fleets.values(), "--yes")
    assert again.code == 0 and "Nothing to terminate" in again.err
    db = sqlite3.connect(world.state / "ledger.sqlite")
    open_rows = db.execute("SELECT count(*) FROM instances WHERE ended_at IS NULL").fetchone()[0]
    db.close()
    assert open_rows == 0  # every instance this test made is ended in the ledger


def test_reap_terminates_what_is_past_its_lease(run: Run, world: World, one_only: dict[str, Any]) -> None:
    short = launched(run, "one", "short-lease", 2, "--lease", "1s")
    kept = launched(run, "one", "long-lease", 1, "--lease", "12h")
    time.sleep(1.5)
    dry = run("fleet", "reap", "-p", "one", "--dry-run", "-o", "json")
    assert dry.code == 0 and {r["id"] for r in dry.json()} == set(short)  # type: ignore[union-attr]
    reaped = run("fleet", "reap", "-p", "one", "--yes", "-o", "json")
    assert reaped.code == 0 and {r["id"] for r in reaped.json() if r["terminated"]} == set(short)  # type: ignore[union-attr]
    left = run("instance", "list", "-p", "one", "-o", "json")
    alive = {i["id"] for i in left.json() if i["state"] != "terminated"}  # type: ignore[union-attr]
    assert set(kept) <= alive and not set(short) & alive


def test_reconcile_records_strangers_and_ends_the_forgotten(run: Run, world: World, one_only: dict[str, Any]) -> None:
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
