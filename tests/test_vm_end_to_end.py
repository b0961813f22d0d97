"""Issue 18 end to end, on each cloud: a VM launched with the HTCondor bootstrap learns its shutdown
time through Machine/Job Features, is drained from the command line, powers off when its job is done,
and `fleet show` gives its reason for ending.

The VM is the agent of the launch's bootstrap in a sandbox (tests/test_vm_agent.py's), and what it
reads about itself comes from metadata endpoints at each cloud's wire protocol (tests/peers/
vm_metadata.py) whose answers are taken from the cloud peer itself, as the real services take
them from the cloud: EC2's instance tags (moto), Nova's server metadata (the real Nova), the VM's
USER_TEMPLATE through XML-RPC, where OneGate's PUT /vm also writes (the OpenNebula peer). What the
agent writes on its console reaches the owner as the cloud's console API serves it (moto); the
real Nova's fake driver serves a fixed console, so there the lifetime decides, and the OpenStack
console leg is tested against the simulated Nova (tests/test_sim_openstack_peer.py).
"""

from __future__ import annotations

import calendar
import re
import time
import xmlrpc.client
from datetime import timedelta
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
from peers.vm_metadata import IMDSv2Server, NovaMetadataServer, OneGateServer
from test_vm_agent import Cloud, kernel_boot_time, make_vm

from conftest import Run, World, fleet_name, openstack_sdk

SETTINGS = ["--set", "COLLECTOR=cm.example.org:9618"]
FLAVORS = {"aws": "m5.large", "osk": "m1.large", "one": "atlas-wn"}


class EC2Tags:
    """IMDSv2's tags/instance, as EC2 serves them: the instance's tags (DescribeTags)."""

    def __init__(self, client: Any, instance_id: str) -> None:
        self.client, self.instance_id = client, instance_id

    def tags(self) -> dict[str, str]:
        found = self.client.describe_tags(Filters=[{"Name": "resource-id", "Values": [self.instance_id]}])["Tags"]
        return {t["Key"]: t["Value"] for t in found}


class NovaMeta:
    """The metadata service's `meta`, as Nova serves it: the server's metadata."""

    def __init__(self, sdk: Any, server_id: str) -> None:
        self.sdk, self.server_id = sdk, server_id

    def meta(self) -> dict[str, str]:
        return dict(self.sdk.compute.get_server(self.server_id).metadata)


class OneTemplate:
    """OneGate's view of a VM: its USER_TEMPLATE, read and merged through oned's XML-RPC as its owner."""

    def __init__(self, url: str, vm_id: str) -> None:
        self.proxy, self.vm_id = xmlrpc.client.ServerProxy(url), int(vm_id)

    def user_template(self) -> dict[str, str]:
        ok, body, _ = self.proxy.one.vm.info("atlas:secret", self.vm_id)  # type: ignore[misc]
        assert ok, body
        node = ElementTree.fromstring(str(body)).find("USER_TEMPLATE")
        return {child.tag: child.text or "" for child in (node if node is not None else [])}

    def update(self, values: dict[str, str]) -> None:
        text = "\n".join(f'{k}="{v}"' for k, v in values.items())
        assert self.proxy.one.vm.update("atlas:secret", self.vm_id, text, 1)[0]  # type: ignore[index]

    def delete(self, keys: list[str]) -> None:
        raise AssertionError(f"the agent deletes nothing: {keys}")


