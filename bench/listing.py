"""Listing benchmark: wall time and peak RSS of `wlcgcloud instance list -o json` over three clouds.

    .venv/bin/python bench/listing.py [--ec2 1000] [--one 1000] [--openstack 100] [--runs 3]

Puts N fleet instances on each test peer — a moto_server (EC2), the OpenNebula XML-RPC peer and,
with --openstack N > 0, the real OpenStack peer of ../shared/peers/openstack (it must be up; its
quota is 100 servers) — then times the installed command listing all of them at once, as a user
would, in a throwaway config and state directory. Peak RSS comes from GNU time around the
command alone. The OpenStack servers are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

BUDGET_MB = 200


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ec2", type=int, default=1000)
    parser.add_argument("--one", type=int, default=1000)
    parser.add_argument("--openstack", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    import boto3
    from peers import ec2, opennebula

    from conftest import OSK_DIR, read_env_file

    tmp = Path(tempfile.mkdtemp(prefix="wlcg-bench-"))
    moto = ec2.start(tmp / "moto.log")
    one_url, one_proc = opennebula.spawn()
    osk_conn = None
    fleet = "bench"
    try:
        client = boto3.client(
            "ec2",
            endpoint_url=moto.url,
            region_name="eu-west-1",
            aws_access_key_id=moto.access_key,
            aws_secret_access_key=moto.secret_key,
        )
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "wlcg:fleet", "Value": fleet}]}]
        for start in range(0, args.ec2, 500):
            n = min(500, args.ec2 - start)
            client.run_instances(
                ImageId="ami-03cf127a", InstanceType="m5.large", MinCount=n, MaxCount=n, TagSpecifications=tags
            )
        import xmlrpc.client

        control = xmlrpc.client.ServerProxy(one_url, allow_none=True)
        if args.one:
            control.peer.add_vms(
                "atlas", f'NAME="bench"\nCPU="1"\nVCPU="2"\nMEMORY="4096"\nWLCG_FLEET="{fleet}"', args.one
            )
        profiles = {
            "aws": {
                "provider": "ec2",
                "region": "eu-west-1",
                "endpoint_url": moto.url,
                "access_key_id": moto.access_key,
            },
            "one": {"provider": "opennebula", "endpoint": one_url, "username": "atlas"},
        }
        env = dict(os.environ, WLCGCLOUD_SECRET_AWS=moto.secret_key, WLCGCLOUD_SECRET_ONE="secret")
        if args.openstack:
            creds = read_env_file(OSK_DIR / "appcred.env")
            image = read_env_file(OSK_DIR / "image.env")["OSK_IMAGE_ID"]
            import openstack

            osk_conn = openstack.connect(
                auth_type="v3applicationcredential",
                auth={
                    "auth_url": creds["OS_AUTH_URL"],
                    "application_credential_id": creds["OS_APPLICATION_CREDENTIAL_ID"],
                    "application_credential_secret": creds["OS_APPLICATION_CREDENTIAL_SECRET"],
                },
                region_name="RegionOne",
                load_yaml_config=False,
                load_envvars=False,
            )
            flavor = osk_conn.compute.find_flavor("m1.tiny")
            osk_conn.compute.create_server(
                name="bench", image_id=image, flavor_id=flavor.id, networks="none",
                min_count=args.openstack, max_count=args.openstack, metadata={"wlcg:fleet": fleet},
            )  # fmt: skip
            profiles["osk"] = {
                "provider": "openstack",
                "auth_url": creds["OS_AUTH_URL"],
                "application_credential_id": creds["OS_APPLICATION_CREDENTIAL_ID"],
                "region": "RegionOne",
            }
            env["WLCGCLOUD_SECRET_OSK"] = creds["OS_APPLICATION_CREDENTIAL_SECRET"]
        config = tmp / "config.toml"
        lines = []
        for name, settings in profiles.items():
            lines.append(f"[profiles.{name}]")
            lines += [f'{k} = "{v}"' for k, v in settings.items()]
        config.write_text("\n".join(lines) + "\n")
        env.update(WLCGCLOUD_CONFIG=str(config), WLCGCLOUD_STATE_DIR=str(tmp / "state"), HOME=str(tmp))
        env["AWS_EC2_METADATA_DISABLED"] = "true"
        command = [str(ROOT / ".venv/bin/wlcgcloud"), "instance", "list", "-o", "json"]
        times, peaks, count = [], [], 0
        for _ in range(args.runs):
            start = time.perf_counter()
            done = subprocess.run(["/usr/bin/time", "-v", *command], env=env, capture_output=True, text=True)
            times.append(time.perf_counter() - start)
            if done.returncode != 0:
                raise SystemExit(f"instance list failed ({done.returncode}): {done.stderr[-2000:]}")
            peaks.append(int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr).group(1)) / 1024)
            count = done.stdout.count('"id":')
        print(f"instances listed: {count} (ec2 {args.ec2}, opennebula {args.one}, openstack {args.openstack})")
        print(f"wall time: median {statistics.median(times):.2f} s over {args.runs} runs")
        print(f"peak RSS:  max {max(peaks):.1f} MB (budget {BUDGET_MB} MB)")
        return 0 if max(peaks) <= BUDGET_MB else 1
    finally:
        moto.stop()
        one_proc.terminate()
        if osk_conn is not None:
            for server in osk_conn.compute.servers(details=True):
                if (server.metadata or {}).get("wlcg:fleet") == fleet:
                    osk_conn.compute.delete_server(server.id)


if __name__ == "__main__":
    sys.exit(main())
