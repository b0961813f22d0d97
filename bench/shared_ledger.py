"""Shared-ledger benchmarks: fleet locks under contention, and what PostgreSQL costs a launch.

    .venv/bin/python bench/shared_ledger.py rounds [--rounds 100] [--machines 5] [--count 2] [--time-limit S]
    .venv/bin/python bench/shared_ledger.py launch [--count 200] [--runs 3]

Both run the real `wlcgcloud` command as fresh processes against moto EC2 (tests/peers/ec2.py) and
a real PostgreSQL server started for the run (tests/peers/postgres.py: TLS, scram password), and
stop both at the end.

rounds: R rounds of five concurrent `wlcgcloud launch -n 2 --fleet F` of the same fresh fleet,
  from five "machines" (five HOME, config and state directories) sharing one PostgreSQL ledger,
  none with --wait-lock: one should launch, the others exit 2 naming the holder (or, started
  late, exit 0 having found the fleet and started nothing). After each round: instances on moto
  tagged with the fleet (duplicates: more than the count), lost locks (more than one launch that
  made instances of the fleet in the ledger, or more than one process saying it started some),
  leftover locks (`Ledger(url).locks()` not empty once all five ended). Goal: 0, 0 and 0.
launch: `wlcgcloud launch -n 200` with the PostgreSQL ledger against the same with the SQLite
  ledger, median of --runs each; every run on a fresh moto (warmed by one untimed call, so its
  lazy set-up is not timed) with a fresh fleet and a fresh, already migrated, ledger; the
  two backends alternate which goes first. Goal: PostgreSQL / SQLite <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from fleets import WLCGCLOUD, World, timed  # noqa: E402  (fleets puts tests/ on sys.path, for the peers)

IMAGE = "ami-03cf127a"
PASSWORD_VARIABLE = "WLCGCLOUD_LEDGER_PASSWORD"
LAUNCH_RATIO_GOAL = 1.05


def machine(moto: Any, db: Any | None) -> World:
    """One operator's machine: its own HOME, config and state; the shared ledger when `db` is given."""
    world = World()
    world.profiles({"aws": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": moto.url,
                            "access_key_id": moto.access_key, "flavor": "m5.large", "experiment": "atlas"}},
                   {"aws": moto.secret_key})  # fmt: skip
    if db is not None:
        world.env.update({"WLCGCLOUD_LEDGER": db.url, PASSWORD_VARIABLE: db.password})
    return world


def launch_argv(fleet: str, count: int) -> list[str]:
    return [WLCGCLOUD, "launch", IMAGE, "--allow-unendorsed", "--credential", "none", "-p", "aws",
            "-n", str(count), "--fleet", fleet, "-o", "json"]  # fmt: skip


def _clean_environment() -> None:
    for name in ("WLCGCLOUD_LEDGER", PASSWORD_VARIABLE):
        os.environ.pop(name, None)  # each world says which ledger


# rounds


class Tally:
    def __init__(self) -> None:
        self.rounds = 0
        self.duplicates = 0  # instances beyond the count, summed
        self.duplicate_rounds = 0
        self.short_rounds = 0  # fewer instances than the count
        self.lost = 0
        self.leftover = 0
        self.stale_rows = 0  # holder rows left in fleet_locks (no lock behind them: not held)
        self.codes: Counter[int] = Counter()
        self.outcomes: Counter[str] = Counter()
        self.round_times: list[float] = []
        self.notes: list[str] = []

    def print(self, wall: float, count: int, machines: int) -> None:
        per = statistics.mean(self.round_times) if self.round_times else 0.0
        codes = ", ".join(f"exit {c}: {n}" for c, n in sorted(self.codes.items()))
        outcomes = ", ".join(f"{k}: {n}" for k, n in sorted(self.outcomes.items()))
        print(f"\n{self.rounds} rounds of {machines} concurrent `wlcgcloud launch -n {count}` of one fleet, "
              "one PostgreSQL ledger, no --wait-lock:")  # fmt: skip
        print(f"  duplicates:      {self.duplicates} instance(s) beyond the count, in {self.duplicate_rounds} round(s)")
        print(f"  lost locks:      {self.lost} round(s)")
        print(f"  leftover locks:  {self.leftover} round(s)  (stale holder rows, not held: {self.stale_rows})")
        print(f"  short of count:  {self.short_rounds} round(s)")
        print(f"  exit codes:      {codes}")
        print(f"  outcomes:        {outcomes}")
        print(f"  wall time:       {wall:.1f} s, {per:.2f} s per round (max {max(self.round_times, default=0):.2f} s)")
        for note in self.notes[:20]:
            print(f"  ! {note}")


