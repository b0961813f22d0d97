"""`fleet maintain` over a simulated week on three clouds, through the real code (issue #17).

    .venv/bin/python bench/maintain_sim.py week  [--target 600] [--days 7] [--interval 5m] [--seed 1]
    .venv/bin/python bench/maintain_sim.py cycle [--target 6000] [--cycles 3]

The clouds are at their wire protocol, each in its own process with the simulation's clock
(bench/sim/clock.py: a file the driver writes and every process reads):
  EC2        moto's server (bench/sim/ec2_peer.py: moto with its clock in the file);
  OpenStack  a Keystone + Nova + Glance wire double (bench/sim/openstack_peer.py: the real Nova
             peer cannot run on a clock of ours, nor hold 2,000 servers in minutes);
  OpenNebula the XML-RPC peer of the tests (tests/peers/opennebula.py --clock-file).
The maintainer is wlcgcloud's own cycle (wlcgcloud.maintain.cycle, what `fleet maintain` runs),
with its real launch path, SQLite ledger and endorsement gate, in this process, on the same
clock (wlcgcloud.times.use_clock). Between cycles the clock stands still while the driver plays
the world: it jumps to the next cycle, the next VM that ends, or the next scenario event.

The world ("week"): the fleet's target spread evenly over the three clouds (each may hold 1.5x
its part); each VM boots in the cloud's own time (EC2 at once, OpenStack 2 min, OpenNebula
90 s); 90 % of the pilots find work and run 8-48 h, 10 % find none and stop 2-15 min after
boot (they fizzle); a VM that ends powers itself off, as a pilot's `shutdown -h` does. Day 2
12:00: the OpenStack site goes dark for 2 h (its VMs lost, its API answering 503). Day 4:
OpenNebula's quota is cut to half for a day. The WLCG token forwarded into the VMs is renewed
every 24 h and lives 36 h, so VMs that outlive their token are rotated.

Reported: the share of time the target was met (alive = pending or running, as the maintainer
counts; and running only), outside and including the outage; VM-hours delivered against the
target's; API calls per cycle by cloud; creations, and those wasted on fizzled VMs; back-offs
and retirements; and our own cycle time (wall and CPU of this process) at the fleet's size.
"""

from __future__ import annotations

import argparse
import heapq
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import xmlrpc.client
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bench" / "sim")]

from clock import SharedClock  # noqa: E402

HOUR, DAY = 3600.0, 86400.0
CLOUDS = ("aws", "osk", "one")
BOOT = {"aws": 0.0, "osk": 120.0, "one": 90.0}  # seconds from creation to running, the cloud's own
ONE_ADMIN = "oneadmin:opennebula"


@dataclass
class VM:
    cloud: str
    id: str
    start: float  # created, by the cloud's clock
    ready: float  # running from
    ends: float  # when its pilot would shut it down
    fizzle: bool
    stopped: float | None = None  # when it stopped holding capacity (it ended, or was terminated)
    why: str = ""


@dataclass
class Tally:
    cycles: list[dict[str, Any]] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)
    cpus: list[float] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    backoffs: Counter[str] = field(default_factory=Counter)
    terminated: Counter[str] = field(default_factory=Counter)