@pytest.mark.openstack
@pytest.mark.parametrize("profile", ["aws", "osk", "one"])
def test_a_vm_is_drained_from_the_command_line_and_says_why_it_ended(
    run: Run, world: World, three_clouds: dict[str, Any], tmp_path: Path, profile: str
) -> None:
    from peers.opennebula import POWEROFF

    peer, fleet = three_clouds[profile], fleet_name(f"e2e-{profile}")
    assert run("profile", "edit", profile, "--benchmarks", f"type=HS06,{FLAVORS[profile]}=11.5").code == 0
    # The sandbox's "VM" booted with this machine: a lease 6 h longer than it has been up ends in 6 h.
    lease = timedelta(minutes=int(time.time() - kernel_boot_time()) // 60 + 360)
    try:
        made = run("launch", "ATLAS worker node 1", "-p", profile, "--fleet", fleet, "--credential", "none",
                   "--bootstrap", "htcondor", *SETTINGS, "--lease", f"{lease.total_seconds() // 60:.0f}m",
                   "--wait", "-o", "json")  # fmt: skip
        assert made.code == 0, made.err
        [vm_id] = [i["id"] for i in made.json()["instances"]]  # type: ignore[index,call-overload]
        if profile == "aws":
            server: Any = IMDSv2Server(EC2Tags(peer.client(), vm_id))
            cloud = Cloud("ec2", "", server.backend)
        elif profile == "osk":
            server = NovaMetadataServer(NovaMeta(openstack_sdk(peer.password), vm_id), uuid=vm_id)
            cloud = Cloud("openstack", "", server.backend)
        else:
            server = OneGateServer(OneTemplate(peer.url, vm_id), vm_id=int(vm_id))
            cloud = Cloud("opennebula", "http://127.0.0.1:9", server.backend, server)
        with server:
            if cloud.onegate is None:
                cloud.metadata_url = server.url
            vm = make_vm(tmp_path, cloud, "htcondor", settings={}, lease=lease)
            assert vm.agent("boot").returncode == 0
            lease_end = int(vm.mf("shutdowntime") or 0)
            assert abs(lease_end - (time.time() + 6 * 3600)) < 120 and vm.mf("hs06") == "11.5"
            vm.answer("condor_who", "12.0\n")  # a job runs
            assert vm.agent("tick").returncode == 0 and vm.calls("condor_off") == []
            asked = run("fleet", "drain", fleet, vm_id, "--deadline", "1h", "-o", "json")
            assert asked.code == 0, asked.err
            deadline = asked.json()[0]["drain_by"]  # type: ignore[index]
            assert vm.agent("tick").returncode == 0, vm.log()
            assert vm.calls("condor_off") == ["condor_off -peaceful -startd"], vm.log()
            by = calendar.timegm(time.strptime(deadline, "%Y-%m-%dT%H:%M:%SZ"))
            assert vm.mf("shutdowntime") == str(by) and by < lease_end  # the payload learns it stops sooner
            assert vm.calls("poweroff") == []  # the job still runs
            vm.answer("condor_who", "")
            assert vm.agent("tick").returncode == 0
            assert vm.calls("poweroff") == ["poweroff "]
            [line] = vm.console()
            assert re.fullmatch(r"wlcgcloud-shutdown: 100 .+", line), line
        # The VM powered off: the owner's side of it.
        if profile == "aws":
            peer.set_console(vm_id, f"[  OK  ] Stopped condor.\n{line}\nreboot: Power down\n")
            peer.client().stop_instances(InstanceIds=[vm_id])
        elif profile == "osk":
            sdk = openstack_sdk(peer.password)
            sdk.compute.stop_server(vm_id)
            deadline_s = time.monotonic() + 60
            while sdk.compute.get_server(vm_id).status != "SHUTOFF":
                assert time.monotonic() < deadline_s
                time.sleep(1)
        else:
            peer.set_state(int(vm_id), POWEROFF, 0)
        shown = run("fleet", "show", fleet, "-o", "json")
        assert shown.code == 0, shown.err
        [inst] = shown.json()["instances"]  # type: ignore[index,call-overload]
        assert inst["drain_by"] == deadline and inst["state"] == "stopped", inst
        if profile == "osk":
            assert inst["said"] is None  # the fake driver's console holds no line
        else:
            assert inst["said"]["code"] == 100 and inst["said"]["text"] == line.split(" ", 2)[2], inst
        reaped = run("fleet", "reap", "-p", profile, "--yes", "-o", "json")  # drained and powered off: it goes
        assert reaped.code == 0 and vm_id in [r["id"] for r in reaped.json()], reaped.err  # type: ignore[union-attr]
    finally:
        run("fleet", "terminate", fleet, "--yes")