def bench_rounds(args: argparse.Namespace) -> int:
    from peers import ec2
    from peers.postgres import PostgresServer

    from wlcgcloud.ledger import Ledger

    _clean_environment()
    scratch = World()
    server = PostgresServer.start()
    moto = ec2.start(scratch.tmp / "moto.log")
    worlds: list[World] = []
    tally = Tally()
    begun = time.perf_counter()
    try:
        db = server.new_database()
        os.environ[PASSWORD_VARIABLE] = db.password  # for the Ledger this process inspects
        ledger = Ledger(db.url)
        worlds = [machine(moto, db) for _ in range(args.machines)]
        client: Any = moto.client()
        client.describe_instances()  # moto builds its EC2 region on the first call
        for n in range(args.rounds):
            if args.time_limit and time.perf_counter() - begun > args.time_limit:
                tally.notes.append(f"stopped after {n} rounds: --time-limit {args.time_limit:g} s")
                break
            one_round(f"round-{n:03d}", args.count, worlds, client, ledger, tally)
            if (n + 1) % 10 == 0:
                print(f"  {n + 1} rounds, {time.perf_counter() - begun:.0f} s: duplicates {tally.duplicates}, "
                      f"lost {tally.lost}, leftover {tally.leftover}, exits {dict(sorted(tally.codes.items()))}",
                      flush=True)  # fmt: skip
        ledger.close()
    except KeyboardInterrupt:
        tally.notes.append(f"interrupted after {tally.rounds} rounds")
    finally:
        moto.stop()
        server.stop()
        for world in [scratch, *worlds]:
            shutil.rmtree(world.tmp, ignore_errors=True)
    tally.print(time.perf_counter() - begun, args.count, args.machines)
    return 0 if tally.duplicates == tally.lost == tally.leftover == 0 else 1


