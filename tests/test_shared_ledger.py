"""Several machines share one PostgreSQL ledger: fleet locks, resuming after a kill, a database restart,
and every way the ledger can be unusable, all through the real command in subprocesses.

A "machine" is a HOME, XDG directories, a state directory and a config.toml of its own (the same
profiles), all pointing at one database on the session's PostgreSQL peer (TLS, scram passwords)
through WLCGCLOUD_LEDGER and WLCGCLOUD_LEDGER_PASSWORD (or config.toml's `ledger`). The cloud is
this module's own moto server behind a FaultProxy, which holds RunInstances calls to make them
overlap and counts every call that reached the cloud.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import tomlkit
from peers.faultproxy import Fault, FaultProxy
from peers.postgres import Database, PostgresServer, free_port

from wlcgcloud.ledger import FleetLocked, Ledger

from conftest import World, ec2_profile, own_marked_ami

WLCGCLOUD = str(Path(sys.executable).with_name("wlcgcloud"))
AMI = "ami-03cf127a"  # one of moto's own images: launched with --allow-unendorsed
RUN_INSTANCES = "Action=RunInstances"
NO_PSYCOPG = "import sys; sys.modules['psycopg'] = None; from wlcgcloud.__main__ import main; sys.exit(main())"


@dataclass
class Machine:
    """One machine: its own HOME, state and config; the command runs there in a subprocess."""

    name: str
    root: Path
    config: Path
    env: dict[str, str]

    def start(self, *args: str, python: str | None = None) -> subprocess.Popen[str]:
        command = [sys.executable, "-c", python, *args] if python else [WLCGCLOUD, *args]
        return subprocess.Popen(command, env=self.env, cwd=self.root, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    def run(self, *args: str, python: str | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.start(*args, python=python)
        try:
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@dataclass
class Cloud:
    """The module's moto server, a fault proxy in front of it, and the profiles that reach it through the proxy."""

    moto: Any
    proxy: FaultProxy

    def profiles(self, timeout: int = 10) -> dict[str, dict[str, Any]]:
        settings = ec2_profile(self.moto, endpoint_url=self.proxy.url, flavor="m5.large", experiment="atlas",
                               timeout=timeout, site_name="WLCG-TEST-SITE")  # fmt: skip
        return {"aws": settings}

    def hold_run_instances(self, seconds: float) -> None:
        self.proxy.always(Fault("delay", seconds=seconds, match=RUN_INSTANCES))

    def fleet(self, name: str) -> list[str]:
        """The ids of the fleet's instances that the cloud has and that are not terminated (asked directly)."""
        client = self.moto.client()
        found = client.describe_instances(Filters=[{"Name": "tag:wlcg:fleet", "Values": [name]}])
        return sorted(i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]
                      if i["State"]["Name"] not in ("terminated", "shutting-down"))  # fmt: skip

    def calls(self) -> int:
        """How many requests reached the proxy, for the cloud, at all."""
        return len(self.proxy.requests)


@pytest.fixture
def cloud(moto_own: Any) -> Iterator[Cloud]:
    with FaultProxy(moto_own.url, preserve_host=True) as proxy:
        yield Cloud(moto_own, proxy)


@pytest.fixture
def shared(pg_database: Database, monkeypatch: pytest.MonkeyPatch) -> Database:
    """A fresh shared ledger; this test process may open it too (`Ledger(shared.url)`)."""
    monkeypatch.setenv("WLCGCLOUD_LEDGER_PASSWORD", pg_database.password)
    return pg_database


def machine(
    world: World,
    name: str,
    cloud: Cloud,
    *,
    ledger: str | None = None,
    password: str | None = None,
    config_ledger: str | None = None,
    timeout: int = 10,
    state: Path | None = None,
) -> Machine:
    """A machine with its own HOME and state (or the world's `state`, with its image list subscriptions);
    `ledger` goes in WLCGCLOUD_LEDGER, `config_ledger` in config.toml."""
    root = world.root / name
    home = root / "home"
    home.mkdir(parents=True)
    config = home / ".config" / "wlcgcloud" / "config.toml"
    doc = tomlkit.document()
    if config_ledger is not None:
        doc["ledger"] = config_ledger
    doc["profiles"] = cloud.profiles(timeout)
    config.parent.mkdir(parents=True)
    config.write_text(tomlkit.dumps(doc))
    config.chmod(0o600)
    env = world.env()
    env.update({
        "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_STATE_HOME": str(home / ".local/state"),
        "WLCGCLOUD_STATE_DIR": str(state or root / "state"), "WLCG_TEST_KEYRING": str(root / "keyring.json"),
        "WLCGCLOUD_SECRET_AWS": cloud.moto.secret_key,
    })  # fmt: skip
    for variable in ("WLCGCLOUD_LEDGER", "WLCGCLOUD_LEDGER_PASSWORD"):
        env.pop(variable, None)
    if ledger is not None:
        env["WLCGCLOUD_LEDGER"] = ledger
    if password is not None:
        env["WLCGCLOUD_LEDGER_PASSWORD"] = password
    return Machine(name, root, config, env)


