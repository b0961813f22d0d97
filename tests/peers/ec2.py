"""A moto EC2 server on 127.0.0.1, as a separate process, with credential checking switched on.

moto accepts any credentials unless `INITIAL_NO_AUTH_ACTION_COUNT` is set: then only the first
N requests go unchecked. We spend exactly those on creating one IAM user with an access key
and an allow-all policy, so every later request is signed and checked like on AWS, and a
wrong secret gets AuthFailure (HTTP 401).

The process is moto_server as run by tests/peers/moto_console.py: moto unchanged except that
GetConsoleOutput serves a text a test sets per instance (`MotoEC2.set_console`), the last 64 KB of
it as EC2 does, and moto's fixed sample text for every other instance.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import boto3

BOOTSTRAP_REQUESTS = 3  # create_user, create_access_key, put_user_policy
SERVER = Path(__file__).with_name("moto_console.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MotoEC2:
    url: str
    access_key: str
    secret_key: str
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def client(self, region: str = "eu-west-1") -> object:
        return boto3.client(
            "ec2",
            endpoint_url=self.url,
            region_name=region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
        )

    def set_console(self, instance_id: str, text: str | bytes | None) -> None:
        """What GetConsoleOutput returns for this instance from now on (None: moto's sample text again).

        Any instance id is accepted here; GetConsoleOutput still answers InvalidInstanceID.NotFound
        for one moto does not know.
        """
        url = f"{self.url}/_peer/console/{urllib.parse.quote(instance_id, safe='')}"
        if text is None:
            request = urllib.request.Request(url, method="DELETE")
        else:
            data = text.encode() if isinstance(text, str) else text
            request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            reply.read()


def start(log: Path, check_credentials: bool = True) -> MotoEC2:
    """Start moto_server on a free port and create the one IAM user every test signs as.

    `check_credentials=False` leaves moto's signature checking off. Only the EBS direct API test
    needs that: moto 5.2.5's checker rejects every correctly signed CompleteSnapshot (403
    SignatureDoesNotMatch, while StartSnapshot and PutSnapshotBlock pass), a moto bug.
    """
    port = free_port()
    env = dict(os.environ, AWS_EC2_METADATA_DISABLED="true")
    if check_credentials:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(BOOTSTRAP_REQUESTS)
    # -P: run by path without putting tests/peers (modules named ec2, tls, ...) first on sys.path
    command = [sys.executable, "-P", str(SERVER), "-H", "127.0.0.1", "-p", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=2).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto_server did not start: see {log}") from None
            time.sleep(0.1)
    if not check_credentials:
        return MotoEC2(url, "AKIAUNCHECKED", "unchecked", proc)
    iam = boto3.client(
        "iam", endpoint_url=url, region_name="us-east-1", aws_access_key_id="bootstrap", aws_secret_access_key="x"
    )
    iam.create_user(UserName="operator")
    key = iam.create_access_key(UserName="operator")["AccessKey"]
    iam.put_user_policy(
        UserName="operator",
        PolicyName="everything",
        PolicyDocument='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
    )
    return MotoEC2(url, key["AccessKeyId"], key["SecretAccessKey"], proc)