def one_round(fleet: str, count: int, worlds: list[World], client: Any, ledger: Any, tally: Tally) -> None:
    start = time.perf_counter()
    procs = [subprocess.Popen(launch_argv(fleet, count), env=w.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for w in worlds]  # fmt: skip
    answers = [p.communicate() for p in procs]
    tally.round_times.append(time.perf_counter() - start)
    tally.rounds += 1
    starters = 0
    for proc, (out, err) in zip(procs, answers, strict=True):
        tally.codes[proc.returncode] += 1
        try:
            launched = int(json.loads(out)["launched"])
        except (ValueError, KeyError, TypeError):
            launched = 0
        starters += launched > 0
        if proc.returncode == 2 and "is being changed by" in err:
            tally.outcomes["exit 2, refused naming the holder"] += 1
        elif proc.returncode == 2:
            tally.outcomes["exit 2, another reason"] += 1
            tally.notes.append(f"{fleet}: exit 2 without naming a holder: {err.strip()[-300:]}")
        elif proc.returncode == 0:
            tally.outcomes["exit 0, started some" if launched else "exit 0, started none"] += 1
        else:
            tally.outcomes[f"exit {proc.returncode}"] += 1
            tally.notes.append(f"{fleet}: exit {proc.returncode}: {err.strip()[-300:]}")
    on_cloud = instances_of(client, fleet)
    if on_cloud > count:
        tally.duplicates += on_cloud - count
        tally.duplicate_rounds += 1
        tally.notes.append(f"{fleet}: {on_cloud} instances on the cloud for a count of {count}")
    elif on_cloud < count:
        tally.short_rounds += 1
        tally.notes.append(f"{fleet}: {on_cloud} instances on the cloud for a count of {count}")
    makers = {row["launch_id"] for row in ledger.instances(fleet=fleet)}
    if len(makers) > 1 or starters > 1:
        tally.lost += 1
        tally.notes.append(f"{fleet}: {len(makers)} launches made instances, {starters} processes said they started")
    held = ledger.locks()
    if held:
        tally.leftover += 1
        tally.notes.append(f"{fleet}: locks still held after all ended: {held}")
    stale = ledger.backend.rows("SELECT fleet FROM fleet_locks")
    if stale:  # a released lock deletes its row; one left behind is counted here once, then cleared
        tally.stale_rows += len(stale)
        tally.notes.append(f"{fleet}: holder rows left in fleet_locks: {[r['fleet'] for r in stale]}")
        ledger.backend.execute("DELETE FROM fleet_locks")


# launch


def bench_launch(args: argparse.Namespace) -> int:
    from peers import ec2
    from peers.postgres import PostgresServer

    from wlcgcloud.ledger import Ledger

    _clean_environment()
    server = PostgresServer.start()
    times: dict[str, list[float]] = {"sqlite": [], "postgresql": []}
    try:
        for n in range(args.runs):
            order = ["sqlite", "postgresql"] if n % 2 == 0 else ["postgresql", "sqlite"]
            for backend in order:
                logs = World()  # moto's log, apart from the machine
                moto = ec2.start(logs.tmp / "moto.log")
                db = server.new_database() if backend == "postgresql" else None
                world = machine(moto, db)
                try:
                    if db is not None:
                        os.environ[PASSWORD_VARIABLE] = db.password
                    # The ledger exists already (migrated), as on any machine but a first one.
                    Ledger(db.url if db else str(Path(world.env["WLCGCLOUD_STATE_DIR"]) / "ledger.sqlite")).close()
                    client: Any = moto.client()
                    client.describe_instances()  # moto builds its EC2 region on the first call: untimed
                    fleet = f"bench-{backend}-{n}"
                    times[backend].append(timed(launch_argv(fleet, args.count), world.env))
                    _check_launched(client, fleet, args.count)
                finally:
                    moto.stop()
                    os.environ.pop(PASSWORD_VARIABLE, None)
                    for tmp in (logs.tmp, world.tmp):
                        shutil.rmtree(tmp, ignore_errors=True)
                print(f"  run {n + 1} {backend}: {times[backend][-1]:.2f} s", flush=True)
    finally:
        server.stop()
    sq, pg = statistics.median(times["sqlite"]), statistics.median(times["postgresql"])
    ratio = pg / sq
    print(f"\nwlcgcloud launch -n {args.count} on EC2 (moto), fresh process, median of {args.runs}:")
    print(f"  SQLite ledger: {sq:.2f} s   PostgreSQL ledger (TLS, scram): {pg:.2f} s   "
          f"ratio PG/SQLite {ratio:.3f} (goal <= {LAUNCH_RATIO_GOAL})")  # fmt: skip
    print(f"  runs: sqlite {', '.join(f'{t:.2f}' for t in times['sqlite'])}; "
          f"postgresql {', '.join(f'{t:.2f}' for t in times['postgresql'])}")  # fmt: skip
    return 0 if ratio <= LAUNCH_RATIO_GOAL else 1


def _check_launched(client: Any, fleet: str, count: int) -> None:
    found = instances_of(client, fleet)
    if found != count:
        raise SystemExit(f"launch of {fleet}: {found} instances on moto, not {count}")


def instances_of(client: Any, fleet: str) -> int:
    """How many pending or running instances on moto carry the fleet's tag."""
    wanted = [{"Name": "tag:wlcg:fleet", "Values": [fleet]},
              {"Name": "instance-state-name", "Values": ["pending", "running"]}]  # fmt: skip
    pages = client.get_paginator("describe_instances").paginate(Filters=wanted)
    return sum(len(r["Instances"]) for page in pages for r in page["Reservations"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="which", required=True)
    rounds = sub.add_parser("rounds")
    rounds.add_argument("--rounds", type=int, default=100)
    rounds.add_argument("--machines", type=int, default=5)
    rounds.add_argument("--count", type=int, default=2)
    rounds.add_argument("--time-limit", type=float, default=0.0, help="stop starting rounds after S seconds")
    launch = sub.add_parser("launch")
    launch.add_argument("--count", type=int, default=200)
    launch.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    return {"rounds": bench_rounds, "launch": bench_launch}[args.which](args)


if __name__ == "__main__":
    sys.exit(main())
