"""`fleet maintain` run as a service: the real command in a subprocess, looping, logging JSON, serving
Prometheus metrics, stopped by SIGTERM, refusing a second maintainer, killed mid-cycle and run again.

The clouds are moto and the OpenNebula peer (the `two_clouds` pattern of test_maintain.py), and for
the kill, this module's own moto behind a FaultProxy that holds RunInstances.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from peers.faultproxy import Fault, FaultProxy

from wlcgcloud.ledger import Ledger

from conftest import Run, World, alive, ec2_profile, fleet_name, spec_text, write_profiles, write_spec

WLCGCLOUD = str(Path(sys.executable).with_name("wlcgcloud"))
AMI = "ami-03cf127a"  # one of moto's own images: a spec with allow_unendorsed = true
RUN_INSTANCES = "Action=RunInstances"
STOPPED = "fleet maintain: stopped after the cycle under way."
CYCLE_KEYS = {"fleet", "started", "seconds", "target", "alive", "met", "dry_run", "error", "profiles"}


# --------------------------------------------------------------------------- helpers (as in test_maintain.py)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], Any], what: str, limit: float = 30.0) -> None:
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}")
        time.sleep(0.05)


def scrape(port: int) -> dict[str, float]:
    """The samples of http://127.0.0.1:PORT/metrics: {'name{labels}': value} (no proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Maintainer:
    """`wlcgcloud fleet maintain ARGS` in a subprocess; a thread reads its stderr line by line as it comes."""

    def __init__(self, world: World, *args: str) -> None:
        self.stdout = world.root / f"maintain-{uuid.uuid4().hex[:6]}.out"
        with self.stdout.open("w") as out:
            self.proc = subprocess.Popen([WLCGCLOUD, "fleet", "maintain", *args], env=world.env(), cwd=world.root,
                                         stdout=out, stderr=subprocess.PIPE, text=True)  # fmt: skip
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stderr(self) -> str:
        return "\n".join(self.lines)

    def cycles(self) -> list[dict[str, Any]]:
        """The JSON cycle lines so far (--log-format json), parsed: a line that starts one and does not parse fails."""
        parsed = [json.loads(line) for line in list(self.lines) if line.startswith("{")]
        return [c for c in parsed if "event" not in c]

    def events(self) -> list[dict[str, Any]]:
        """The maintainer's own events in JSON form ({"event": ..., "message": ...})."""
        parsed = [json.loads(line) for line in list(self.lines) if line.startswith("{")]
        return [e for e in parsed if "event" in e]

    def wait_cycles(self, n: int, limit: float = 40.0) -> list[dict[str, Any]]:
        def there() -> bool:
            if self.proc.poll() is not None:
                self.reader.join(5)
                raise AssertionError(f"the maintainer ended ({self.proc.returncode}):\n{self.stderr()}")
            return len(self.cycles()) >= n

        try:
            wait_for(there, f"{n} cycle line(s)", limit)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nstderr so far:\n{self.stderr()}") from None
        return self.cycles()

    def stop(self, sig: int = signal.SIGTERM, limit: float = 20.0) -> int:
        """Send `sig` and wait for the end (the reader has read everything): its exit code."""
        self.proc.send_signal(sig)
        code = self.proc.wait(limit)
        self.reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.reader.join(5)


@contextlib.contextmanager
def maintaining(world: World, *args: str) -> Iterator[Maintainer]:
    """A running maintainer, killed and waited for whatever happens."""
    m = Maintainer(world, *args)
    try:
        yield m
    finally:
        m.kill()


def command(world: World, *args: str, limit: float = 90.0) -> subprocess.CompletedProcess[str]:
    """The real command in a subprocess, run to its end (killed if it outlives `limit`)."""
    proc = subprocess.Popen([WLCGCLOUD, *args], env=world.env(), cwd=world.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=limit)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def ledger_locks(world: World) -> list[dict[str, Any]]:
    ledger = Ledger(world.state / "ledger.sqlite")
    try:
        return ledger.locks()
    finally:
        ledger.close()


def launches(world: World, fleet: str) -> list[Any]:
    ledger = Ledger(world.state / "ledger.sqlite")
    try:
        return list(ledger.launches(fleet))
    finally:
        ledger.close()


# --------------------------------------------------------------------------- the loop as a service


