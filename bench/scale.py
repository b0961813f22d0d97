"""Scale curve of `wlcgcloud fleet list`: wall time and peak RSS at 1,000, 5,000 and 10,000 instances per cloud.

    .venv/bin/python bench/scale.py [--sizes 1000 5000 10000] [--runs 3] [--alone]

One moto EC2 server and one OpenNebula XML-RPC peer; each is grown to N instances of one fleet
(only the difference is created at each step: boto3 run_instances in batches of 1,000 with the
tags `wlcgcloud launch` sets, and the peer's own seeding call with the USER_TEMPLATE attributes
our launch sets). At each N, `wlcgcloud fleet list -o json` runs as a fresh process under GNU
time (median wall time of --runs, the largest peak RSS), and its JSON must count N per cloud.
Beside it, a fresh Python process makes the same cloud calls with the raw SDKs (DescribeTags +
DescribeInstanceStatus, vmpool.infoextended in pages of 500): the peers' own cost, as reference.
--alone also times `fleet list -p aws` and `-p one` at each N.
Targets: the 10,000 figure <= 10.5x the 1,000 figure (no worse than linear), and peak RSS
<= 250 MB at 10,000 EC2 + 10,000 OpenNebula instances. Exit 1 when one is missed.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fleets import PYTHON, WLCGCLOUD, World  # bench/fleets.py puts tests/ on sys.path, for the peers

FLEET = "scale"
RATIO_TARGET = 10.5
RSS_TARGET_MB = 250.0
BATCH = 1000
TAGS = {"wlcg:fleet": FLEET, "wlcg:profile": "aws", "wlcg:experiment": "atlas", "wlcg:image": "none",
        "wlcg:endorsement": "none", "wlcg:launched-by": "bench@localhost", "wlcg:created": "2026-11-24T00:00:00Z",
        "wlcg:flavor": "m5.large"}  # fmt: skip

RAW = """
import sys
url, key, secret, one_url, which = sys.argv[1:]
n = 0
if which in ("all", "aws"):
    import boto3
    ec2 = boto3.client("ec2", endpoint_url=url, region_name="eu-west-1", aws_access_key_id=key,
                       aws_secret_access_key=secret)
    keys = ["wlcg:fleet", "wlcg:profile", "wlcg:experiment", "wlcg:image", "wlcg:endorsement",
            "wlcg:launched-by", "wlcg:created", "wlcg:flavor"]
    filters = [{"Name": "resource-type", "Values": ["instance"]}, {"Name": "key", "Values": keys}]
    fleet = set()
    for page in ec2.get_paginator("describe_tags").paginate(Filters=filters, PaginationConfig={"PageSize": 1000}):
        fleet.update(t["ResourceId"] for t in page["Tags"] if t["Key"] == "wlcg:fleet")
    states = {}
    for page in ec2.get_paginator("describe_instance_status").paginate(
            IncludeAllInstances=True, PaginationConfig={"PageSize": 1000}):
        states.update((s["InstanceId"], s["InstanceState"]["Name"]) for s in page["InstanceStatuses"])
    n += len(fleet & states.keys())
if which in ("all", "one"):
    import pyone
    one = pyone.OneServer(one_url, session="atlas:secret")
    start = 0
    while True:
        vms = one.vmpool.infoextended(-1, start, -500, -1).VM or []
        n += len(vms)
        if len(vms) < 500:
            break
        start += 500
