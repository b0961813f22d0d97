"""The owner's side of a VM's agent (docs/vm-side.md), on the three peers: `fleet drain` sets what the
VM reads, `fleet scale` drains instead of killing, `fleet reap` ends what drained, and the shutdown
message a VM left is read back (`fleet show`, `instance show`, the ledger) and used by `fleet maintain`."""

from __future__ import annotations

import re
import sqlite3
import time
import xmlrpc.client
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from wlcgcloud.shutdown import CONSOLE_TAIL, ShutdownMessage, from_attributes, from_console

from conftest import Run, World, alive, fleet_name, openstack_sdk, spec_text, write_spec

PILOT = ("--bootstrap", "script", "--set", "PILOT_URL=https://pilots.example.org/pilot.sh")


def launched(run: Run, profile: str, fleet: str, count: int, *extra: str) -> list[str]:
    result = run("launch", "ATLAS worker node 1", "-p", profile, "-n", str(count), "--fleet", fleet,
                 "--credential", "none", "-o", "json", *extra)  # fmt: skip
    assert result.code == 0, result.err
    return [i["id"] for i in result.json()["instances"]]  # type: ignore[index,call-overload]


def terminated(run: Run, fleets: Iterable[str]) -> None:
    """The test's fleets, gone again: the peers are the session's."""
    for fleet in fleets:
        run("fleet", "terminate", fleet, "--yes")


def one_vm(peer: Any, vm_id: str) -> str:
    """The VM's document as its owner reads it (one.vm.info), XML text."""
    proxy = xmlrpc.client.ServerProxy(peer.url)
    ok, body, _ = proxy.one.vm.info("atlas:secret", int(vm_id))  # type: ignore[misc]
    assert ok, body
    return str(body)


# --------------------------------------------------------------------------- the message itself


def test_a_console_line_is_believed_only_in_its_exact_form() -> None:
    boot = "[    0.000000] Linux version 6.1\r\n" * 50
    assert from_console(boot + "wlcgcloud-shutdown: 300 No more work\r\nreboot: Power down\n") == ShutdownMessage(
        300, "No more work"
    )
    # The last line wins; a kernel time stamp before it is fine.
    two = "wlcgcloud-shutdown: 200 done\n[  12.5] wlcgcloud-shutdown: 500 Proxy not accepted\n"
    assert from_console(two) == ShutdownMessage(500, "Proxy not accepted")
    hostile = [
        "wlcgcloud-shutdown: 800 no such code\n",
        "wlcgcloud-shutdown: 30 short\n",
        "wlcgcloud-shutdown: 300 " + "x" * 161 + "\n",  # longer than a message may be
        "wlcgcloud-shutdown: 300 \x1b[2Jcleared\n",  # a control sequence in the text
        "wlcgcloud-shutdown: 300 caf\u00e9\n",  # not printable ASCII
        "wlcgcloud-shutdown: 300\n",  # no text
    ]
    for text in hostile:
        assert from_console(text) is None, text
    # Only the last 64 KB are read, as EC2 keeps no more.
    assert from_console("wlcgcloud-shutdown: 300 early\n" + "y" * CONSOLE_TAIL) is None
    assert from_attributes("500", "Proxy\x1b[31m not accepted") == ShutdownMessage(500, "Proxy?[31m not accepted")
    assert from_attributes("999", "x") is None and from_attributes(None, None) is None
    assert from_attributes(" 300", "") == ShutdownMessage(300, "no more work")


# --------------------------------------------------------------------------- drain, on three clouds