class World:
    """The driver's hands on the three peers: start them, list what runs, end VMs, break things."""

    def __init__(self, root: Path, clock: SharedClock, quota: int, image: dict[str, Any]) -> None:
        self.root, self.clock, self.procs, self.image = root, clock, [], image
        self.ec2_url = self._spawn([sys.executable, str(ROOT / "bench/sim/ec2_peer.py"),
                                    "--clock-file", str(clock.path)], "ec2")  # fmt: skip
        one_world = self._one_world(quota)
        (root / "one-world.json").write_text(json.dumps(one_world))
        self.one_url = self._spawn([sys.executable, str(ROOT / "tests/peers/opennebula.py"), "--port", "0",
                                    "--config", str(root / "one-world.json"), "--clock-file", str(clock.path)],
                                   "one")  # fmt: skip
        self.one = xmlrpc.client.ServerProxy(self.one_url, allow_none=True)
        import openstack_peer

        self.osk_world = self._osk_world(quota)
        self.osk_url, osk_proc = openstack_peer.spawn(self.osk_world, str(clock.path))
        self.procs.append(osk_proc)
        self.osk_base = self.osk_url.rsplit("/v3", 1)[0]
        import boto3

        self.ec2 = boto3.client("ec2", endpoint_url=self.ec2_url, region_name="eu-west-1",
                                aws_access_key_id="AKIASIMULATION", aws_secret_access_key="simulation")  # fmt: skip

    def _spawn(self, cmd: list[str], name: str) -> str:
        log = (self.root / f"{name}.log").open("wb")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log)
        self.procs.append(proc)
        line = proc.stdout.readline().decode() if proc.stdout else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"the {name} peer did not start: {line!r}, see {self.root / (name + '.log')}")
        return line.split()[1]

    def _one_world(self, quota: int) -> dict[str, Any]:
        from peers.opennebula import DEFAULT_WORLD

        return {
            "users": [DEFAULT_WORLD["users"][0],
                      {"id": 2, "name": "atlas", "password": "secret", "gid": 100, "umask": "137",
                       "quota": {"VMS": quota, "CPU": 4 * quota, "MEMORY": 8192 * quota}}],
            "templates": [{"id": 0, "name": "atlas-4c", "owner": "oneadmin", "template": (
                'CPU="4"\nVCPU="4"\nMEMORY="8192"\nDISK=[IMAGE="cernvm-4",IMAGE_UNAME="oneadmin",SIZE="20480"]\n'
                'NIC=[NETWORK="atlas-net",NETWORK_UNAME="oneadmin"]\nCONTEXT=[NETWORK="YES"]\n')}],
            "images": [{"id": 0, "name": "atlas-wn-endorsed", "owner": "atlas", "size": 1,
                        "template": f'WLCG_ENDORSED_ID="{self.image["dc:identifier"]}"\n'}],
            "deploy_delay": BOOT["one"],
        }  # fmt: skip

    def _osk_world(self, quota: int) -> dict[str, Any]:
        return {
            "users": [{"name": "atlas", "password": "simulation", "project": "atlas"}],
            "application_credentials": [{"id": "sim-appcred", "secret": "simulation", "project": "atlas"}],
            "flavors": [{"id": "4", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 20}],
            "images": [
                {
                    "id": "5f0c1c9e-0000-4000-8000-00000000a7a5",
                    "name": "atlas-wn",
                    "status": "active",
                    "os_hash_algo": "sha512",
                    "os_hash_value": self.image["sl:checksum:sha512"],
                    "owner": "atlas",
                    "visibility": "private",
                }
            ],
            "quota": {"instances": quota, "cores": 4 * quota, "ram": 8192 * quota},
            "boot_seconds": BOOT["osk"],
        }

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    # -- the world's view: what is alive on each cloud (pending or running), and since when
    def alive(self, fleet: str) -> dict[tuple[str, str], float]:
        out: dict[tuple[str, str], float] = {}
        with urllib.request.urlopen(self.ec2_url + "/sim/instances", timeout=60) as reply:
            for inst in json.loads(reply.read()):  # the fleet is all there is but the image's maker
                if inst["state"] in ("pending", "running"):
                    out[("aws", inst["id"])] = inst["launched"]
        for server in self._osk("GET", "/sim/servers"):  # the fleet is all there is on these two
            if server["status"] in ("BUILD", "ACTIVE"):
                out[("osk", server["id"])] = _iso(server["created"])
        ok, body, *_ = self.one.one.vmpool.info(ONE_ADMIN, -2, -1, -1, -1)
        assert ok, body
        for vm in ElementTree.fromstring(body).iter("VM"):
            if vm.findtext("STATE") in ("1", "3"):
                out[("one", vm.findtext("ID") or "")] = float(vm.findtext("STIME") or 0)
        return out

    def end(self, vms: list[VM]) -> None:
        """The pilots are done: their VMs power themselves off."""
        by = {c: [v.id for v in vms if v.cloud == c] for c in CLOUDS}
        if by["aws"]:
            self.ec2.stop_instances(InstanceIds=by["aws"])
        if by["osk"]:
            self._osk("POST", "/sim/stop", {"ids": by["osk"]})
        for vm in by["one"]:
            self.one.one.vm.action(ONE_ADMIN, "poweroff", int(vm))

    def forget(self) -> None:
        """EC2 lists a terminated instance for about an hour; moto for ever (its listings would grow all week)."""
        urllib.request.urlopen(f"{self.ec2_url}/sim/forget?before={self.clock.now() - HOUR}", timeout=60).read()

    def calls(self) -> Counter[str]:
        out: Counter[str] = Counter()
        out["aws"] = sum(json.loads(urllib.request.urlopen(self.ec2_url + "/sim/calls").read()).values())
        out["osk"] = sum(self._osk("GET", "/sim/calls").values())
        out["one"] = sum(n for m, n in self.one.peer.calls().items() if m.startswith("one."))
        return out

    def _osk(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.osk_base + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as reply:
            return json.loads(reply.read() or b"null")

    def osk_outage(self, down: bool) -> None:
        if down:
            self._osk("POST", "/sim/kill_all", {})
        self._osk("POST", "/sim/outage", {"down": down})

    def one_quota(self, vms: int) -> None:
        ok, body, *_ = self.one.one.user.quota(ONE_ADMIN, 2, f'VM = [ VMS = "{vms}", CPU = "{4 * vms}" ]')
        assert ok, body

    # -- what EC2 needs before the first launch: an AMI of the account marked as the endorsed image
    def mark_ami(self) -> None:
        made = self.ec2.run_instances(ImageId="ami-03cf127a", InstanceType="t3.micro", MinCount=1, MaxCount=1)
        vm = made["Instances"][0]["InstanceId"]
        ami = self.ec2.create_image(InstanceId=vm, Name="atlas-wn")["ImageId"]
        endorsed = str(self.image["dc:identifier"])
        self.ec2.create_tags(Resources=[ami], Tags=[{"Key": "wlcg:endorsed-id", "Value": endorsed}])
        self.ec2.terminate_instances(InstanceIds=[vm])


def _iso(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _stamp(when: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Simulation:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.rng = args, random.Random(args.seed)
        self.root = Path(tempfile.mkdtemp(prefix="wlcg-sim-"))
        self.t0 = float(int(time.time()))
        self.clock = SharedClock(self.root / "clock", self.t0)
        self.target = args.target
        self.quota = (self.target // 3) * 3 // 2  # each cloud's: its max in the spec, so two carry an outage
        self.vms: dict[tuple[str, str], VM] = {}
        self.tally = Tally()
        self.profiler: Any = None
        if getattr(args, "profile", None):
            import cProfile

            self.profiler = cProfile.Profile()
        self.token = self.root / "pilot.token"
        from peers import gridca

        self.ca = gridca.make_ca("wlcgcloud Simulation CA")
        self.endorser = gridca.make_endorser(self.ca, "atlas-endorser")
        expires = {"dc:date:expires": _stamp(self.t0 + 30 * DAY)}
        self.document = gridca.image_list(self.endorser, self.ca, **expires)
        image = self.document["hv:imagelist"]["hv:images"][0]["hv:image"]
        self.endorsed = str(image["dc:identifier"])
        self.world = World(self.root, self.clock, self.quota, image)

    # -- set-up: a throwaway HOME, three profiles, the image list, the spec, the token
    def set_up(self) -> None:
        home = self.root / "home"
        env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "XDG_STATE_HOME": str(home / ".state"),
               "XDG_CACHE_HOME": str(home / ".cache"), "WLCGCLOUD_STATE_DIR": str(self.root / "state"),
               "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring", "AWS_EC2_METADATA_DISABLED": "true",
               "WLCGCLOUD_SECRET_AWS": "simulation", "WLCGCLOUD_SECRET_OSK": "simulation",
               "WLCGCLOUD_SECRET_ONE": "secret"}  # fmt: skip
        for name in [n for n in os.environ if n.startswith("WLCGCLOUD_")]:
            del os.environ[name]
        os.environ.update(env)
        config = home / ".config/wlcgcloud/config.toml"
        config.parent.mkdir(parents=True)
        config.write_text(
            f'[profiles.aws]\nprovider = "ec2"\nregion = "eu-west-1"\nendpoint_url = "{self.world.ec2_url}"\n'
            f'access_key_id = "AKIASIMULATION"\nflavor = "c5.xlarge"\nexperiment = "atlas"\ntimeout = 60\n\n'
            f'[profiles.osk]\nprovider = "openstack"\nauth_url = "{self.world.osk_url}"\n'
            f'application_credential_id = "sim-appcred"\nregion = "RegionOne"\nflavor = "m1.large"\n'
            f'experiment = "atlas"\ntimeout = 60\n\n'
            f'[profiles.one]\nprovider = "opennebula"\nendpoint = "{self.world.one_url}"\nusername = "atlas"\n'
            f'vm_template = "atlas-4c"\nexperiment = "atlas"\ntimeout = 60\n'
        )  # fmt: skip
        config.chmod(0o600)
        from peers import gridca

        anchors = self.root / "certificates"
        gridca.install_ca(anchors, self.ca)
        signed = gridca.sign(self.root / "lists", self.document, self.endorser)
        subprocess.run([str(Path(sys.executable).with_name("wlcgcloud")), "image", "subscribe", str(signed),
                        "--trust-anchors", str(anchors), "--endorser", gridca.slash(self.endorser.name)],
                       check=True, capture_output=True)  # fmt: skip
        self.world.mark_ami()
        self.renew_token()
        per = self.target // 3
        self.spec_path = self.root / "sim.toml"
        self.spec_path.write_text(
            f'fleet = "sim"\nimage = "{self.endorsed}"\ncredential = "token"\ntoken_file = "{self.token}"\n'
            f"target = {self.target}\n\n"
            + "".join(f"[profiles.{c}]\nshare = 1\nmax = {per * 3 // 2}\n\n" for c in CLOUDS)
            + '[maintain]\ncreate_per_cycle = "10%"\nstuck_after = "30m"\nfizzle_after = "20m"\n'
            'backoff = "10m"\nbackoff_max = "2h"\ncredential_margin = "2h"\n'
        )  # fmt: skip

    def renew_token(self) -> None:
        from peers.proxies import make_token, write_private

        now = int(self.clock.now())
        write_private(self.token, make_token(exp=now + int(self.args.token_life), iat=now - 60, nbf=now - 60))

    # -- the maintainer: wlcgcloud's own cycle, on the simulation's clock
    def open_maintainer(self) -> None:
        from wlcgcloud import times
        from wlcgcloud.config import load_config
        from wlcgcloud.cycle_state import RunTime
        from wlcgcloud.fleet_spec import read_spec
        from wlcgcloud.ledger import open_ledger

        times.use_clock(self.clock.now)
        from wlcgcloud.providers import reusing

        self._reusing = reusing()  # as `fleet maintain` does
        self._reusing.__enter__()
        self.spec = read_spec(self.spec_path)
        config = load_config()
        self.profiles = [config.profile(name) for name in self.spec.profiles()]
        self._ledger_cm = open_ledger(config)
        self.ledger = self._ledger_cm.__enter__()
        self._lock_cm = self.ledger.fleet_lock([self.spec.fleet], "bench/maintain_sim.py")
        self._lock_cm.__enter__()
        self.given = RunTime()

    def run_cycle(self) -> dict[str, Any]:
        from wlcgcloud.maintain import cycle

        before = self.world.calls()
        wall, cpu = time.perf_counter(), time.process_time()
        if self.profiler is not None:
            self.profiler.enable()
        done = cycle(self.spec, self.profiles, self.ledger, self.given).to_dict()
        if self.profiler is not None:
            self.profiler.disable()
        with (self.root / "cycles.jsonl").open("a") as log:  # what the maintainer decided, cycle by cycle
            log.write(json.dumps({"t": self.clock.now() - self.t0, **done}) + "\n")
        self.tally.walls.append(time.perf_counter() - wall)
        self.tally.cpus.append(time.process_time() - cpu)
        after = self.world.calls()
        self.tally.calls.update({c: after[c] - before[c] for c in CLOUDS})
        for p in done["profiles"]:
            self.tally.terminated.update(p["terminated"])
            if p["backoff_until"] and any(d.startswith("backing off") for d in p["decisions"]):
                self.tally.backoffs[p["profile"]] += 1
        self.tally.cycles.append({"t": self.clock.now() - self.t0, "alive": done["alive"], "met": done["met"],
                                  "created": sum(p["created"] for p in done["profiles"])})  # fmt: skip
        self.observe()
        self.world.forget()
        return done

    def observe(self) -> None:
        """After a cycle: VMs the maintainer made get a life; those it terminated stop counting."""
        now = self.clock.now()
        alive = self.world.alive("sim")
        for key, started in alive.items():
            if key not in self.vms:
                cloud = key[0]
                ready = max(started, now) + BOOT[cloud]
                fizzle = self.rng.random() < 0.10
                life = self.rng.uniform(120, 900) if fizzle else self.rng.uniform(8 * HOUR, 48 * HOUR)
                self.vms[key] = VM(cloud, key[1], now, ready, ready + life, fizzle)
        for key, vm in self.vms.items():
            if vm.stopped is None and key not in alive:
                vm.stopped, vm.why = now, "terminated"

    def end_pilots(self, now: float) -> None:
        due = [v for v in self.vms.values() if v.stopped is None and v.ends <= now]
        if due:
            self.world.end(due)
            for vm in due:
                vm.stopped, vm.why = vm.ends, "fizzled" if vm.fizzle else "ended"

    # -- the week
    def week(self) -> dict[str, Any]:
        a = self.args
        end = self.t0 + a.days * DAY
        outage = (self.t0 + a.outage_at, self.t0 + a.outage_at + a.outage_for)
        quota_cut = (self.t0 + a.quota_cut_at, self.t0 + a.quota_cut_at + a.quota_cut_for)
        quota = self.quota
        events = [(outage[0], "outage", True), (outage[1], "outage", False),
                  (quota_cut[0], "quota", quota // 2), (quota_cut[1], "quota", quota)]  # fmt: skip
        events += [
            (self.t0 + n * a.renew_every, "renew", None) for n in range(1, int(a.days * DAY / a.renew_every) + 1)
        ]
        heapq.heapify(events)
        next_cycle, started = self.t0, time.monotonic()
        while next_cycle < end:
            pending_end = min((v.ends for v in self.vms.values() if v.stopped is None), default=end)
            now = min(next_cycle, pending_end, events[0][0] if events else end)
            self.clock.set(now)
            self.end_pilots(now)
            while events and events[0][0] <= now:
                _, kind, value = heapq.heappop(events)
                if kind == "outage":
                    if value:
                        for vm in self.vms.values():
                            if vm.cloud == "osk" and vm.stopped is None:
                                vm.stopped, vm.why = now, "outage"
                    self.world.osk_outage(bool(value))
                elif kind == "quota":
                    self.world.one_quota(int(value))
                else:
                    self.renew_token()
            if now >= next_cycle:
                self.run_cycle()
                next_cycle += a.interval
                if len(self.tally.cycles) % 100 == 0:
                    print(f"  {len(self.tally.cycles)} cycles, sim day {(now - self.t0) / DAY:.2f}, "
                          f"{time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
        self.clock.set(end)
        return self.report(end, outage, time.monotonic() - started)

    def report(self, end: float, outage: tuple[float, float], took: float) -> dict[str, Any]:
        a = self.args
        warm = self.t0 + HOUR  # the first hour is the ramp from zero (10 % a cycle)
        alive_steps = self._steps(lambda v: (v.start, v.stopped or end), warm, end)
        running_steps = self._steps(lambda v: (v.ready, v.stopped or end), warm, end)

        def share(steps: list[tuple[float, float, int]], floor: float, skip: tuple[float, float] | None) -> float:
            total = met = 0.0
            for t1, t2, n in steps:
                if skip:
                    t1, t2 = (t1, t2) if t2 <= skip[0] or t1 >= skip[1] else (t1, min(t2, skip[0]))
                if t2 > t1:
                    total += t2 - t1
                    met += (t2 - t1) if n >= floor else 0.0
            return round(100 * met / total, 2) if total else 0.0

        def delivered(steps: list[tuple[float, float, int]]) -> float:
            have = sum((t2 - t1) * min(n, self.target) for t1, t2, n in steps)
            return round(100 * have / (self.target * (end - warm)), 2)

        made = list(self.vms.values())
        logins = self.world._osk("GET", "/sim/calls").get("POST /v3/auth/tokens", 0)
        cycles = len(self.tally.cycles)
        walls = sorted(self.tally.walls)
        return {
            "target": self.target, "days": a.days, "interval_s": a.interval, "cycles": cycles,
            "wall_s": round(took, 1), "seed": a.seed,
            "target_met_pct": {
                "alive_outside_outage": share(alive_steps, self.target, outage),
                "alive_99pct_outside_outage": share(alive_steps, 0.99 * self.target, outage),
                "alive_all": share(alive_steps, self.target, None),
                "running_99pct_outside_outage": share(running_steps, 0.99 * self.target, outage),
            },
            "vm_hours_delivered_pct": {"alive": delivered(alive_steps), "running": delivered(running_steps)},
            "alive_max": max((n for _, _, n in alive_steps), default=0), "keystone_logins": logins,
            "api_calls_per_cycle": {c: round(self.tally.calls[c] / cycles, 1) for c in CLOUDS},
            "created": len(made), "fizzled": sum(v.fizzle and v.why == "fizzled" for v in made),
            "ended": Counter(v.why for v in made if v.stopped is not None),
            "terminated_by_maintainer": dict(self.tally.terminated),
            "backoffs": dict(self.tally.backoffs),
            "cycle_wall_s": {"median": round(statistics.median(walls), 3), "p95": round(walls[int(0.95 * cycles)], 3),
                             "max": round(walls[-1], 3)},
            "cycle_cpu_s": {"median": round(statistics.median(self.tally.cpus), 3),
                            "max": round(max(self.tally.cpus), 3)},
        }  # fmt: skip

    def _steps(self, span: Any, start: float, end: float) -> list[tuple[float, float, int]]:
        """The count of VMs inside `span` (a VM -> [from, to)) as steps (t1, t2, n) over [start, end)."""
        edges: list[tuple[float, int]] = []
        for vm in self.vms.values():
            t1, t2 = span(vm)
            if t2 > t1:
                edges += [(t1, 1), (t2, -1)]
        edges.sort()
        out, n, last = [], 0, start
        for t, d in edges:
            if t > last and t > start:
                out.append((max(last, start), min(t, end), n))
                last = t
            n += d
        if end > last:
            out.append((last, end, n))
        return [(t1, t2, n) for t1, t2, n in out if t2 > t1]

    # -- one size, a few cycles: our own time per cycle
    def cycles_at_size(self) -> dict[str, Any]:
        a = self.args
        self.run_cycle()  # one cycle at 100 % makes the whole fleet
        for _ in range(30):
            if self.tally.cycles[-1]["alive"] >= self.target:
                break
            self.clock.set(self.clock.now() + 60)
            self.run_cycle()
        self.tally.walls.clear()
        self.tally.cpus.clear()
        self.tally.calls.clear()
        for _ in range(a.cycles):  # steady state: ~1 % of the fleet ended since the cycle before
            now = self.clock.now() + 300
            self.clock.set(now)
            live = [v for v in self.vms.values() if v.stopped is None]
            for vm in self.rng.sample(live, max(1, len(live) // 100)):
                vm.ends = now
            self.end_pilots(now)
            self.run_cycle()
        return {
            "target": self.target, "alive": self.tally.cycles[-1]["alive"], "cycles": a.cycles,
            "cycle_wall_s": [round(w, 2) for w in self.tally.walls],
            "cycle_cpu_s": [round(c, 2) for c in self.tally.cpus],
            "api_calls_per_cycle": {c: round(self.tally.calls[c] / a.cycles, 1) for c in CLOUDS},
        }  # fmt: skip

    def close(self) -> None:
        from wlcgcloud import times

        times.use_clock(None)
        for cm in (getattr(self, "_lock_cm", None), getattr(self, "_ledger_cm", None), getattr(self, "_reusing", None)):
            if cm is not None:
                cm.__exit__(None, None, None)
        self.world.stop()
        self.clock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    week = sub.add_parser("week", help="a simulated week (figures for the README)")
    week.add_argument("--target", type=int, default=600)
    week.add_argument("--days", type=float, default=7.0)
    week.add_argument("--interval", default="5m", help="simulated time between cycles")
    week.add_argument("--seed", type=int, default=1)
    for option, default in (
        ("--outage-at", "2d12h"),
        ("--outage-for", "2h"),
        ("--quota-cut-at", "4d"),
        ("--quota-cut-for", "1d"),
        ("--renew-every", "1d"),
        ("--token-life", "36h"),
    ):
        week.add_argument(option, default=default, help=f"simulated time (default {default})")
    size = sub.add_parser("cycle", help="our own time per cycle at a size")
    size.add_argument("--target", type=int, default=6000)
    size.add_argument("--cycles", type=int, default=3)
    size.add_argument("--seed", type=int, default=1)
    size.add_argument("--token-life", default="36h")
    for one in (week, size):
        one.add_argument("--profile", metavar="FILE", help="cProfile the maintainer's cycles into FILE")
    args = parser.parse_args()
    from wlcgcloud.times import parse_duration

    for name in ("interval", "outage_at", "outage_for", "quota_cut_at", "quota_cut_for", "renew_every", "token_life"):
        if isinstance(getattr(args, name, None), str):
            setattr(args, name, parse_duration(getattr(args, name), "--" + name.replace("_", "-")).total_seconds())
    sim = Simulation(args)
    try:
        sim.set_up()
        if args.mode == "cycle":
            text = sim.spec_path.read_text().replace('create_per_cycle = "10%"', 'create_per_cycle = "100%"')
            sim.spec_path.write_text(text)
        sim.open_maintainer()
        result = sim.week() if args.mode == "week" else sim.cycles_at_size()
        if sim.profiler is not None:
            sim.profiler.dump_stats(args.profile)
    finally:
        sim.close()
    print(json.dumps({**result, "log": str(sim.root / "cycles.jsonl")}, indent=1, default=dict))
    return 0


if __name__ == "__main__":
    sys.exit(main())
