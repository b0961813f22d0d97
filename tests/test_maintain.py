"""`fleet spec | maintain | status`: fleets held at their target on the real peers, cycle by cycle (--once)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from wlcgcloud.fleet_spec import FleetSpec, Place, parse_spec, targets
from wlcgcloud.ledger import Ledger
from wlcgcloud.times import stamp

from conftest import Run, World, alive, fleet_name, spec_text, write_spec


def cycle(run: Run, spec: Path, *extra: str) -> tuple[int, dict[str, Any], dict[str, dict[str, Any]]]:
    """One `--once` cycle: its exit code, its JSON, and its profiles by name."""
    result = run("fleet", "maintain", str(spec), "--once", "-o", "json", *extra)
    assert result.code in (0, 7), result.err
    data = result.json()
    assert isinstance(data, dict)
    return result.code, data, {p["profile"]: p for p in data["profiles"]}


# --------------------------------------------------------------------------- the spec


SPEC_ERRORS = {
    'fleet = "f"\nimage = "i"\ntarget = 2\ntraget = 3\n[profiles.a]\n':
        ":4: key 'traget': unknown key (did you mean 'target'?)",
    'fleet = "f"\nimage = "i"\ntarget = 2\n[profiles.a]\nshare = 0\n':
        "key 'share' in [profiles.a]: expected a positive",
    'fleet = "f"\nimage = "i"\ntarget = 2\n[profiles.a]\nmaxx = 3\n': "unknown key (did you mean 'max'?)",
    'fleet = "F!"\nimage = "i"\ntarget = 2\n[profiles.a]\n': ":1: key 'fleet': expected the fleet's name",
    'fleet = "f"\nimage = "i"\n[profiles.a]\n[profiles.b]\ntarget = 2\n': "key 'target': missing",
    'fleet = "f"\nimage = "i"\ntarget = 2\nlease = "soon"\n[profiles.a]\n': ":4: key 'lease': 'soon' is not a duration",
    'fleet = "f"\nimage = "i"\ntarget = 2\n[settings]\nPOOL_PASSWORD = "x"\n[profiles.a]\n':
        "a secret setting never sits in a spec",
    'fleet = "f"\nimage = "i"\ntarget = 2\n[profiles.a]\n[maintain]\ncreate_per_cycle = "250%"\n':
        "key 'create_per_cycle' in [maintain]",
    'fleet = "f"\nimage = "i"\ntarget = 2\n[profiles.a]\n[maintain]\nfizzle_share = 0.5\n':
        ":6: key 'fizzle_share' in [maintain]: expected a share of the last VMs",
    'fleet = "f"\nimage = "i"\ntarget = 2\n': "expected [profiles.NAME] tables",
    'fleet = "f"\nimage = "i"\ntarget = 2\n[settings]\nCOLLECTOR = "cm"\n[profiles.a]\n':
        "settings are a bootstrap's: give bootstrap",
    'fleet = "f"\nimage = "i"\nbootstrap = "htcondor"\ntarget = 2\n[settings]\ncolector = "cm"\n[profiles.a]\n':
        "key 'colector' in [settings]: bootstrap 'htcondor' has no such setting (did you mean 'COLLECTOR'?)",
    'fleet = "f"\nimage = "i"\ntarget = 9\n[profiles.a]\nmax = 4\n[profiles.b]\nmax = 4\n':
        "the profiles' max add up to 8, fewer than the target 9",
    'fleet = "f"\nimage = "i"\ntarget = 2\nprofiles.a = 0\n': "expected a table [profiles.NAME]",
    'fleet = "f"\nimage = \n': "TOML syntax error",
}  # fmt: skip


@pytest.mark.parametrize("text", SPEC_ERRORS)
def test_a_bad_spec_is_exit_3_naming_file_line_and_key(run: Run, world: World, text: str) -> None:
    spec = write_spec(world, text)
    result = run("fleet", "maintain", str(spec), "--dry-run")
    assert result.code == 3 and str(spec) in result.err and SPEC_ERRORS[text] in result.err, result.err
    assert "Traceback" not in result.err and spec.read_text() == text


def test_a_missing_spec_and_an_unknown_profile_are_clear(run: Run, world: World) -> None:
    missing = run("fleet", "maintain", str(world.root / "nope.toml"), "--once")
    assert missing.code == 2 and "no such fleet spec" in missing.err and "fleet spec FLEET" in missing.err
    spec = write_spec(world, 'fleet = "f"\nimage = "i"\ntarget = 1\n[profiles.nowhere]\n')
    unknown = run("fleet", "maintain", str(spec), "--once")
    assert unknown.code == 3 and "unknown profile 'nowhere'" in unknown.err


def test_targets_spread_by_share_spill_past_a_max_and_keep_what_an_unusable_profile_holds() -> None:
    spec = FleetSpec("f", "i", 10, (Place("a", 2), Place("b", 1, max=2), Place("c", 1)))
    assert targets(spec, {"a", "b", "c"}, {}) == {"a": 5, "b": 2, "c": 3}  # b's share is 2.5, its max 2
    assert targets(spec, {"a", "c"}, {"b": 4}) == {"a": 4, "b": 4, "c": 2}  # b backs off holding 4: 6 for a and c
    assert targets(spec, {"b"}, {"a": 1, "c": 1}) == {"a": 1, "b": 2, "c": 1}  # b can hold only 2
    assert sum(targets(FleetSpec("f", "i", 7, (Place("a", 1), Place("b", 1))), {"a", "b"}, {}).values()) == 7
    parsed = parse_spec('fleet = "f"\nimage = "i"\n[profiles.a]\ntarget = 3\n[profiles.b]\ntarget = 1\n', Path("s"))
    assert parsed.target == 4 and targets(parsed, {"a", "b"}, {}) == {"a": 3, "b": 1}
    tuned = parse_spec('fleet = "f"\nimage = "i"\nuser_data = "ud.yaml"\ntarget = 1\n[profiles.a]\n[maintain]\n'
                       'fizzle_after = "0s"\nbootstrap = "htcondor"\n'.replace('bootstrap = "htcondor"\n', ""),
                       Path("/etc/wlcgcloud/fleets/atlas.toml"))  # fmt: skip
    assert tuned.tuning.fizzle_after.total_seconds() == 0 and tuned.tuning.backoff.total_seconds() == 120
    assert tuned.options["user_data"] == "/etc/wlcgcloud/fleets/ud.yaml"  # beside the spec, not where it runs


# --------------------------------------------------------------------------- holding a fleet


def test_a_three_cloud_fleet_is_held_at_its_target_through_endings_and_a_smaller_target(
    run: Run, world: World, three_clouds: dict[str, Any]
) -> None:
    fleet = fleet_name()
    image = run("image", "list", "-o", "json").json()[0]["identifier"]  # type: ignore[index]
    text = spec_text(fleet, image, 3, {"aws": "share = 1", "osk": "share = 1", "one": "share = 1"}, fizzle_after="1s")
    spec = write_spec(world, text)
    try:
        code, dry, _ = cycle(run, spec, "--dry-run")
        assert code == 7 and dry["dry_run"] and alive(run, fleet) == {}  # it said what it would do, and did nothing
        assert all(p["decisions"] == ["would create 1"] for p in dry["profiles"])
        code, first, parts = cycle(run, spec)
        assert code == 0 and first["met"], first
        assert {name: p["created"] for name, p in parts.items()} == {"aws": 1, "osk": 1, "one": 1}
        there = alive(run, fleet)
        assert {name: len(ids) for name, ids in there.items()} == {"aws": 1, "osk": 1, "one": 1}
        code, _second, parts = cycle(run, spec)
        assert code == 0 and sum(p["created"] for p in parts.values()) == 0  # at its target: nothing to do
        # Terminated behind its back, on the cloud itself: the next cycle records why, and replaces it.
        three_clouds["aws"].client().terminate_instances(InstanceIds=there["aws"])
        code, third, parts = cycle(run, spec)
        assert code == 0 and parts["aws"]["ended"] == {"terminated": 1} and parts["aws"]["created"] == 1, third
        assert len(alive(run, fleet)["aws"]) == 1 and alive(run, fleet)["aws"] != there["aws"]
        status = run("fleet", "status", str(spec), "-o", "json")
        assert status.code == 0
        rows = {r["profile"]: r for r in status.json()}  # type: ignore[union-attr]
        assert rows["aws"]["ended"] == {"terminated": 1} and rows["aws"]["last_cycle"] == third["started"]
        table = run("fleet", "status", str(spec))
        assert table.code == 0 and "BACKING OFF UNTIL" in table.out and "1 terminated" in table.out
        # A smaller target: the surplus goes, oldest first.
        spec.write_text(text.replace("target = 3", "target = 2"))
        code, fourth, parts = cycle(run, spec)
        assert code == 0 and sum(sum(p["terminated"].values()) for p in parts.values()) == 1, fourth
        assert sum(len(ids) for ids in alive(run, fleet).values()) == 2
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_a_profile_that_cannot_create_backs_off_and_the_others_carry_the_target(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    fleet = fleet_name()
    spec = write_spec(world, spec_text(fleet, two_clouds["image"], 2, {"aws": "share = 1", "broken": "share = 1"},
                                       backoff="1h"))  # fmt: skip
    try:
        code, first, parts = cycle(run, spec)
        assert code == 7 and parts["aws"]["created"] == 1 and parts["broken"]["created"] == 0, first
        assert parts["broken"]["backoff_until"] and "could not create" in parts["broken"]["backoff_reason"]
        code, second, parts = cycle(run, spec)  # broken backs off: its part goes to aws
        assert code == 0 and parts["aws"]["target"] == 2 and parts["aws"]["created"] == 1, second
        assert parts["broken"]["target"] == 0 and parts["broken"]["backoff_until"]
        assert len(alive(run, fleet)["aws"]) == 2
        rows = {r["profile"]: r for r in run("fleet", "status", str(spec), "-o", "json").json()}  # type: ignore[union-attr]
        assert rows["broken"]["backoff_until"] and "could not create" in rows["broken"]["backoff_reason"]
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_vms_that_end_young_back_their_profile_off(run: Run, world: World, two_clouds: dict[str, Any]) -> None:
    fleet = fleet_name()
    spec = write_spec(world, spec_text(fleet, two_clouds["image"], 2, {"aws": "share = 1", "one": "share = 1"},
                                       fizzle_after="1h", backoff="1h"))  # fmt: skip
    try:
        assert cycle(run, spec)[0] == 0
        doomed = alive(run, fleet)["aws"]
        two_clouds["aws"].client().terminate_instances(InstanceIds=doomed)  # it "found no work" at once
        code, data, parts = cycle(run, spec)
        assert parts["aws"]["ended"] == {"terminated": 1} and "ended within 1h" in parts["aws"]["backoff_reason"]
        assert parts["aws"]["created"] == 0 and parts["one"]["target"] == 2 and parts["one"]["created"] == 1, data
        assert code == 0 and len(alive(run, fleet)["one"]) == 2
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_a_few_pilots_without_work_back_nothing_off_but_most_do(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    """fizzle_share: the share of fizzles among the profile's latest VMs whose fate is known decides."""
    from peers.opennebula import POWEROFF

    peer, fleet = two_clouds["one"], fleet_name()
    spec = write_spec(world, spec_text(fleet, two_clouds["image"], 4, {"one": "share = 1"},
                                       fizzle_after="1h", backoff="1h"))  # fmt: skip

    def power_off(ids: list[str]) -> None:  # the pilots ended and shut their VMs down
        for vm in ids:
            peer.set_state(int(vm), POWEROFF, 0)

    try:
        peer.set_time_offset(-7200)  # these four started two hours ago: they found work
        try:
            made = run("launch", two_clouds["image"], "-p", "one", "-n", "4", "--fleet", fleet, "--credential", "none")
            assert made.code == 0, made.err
        finally:
            peer.set_time_offset(0)
        assert cycle(run, spec)[0] == 0  # they lived past fizzle_after: four VMs that worked
        worked = alive(run, fleet)["one"]
        power_off(worked[:3])
        code, data, parts = cycle(run, spec)
        assert parts["one"]["ended"] == {"powered off": 3} and parts["one"]["created"] == 3, data
        young = sorted(set(alive(run, fleet)["one"]) - set(worked))
        power_off(young[:1])  # one of five VMs whose fate is known fizzled: a pilot without work, not a broken site
        code, data, parts = cycle(run, spec)
        assert parts["one"]["backoff_reason"] is None and parts["one"]["created"] == 1, data
        newest = sorted(set(alive(run, fleet)["one"]) - set(worked) - set(young))
        power_off([*young[1:], *newest])  # now four of the eight: half of them
        code, data, parts = cycle(run, spec)
        assert "3 VM(s) ended within 1h of starting, 50% of the last 8" in (parts["one"]["backoff_reason"] or ""), data
        assert parts["one"]["created"] == 0 and code == 7
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_one_maintainer_per_fleet(run: Run, world: World, two_clouds: dict[str, Any]) -> None:
    fleet = fleet_name()
    spec = write_spec(world, spec_text(fleet, two_clouds["image"], 1, {"aws": "share = 1"}))
    other = Ledger(world.state / "ledger.sqlite")
    try:
        with other.fleet_lock([fleet], "wlcgcloud fleet maintain"):
            refused = run("fleet", "maintain", str(spec), "--once")
        assert refused.code == 2 and f"fleet '{fleet}' is being changed by" in refused.err, refused.err
        assert "'wlcgcloud fleet maintain'" in refused.err and alive(run, fleet) == {}
        twice = run("fleet", "maintain", str(spec), str(spec), "--once")
        assert twice.code == 2 and "one maintainer holds one fleet" in twice.err
    finally:
        other.close()