@pytest.mark.openstack
def test_drain_sets_what_each_vm_reads_and_a_draining_vm_no_longer_counts(
    run: Run, world: World, three_clouds: dict[str, Any]
) -> None:
    fleets = {p: fleet_name(f"dr-{p}") for p in ("aws", "osk", "one")}
    try:
        for profile, fleet in fleets.items():
            ids = launched(run, profile, fleet, 2, *PILOT, "--wait")
            listed = run("instance", "list", "--fleet", fleet, "-o", "json").json()
            assert all(i["tags"]["wlcg:drainable"] == "yes" for i in listed), listed  # type: ignore[union-attr,index]
            asked = run("fleet", "drain", fleet, "--count", "1", "--deadline", "1h", "-o", "json")
            assert asked.code == 0, asked.err
            [row] = asked.json()  # type: ignore[misc]
            assert row["asked"] and row["agent"] and row["id"] in ids, row
            by = datetime.fromisoformat(row["drain_by"].replace("Z", "+00:00"))
            assert timedelta(minutes=59) < by - datetime.now(UTC) <= timedelta(hours=1), row
            # What the VM reads, through its cloud's own channel.
            if profile == "aws":
                client = three_clouds["aws"].client()
                tags = client.describe_tags(Filters=[{"Name": "resource-id", "Values": [row["id"]]}])["Tags"]
                assert {t["Key"]: t["Value"] for t in tags}["wlcg:drain-by"] == row["drain_by"]
                [reservation] = client.describe_instances(InstanceIds=[row["id"]])["Reservations"]
                assert reservation["Instances"][0]["MetadataOptions"]["InstanceMetadataTags"] == "enabled"
            elif profile == "osk":
                server = openstack_sdk(three_clouds["osk"].password).compute.get_server(row["id"])
                assert server.metadata["wlcg:drain-by"] == row["drain_by"], server.metadata
            else:
                document = one_vm(three_clouds["one"], row["id"])
                assert re.search(rf"<USER_TEMPLATE>.*<WLCG_DRAIN_BY>(<!\[CDATA\[)?{row['drain_by']}", document)
                assert re.search(r"<CONTEXT>.*<TOKEN>(<!\[CDATA\[)?YES", document), "OneGate needs TOKEN=YES"
            # The draining VM is on its way out: scaling to 2 would launch one more.
            plan = run("fleet", "scale", fleet, "--count", "2", "--dry-run", "-o", "json")
            assert plan.code == 0 and "would launch 1 more" in plan.err, plan.err
            shown = run("fleet", "show", fleet, "-o", "json").json()
            drains = {i["id"]: i["drain_by"] for i in shown["instances"]}  # type: ignore[index,call-overload]
            assert drains == {row["id"]: row["drain_by"], (set(ids) - {row["id"]}).pop(): None}
            # Asked again, the deadline moves; an id not of the fleet is a bad argument.
            again = run("fleet", "drain", fleet, row["id"], "--deadline", "10m", "-o", "json")
            assert again.code == 0 and again.json()[0]["drain_by"] < row["drain_by"], again.err  # type: ignore[index]
            later = run("fleet", "drain", fleet, row["id"], "--deadline", "3h", "-o", "json")  # never later
            assert later.json()[0]["drain_by"] == again.json()[0]["drain_by"], later.err  # type: ignore[index]
            assert run("fleet", "drain", fleet, "i-nothere", "--deadline", "10m").code == 2
    finally:
        terminated(run, fleets.values())