print(n)
"""


def measured(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MB (GNU time) and stdout of one fresh process."""
    start = time.perf_counter()
    done = subprocess.run(["/usr/bin/time", "-v", *command], env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed ({done.returncode}): {done.stderr[-2000:]}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    return elapsed, (int(peak.group(1)) / 1024 if peak else float("nan")), done.stdout


def series(command: list[str], env: dict[str, str], runs: int, check: Any) -> tuple[float, float]:
    """Median wall time and largest peak RSS over `runs` runs; `check(stdout)` verifies each answer."""
    times, peaks = [], []
    for _ in range(runs):
        elapsed, peak, out = measured(command, env)
        check(out)
        times.append(elapsed)
        peaks.append(peak)
    return statistics.median(times), max(peaks)


def fleet_check(expected: dict[str, int]) -> Any:
    def check(out: str) -> None:
        got = {r["profile"]: r["total"] for r in json.loads(out) if r["fleet"] == FLEET}
        if got != expected:
            raise SystemExit(f"fleet list counted {got}, expected {expected}")

    return check


def raw_check(expected: int) -> Any:
    def check(out: str) -> None:
        if int(out.strip()) != expected:
            raise SystemExit(f"raw SDK listing counted {out.strip()}, expected {expected}")

    return check


def grow(client: Any, control: Any, have: int, want: int) -> tuple[float, float]:
    """Bring both clouds from `have` to `want` fleet instances; seconds spent on EC2 and on OpenNebula."""
    from wlcgcloud.providers.base import one_attribute

    start = time.perf_counter()
    spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in TAGS.items()]}]
    for done in range(have, want, BATCH):
        n = min(BATCH, want - done)
        client.run_instances(ImageId="ami-03cf127a", InstanceType="m5.large", MinCount=n, MaxCount=n,
                             TagSpecifications=spec)  # fmt: skip
    ec2_s = time.perf_counter() - start
    user = {**TAGS, "wlcg:profile": "one", "wlcg:flavor": "atlas-wn"}
    template = "\n".join(['NAME="scale"', 'CPU="1"', 'VCPU="2"', 'MEMORY="4096"', 'TEMPLATE_ID="0"',
                          *(f'{one_attribute(k)}="{v}"' for k, v in user.items())])  # fmt: skip
    start = time.perf_counter()
    for done in range(have, want, BATCH):
        control.peer.add_vms("atlas", template, min(BATCH, want - done))
    return ec2_s, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--alone", action="store_true", help="also time each cloud alone (-p aws, -p one)")
    args = parser.parse_args()
    sizes = sorted(args.sizes)

    import boto3
    from peers import ec2, opennebula

    world = World()
    moto = ec2.start(world.tmp / "moto.log")
    one_url, one_proc = opennebula.spawn()
    try:
        client = boto3.client("ec2", endpoint_url=moto.url, region_name="eu-west-1",
                              aws_access_key_id=moto.access_key, aws_secret_access_key=moto.secret_key)  # fmt: skip
        control = xmlrpc.client.ServerProxy(one_url, allow_none=True)
        world.profiles({"aws": {"provider": "ec2", "region": "eu-west-1", "endpoint_url": moto.url,
                                "access_key_id": moto.access_key},
                        "one": {"provider": "opennebula", "endpoint": one_url, "username": "atlas"}},
                       {"aws": moto.secret_key, "one": "secret"})  # fmt: skip
        ours = [WLCGCLOUD, "fleet", "list", "-o", "json"]
        raw = [PYTHON, "-c", RAW, moto.url, moto.access_key, moto.secret_key, one_url]
        rows: list[dict[str, Any]] = []
        have = 0
        for n in sizes:
            ec2_s, one_s = grow(client, control, have, n)
            print(f"N={n}: created {n - have} per cloud (EC2 {ec2_s:.1f} s, OpenNebula {one_s:.1f} s)", flush=True)
            have = n
            row: dict[str, Any] = {"n": n}
            row["ours"] = series(ours, world.env, args.runs, fleet_check({"aws": n, "one": n}))
            row["raw"] = series([*raw, "all"], world.env, args.runs, raw_check(2 * n))
            if args.alone:
                for name in ("aws", "one"):
                    row[name] = series([*ours, "-p", name], world.env, args.runs, fleet_check({name: n}))
                    row[f"raw {name}"] = series([*raw, name], world.env, args.runs, raw_check(n))
            rows.append(row)
            print(f"  fleet list {row['ours'][0]:.2f} s {row['ours'][1]:.0f} MB; "
                  f"raw SDKs {row['raw'][0]:.2f} s {row['raw'][1]:.0f} MB", flush=True)  # fmt: skip
        return report(rows, args.runs)
    finally:
        moto.stop()
        one_proc.terminate()


def report(rows: list[dict[str, Any]], runs: int) -> int:
    base = rows[0]
    kinds = [k for k in rows[0] if k != "n"]
    names = {"ours": "fleet list (EC2 + ONE)", "raw": "raw SDKs (EC2 + ONE)", "aws": "fleet list -p aws",
             "one": "fleet list -p one", "raw aws": "raw boto3 (EC2)", "raw one": "raw pyone (ONE)"}  # fmt: skip
    print(f"\nfleet list scale curve, median of {runs} runs, one fleet per cloud:")
    print(f"{'what':24} {'N per cloud':>11} {'median s':>9} {'x N=' + str(base['n']):>9} {'peak RSS MB':>12}")
    for kind in kinds:
        for row in rows:
            seconds, peak = row[kind]
            print(f"{names[kind]:24} {row['n']:>11} {seconds:>9.2f} {seconds / base[kind][0]:>9.2f} {peak:>12.0f}")
    top = rows[-1]
    ratio = top["ours"][0] / base["ours"][0]
    allowed = RATIO_TARGET * top["n"] / base["n"] / 10  # 10.5x for 10x the instances
    time_ok = ratio <= allowed
    rss_ok = top["ours"][1] <= RSS_TARGET_MB
    raw_ratio = top["raw"][0] / base["raw"][0]
    print(f"time: N={top['n']} is {ratio:.2f}x N={base['n']} (target <= {allowed:.1f}x; raw SDKs {raw_ratio:.2f}x): "
          f"{'met' if time_ok else 'MISSED'}")  # fmt: skip
    print(f"peak RSS at {top['n']} + {top['n']}: {top['ours'][1]:.0f} MB (target <= {RSS_TARGET_MB:.0f} MB): "
          f"{'met' if rss_ok else 'MISSED'}")  # fmt: skip
    return 0 if time_ok and rss_ok else 1


if __name__ == "__main__":
    sys.exit(main())