def test_the_loop_logs_json_serves_metrics_and_stops_cleanly_on_sigterm(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    fleet, port = fleet_name(), free_port()
    spec = write_spec(world, spec_text(fleet, two_clouds["image"], 2, {"aws": "share = 1"}))
    args = (str(spec), "--interval", "1s", "--log-format", "json", "--metrics-port", str(port))
    try:
        with maintaining(world, *args) as m:
            first, second = m.wait_cycles(2)[:2]
            for c in (first, second):
                assert set(c) >= CYCLE_KEYS, c
                assert c["fleet"] == fleet and c["target"] == 2 and not c["dry_run"] and c["error"] is None, c
            [made] = first["profiles"]
            assert made["profile"] == "aws" and made["created"] == 2 and first["met"], first
            [held] = second["profiles"]
            assert second["met"] and second["alive"] == 2 and held["created"] == 0, second  # at its target: nothing
            assert second["started"] > first["started"]
            serving = f"Prometheus metrics on http://127.0.0.1:{port}/metrics"
            assert {"event": "metrics", "message": serving} in m.events()
            samples = scrape(port)
            labels = f'{{fleet="{fleet}",profile="aws"}}'
            assert samples[f"wlcgcloud_fleet_target{labels}"] == 2.0, samples
            assert samples[f'wlcgcloud_fleet_target_met{{fleet="{fleet}"}}'] == 1.0
            assert samples[f"wlcgcloud_fleet_launched_total{labels}"] == 2.0  # a counter: once, not once a cycle
            assert samples[f"wlcgcloud_fleet_running{labels}"] + samples[f"wlcgcloud_fleet_starting{labels}"] == 2.0
            assert samples[f"wlcgcloud_fleet_backoff_seconds{labels}"] == 0.0
            assert samples[f'wlcgcloud_fleet_cycle_seconds{{fleet="{fleet}"}}'] > 0.0
            assert m.proc.poll() is None
            began = time.monotonic()
            code = m.stop(signal.SIGTERM)
            took = time.monotonic() - began
            assert code == 0 and took < 10, (code, took, m.stderr())
            assert json.loads(m.lines[-1]) == {"event": "stopped", "message": STOPPED}, m.stderr()
            assert all(line.startswith("{") for line in m.lines), m.stderr()  # --log-format json: nothing else
            assert "Traceback" not in m.stderr() and m.stdout.read_text() == ""  # the log is stderr's alone
            last = m.cycles()[-1]
        assert not listening(port)  # the metrics endpoint went with it
        assert ledger_locks(world) == []  # and so did the fleet's lock
        status = run("fleet", "status", str(spec), "-o", "json")
        assert status.code == 0, status.err
        rows = status.json()
        assert isinstance(rows, list)
        [row] = rows
        assert row["profile"] == "aws" and row["last_cycle"] == last["started"], (row, last)
        assert row["target"] == 2 and row["running"] + row["starting"] == 2
        assert len(alive(run, fleet)["aws"]) == 2
    finally:
        run("fleet", "terminate", fleet, "--yes")


def test_a_second_maintainer_of_the_fleet_is_refused_naming_the_first(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    fleet = fleet_name()
    spec = write_spec(world, spec_text(fleet, two_clouds["image"], 1, {"aws": "share = 1"}))
    try:
        with maintaining(world, str(spec), "--interval", "1s", "--log-format", "json") as first:
            first.wait_cycles(1)
            second = command(world, "fleet", "maintain", str(spec), "--once", "-o", "json")
            assert second.returncode == 2, second.stderr
            assert f"fleet '{fleet}' is being changed by " in second.stderr, second.stderr
            assert f"(pid {first.pid}, 'wlcgcloud fleet maintain')" in second.stderr, second.stderr
            assert second.stdout == "" and "Traceback" not in second.stderr
            assert first.proc.poll() is None  # the first carries on
            assert first.stop(signal.SIGTERM) == 0, first.stderr()
        assert len(alive(run, fleet)["aws"]) == 1  # the refused one made nothing
    finally:
        run("fleet", "terminate", fleet, "--yes")


# --------------------------------------------------------------------------- killed mid-cycle


@pytest.fixture
def held_cloud(world: World, moto_own: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """Profile 'aws': this module's moto behind a FaultProxy (timeout 5 s, so a re-run waits little)."""
    with FaultProxy(moto_own.url, preserve_host=True) as proxy:
        settings = ec2_profile(moto_own, endpoint_url=proxy.url, flavor="m5.large", experiment="atlas", timeout=5)
        write_profiles(world, {"aws": settings})
        monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_own.secret_key)
        yield {"moto": moto_own, "proxy": proxy}


def on_the_cloud(moto: Any, fleet: str) -> list[str]:
    """The fleet's instances that moto holds and that are not terminated, asked directly (not through the proxy)."""
    found = moto.client().describe_instances(Filters=[{"Name": "tag:wlcg:fleet", "Values": [fleet]}])
    return sorted(i["InstanceId"] for r in found["Reservations"] for i in r["Instances"]
                  if i["State"]["Name"] not in ("terminated", "shutting-down"))  # fmt: skip


def test_a_maintainer_killed_mid_cycle_then_run_again_makes_no_duplicates(
    run: Run, world: World, held_cloud: dict[str, Any]
) -> None:
    fleet, proxy, moto = fleet_name(), held_cloud["proxy"], held_cloud["moto"]
    text = spec_text(fleet, AMI, 3, {"aws": "share = 1"}).replace("target = 3", "target = 3\nallow_unendorsed = true")
    spec = write_spec(world, text)
    proxy.always(Fault("delay", seconds=3.0, match=RUN_INSTANCES))  # under the profile's 5 s timeout
    try:
        with maintaining(world, str(spec), "--once", "--log-format", "json") as victim:
            wait_for(lambda: proxy.bodies(RUN_INSTANCES) or victim.proc.poll() is not None, "RunInstances")
            assert victim.proc.poll() is None, victim.stderr()  # killed with its RunInstances on the wire
            assert victim.stop(signal.SIGKILL) == -signal.SIGKILL
        assert on_the_cloud(moto, fleet) == []  # still held in the proxy: nothing exists yet
        [killed] = launches(world, fleet)
        assert killed.state == "intent" and killed.calls_until and killed.owner.endswith(f":{victim.pid}")
        again = command(world, "fleet", "maintain", str(spec), "--once", "-o", "json")
        made = on_the_cloud(moto, fleet)
        assert len(made) == 3, (made, again.stderr)  # the killed call landed, and was found: none made twice
        assert len(proxy.bodies(RUN_INSTANCES)) == 1, again.stderr  # the re-run sent none: it found all 3
        assert sorted(alive(run, fleet)["aws"]) == made
        assert [r.state for r in launches(world, fleet)] == ["adopted", "launched"]  # the dead one's calls adopted
        # What it found is its fleet: the cycle counts it, so the target is met (exit 0), not "0 of 3 alive" (7).
        data = json.loads(again.stdout)
        assert again.returncode == 0 and data["met"] and data["alive"] == 3, (again.returncode, data)
    finally:
        proxy.clear()
        run("fleet", "terminate", fleet, "--yes")


# --------------------------------------------------------------------------- a bad --metrics-port


def test_a_metrics_port_in_use_or_out_of_range_is_exit_2_and_creates_nothing(
    run: Run, world: World, two_clouds: dict[str, Any]
) -> None:
    fleet = fleet_name()
    spec = write_spec(world, spec_text(fleet, two_clouds["image"], 1, {"aws": "share = 1"}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = command(world, "fleet", "maintain", str(spec), "--interval", "1s", "--metrics-port", str(port), limit=30)
    assert busy.returncode == 2, busy.stderr
    said = f"error: --metrics-port {port}: cannot serve metrics on 127.0.0.1:{port} (Address already in use)."
    [line] = busy.stderr.splitlines()  # one line: what, where, why, and what to do
    assert line.startswith(said) and "Choose another port" in line, busy.stderr
    for bad in ("0", "70000"):
        out_of_range = command(world, "fleet", "maintain", str(spec), "--metrics-port", bad, limit=30)
        assert out_of_range.returncode == 2, out_of_range.stderr
        [line] = out_of_range.stderr.splitlines()
        assert line == f"error: --metrics-port {bad}: a port is from 1 to 65535.", out_of_range.stderr
    assert alive(run, fleet) == {}
    status = run("fleet", "status", str(spec), "-o", "json")
    rows = status.json()
    assert isinstance(rows, list) and [r["last_cycle"] for r in rows] == [None]  # no cycle ran
    assert ledger_locks(world) == []