def test_fleet_spec_writes_what_maintain_holds(
    run: Run, world: World, two_clouds: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = fleet_name()
    launched = run("launch", two_clouds["image"], "-p", "aws", "-n", "2", "--fleet", fleet, "--credential", "none",
                   "-o", "json", "--bootstrap", "htcondor",
                   "--set", "COLLECTOR=cm.example.org", "--set", "POOL_TOKEN=hunter2")  # fmt: skip
    assert launched.code == 0, launched.err
    try:
        written = run("fleet", "spec", fleet)
        assert written.code == 0 and "hunter2" not in written.out and "POOL_TOKEN" in written.out  # named, not kept
        spec = write_spec(world, written.out)
        parsed = parse_spec(written.out, spec)
        assert (parsed.fleet, parsed.image, parsed.target) == (fleet, two_clouds["image"], 2)
        assert parsed.profiles() == ["aws"]
        assert parsed.settings == {"COLLECTOR": "cm.example.org"}
        code, data, parts = cycle(run, spec, "--set", "POOL_TOKEN=hunter2")
        assert code == 0 and parts["aws"]["created"] == 0 and data["alive"] == 2, data
        as_json = run("fleet", "spec", fleet, "-o", "json").json()
        assert isinstance(as_json, dict) and as_json["profiles"] == {"aws": {"target": 2, "flavor": "m5.large"}}
        # A secret setting can come from the environment (a systemd EnvironmentFile), never from the spec.
        spec.write_text(written.out.replace("target = 2", "target = 3", 1))
        monkeypatch.setenv("WLCGCLOUD_SET_POOL_TOKEN", "from-the-environment")
        code, data, parts = cycle(run, spec)
        assert code == 0 and parts["aws"]["created"] == 1, data
        newest = set(alive(run, fleet)["aws"]) - set(launched.json()["instances"][i]["id"] for i in range(2))  # type: ignore[index]
        user_data = (
            two_clouds["aws"].client().describe_instance_attribute(InstanceId=newest.pop(), Attribute="userData")
        )
        assert b"from-the-environment" in base64.b64decode(user_data["UserData"]["Value"])
        assert run("fleet", "spec", "no-such-fleet").code == 2
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_credentials_are_rotated_and_a_short_one_creates_nothing(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    """VMs whose token ends within the margin are replaced, a few a cycle, by VMs with the current token;
    a current token shorter than the margin stops creation (exit 5) and leaves the running VMs alone."""
    from datetime import timedelta

    from peers.proxies import make_token, write_private

    fleet = fleet_name()
    old, new, short = (world.root / name for name in ("old.token", "new.token", "short.token"))
    write_private(old, make_token(timedelta(hours=1)))
    write_private(new, make_token(timedelta(hours=12)))
    write_private(short, make_token(timedelta(minutes=90)))
    launched = run("launch", two_clouds["image"], "-p", "aws", "-n", "2", "--fleet", fleet, "--credential", "token",
                   "--token-file", str(old), "--min-lifetime", "10m", "-o", "json")  # fmt: skip
    assert launched.code == 0, launched.err
    first = {i["id"]: i["tags"]["wlcg:credential"] for i in launched.json()["instances"]}  # type: ignore[index]
    text = spec_text(fleet, two_clouds["image"], 2, {"aws": "share = 1"}, credential_margin="2h")
    spec = write_spec(world, text.replace('credential = "none"', 'credential = "token"'))
    try:
        refused = run("fleet", "maintain", str(spec), "--once", "-o", "json", "--token-file", str(short))
        assert refused.code == 5 and "creating nothing" in refused.err, refused.err
        assert refused.json()["profiles"][0]["created"] == 0 and set(alive(run, fleet)["aws"]) == set(first)  # type: ignore[index]
        seen = []
        for _ in range(2):  # one retired and replaced a cycle (half of create_per_cycle): never all at once
            code, data, parts = cycle(run, spec, "--token-file", str(new))
            assert code == 0 and parts["aws"]["terminated"] == {"credential": 1} and parts["aws"]["created"] == 1, data
            seen.append(set(alive(run, fleet)["aws"]))
            assert len(seen[-1]) == 2
        listed = run("instance", "list", "--fleet", fleet, "-o", "json").json()
        now = {i["id"]: i["tags"]["wlcg:credential"] for i in listed if i["state"] in ("pending", "running")}  # type: ignore[union-attr]
        assert not set(now) & set(first) and len(set(now.values())) == 1  # every VM carries the new token
        assert set(now.values()).isdisjoint(first.values())
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_a_vm_the_cloud_no_longer_lists_is_recorded_gone_and_replaced(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    import sqlite3
    import xmlrpc.client

    fleet = fleet_name()
    spec = write_spec(world, spec_text(fleet, two_clouds["image"], 1, {"one": "share = 1"}, fizzle_after="1s"))
    try:
        assert cycle(run, spec)[0] == 0
        [vm] = alive(run, fleet)["one"]
        peer = xmlrpc.client.ServerProxy(two_clouds["one"].url)
        assert peer.one.vm.action("atlas:secret", "terminate-hard", int(vm))[0]  # OpenNebula lists it no more
        code, data, parts = cycle(run, spec)
        # Seconds after it was last seen, a VM missing from a listing may only be late (EC2's are eventually
        # consistent): not yet "gone", but no longer counted either, so its replacement is made now.
        assert code == 0 and parts["one"]["ended"] == {} and parts["one"]["created"] == 1, data
        db = sqlite3.connect(world.state / "ledger.sqlite")
        db.execute("UPDATE instances SET last_seen = '2026-01-01T00:00:00Z' WHERE id = ?", (vm,))
        db.commit()
        db.close()
        code, data, parts = cycle(run, spec)
        assert code == 0 and parts["one"]["ended"] == {"gone": 1} and parts["one"]["created"] == 0, data
        db = sqlite3.connect(world.state / "ledger.sqlite")
        [(ended, state)] = db.execute("SELECT ended_at, last_state FROM instances WHERE id = ?", (vm,)).fetchall()
        db.close()
        assert ended and state == "gone"
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_vms_past_their_lease_are_terminated_and_replaced(run: Run, world: World, two_clouds: dict[str, Any]) -> None:
    import time

    fleet = fleet_name()
    text = spec_text(fleet, two_clouds["image"], 1, {"aws": "share = 1"}, fizzle_after="1s")
    spec = write_spec(world, text.replace('credential = "none"', 'credential = "none"\nlease = "2s"'))
    try:
        assert cycle(run, spec)[0] == 0
        [first] = alive(run, fleet)["aws"]
        time.sleep(2.5)  # the lease is tagged to the second
        code, data, parts = cycle(run, spec)
        assert code == 0 and parts["aws"]["terminated"] == {"lease over": 1} and parts["aws"]["created"] == 1, data
        assert alive(run, fleet)["aws"] != [first]
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_while_a_profile_does_not_answer_the_others_carry_the_target_and_nothing_working_is_killed(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    from conftest import ec2_profile, one_profile, write_profiles

    fleet = fleet_name()
    spec = write_spec(world, spec_text(fleet, two_clouds["image"], 2, {"aws": "share = 1", "one": "share = 1"}))
    aws = ec2_profile(two_clouds["aws"], flavor="m5.large", experiment="atlas")
    one = one_profile(two_clouds["one"], vm_template="atlas-wn")
    try:
        assert cycle(run, spec)[0] == 0
        # The OpenNebula front-end goes away: the fleet's other profile carries the whole target meanwhile.
        write_profiles(world, {"aws": aws, "one": {**one, "endpoint": "http://127.0.0.1:9/RPC2"}})
        code, data, parts = cycle(run, spec)
        assert code == 7 and parts["one"]["error"] and parts["one"]["backoff_until"], data
        assert parts["aws"]["target"] == 2 and parts["aws"]["created"] == 1 and len(alive(run, fleet)["aws"]) == 2
        # Back, with its VM still there: three for a target of two. One goes, oldest first, and never while
        # some profile is silent (its VMs may be there): here all answer, so the surplus is cut now.
        write_profiles(world, {"aws": aws, "one": one})
        code, data, parts = cycle(run, spec, "--reset-backoff")
        assert code == 0 and sum(sum(p["terminated"].values()) for p in parts.values()) == 1, data
        assert sum(len(ids) for ids in alive(run, fleet).values()) == 2
    finally:
        write_profiles(world, {"aws": aws, "one": one})
        run("fleet", "terminate", fleet, "--yes")


def test_fleet_spec_holds_what_each_profile_holds_after_a_spread_launch_and_a_shrink(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    fleet = fleet_name()
    launched = run("launch", two_clouds["image"], "-p", "aws", "-p", "one", "--spread", "-n", "3", "--fleet", fleet,
                   "--credential", "none", "--lease", "48h", "-o", "json")  # fmt: skip
    assert launched.code == 0, launched.err
    split = {p["profile"]: p["launched"] for p in launched.json()["profiles"]}  # type: ignore[index]
    try:
        written = parse_spec(run("fleet", "spec", fleet).out, world.root / "s.toml")
        assert written.target == 3 and {p.profile: int(p.share) for p in written.places} == split
        assert (
            written.options["lease"].total_seconds() == 48 * 3600 and 'lease = "48h"' in run("fleet", "spec", fleet).out
        )
        bigger = max(split, key=lambda name: split[name])
        assert run("fleet", "scale", fleet, "-p", bigger, "--count", "1", "--yes").code == 0
        shrunk = parse_spec(run("fleet", "spec", fleet).out, world.root / "s.toml")
        assert shrunk.target == 3 - split[bigger] + 1
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_a_cycle_lists_each_profile_once_and_its_launch_counts_that_listing(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    """Listing 2,000 VMs takes seconds: the launch of a cycle counts the cycle's own listing (it holds the
    fleet's lock), less what the cycle terminated, instead of listing the fleet again."""
    peer, fleet = two_clouds["one"], fleet_name()
    spec = write_spec(world, spec_text(fleet, two_clouds["image"], 3, {"one": "share = 1"}))
    try:
        before = peer.calls()
        assert cycle(run, spec)[2]["one"]["created"] == 3
        listings = {m: n - before.get(m, 0) for m, n in peer.calls().items() if m.startswith("one.vmpool.info")}
        assert sum(listings.values()) == 2, listings  # the cycle's, and create's look for an earlier attempt
        code, data, parts = cycle(run, spec)
        assert code == 0 and parts["one"]["created"] == 0 and len(alive(run, fleet)["one"]) == 3, data
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_a_spec_given_a_new_image_rolls_the_fleet_over_a_few_vms_a_cycle(
    run: Run, world: World, two_clouds: dict[str, Any], endorsed: dict[str, Any]
) -> None:
    from conftest import own_marked_ami

    # The new image has a copy there too: on the session's moto, so it goes again at the end (other tests
    # rely on the second endorsed image having no copy).
    client = two_clouds["aws"].client()
    second = own_marked_ami(client, endorsed["second"])
    fleet = fleet_name()
    text = spec_text(fleet, endorsed["first"], 2, {"aws": "share = 1"})
    spec = write_spec(world, text)
    try:
        assert cycle(run, spec)[0] == 0
        old = set(alive(run, fleet)["aws"])
        spec.write_text(text.replace(endorsed["first"], endorsed["second"]))
        for _ in range(2):  # one retired and replaced a cycle (half of create_per_cycle): never all at once
            code, data, parts = cycle(run, spec)
            assert code == 0 and parts["aws"]["terminated"] == {"image replaced": 1}, data
            assert parts["aws"]["created"] == 1 and len(alive(run, fleet)["aws"]) == 2
        listed = run("instance", "list", "--fleet", fleet, "-o", "json").json()
        now = {i["id"]: i["tags"]["wlcg:image"] for i in listed if i["state"] in ("pending", "running")}  # type: ignore[union-attr]
        assert not set(now) & old and set(now.values()) == {endorsed["second"]}, now
        code, data, parts = cycle(run, spec)
        assert code == 0 and parts["aws"]["terminated"] == {} and parts["aws"]["created"] == 0, data
    finally:
        run("fleet", "terminate", fleet, "--yes")
        client.deregister_image(ImageId=second)


def test_a_proxy_near_its_end_is_rotated_onto_the_renewed_one_a_vm_a_cycle(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    from peers.proxies import make_grid

    grid, fqan = make_grid(world.root / "grid"), "/atlas/Role=NULL/Capability=NULL"
    old = grid.voms_proxy(world.root / "x509up_old", "atlas", fqan, hours=1, voms_hours=1)
    new = grid.voms_proxy(world.root / "x509up_new", "atlas", fqan, hours=12, voms_hours=12)
    fleet = fleet_name()
    launched = run("launch", two_clouds["image"], "-p", "aws", "-n", "2", "--fleet", fleet, "--credential", "x509",
                   "--proxy", str(old), "--min-lifetime", "10m", "-o", "json")  # fmt: skip
    assert launched.code == 0, launched.err
    first = {i["id"]: i["tags"]["wlcg:credential"] for i in launched.json()["instances"]}  # type: ignore[index]
    text = spec_text(fleet, two_clouds["image"], 2, {"aws": "share = 1"}, credential_margin="2h")
    spec = write_spec(world, text.replace('credential = "none"', 'credential = "x509"'))
    try:
        for _ in range(2):  # the proxy ends within the margin: one VM a cycle, replaced in the same cycle
            code, data, parts = cycle(run, spec, "--proxy", str(new))
            assert code == 0 and parts["aws"]["terminated"] == {"credential": 1} and parts["aws"]["created"] == 1, data
            assert len(alive(run, fleet)["aws"]) == 2  # never below the target
        listed = run("instance", "list", "--fleet", fleet, "-o", "json").json()
        now = {i["id"]: i["tags"]["wlcg:credential"] for i in listed if i["state"] in ("pending", "running")}  # type: ignore[union-attr]
        assert not set(now) & set(first) and {v.split()[0] for v in now.values()} == {"x509"}
        assert set(now.values()).isdisjoint(first.values()) and len(set(now.values())) == 1
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_an_experiment_out_of_work_backs_off_however_many_vms_a_cycle_makes() -> None:
    """20 VMs made a cycle, each ending 6-9 minutes after it started: the 20 ending now are fizzles, while
    the 20 made since are too young to say. Their fates, not the newest VMs, decide (fizzle_after 10m)."""
    from datetime import UTC, datetime, timedelta

    from wlcgcloud.cycle_state import ProfileCycle
    from wlcgcloud.maintain import _fizzled, _judge

    def judged(lives: dict[str, float]) -> dict[str, bool]:  # no message: each VM's lifetime decides
        return {i: _fizzled(lived, None, 600.0) for i, lived in lives.items()}

    now = datetime(2026, 12, 1, 12, tzinfo=UTC)

    def row(n: int, minutes_ago: int) -> dict[str, Any]:
        return {"id": f"vm-{n}", "launched_at": stamp(now - timedelta(minutes=minutes_ago)), "ended_at": None}

    part = ProfileCycle("aws", last_cycle=stamp(now - timedelta(minutes=5)))
    rows = [row(n, 8) for n in range(20)] + [row(n, 3) for n in range(20, 40)]  # the batch before, and the last
    lives = {f"vm-{n}": 8 * 60.0 for n in range(20)}  # the batch before ended by itself at 8 minutes
    assert _judge(part, lives, judged(lives), rows, 600.0, now.timestamp()) == 1.0 and part.fates == [1] * 10
    # Pilots that found work: VMs made 10-15 minutes ago that still run are fates too, and outweigh two fizzles.
    busy = ProfileCycle("aws", last_cycle=stamp(now - timedelta(minutes=5)))
    rows = [row(n, 12) for n in range(18)] + [row(18, 8), row(19, 8)]
    two = {"vm-18": 480.0, "vm-19": 480.0}
    assert _judge(busy, two, judged(two), rows, 600.0, now.timestamp()) == 0.2
    # A VM the maintainer itself ended young (retired: its ended_at is in the ledger) is no fate at all.
    retired = ProfileCycle("aws", last_cycle=stamp(now - timedelta(minutes=5)))
    gone = {**row(0, 12), "ended_at": stamp(now - timedelta(minutes=11))}
    assert _judge(retired, {}, {}, [gone], 600.0, now.timestamp()) == 0.0 and retired.fates == []