def launch(fleet: str, count: int, *extra: str) -> list[str]:
    return ["launch", AMI, "--allow-unendorsed", "--credential", "none", "-p", "aws", "-n", str(count),
            "--fleet", fleet, *extra]  # fmt: skip


def fleet_name(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"  # the moto server is the module's: every test's fleets are its own


def wait_for(condition: Any, what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def ended(procs: list[subprocess.Popen[str]]) -> list[tuple[subprocess.Popen[str], str, str]]:
    """Each process with its stdout and stderr once it ended; none is left running, whatever happens."""
    try:
        return [(p, *p.communicate(timeout=90)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


# --------------------------------------------------------------------------- several writers


def test_five_machines_launch_one_fleet_at_once_and_exactly_one_does(
    world: World, cloud: Cloud, shared: Database, postgres_server: PostgresServer
) -> None:
    """Five launches of the same fleet at the same moment: one launches all of it, four are refused naming it."""
    fleet, count = fleet_name("five"), 6
    cloud.hold_run_instances(5.0)  # the winner holds the lock this long after all started (~1 s apart)
    machines = [machine(world, f"m{n}", cloud, ledger=shared.url, password=shared.password, timeout=10)
                for n in range(5)]  # fmt: skip
    procs = [m.start(*launch(fleet, count)) for m in machines]
    results = ended(procs)
    codes = sorted(p.returncode for p, _, _ in results)
    assert codes == [0, 2, 2, 2, 2], [(p.returncode, err) for p, _, err in results]
    [(winner, _, won)] = [(p, out, err) for p, out, err in results if p.returncode == 0]
    assert f"started {count}." in won and "found" not in won, won
    refusals = [err for p, _, err in results if p.returncode == 2]
    for err in refusals:
        assert f"error: fleet '{fleet}' is being changed by " in err, err
        assert f"(pid {winner.pid}, 'wlcgcloud launch') since " in err, err
        assert f"(ledger postgresql://{shared.user}@127.0.0.1:{postgres_server.port}/{shared.name})" in err, err
        assert "--wait-lock" in err and shared.password not in err
    assert any("with calls on the wire on profile(s) aws" in err for err in refusals), refusals
    assert len(cloud.fleet(fleet)) == count
    assert len(cloud.proxy.bodies(RUN_INSTANCES)) == 1  # the losers never reached the cloud's RunInstances
    ledger = Ledger(shared.url)
    try:
        [record] = ledger.launches(fleet)
        assert (record.state, record.requested, record.error) == ("launched", count, None)
        assert record.owner is not None and record.owner.endswith(f":{winner.pid}")
        assert sorted(r["id"] for r in ledger.instances(fleet=fleet)) == cloud.fleet(fleet)
        assert ledger.locks() == []
    finally:
        ledger.close()


def test_a_launch_killed_on_one_machine_is_resumed_from_another_without_duplicates(
    world: World, cloud: Cloud, shared: Database
) -> None:
    """SIGKILL of the lock holder while its RunInstances is held in the proxy; another machine runs the same launch."""
    fleet, count = fleet_name("killed"), 6
    cloud.hold_run_instances(2.0)  # below the timeout: the call still reaches the cloud after its sender died
    first = machine(world, "a", cloud, ledger=shared.url, password=shared.password, timeout=4)
    # The other machine names the ledger in its config.toml, not in the environment.
    other = machine(world, "b", cloud, config_ledger=shared.url, password=shared.password, timeout=4)
    victim = first.start(*launch(fleet, count))
    try:
        wait_for(lambda: cloud.proxy.bodies(RUN_INSTANCES) or victim.poll() is not None, "RunInstances")
        assert victim.poll() is None, victim.communicate()
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    assert cloud.fleet(fleet) == []  # the call is still held: nothing exists yet
    ledger = Ledger(shared.url)
    try:
        [killed] = ledger.launches(fleet)
        assert killed.state == "intent" and killed.calls_until is not None and killed.owner
        assert killed.owner.endswith(f":{victim.pid}")
    finally:
        ledger.close()
    again = other.run(*launch(fleet, count))
    assert again.returncode == 0, again.stderr
    # It waited for the dead launch's calls to land, then found them: nothing is launched twice.
    assert "for calls of an interrupted launch to land" in again.stderr, again.stderr
    assert f"fleet {fleet}: {count} requested; found {count} of an earlier run, started 0." in again.stderr
    assert len(cloud.fleet(fleet)) == count
    assert len(cloud.proxy.bodies(RUN_INSTANCES)) == 1
    ledger = Ledger(shared.url)
    try:
        assert [r.state for r in ledger.launches(fleet)] == ["adopted", "launched"]
        assert sorted(r["id"] for r in ledger.instances(fleet=fleet)) == cloud.fleet(fleet)
        assert ledger.locks() == []
    finally:
        ledger.close()
    assert not (other.root / "state" / "ledger.sqlite").exists()  # the shared ledger, not a local one


def test_the_ledger_restarting_mid_launch_is_reconnected_and_loses_nothing(
    world: World, cloud: Cloud, shared: Database, postgres_server: PostgresServer
) -> None:
    """PostgreSQL restarts while the launch's RunInstances is held: the launch reconnects, re-takes its lock, ends 0."""
    fleet, count = fleet_name("restarted"), 4
    cloud.hold_run_instances(4.0)
    host = machine(world, "a", cloud, ledger=shared.url, password=shared.password, timeout=8)
    proc = host.start(*launch(fleet, count, "-o", "json"))
    try:
        wait_for(lambda: cloud.proxy.bodies(RUN_INSTANCES) or proc.poll() is not None, "RunInstances")
        before = postgres_server.sql("SELECT pid FROM pg_stat_activity WHERE datname = %s", (shared.name,))
        assert len(before) == 1 and proc.poll() is None  # the launch's one connection; its calls are held
        postgres_server.restart()
        assert proc.poll() is None, "the launch ended before the restart was over: the test proves nothing"
        # Its next heartbeat finds the connection lost, opens a new one and takes the fleet's lock again.
        watcher = Ledger(shared.url)
        try:
            wait_for(lambda: [lock["pid"] for lock in watcher.locks()] == [proc.pid], "the lock taken again", 20)
            with pytest.raises(FleetLocked, match=f"pid {proc.pid}"), watcher.fleet_lock([fleet], "wlcgcloud launch"):
                pass
            assert proc.poll() is None
        finally:
            watcher.close()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    data = json.loads(out)
    assert (data["launched"], data["failed"], data["uncertain"]) == (count, 0, 0)
    made = sorted(i["id"] for i in data["instances"])
    assert made == cloud.fleet(fleet)
    ledger = Ledger(shared.url)
    try:
        [record] = ledger.launches(fleet)
        assert record.state == "launched" and record.finished and record.error is None and record.calls_until is None
        rows = ledger.instances(fleet=fleet)
        assert sorted(r["id"] for r in rows) == made and {r["launch_id"] for r in rows} == {record.id}
        assert ledger.locks() == []
        assert ledger.status()["locks_held"] == 0
    finally:
        ledger.close()


def test_a_launch_whose_lock_was_taken_while_its_connection_was_down_stops_and_says_so(
    world: World, cloud: Cloud, shared: Database, postgres_server: PostgresServer
) -> None:
    """The server cuts the holder's connection and another client takes the fleet before the holder is back:
    the holder records what it made, stops, and exits non-zero naming the lost lock (it never carries on)."""
    fleet = fleet_name("stolen")
    cloud.hold_run_instances(4.0)
    host = machine(world, "a", cloud, ledger=shared.url, password=shared.password, timeout=8)
    thief = Ledger(shared.url)
    proc = host.start(*launch(fleet, 2, "-o", "json"))
    try:
        wait_for(lambda: cloud.proxy.bodies(RUN_INSTANCES) or proc.poll() is not None, "RunInstances")
        [(session,)] = postgres_server.sql("SELECT session FROM fleet_locks", dbname=shared.name)
        postgres_server.sql("SELECT pg_terminate_backend(%s)", (session,))
        with thief.fleet_lock([fleet], "wlcgcloud fleet terminate", wait=3):
            out, err = proc.communicate(timeout=60)
    finally:
        thief.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 7, err  # partial: what it made is there, and it did not end as it should
    assert f"lost the lock of fleet '{fleet}'" in err and "took the fleet meanwhile" in err, err
    data = json.loads(out)
    assert data["instances"] and sorted(i["id"] for i in data["instances"]) == cloud.fleet(fleet)
    ledger = Ledger(shared.url)
    try:
        [record] = ledger.launches(fleet)
        assert record.state == "partial" and "lost the lock" in (record.error or "")
        assert sorted(r["id"] for r in ledger.instances(fleet=fleet)) == cloud.fleet(fleet)  # recorded all the same
    finally:
        ledger.close()


def _filtered_listing(method: str, path: str, body: bytes) -> bool:
    """DescribeInstances by the fleet's tag (a listing), not by id."""
    return b"Action=DescribeInstances" in body and b"Filter" in body and b"InstanceId" not in body


LAGGING_LISTING = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/'
    '2016-11-15/"><requestId>lag</requestId><reservationSet/></DescribeInstancesResponse>'
)


def test_a_rerun_on_another_machine_counts_what_the_listing_does_not_show_yet(
    world: World, cloud: Cloud, shared: Database
) -> None:
    """EC2's listings are eventually consistent: a launch that waited for the lock lists the fleet seconds after
    the holder made it. What the shared ledger saw made moments ago is asked for by id, never made twice."""
    fleet, count = fleet_name("lagging"), 3
    first = machine(world, "a", cloud, ledger=shared.url, password=shared.password)
    assert first.run(*launch(fleet, count)).returncode == 0
    made = cloud.fleet(fleet)
    assert len(made) == count
    cloud.proxy.plan(Fault("status", status=200, body=LAGGING_LISTING, match=_filtered_listing,
                           headers={"Content-Type": "text/xml"}))  # fmt: skip
    second = machine(world, "b", cloud, ledger=shared.url, password=shared.password)
    again = second.run(*launch(fleet, count, "-o", "json"))
    assert again.returncode == 0, again.stderr
    assert cloud.proxy.pending() == 0  # the lagging listing was given: the fleet looked empty to the listing
    data = json.loads(again.stdout)
    assert (data["launched"], data["resumed"]) == (0, count) and cloud.fleet(fleet) == made
    assert sum(b"Action=RunInstances" in b for b in cloud.proxy.bodies()) == 1


# --------------------------------------------------------------------------- a ledger that cannot be used
#
# These launch an endorsed image, whose plan asks the cloud (the image's copy on the profile): so
# "no call reached the cloud" proves the ledger was opened, and refused, before the plan.


@pytest.fixture
def endorsed_image(endorsed: dict[str, Any], cloud: Cloud) -> str:
    """The identifier of an endorsed image (subscribed in the world's state) that the cloud holds a copy of."""
    own_marked_ami(cloud.moto.client(), endorsed["first"])
    return str(endorsed["first"])


def endorsed_launch(image: str, fleet: str, count: int = 2) -> list[str]:
    return ["launch", image, "--credential", "none", "-p", "aws", "-n", str(count), "--fleet", fleet]


def closed_port_url(server: PostgresServer, user: str = "ops") -> tuple[str, str]:
    """A ledger URL where nothing listens, and how messages show it."""
    port = free_port()
    shown = f"postgresql://{user}@127.0.0.1:{port}/wlcg"
    return f"{shown}?sslmode=verify-full&sslrootcert={server.ca_file}", shown


def test_an_unreachable_ledger_stops_the_launch_before_any_cloud_call(
    world: World, cloud: Cloud, postgres_server: PostgresServer, endorsed_image: str
) -> None:
    url, shown = closed_port_url(postgres_server)
    host = machine(world, "a", cloud, ledger=url, password="never-sent-anywhere", state=world.state)
    command = endorsed_launch(endorsed_image, fleet_name("unreachable"))
    result = host.run(*command)
    assert result.returncode == 6, result.stderr
    assert f"error: the ledger {shown} cannot be reached (" in result.stderr, result.stderr
    assert "sslrootcert" not in result.stderr and "never-sent-anywhere" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert cloud.calls() == 0  # refused before the plan: the cloud was not asked anything
    # With a ledger that opens (the local one), the same launch's plan does ask the cloud first (refused here,
    # to stop it at once): so the count above could have failed.
    refusal = ('<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>AuthFailure</Code>'
               "<Message>no</Message></Error></Errors><RequestID>r-1</RequestID></Response>")  # fmt: skip
    cloud.proxy.plan(Fault("status", status=401, headers={"Content-Type": "text/xml"}, body=refusal,
                           match="Action=DescribeImages"))  # fmt: skip
    local = machine(world, "local", cloud, state=world.state).run(*command)
    assert local.returncode == 4 and cloud.proxy.bodies()[0].startswith(b"Action=DescribeImages"), local.stderr


def test_a_wrong_or_missing_password_and_a_password_in_the_config_are_refused_without_showing_it(
    world: World, cloud: Cloud, shared: Database, endorsed_image: str
) -> None:
    command = endorsed_launch(endorsed_image, fleet_name("refused"))
    wrong = "Wr0ng-" + uuid.uuid4().hex
    refused = machine(world, "wrong", cloud, ledger=shared.url, password=wrong, state=world.state).run(*command)
    assert refused.returncode == 4, refused.stderr
    assert "refused the password (from environment WLCGCLOUD_LEDGER_PASSWORD;" in refused.stderr, refused.stderr
    # No password anywhere: not in the environment, the keyring or the config, and a HOME without ~/.pgpass.
    bare = machine(world, "bare", cloud, ledger=shared.url, state=world.state)
    assert not (bare.root / "home" / ".pgpass").exists() and "PGPASSWORD" not in bare.env
    missing = bare.run(*command)
    assert missing.returncode == 3, missing.stderr
    assert "asks for a password, and none was found" in missing.stderr, missing.stderr
    # A password written into the URL in config.toml: refused before anything is opened, the file left as it is.
    in_config = shared.url.replace(f"{shared.user}@", f"{shared.user}:{shared.password}@")
    careless = machine(world, "careless", cloud, config_ledger=in_config, state=world.state)
    before = careless.config.read_bytes()
    leaked = careless.run(*command)
    assert leaked.returncode == 3, leaked.stderr
    assert "a password never sits in the config" in leaked.stderr and "left as it is" in leaked.stderr
    assert careless.config.read_bytes() == before
    for result in (refused, missing, leaked):
        shown = result.stdout + result.stderr
        assert wrong not in shown and shared.password not in shown and "Traceback" not in shown
    assert cloud.calls() == 0
    ledger = Ledger(shared.url)
    try:
        assert ledger.launches() == []
    finally:
        ledger.close()


def test_a_ledger_of_a_newer_schema_is_refused_and_nothing_is_written(
    world: World, cloud: Cloud, shared: Database, postgres_server: PostgresServer, endorsed_image: str
) -> None:
    Ledger(shared.url).close()  # made at the current version, then a newer wlcgcloud migrated it
    postgres_server.sql("UPDATE wlcgcloud_schema SET version = 99", dbname=shared.name)
    host = machine(world, "a", cloud, ledger=shared.url, password=shared.password, state=world.state)
    result = host.run(*endorsed_launch(endorsed_image, fleet_name("newer")))
    assert result.returncode == 3, result.stderr
    assert "has schema version 99" in result.stderr and "Nothing was written." in result.stderr
    assert "Upgrade wlcgcloud" in result.stderr
    assert postgres_server.sql("SELECT COUNT(*) FROM launches", dbname=shared.name) == [(0,)]
    assert postgres_server.sql("SELECT version FROM wlcgcloud_schema", dbname=shared.name) == [(99,)]
    assert cloud.calls() == 0


def test_without_psycopg_a_postgresql_ledger_says_how_to_install_it(
    world: World, cloud: Cloud, shared: Database, endorsed_image: str
) -> None:
    host = machine(world, "a", cloud, ledger=shared.url, password=shared.password, state=world.state)
    result = host.run(*endorsed_launch(endorsed_image, fleet_name("nodriver")), python=NO_PSYCOPG)
    assert result.returncode == 3, result.stderr
    assert "psycopg is not installed" in result.stderr and "pipx inject wlcgcloud 'psycopg[binary]'" in result.stderr
    assert "Traceback" not in result.stderr and cloud.calls() == 0
    assert not (world.state / "ledger.sqlite").exists()  # no falling back to a local ledger


# --------------------------------------------------------------------------- reading the shared ledger


def test_two_machines_see_the_same_usage_and_apel_records(world: World, cloud: Cloud, shared: Database) -> None:
    """Usage on EC2 comes from the cloud and the ledger's memory: with a shared ledger, every machine sees the same."""
    from wlcgcloud.times import stamp

    fleet, count = fleet_name("usage"), 2
    a = machine(world, "a", cloud, ledger=shared.url, password=shared.password)
    b = machine(world, "b", cloud, ledger=shared.url, password=shared.password)
    alone = machine(world, "alone", cloud)  # its own SQLite ledger: it knows only what the cloud shows
    since = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    made = a.run(*launch(fleet, count, "-o", "json"))
    assert made.returncode == 0, made.stderr
    ids = sorted(i["id"] for i in json.loads(made.stdout)["instances"])
    # An instance EC2 has forgotten (it ended over an hour ago there): only the shared ledger remembers it,
    # with the identity of the credential its launch forwarded, which APEL reports.
    forgotten, gone = fleet_name("forgotten"), "i-0123456789abcdef0"
    ledger = Ledger(shared.url)
    try:
        intent = ledger.record_intent({
            "fleet": forgotten, "profile": "aws", "provider": "ec2", "request_token": uuid.uuid4().hex, "image": AMI,
            "cloud_image": AMI, "endorsement": "none", "flavor": "m5.large", "requested": 1, "experiment": "atlas",
            "credential_subject": "/DC=ch/DC=cern/OU=Users/CN=pilot", "credential_fqan": "/atlas/Role=pilot",
        })  # fmt: skip
        ledger.finish(intent, "launched")
        vm = SimpleNamespace(profile="aws", id=gone, fleet=forgotten, provider="ec2", name=f"{forgotten}-1",
                             flavor="m5.large", vcpus=2, memory_mb=8192, image=AMI, tags={"wlcg:experiment": "atlas"},
                             launched_at=since + timedelta(minutes=1), state="running")  # fmt: skip
        ledger.record_instances([vm], intent)
        ledger.mark_ended("aws", [gone])
    finally:
        ledger.close()
    until = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    wait_for(lambda: datetime.now(UTC) > until, "the end of the window")  # a window wholly past: no "now" inside
    window = ("usage", "--since", stamp(since), "--until", stamp(until))
    by_fleet = [m.run(*window, "--by", "fleet", "-o", "json") for m in (a, b, alone)]
    for result in by_fleet:
        assert result.returncode == 0, result.stderr
    on_a, on_b, on_alone = (json.loads(r.stdout) for r in by_fleet)
    assert on_a == on_b
    rows = {r["fleet"]: r for r in on_a["rows"]}
    assert rows[fleet]["instances"] == count and rows[fleet]["core_hours"] > 0
    assert rows[forgotten]["instances"] == 1
    assert rows[forgotten]["core_hours"] == pytest.approx(2 * rows[forgotten]["wall_hours"])
    assert forgotten not in {r["fleet"] for r in on_alone["rows"]}  # what only the shared ledger knows
    apel = [m.run(*window, "-o", "apel") for m in (a, b)]
    for result in apel:
        assert result.returncode == 0, result.stderr
    assert apel[0].stdout == apel[1].stdout
    records = apel[0].stdout
    assert records.startswith("APEL-cloud-message: v0.4\n")
    for vm_id in [*ids, gone]:
        assert f"VMUUID: {vm_id}\n" in records
    blocks = {b.split("VMUUID: ", 1)[1].split("\n", 1)[0]: b for b in records.split("%%\n") if "VMUUID: " in b}
    # An unendorsed launch's records name its AMI, as the ledger's own records do (its wlcg:image tag is "none").
    assert all(f"ImageId: {AMI}\n" in blocks[vm_id] for vm_id in [*ids, gone]) and "ImageId: none" not in records
    assert re.search(rf"VMUUID: {gone}\nSiteName: WLCG-TEST-SITE\n(.+\n)*?GlobalUserName: /DC=ch/DC=cern/OU=Users"
                     rf"/CN=pilot\nFQAN: /atlas/Role=pilot\nStatus: completed\n", records), records  # fmt: skip
