"""The files our cloud-config writes for the in-VM agent `wlcgcloud-vm` (docs/vm-side.md).

A VM launched with a bootstrap gets the agent (/usr/local/sbin/wlcgcloud-vm, shipped as
wlcgcloud/context/vm/wlcgcloud-vm.sh), a systemd timer that runs `wlcgcloud-vm tick` every minute,
and /run/wlcgcloud/vm.env, which tells the agent the lease and the bootstrap. The bootstrap itself
runs `wlcgcloud-vm boot` and enables the timer.

The agent goes gzipped and base64-encoded (`encoding: gz+b64`), gzip without a time stamp, so the
document keeps to EC2's 16 KB and renders the same bytes every time.
"""

from __future__ import annotations

import base64
import gzip
from datetime import timedelta
from importlib import resources
from typing import Any

AGENT_PATH = "/usr/local/sbin/wlcgcloud-vm"
ENV_PATH = "/run/wlcgcloud/vm.env"
SERVICE_PATH = "/etc/systemd/system/wlcgcloud-vm.service"
TIMER_PATH = "/etc/systemd/system/wlcgcloud-vm.timer"

SERVICE = f"""[Unit]
Description=wlcgcloud VM agent: drain requests, lease, shutdown message
After=network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart={AGENT_PATH} tick
"""

TIMER = """[Unit]
Description=Run the wlcgcloud VM agent every minute

[Timer]
OnBootSec=1min
OnUnitActiveSec=1min
AccuracySec=5s

[Install]
WantedBy=timers.target
"""


def agent_script() -> bytes:
    """The agent as shipped in the package."""
    return resources.files("wlcgcloud.context").joinpath("vm", "wlcgcloud-vm.sh").read_bytes()


def packed(data: bytes) -> str:
    """`gz+b64` content: gzip without a time stamp (the same bytes every time), then base64."""
    return base64.b64encode(gzip.compress(data, compresslevel=9, mtime=0)).decode()


def agent_files(bootstrap: str, lease: timedelta | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The write_files entries for the agent, and what a person is shown of them (no content)."""
    script = agent_script()
    env = (f"LEASE_SECONDS={int(lease.total_seconds())}\n" if lease is not None else "") + f"BOOTSTRAP={bootstrap}\n"
    files: list[dict[str, Any]] = [
        {"path": AGENT_PATH, "encoding": "gz+b64", "content": packed(script), "permissions": "0755"},
        {"path": SERVICE_PATH, "content": SERVICE, "permissions": "0644"},
        {"path": TIMER_PATH, "content": TIMER, "permissions": "0644"},
        {"path": ENV_PATH, "content": env, "permissions": "0644"},
    ]
    described: list[dict[str, Any]] = [
        {"path": AGENT_PATH, "permissions": "0755", "content": f"the wlcgcloud-vm agent ({len(script)} bytes, gz+b64)"},
        {"path": SERVICE_PATH, "content": "systemd service: wlcgcloud-vm tick"},
        {"path": TIMER_PATH, "content": "systemd timer: every minute"},
        {"path": ENV_PATH, "permissions": "0644", "content": ", ".join(line.split("=")[0] for line in env.split())},
    ]
    return files, described
