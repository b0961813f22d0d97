"""`instance` commands on EC2, against a moto_server with credential checking on."""

from __future__ import annotations

import time
import uuid
from typing import Any
from urllib.parse import parse_qs

import pytest
from peers.faultproxy import Fault, FaultProxy

from conftest import INSTANCE_KEYS, Run, World, create_instances, ec2_profile, write_profiles

IMAGE = "ami-03cf127a"  # one of moto's built-in AMIs


@pytest.fixture
def aws(world: World, moto_ec2: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    write_profiles(world, {"aws": ec2_profile(moto_ec2)})
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", moto_ec2.secret_key)
    return moto_ec2


def fleet_name() -> str:
    """A fleet no other test uses: the moto server lives for the whole session."""
    return "t-" + uuid.uuid4().hex[:10]


def test_twenty_instances_launch_list_by_fleet_and_terminate(run: Run, world: World, aws: Any) -> None:
    fleet = fleet_name()
    ids = create_instances(world, "aws", IMAGE, "m5.xlarge", 20, fleet)
    assert len(set(ids)) == 20

    listed = run("instance", "list", "--fleet", fleet, "-o", "json")
    assert listed.code == 0, listed.err
    rows = listed.json()
    assert isinstance(rows, list)
    assert sorted(r["id"] for r in rows) == sorted(ids)
    for row in rows:
        assert set(row) >= INSTANCE_KEYS
        assert (row["fleet"], row["profile"], row["provider"]) == (fleet, "aws", "ec2")
        assert (row["vcpus"], row["memory_mb"], row["flavor"]) == (4, 16384, "m5.xlarge")
        assert row["state"] in ("pending", "running") and row["provider_state"] in ("pending", "running")
        assert row["launched_at"].endswith("Z") and row["addresses"]

    done = run("instance", "terminate", *ids, "--yes", "-o", "json")
    assert done.code == 0, done.err
    assert all(r["terminated"] for r in done.json())  # type: ignore[union-attr]
    after = run("instance", "list", "--fleet", fleet, "-o", "json").json()
    assert {r["state"] for r in after} == {"terminated"}  # type: ignore[union-attr]
    assert {r["provider_state"] for r in after} == {"terminated"}  # type: ignore[union-attr]


def test_list_shows_fleets_only_unless_all(run: Run, world: World, aws: Any) -> None:
    fleet = fleet_name()
    ours = create_instances(world, "aws", IMAGE, "t3.micro", 1, fleet)
    theirs = aws.client().run_instances(ImageId=IMAGE, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    stranger = theirs["Instances"][0]["InstanceId"]
    plain = [r["id"] for r in run("instance", "list", "-o", "json").json()]  # type: ignore[union-attr]
    everything = [r["id"] for r in run("instance", "list", "--all", "-o", "json").json()]  # type: ignore[union-attr]
    assert ours[0] in plain and stranger not in plain
    assert ours[0] in everything and stranger in everything
    running = run("instance", "list", "--all", "--state", "terminated", "-o", "json").json()
    assert stranger not in [r["id"] for r in running]  # type: ignore[union-attr]
    bad = run("instance", "list", "--state", "sleeping")
    assert bad.code == 2 and "pending running" in bad.err.replace(",", "")


def test_show_console_log_and_unknown_id(run: Run, world: World, aws: Any) -> None:
    [iid] = create_instances(world, "aws", IMAGE, "t3.micro", 1, fleet_name())
    shown = run("instance", "show", iid, "-o", "json")
    assert shown.code == 0, shown.err
    data = shown.json()
    assert isinstance(data, dict) and data["id"] == iid and data["tags"]["wlcg:experiment"] == "atlas"
    table = run("instance", "show", iid)
    assert "wlcg:fleet" in table.out and iid in table.out
    log = run("instance", "console-log", iid, "-n", "2")
    assert log.code == 0 and 1 <= len(log.out.splitlines()) <= 2
    missing = run("instance", "show", "i-0123456789abcdef0")
    # An id no profile knows is a bad argument (2), naming the profiles asked; not "cloud unreachable" (6).
    assert missing.code == 2 and "no instance 'i-0123456789abcdef0' in profile(s) aws" in missing.err
    for lines in ("-5", "0"):
        refused = run("instance", "console-log", iid, "-n", lines)
        assert refused.code == 2 and "-n" in refused.err and refused.out == ""


def test_terminate_needs_confirmation_and_refuses_unknown_ids(run: Run, world: World, aws: Any) -> None:
    fleet = fleet_name()
    [iid] = create_instances(world, "aws", IMAGE, "t3.micro", 1, fleet)
    asked = run("instance", "terminate", iid)
    assert asked.code == 2 and "--yes" in asked.err
    dry = run("instance", "terminate", iid, "--dry-run", "-o", "json")
    assert dry.code == 0 and dry.json()[0]["terminated"] is False  # type: ignore[index]
    mixed = run("instance", "terminate", iid, "i-0123456789abcdef0", "--yes")
    assert mixed.code == 2 and "nothing was terminated" in mixed.err and "profile(s) aws" in mixed.err
    state = run("instance", "show", iid, "-o", "json").json()
    assert state["state"] in ("pending", "running")  # type: ignore[index]


def test_wrong_secret_is_exit_4_naming_the_profile(run: Run, aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WLCGCLOUD_SECRET_AWS", "not-the-secret")
    result = run("instance", "list")
    assert result.code == 4
    assert "profile 'aws'" in result.err and "AuthFailure" in result.err
    assert "not-the-secret" not in result.err + result.out


def test_one_profile_down_is_partial_exit_7(run: Run, world: World, aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = fleet_name()
    create_instances(world, "aws", IMAGE, "t3.micro", 1, fleet)
    write_profiles(world, {"aws": ec2_profile(aws), "gone": ec2_profile(aws, endpoint_url="http://127.0.0.1:9")})
    monkeypatch.setenv("WLCGCLOUD_SECRET_GONE", "x")
    result = run("instance", "list", "--fleet", fleet, "-o", "json")
    assert result.code == 7
    assert [r["profile"] for r in result.json()] == ["aws"]  # type: ignore[union-attr]
    assert result.err.count("\n") == 1 and "profile 'gone'" in result.err and "cannot reach" in result.err
    only_gone = run("instance", "list", "-p", "gone")
    assert only_gone.code == 6 and only_gone.err.startswith("error: profile 'gone'")


def test_throttled_launch_retries_and_launches_once(world: World, aws: Any) -> None:
    with FaultProxy(aws.url, preserve_host=True) as proxy:
        write_profiles(world, {"aws": ec2_profile(aws, endpoint_url=proxy.url)})
        proxy.plan(
            Fault("ec2_throttle", match="Action=RunInstances"), Fault("ec2_throttle", match="Action=RunInstances")
        )
        started = time.monotonic()
        ids = create_instances(world, "aws", IMAGE, "t3.micro", 3, fleet_name())
        took = time.monotonic() - started
        throttled = [s for s in proxy.requests if s.fault == "ec2_throttle"]
        assert len(throttled) == 2 and proxy.forwarded("Action=RunInstances") == 1
        assert len(ids) == 3
        # moto ignores ClientToken, so prove what EC2 needs: every attempt carried the same token.
        tokens = {parse_qs(b.decode())["ClientToken"][0] for b in proxy.bodies("Action=RunInstances")}
        assert len(tokens) == 1 and len(tokens.pop()) == 32
        assert took < 10  # standard mode: full-jitter backoff of at most 1 s then 2 s


def test_stalled_endpoint_fails_within_timeout(run: Run, world: World, aws: Any) -> None:
    with FaultProxy(aws.url, preserve_host=True) as proxy:
        write_profiles(world, {"aws": ec2_profile(aws, endpoint_url=proxy.url, timeout=2)})
        proxy.always(Fault("stall"))
        started = time.monotonic()
        result = run("instance", "list")
        took = time.monotonic() - started
    assert result.code == 6
    assert "profile 'aws'" in result.err and "no answer within 2 s" in result.err
    assert "Traceback" not in result.err and result.err.count("\n") == 1
    assert took < 6  # the 2 s timeout plus start-up, on a loaded CI machine too; unbounded would hang


def test_reset_connection_is_retried(run: Run, world: World, aws: Any) -> None:
    fleet = fleet_name()
    create_instances(world, "aws", IMAGE, "t3.micro", 1, fleet)
    with FaultProxy(aws.url, preserve_host=True) as proxy:
        write_profiles(world, {"aws": ec2_profile(aws, endpoint_url=proxy.url)})
        proxy.plan(Fault("reset", match="Action=DescribeInstances"), Fault("status", status=500))
        result = run("instance", "list", "--fleet", fleet, "-o", "json")
    assert result.code == 0, result.err
    assert len(result.json()) == 1  # type: ignore[arg-type]


def test_help_names_the_contracts_states() -> None:
    from wlcgcloud.cli import instance
    from wlcgcloud.providers import base

    assert instance.STATES == base.STATES


def test_user_data_over_ec2s_limit_is_refused_before_launch(world: World, aws: Any) -> None:
    from wlcgcloud.config import load_config
    from wlcgcloud.errors import PolicyError
    from wlcgcloud.providers import connect
    from wlcgcloud.providers.base import LaunchRequest

    provider = connect(load_config(world.config).profile("aws"))
    fleet = fleet_name()
    big = LaunchRequest("x", IMAGE, "t3.micro", 1, b"A" * 16385, {"wlcg:fleet": fleet})
    with pytest.raises(PolicyError, match="16385 bytes; EC2 accepts at most 16384"):
        provider.create(big)
    assert provider.instances(fleet=fleet) == []
    fits = LaunchRequest("x", IMAGE, "t3.micro", 1, b"A" * 16384, {"wlcg:fleet": fleet})
    assert len(provider.create(fits)) == 1


def test_profile_without_access_key_is_a_config_error(run: Run, world: World, aws: Any) -> None:
    write_profiles(world, {"aws": {k: v for k, v in ec2_profile(aws).items() if k != "access_key_id"}})
    result = run("instance", "list")
    assert result.code == 3 and "no EC2 access key id" in result.err and "AWS_ACCESS_KEY_ID" in result.err


def test_listing_ec2_imports_neither_openstacksdk_nor_pyone(world: World, aws: Any) -> None:
    """Each SDK is imported only when a profile of its cloud is used; for EC2, botocore alone (boto3's
    own import brings s3transfer, ~70 ms that EC2 never uses)."""
    import os
    import subprocess
    import sys

    env = {**world.env(), "WLCGCLOUD_SECRET_AWS": aws.secret_key}
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "wlcgcloud", "instance", "list", "-o", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=os.getcwd(),
    )
    assert r.returncode == 0, r.stderr[-500:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in r.stderr.splitlines() if "|" in line}
    assert "botocore" in imported
    assert not imported & {"openstack", "keystoneauth1", "pyone", "boto3", "s3transfer"}


def test_network_settings_of_the_profile_reach_ec2(world: World, aws: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    client = aws.client()
    vpc = client.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc, CidrBlock="10.42.1.0/24", AvailabilityZone="eu-west-1b")["Subnet"]
    group = client.create_security_group(GroupName="htcondor", Description="pilots", VpcId=vpc)["GroupId"]
    settings = {"subnet": subnet["SubnetId"], "security_groups": [group], "availability_zone": "eu-west-1b"}
    write_profiles(world, {"aws": ec2_profile(aws, public_ip=True, **settings)})
    fleet = fleet_name()
    [iid] = create_instances(world, "aws", IMAGE, "t3.micro", 1, fleet)
    raw = client.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    assert raw["SubnetId"] == subnet["SubnetId"] and raw["Placement"]["AvailabilityZone"] == "eu-west-1b"
    # With a public IP asked for, subnet and groups travel on the network interface, as EC2 requires.
    [nic] = raw["NetworkInterfaces"]
    assert [g["GroupId"] for g in nic["Groups"]] == [group] and nic["SubnetId"] == subnet["SubnetId"]
    assert raw.get("PublicIpAddress") and raw["PrivateIpAddress"].startswith("10.42.1.")
    tags = {t["Key"]: t["Value"] for t in raw["Tags"]}
    assert tags["wlcg:fleet"] == fleet and tags["Name"] == f"{fleet}-vm"
    write_profiles(world, {"aws": ec2_profile(aws, **settings)})  # no public_ip: plain subnet and groups
    [other] = create_instances(world, "aws", IMAGE, "t3.micro", 1, fleet + "-b")
    raw = client.describe_instances(InstanceIds=[other])["Reservations"][0]["Instances"][0]
    assert [g["GroupId"] for g in raw["SecurityGroups"]] == [group] and raw["SubnetId"] == subnet["SubnetId"]


def test_usage_records_from_launch_and_termination_times(world: World, aws: Any) -> None:
    from datetime import UTC, datetime, timedelta

    from wlcgcloud.config import load_config
    from wlcgcloud.providers import connect

    provider = connect(load_config(world.config).profile("aws"))
    fleet = fleet_name()
    ended, running = create_instances(world, "aws", IMAGE, "m5.xlarge", 2, fleet)
    provider.terminate([ended])
    now = datetime.now(UTC)
    records = {r.instance_id: r for r in provider.usage(now - timedelta(hours=1), now + timedelta(minutes=1))}
    assert records[running].ended_at is None and records[running].vcpus == 4
    assert records[ended].ended_at is not None and records[ended].ended_at >= records[ended].started_at
    assert records[ended].tags["wlcg:fleet"] == fleet
    assert not [r for r in provider.usage(now - timedelta(days=2), now - timedelta(days=1)) if r.instance_id == running]


def test_a_protected_instance_is_a_partial_termination(run: Run, world: World, aws: Any) -> None:
    """EC2 refuses the batch for the protected one yet terminates the other: each line says which."""
    free, protected = create_instances(world, "aws", IMAGE, "t3.micro", 2, fleet_name())
    client = aws.client()
    client.modify_instance_attribute(InstanceId=protected, DisableApiTermination={"Value": True})
    result = run("instance", "terminate", free, protected, "--yes", "-o", "json")
    assert result.code == 7
    rows = {r["id"]: r for r in result.json()}  # type: ignore[union-attr]
    assert rows[free]["terminated"] is True and rows[protected]["terminated"] is False
    assert "OperationNotPermitted" in rows[protected]["error"]
    assert result.err.count("was not terminated") == 1 and result.err.count("profile 'aws'") == 1
    client.modify_instance_attribute(InstanceId=protected, DisableApiTermination={"Value": False})
