"""Record what the real OpenStack peer answers our provider, for tests/peers/openstack_replay.py.

Run by hand, as root (the peer's credential files in /tmp/osk are root's), with the peer up:

    cd /work/main && bash dev/openstack-peer && .venv/bin/python tests/peers/openstack_record.py

It makes a fleet of two servers through our provider, straight to the peer: one ACTIVE on m1.small and
one in ERROR on the admin-made flavor `osk-nowhere`, which asks Placement for a resource no host has.
Then it drives OpenStackProvider (through `connect` and a profile written as the tests write them)
through a recording reverse proxy, one listener per service port. Each scenario gets a fresh provider,
so its file (tests/payloads/openstack/<scenario>.json) is a whole conversation, authentication
included: check, flavors, images, quota, list, show, console_log, usage, terminate (which deletes the
fleet) and wrong_secret (a 401). The proxy sends the upstream's own Host and rewrites 127.0.0.1:PORT
URLs in answers to its listeners, as the replay server does, so the files hold the peer's own URLs.
Tokens, the application credential secret and the passwords become placeholders before anything is
written, and a file that still holds one is not written. Servers it made are deleted in any case.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.message import Message
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(TESTS))

from peers.openstack_replay import KEPT_HEADERS, PAYLOADS, URL, Listeners, Reply, rewrite  # noqa: E402

from wlcgcloud.config import load_config  # noqa: E402
from wlcgcloud.providers import connect  # noqa: E402
from wlcgcloud.providers.base import Provider  # noqa: E402

import conftest  # noqa: E402
from conftest import openstack_sdk as sdk  # noqa: E402

NOT_FORWARDED = frozenset({"host", "connection", "keep-alive", "accept-encoding", "content-length"})


class Recorder:
    """A reverse proxy to 127.0.0.1:<port> for every port it has been shown, keeping each exchange."""

    def __init__(self, secret_values: list[str]) -> None:
        self.listeners = Listeners(self.forward)
        self.exchanges: list[dict[str, Any]] = []
        self.scrub = {s: "<secret>" for s in secret_values}  # real value -> placeholder
        self.tokens = 0

    def forward(self, port: int, method: str, path: str, headers: Message, body: bytes) -> Reply:
        sent = {k: v for k, v in headers.items() if k.lower() not in NOT_FORWARDED}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            conn.request(method, path, body or None, {**sent, "Accept-Encoding": "identity"})
            resp = conn.getresponse()
            payload = resp.read().decode()
        finally:
            conn.close()
        kept = {k: v for k, v in resp.getheaders() if k.lower() in KEPT_HEADERS}
        for token in (headers.get("X-Auth-Token"), kept.get("X-Subject-Token")):
            if token and token not in self.scrub:
                self.tokens += 1
                self.scrub[token] = f"scrubbed-token-{self.tokens}"
        self.exchanges.append(
            {
                "port": port,
                "method": method,
                "path": path,
                "status": resp.status,
                "headers": kept,
                "body": parse(payload, kept.get("Content-Type", "")),
                "request": parse(body.decode(), headers.get("Content-Type", "")) if body else None,
                "authenticated": "X-Auth-Token" in headers,
            }
        )
        for found in URL.findall(payload + json.dumps(kept)):
            self.listeners.add(int(found))
        ports = self.listeners.ports
        return resp.status, {k: rewrite(v, ports) for k, v in kept.items()}, rewrite(payload, ports).encode()

    def save(self, scenario: str, doc: dict[str, Any]) -> None:
        doc = {"scenario": scenario, **doc, "ports": sorted(self.listeners.ports), "exchanges": self.exchanges}
        text = json.dumps(doc, indent=1) + "\n"
        for real, placeholder in self.scrub.items():
            text = text.replace(json.dumps(real)[1:-1], placeholder)
        if any(real in text for real in self.scrub):
            raise SystemExit(f"{scenario}: a secret survived scrubbing; nothing written")
        PAYLOADS.mkdir(parents=True, exist_ok=True)
        (PAYLOADS / f"{scenario}.json").write_text(text)
        print(f"{scenario}: {len(self.exchanges)} exchanges", file=sys.stderr)
        self.exchanges = []


def parse(text: str, content_type: str) -> Any:
    if not text:
        return None
    return json.loads(text) if "json" in content_type else text


def main() -> None:
    appcred = conftest.read_env_file(conftest.OSK_DIR / "appcred.env")
    image = conftest.read_env_file(conftest.OSK_DIR / "image.env")
    peer = conftest.OpenStackPeer(
        appcred,
        conftest.read_env_file(conftest.OSK_DIR / "openrc"),
        conftest.read_env_file(conftest.OSK_DIR / "admin-openrc"),
        image["OSK_IMAGE_ID"],
        image["OSK_IMAGE_SHA512"],
    )
    secret = appcred["OS_APPLICATION_CREDENTIAL_SECRET"]
    rec = Recorder([secret, peer.password["OS_PASSWORD"], peer.admin["OS_PASSWORD"]])
    keystone = int(URL.findall(appcred["OS_AUTH_URL"])[0])
    rec.listeners.add(keystone)
    home = Path(tempfile.mkdtemp(prefix="osk-record-"))
    world = conftest.World(home, home, home / "config.toml", home / "state", home / "keyring.json")
    proxied = rewrite(appcred["OS_AUTH_URL"], rec.listeners.ports)
    conftest.write_profiles(
        world, {"direct": conftest.openstack_profile(peer), "osk": conftest.openstack_profile(peer, auth_url=proxied)}
    )
    os.environ.update(WLCGCLOUD_SECRET_DIRECT=secret, WLCGCLOUD_SECRET_OSK=secret)
    direct = connect(load_config(world.config).profile("direct"))
    fleet = "rec-" + uuid.uuid4().hex[:8]
    admin = sdk(peer.admin)
    nowhere = admin.compute.find_flavor("osk-nowhere") or admin.compute.create_flavor(
        name="osk-nowhere", ram=512, vcpus=1, disk=1
    )
    admin.compute.create_flavor_extra_specs(nowhere, {"resources:CUSTOM_WLCG_NOWHERE": "1"})
    try:
        (active,) = conftest.create_instances(world, "direct", peer.image_id, "m1.small", 1, fleet)
        (error,) = conftest.create_instances(world, "direct", peer.image_id, "osk-nowhere", 1, fleet)
        deadline = time.monotonic() + 180
        while {i.state for i in direct.instances(fleet)} != {"running", "error"}:
            if time.monotonic() > deadline:
                raise SystemExit(f"fleet {fleet} did not settle: {direct.instances(fleet)}")
            time.sleep(2)
        now = datetime.now(UTC)
        since, until = now - timedelta(hours=1), now + timedelta(minutes=1)
        base = {
            "recorded_at": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "peer": "OpenStack Zed of ../shared/peers/openstack (Debian bookworm packages), on 127.0.0.1",
            "profile": {k: v for k, v in conftest.openstack_profile(peer).items() if k != "timeout"},
            "fleet": fleet,
            "servers": {"active": active, "error": error},
            "window": {"since": since.isoformat(), "until": until.isoformat()},
        }

        def record(scenario: str, fn: Callable[[Provider], object], secret_value: str = secret) -> None:
            os.environ["WLCGCLOUD_SECRET_OSK"] = secret_value
            fn(connect(load_config(world.config).profile("osk")))
            rec.save(scenario, base)

        record("check", lambda p: p.check())
        record("flavors", lambda p: p.flavors())
        record("images", lambda p: p.images())
        record("quota", lambda p: p.quota())
        record("list", lambda p: p.instances(fleet))
        record("show", lambda p: (p.instance(active), p.instance(error)))
        record("console_log", lambda p: (p.instance(active), p.console_log(active)))
        record("usage", lambda p: p.usage(since, until))
        record("wrong_secret", lambda p: p.check(), "wrong-" + secrets.token_urlsafe(16))

        def terminate(p: Provider) -> None:
            # What `instance terminate` asks (a listing, then the deletes), then a listing once Nova is done.
            p.instances(everything=True)
            p.terminate([active, error])
            gone = time.monotonic() + 120
            while direct.instances(fleet) and time.monotonic() < gone:
                time.sleep(1)
            p.instances(fleet)

        record("terminate", terminate)
    finally:
        left = [i.id for i in direct.instances(fleet)]
        if left:
            print(f"deleting what is left of fleet {fleet}: {direct.terminate(left)}", file=sys.stderr)
        rec.listeners.close()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