def test_drain_without_count_or_ids_and_a_bad_deadline_are_usage_errors(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    fleet = fleet_name("dr")
    try:
        launched(run, "aws", fleet, 1)  # no bootstrap: no agent
        assert "--count N" in run("fleet", "drain", fleet).err
        assert run("fleet", "drain", fleet, "-n", "1", "--deadline", "soon").code == 2
        dry = run("fleet", "drain", fleet, "-n", "1", "--dry-run", "-o", "json")
        assert dry.code == 0 and "carry no agent" in dry.err and dry.json()[0]["asked"] is False, dry.err  # type: ignore[index]
        tags = alive(run, fleet)
        assert len(tags["aws"]) == 1
        listed = run("instance", "list", "--fleet", fleet, "-o", "json").json()
        assert "wlcg:drain-by" not in listed[0]["tags"]  # type: ignore[index]
        assert run("fleet", "drain", "no-such-fleet", "-n", "1").code == 2
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_scale_down_drains_vms_with_an_agent_and_reap_ends_them_once_done(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    from peers.opennebula import POWEROFF

    fleet = fleet_name("dr")
    peer = two_clouds["one"]
    try:
        ids = launched(run, "one", fleet, 3, *PILOT, "--wait")
        unasked = run("fleet", "scale", fleet, "-p", "one", "--count", "1")  # no terminal, no --yes: nothing sent
        assert unasked.code == 2 and "confirmation is needed" in unasked.err, unasked.err
        assert not any(
            i["drain_by"] for i in run("fleet", "show", fleet, "-p", "one", "-o", "json").json()["instances"]
        )  # type: ignore[index,union-attr]
        shrink = run("fleet", "scale", fleet, "-p", "one", "--count", "1", "--deadline", "30m", "--yes", "-o", "json")
        assert shrink.code == 0 and "to drain by" in shrink.err, shrink.err
        rows = shrink.json()
        assert sorted(r["draining"] for r in rows) == [True, True] and all(r["drain_by"] for r in rows), rows  # type: ignore[union-attr,index]
        assert len(alive(run, fleet)["one"]) == 3  # nothing killed: two drain
        assert "would launch 1 more" in run("fleet", "scale", fleet, "-p", "one", "-n", "2", "--dry-run").err
        shown = run("fleet", "show", fleet, "-p", "one", "-o", "json").json()
        draining = sorted(i["id"] for i in shown["instances"] if i["drain_by"])  # type: ignore[index,union-attr]
        assert len(draining) == 2 and set(draining) < set(ids)
        # Nothing to reap yet: the deadline is 30 minutes away and both still work.
        assert run("fleet", "reap", "-p", "one", "--dry-run", "-o", "json").json() == []
        peer.set_state(int(draining[0]), POWEROFF, 0)  # one finished its work and powered itself off
        reaped = run("fleet", "reap", "-p", "one", "--yes", "-o", "json")
        assert reaped.code == 0 and [r["id"] for r in reaped.json()] == [draining[0]], reaped.err  # type: ignore[union-attr]
        # Growing again counts the draining VM out: one more is launched.
        grown = run("fleet", "scale", fleet, "-p", "one", "--count", "2", "--yes", "-o", "json")
        assert grown.code == 0 and grown.json()["launched"] == 1, grown.err  # type: ignore[index,call-overload]
        assert "1 more are draining" in grown.err
        # --now drains nothing: the two that count go at once, the draining one stays to its deadline.
        now = run("fleet", "scale", fleet, "-p", "one", "--count", "0", "--now", "--yes", "-o", "json")
        assert now.code == 0 and all(r["terminated"] for r in now.json()), now.err  # type: ignore[union-attr]
        assert len(now.json()) == 2 and draining[1] in alive(run, fleet)["one"]  # type: ignore[arg-type]
    finally:
        run("fleet", "terminate", fleet, "--yes")


# --------------------------------------------------------------------------- why each VM ended


@pytest.mark.openstack
def test_the_shutdown_message_of_an_ended_vm_is_read_back_on_each_cloud(
    run: Run, world: World, three_clouds: dict[str, Any]
) -> None:
    from peers.opennebula import POWEROFF

    fleets = {p: fleet_name(f"why-{p}") for p in ("aws", "osk", "one")}
    try:
        ids = {p: launched(run, p, f, 1, *PILOT, "--wait")[0] for p, f in fleets.items()}
        # EC2: the line on the serial console, as GetConsoleOutput gives it back.
        three_clouds["aws"].set_console(ids["aws"], "boot...\r\nwlcgcloud-shutdown: 500 Proxy not accepted\r\n")
        three_clouds["aws"].client().stop_instances(InstanceIds=[ids["aws"]])
        # OpenNebula: what the VM's OneGate PUT /vm leaves in its USER_TEMPLATE (oned merges it).
        proxy = xmlrpc.client.ServerProxy(three_clouds["one"].url)
        update = 'WLCG_SHUTDOWN_CODE="300"\nWLCG_SHUTDOWN_MESSAGE="No more work"'
        assert proxy.one.vm.update("atlas:secret", int(ids["one"]), update, 1)[0]  # type: ignore[index]
        three_clouds["one"].set_state(int(ids["one"]), POWEROFF, 0)
        # OpenStack: the fake virt driver's console holds no line: no message, the lifetime decides.
        sdk = openstack_sdk(three_clouds["osk"].password)
        sdk.compute.stop_server(ids["osk"])
        deadline = time.monotonic() + 60
        while sdk.compute.get_server(ids["osk"]).status != "SHUTOFF":
            assert time.monotonic() < deadline
            time.sleep(1)
        expected = {"aws": (500, "Proxy not accepted"), "one": (300, "No more work"), "osk": None}
        for profile, fleet in fleets.items():
            shown = run("fleet", "show", fleet, "-o", "json")
            assert shown.code == 0, shown.err
            [inst] = shown.json()["instances"]  # type: ignore[index,call-overload]
            said = inst["said"]
            assert (said and (said["code"], said["text"])) == (expected[profile] or None), inst
            shown_one = run("instance", "show", ids[profile], "-p", profile, "-o", "json")
            assert shown_one.code == 0, shown_one.err
            one = shown_one.json()
            assert one["said"] == said  # type: ignore[index]
        table = run("fleet", "show", fleets["aws"])
        assert "500 Proxy not accepted" in table.out
        with sqlite3.connect(Path(world.state) / "ledger.sqlite") as db:
            kept = dict(db.execute("SELECT id, end_code FROM instances WHERE end_code IS NOT NULL").fetchall())
        assert kept[ids["aws"]] == 500 and kept[ids["one"]] == 300 and ids["osk"] not in kept
        used = run("usage", "--since", "2d", "--by", "profile,instance", "-v", "-o", "json")
        said = {r["instance"]: r["said"] for r in used.json()["rows"]}  # type: ignore[index]
        assert said[ids["aws"]] == "500 Proxy not accepted" and said[ids["one"]] == "300 No more work", said
        assert said[ids["osk"]] is None
        assert "ENDED SAYING" in run("usage", "--since", "2d", "--by", "instance", "-v").out
    finally:
        terminated(run, fleets.values())


def test_maintain_backs_off_on_300_and_500_with_the_reason_and_not_on_200(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    """Every VM here ends within fizzle_after: by its lifetime alone, each would back the profile off."""
    moto, fleet = two_clouds["aws"], fleet_name("said")
    text = spec_text(fleet, two_clouds["image"], 1, {"aws": "share = 1"}, fizzle_after="1h", backoff="1h")
    text = text.replace('credential = "none"', 'credential = "none"\nbootstrap = "script"', 1)
    text += '[settings]\nPILOT_URL = "https://pilots.example.org/pilot.sh"\n'

    spec = write_spec(world, text)

    def cycle(*extra: str) -> dict[str, Any]:
        result = run("fleet", "maintain", str(spec), "--once", "-o", "json", *extra)
        assert result.code in (0, 7), result.err
        return {p["profile"]: p for p in result.json()["profiles"]}["aws"]  # type: ignore[index,union-attr]

    def end_saying(line: str) -> None:
        [vm] = alive(run, fleet)["aws"]
        moto.set_console(vm, f"Cloud-init finished\n{line}\n")
        moto.client().stop_instances(InstanceIds=[vm])

    try:
        assert cycle()["created"] == 1
        end_saying("wlcgcloud-shutdown: 200 Work completed")
        part = cycle()
        assert part["said"] == {"200 Work completed": 1} and part["judged_by"] == "messages", part
        assert part["backoff_reason"] is None and part["created"] == 1, part
        end_saying("wlcgcloud-shutdown: 300 No more work")
        part = cycle()
        assert "1 VM(s) ended saying 300 No more work" in (part["backoff_reason"] or ""), part
        assert part["created"] == 0
        status = run("fleet", "status", str(spec), "-o", "json").json()
        assert status[0]["judged_by"] == "messages" and status[0]["said"] == {"300 No more work": 1}  # type: ignore[index]
        assert cycle("--reset-backoff")["created"] == 1
        end_saying("wlcgcloud-shutdown: 500 Proxy not accepted")
        part = cycle()
        assert "ended saying 500 Proxy not accepted" in (part["backoff_reason"] or "") and part["created"] == 0, part
        assert cycle("--reset-backoff")["created"] == 1
        end_saying("no shutdown line at all")  # the lifetime rule decides: it ended young
        part = cycle()
        assert part["judged_by"] == "lifetimes" and "ended within 1h" in (part["backoff_reason"] or ""), part
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_what_a_vm_writes_into_its_own_attributes_never_breaks_a_cycle() -> None:
    """OpenNebula VMs may rewrite their USER_TEMPLATE through OneGate: our tags there are its words too."""
    from wlcgcloud import drain
    from wlcgcloud.maintain import _credential_end
    from wlcgcloud.providers.base import Instance

    def vm(**tags: str) -> Instance:
        return Instance("7", "vm", "one", "opennebula", "running", "ACTIVE/RUNNING", tags=tags)

    now = datetime.now(UTC)
    assert drain.overdue([vm(**{"wlcg:drain-by": "9999-12-31T23:59:59Z"})], now) == []  # no overflow
    for odd in ("2026-12-06", "2026-12-06T10:00:00+05:00", "soon", "2026-12-06T10:00:00"):
        assert vm(**{"wlcg:drain-by": odd}).drain_by is None, odd  # only the form we write and the agent reads
    naive = _credential_end(vm(**{"wlcg:credential": "x509 ab12 2026-01-01T00:00:00"}))
    assert naive is not None and naive.tzinfo is not None and naive < now
    for code in ("\u00b200", "\u0663\u0660\u0660", "300; rm -rf /", "3e2"):
        assert from_attributes(code, "x") is None, code


def test_maintain_drains_its_surplus_and_a_drained_vm_that_ends_young_is_no_fizzle(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    moto, fleet = two_clouds["aws"], fleet_name("surplus")

    def spec(target: int) -> Path:
        text = spec_text(fleet, two_clouds["image"], target, {"aws": "share = 1"}, fizzle_after="1h", backoff="1h",
                         drain_deadline="1h")  # fmt: skip
        text = text.replace('credential = "none"', 'credential = "none"\nbootstrap = "script"', 1)
        return write_spec(world, text + '[settings]\nPILOT_URL = "https://pilots.example.org/pilot.sh"\n')

    def cycle(path: Path) -> dict[str, Any]:
        result = run("fleet", "maintain", str(path), "--once", "-o", "json")
        assert result.code in (0, 7), result.err
        return {p["profile"]: p for p in result.json()["profiles"]}["aws"]  # type: ignore[index,union-attr]

    try:
        assert cycle(spec(2))["created"] == 2
        part = cycle(spec(1))
        assert part["draining"] == 1 and part["drained"] == {"surplus": 1} and part["terminated"] == {}, part
        assert part["running"] == 1 and part["created"] == 0, part
        shown = run("fleet", "show", fleet, "-o", "json").json()["instances"]  # type: ignore[index,call-overload]
        [drained] = [i["id"] for i in shown if i["drain_by"]]
        assert len(alive(run, fleet)["aws"]) == 2  # nothing killed: the surplus drains
        part = cycle(spec(1))  # the draining VM is neither surplus again nor replaced
        assert part["draining"] == 1 and part["created"] == 0 and part["terminated"] == {}, part
        moto.client().stop_instances(InstanceIds=[drained])  # done draining, minutes old, no message read
        part = cycle(spec(1))
        assert part["backoff_reason"] is None and part["terminated"] == {"powered off": 1}, part
        assert alive(run, fleet)["aws"] == [i["id"] for i in shown if not i["drain_by"]]
    finally:
        run("fleet", "terminate", fleet, "--yes")
