"""The EC2 peer's serial console (tests/peers/moto_console.py): GetConsoleOutput serves the text a test sets."""

from __future__ import annotations

import base64
from typing import Any

import boto3
import botocore.exceptions
import botocore.handlers
import pytest
from peers.moto_console import CONSOLE_LIMIT

IMAGE = "ami-03cf127a"  # one of moto's built-in AMIs
SAMPLE_START = "Linux version 2.6.16-xenU"  # moto's fixed sample console (moto/ec2/responses/general.py)


def launch(client: Any, count: int) -> list[str]:
    made = client.run_instances(ImageId=IMAGE, InstanceType="t3.micro", MinCount=count, MaxCount=count)
    return [i["InstanceId"] for i in made["Instances"]]


def console(client: Any, instance_id: str) -> str:
    return str(client.get_console_output(InstanceId=instance_id)["Output"])


def test_a_set_text_is_served_for_that_instance_only(moto_ec2: Any) -> None:
    client = moto_ec2.client()
    first, second = launch(client, 2)
    text = "systemd[1]: Stopping\nwlcgcloud-shutdown: 0 drained, température ok\n"
    moto_ec2.set_console(first, text)
    assert console(client, first) == text
    assert console(client, second).startswith(SAMPLE_START)
    reply = client.get_console_output(InstanceId=first)
    assert reply["InstanceId"] == first and reply["Timestamp"]
    client.stop_instances(InstanceIds=[first])  # the console stays readable after power-off
    assert console(client, first) == text
    moto_ec2.set_console(first, None)
    assert console(client, first).startswith(SAMPLE_START)


def test_the_output_is_base64_on_the_wire(moto_ec2: Any) -> None:
    client = moto_ec2.client()
    (instance,) = launch(client, 1)
    moto_ec2.set_console(instance, "wlcgcloud-shutdown: 3 out of disk\n")
    client.meta.events.unregister("after-call.ec2.GetConsoleOutput", botocore.handlers.decode_console_output)
    raw = client.get_console_output(InstanceId=instance)["Output"]
    assert base64.b64decode(raw, validate=True) == b"wlcgcloud-shutdown: 3 out of disk\n"


def test_only_the_last_64_kb_are_served(moto_ec2: Any) -> None:
    client = moto_ec2.client()
    (instance,) = launch(client, 1)
    lines = "".join(f"line {n:06d} of the boot log\n" for n in range(3000))  # about 87 KB
    text = "FIRST LINE\n" + lines + "wlcgcloud-shutdown: 0 done\n"
    assert len(text) > CONSOLE_LIMIT == 65536
    moto_ec2.set_console(instance, text)
    served = console(client, instance)
    assert served == text[-CONSOLE_LIMIT:] and "FIRST LINE" not in served
    assert served.endswith("wlcgcloud-shutdown: 0 done\n")


def test_an_unknown_instance_is_ec2_s_not_found(moto_ec2: Any) -> None:
    client = moto_ec2.client()
    moto_ec2.set_console("i-0123456789abcdef0", "set for an instance that does not exist")
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.get_console_output(InstanceId="i-0123456789abcdef0")
    assert caught.value.response["Error"]["Code"] == "InvalidInstanceID.NotFound"


def test_signed_requests_are_still_checked(moto_ec2: Any) -> None:
    (instance,) = launch(moto_ec2.client(), 1)
    moto_ec2.set_console(instance, "wlcgcloud-shutdown: 0 done\n")
    wrong = boto3.client(
        "ec2", endpoint_url=moto_ec2.url, region_name="eu-west-1",
        aws_access_key_id=moto_ec2.access_key, aws_secret_access_key="not-the-secret",
    )  # fmt: skip
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        wrong.get_console_output(InstanceId=instance)
    assert caught.value.response["Error"]["Code"] == "AuthFailure"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 401
