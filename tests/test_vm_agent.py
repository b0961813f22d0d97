"""The in-VM agent, wlcgcloud-vm, run as in a VM: in a sandbox root, against each cloud's metadata peer.

The agent and its settings come out of the rendered user-data (decoded as cloud-init would write
them), HTCondor, lscpu and the power-off command are stubs that record their calls, and the
metadata is tests/peers/vm_metadata.py speaking EC2 IMDSv2, Nova's metadata service or OneGate.
`tick` is what the minute timer runs; the tests call it as often as they need instead of waiting.
"""

from __future__ import annotations

import base64
import calendar
import contextlib
import datetime
import email
import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
import yaml
from peers.proxies import make_grid
from peers.vm_metadata import IMDSv2Server, MemoryEC2, MemoryNova, MemoryOneGate, NovaMetadataServer, OneGateServer

from wlcgcloud.context import userdata, vmagent
from wlcgcloud.context.credentials import read_proxy

CLOUDS = ("ec2", "openstack", "opennebula")
CLOUD_NAMES = {"ec2": "aws", "openstack": "openstack", "opennebula": "opennebula"}
SETTINGS = {
    "htcondor": {"COLLECTOR": "cm.example.org:9618", "POOL_TOKEN": "eyJpool.token"},
    "script": {"PILOT_URL": "https://pilots.example.org/pilot.sh"},
}
STUBS = ("condor_off", "condor_drain", "condor_who", "condor_history", "lscpu", "cvmfs_config", "poweroff")
LSCPU = "# The following is the parsable format\n# Core,Socket\n0,0\n0,0\n1,0\n1,0\n"


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(int(t), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kernel_boot_time() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("btime "):
            return int(line.split()[1])
    raise AssertionError("no btime in /proc/stat")


def our_config(document: userdata.Document) -> dict[str, Any]:
    message = email.message_from_bytes(document.render())
    [ours] = [p for p, d in zip(message.get_payload(), document.parts, strict=True) if d.origin == "wlcgcloud"]
    assert isinstance(ours, Message)
    payload = ours.get_payload(decode=True)
    assert isinstance(payload, bytes)
    config: dict[str, Any] = yaml.safe_load(payload)
    return config


def content_of(entry: dict[str, Any]) -> bytes:
    encoding = entry.get("encoding", "")
    raw = str(entry["content"]).encode()
    if encoding == "gz+b64":
        return gzip.decompress(base64.b64decode(raw))
    if encoding == "b64":
        return base64.b64decode(raw)
    return raw


@dataclass
class Cloud:
    name: str
    metadata_url: str
    backend: Any
    onegate: OneGateServer | None = None

    def set(self, name: str, value: str) -> None:
        """The owner sets wlcg:<name> (EC2 tag, server metadata) or WLCG_<NAME> (USER_TEMPLATE)."""
        if self.name == "ec2":
            self.backend.tag[f"wlcg:{name}"] = value
        elif self.name == "openstack":
            self.backend.metadata[f"wlcg:{name}"] = value
        else:
            self.backend.update({"WLCG_" + name.upper().replace("-", "_"): value})


@dataclass
class VM:
    """A sandboxed VM: its root, stub commands, and how the agent is run there."""

    root: Path
    cloud: Cloud
    bin: Path
    calls_file: Path
    answers: Path
    env: dict[str, str] = field(default_factory=dict)

    def agent(self, *args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        command = ["bash", str(self.root / "usr/local/sbin/wlcgcloud-vm"), *args]
        return subprocess.run(command, env={**self.env, **(extra or {})}, capture_output=True, text=True, timeout=120)

    def answer(self, command: str, out: str = "", rc: int = 0) -> None:
        (self.answers / f"{command}.out").write_text(out)
        (self.answers / f"{command}.rc").write_text(str(rc))

    def calls(self, command: str | None = None) -> list[str]:
        lines = self.calls_file.read_text().splitlines() if self.calls_file.exists() else []
        return [line for line in lines if command is None or line.split(" ", 1)[0] == command]

    def mf(self, name: str) -> str | None:
        path = self.root / "run/wlcgcloud/machinefeatures" / name
        return path.read_text().strip() if path.exists() else None

    def console(self) -> list[str]:
        path = self.root / "dev/console"
        return path.read_text().splitlines() if path.exists() else []

    def log(self) -> str:
        path = self.root / "var/log/wlcgcloud-vm.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture(params=CLOUDS)
def cloud(request: pytest.FixtureRequest) -> Iterator[Cloud]:
    with _cloud(request.param) as started:
        yield started


@contextlib.contextmanager
def _cloud(name: str) -> Iterator[Cloud]:
    if name == "ec2":
        ec2 = MemoryEC2({"Name": "wlcg-vm-1", "wlcg:drainable": "yes"})
        with IMDSv2Server(ec2) as imds:
            yield Cloud(name, imds.url, ec2)
    elif name == "openstack":
        nova = MemoryNova({"wlcg:drainable": "yes"})
        with NovaMetadataServer(nova) as server:
            yield Cloud(name, server.url, nova)
    else:
        one = MemoryOneGate({"WLCG_DRAINABLE": "yes"})
        with OneGateServer(one, vm_id=7) as gate:
            yield Cloud(name, "http://127.0.0.1:9", one, gate)


def make_vm(tmp_path: Path, cloud: Cloud, bootstrap: str, settings: dict[str, str] | None = None,
            lease: datetime.timedelta | None = None) -> VM:  # fmt: skip
    """A sandbox laid out as cloud-init would leave the VM: our write_files, one-context, stubs."""
    root = tmp_path / "vm"
    root.mkdir()
    document = userdata.compose(None, bootstrap=userdata.bootstrap(bootstrap),
                                settings={**SETTINGS[bootstrap], **(settings or {})}, lease=lease)  # fmt: skip
    for entry in our_config(document)["write_files"]:
        path = root / entry["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab" if entry.get("append") else "wb") as out:
            out.write(content_of(entry))
        path.chmod(int(entry.get("permissions", "0644"), 8))
    (root / "dev").mkdir()
    (root / "run/cloud-init").mkdir(parents=True)
    instance = {"v1": {"cloud_name": CLOUD_NAMES[cloud.name], "platform": "ec2" if cloud.name == "ec2" else cloud.name}}
    (root / "run/cloud-init/instance-data.json").write_text(json.dumps(instance))
    if cloud.onegate is not None:
        context = root / "var/run/one-context"
        context.mkdir(parents=True)
        gate = cloud.onegate
        (context / "one_env").write_text(f'export ONEGATE_ENDPOINT="{gate.url}"\nexport VMID="{gate.vm_id}"\n')
        (context / "token.txt").write_text(cloud.onegate.token + "\n")
    stub_bin, answers, calls = tmp_path / "bin", tmp_path / "answers", tmp_path / "calls.txt"
    stub_bin.mkdir()
    answers.mkdir()
    for command in STUBS:
        stub = stub_bin / command
        stub.write_text(
            "#!/bin/bash\n"
            f'printf "%s\\n" "{command} $*" >> {calls}\n'
            f'[ -r {answers}/{command}.out ] && cat {answers}/{command}.out\n'
            f'exit "$(cat {answers}/{command}.rc 2>/dev/null || echo 0)"\n'
        )  # fmt: skip
        stub.chmod(0o755)
    # python3 as a VM has it: the interpreter itself, not a version manager's shim (slow to start)
    (stub_bin / "python3").symlink_to(sys.executable)
    vm = VM(root, cloud, stub_bin, calls, answers)
    vm.answer("lscpu", LSCPU)
    vm.env = {
        "PATH": f"{stub_bin}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "WLCGCLOUD_VM_ROOT": str(root),
        "WLCGCLOUD_METADATA_URL": cloud.metadata_url,
        "WLCGCLOUD_POWEROFF": str(stub_bin / "poweroff"),
    }
    return vm


def booted(tmp_path: Path, cloud: Cloud, bootstrap: str = "htcondor", **kwargs: Any) -> VM:
    vm = make_vm(tmp_path, cloud, bootstrap, **kwargs)
    result = vm.agent("boot")
    assert result.returncode == 0, result.stderr
    return vm


def test_boot_writes_machine_features_and_nothing_happens_without_a_drain(tmp_path: Path, cloud: Cloud) -> None:
    cloud.set("hs06", "42.5")
    vm = booted(tmp_path, cloud)
    cpus = subprocess.run(["nproc", "--all"], capture_output=True, text=True, check=True).stdout.strip()
    assert vm.mf("total_cpu") == vm.mf("log_cores") == vm.mf("jobslots") == cpus
    assert vm.mf("phys_cores") == "2" and vm.mf("grace_secs") == "300" and vm.mf("hs06") == "42.5"
    assert vm.mf("shutdowntime") is None  # no lease, no drain
    assert "MACHINEFEATURES=/run/wlcgcloud/machinefeatures" in (vm.root / "etc/profile.d/wlcgcloud-mjf.sh").read_text()
    vm.agent("boot")  # a second boot appends nothing twice
    assert (vm.root / "etc/environment").read_text().count("MACHINEFEATURES=") == 1
    vm.answer("condor_who", "12.0\n")
    for _ in range(2):
        assert vm.agent("tick").returncode == 0
    assert vm.calls("condor_off") == [] and vm.calls("poweroff") == [] and vm.console() == []
    assert vm.mf("shutdowntime") is None


def test_a_drain_stops_the_node_once_waits_for_the_job_then_leaves_a_message(tmp_path: Path, cloud: Cloud) -> None:
    vm = booted(tmp_path, cloud)
    deadline = int(time.time()) + 7200
    vm.answer("condor_who", "12.0\n")  # a job runs
    cloud.set("drain-by", iso(deadline))
    for _ in range(3):
        assert vm.agent("tick").returncode == 0
    assert vm.calls("condor_off") == ["condor_off -peaceful -startd"]
    assert vm.mf("shutdowntime") == str(deadline)
    assert vm.calls("poweroff") == [] and vm.console() == []
    # A later deadline does not move shutdowntime later; an earlier one moves it earlier.
    cloud.set("drain-by", iso(deadline + 3600))
    vm.agent("tick")
    assert vm.mf("shutdowntime") == str(deadline)
    cloud.set("drain-by", iso(deadline - 3600))
    vm.agent("tick")
    assert vm.mf("shutdowntime") == str(deadline - 3600)
    vm.answer("condor_who", "")  # the job ended
    assert vm.agent("tick").returncode == 0
    assert vm.calls("poweroff") == ["poweroff "]
    assert vm.console() == ["wlcgcloud-shutdown: 100 Drained at the owner's request"]
    if cloud.name == "opennebula":
        template = cloud.backend.user_template()
        assert template["WLCG_SHUTDOWN_CODE"] == "100"
        assert template["WLCG_SHUTDOWN_MESSAGE"] == "Drained at the owner's request"
    # HTCondor's shutdown script, or the next tick, comes second: no second message.
    vm.agent("stop", "--idle")
    vm.agent("tick")
    assert len(vm.console()) == 1 and vm.calls("condor_off") == ["condor_off -peaceful -startd"]
    assert cloud.backend.user_template()["WLCG_SHUTDOWN_CODE"] == "100" if cloud.name == "opennebula" else True


def test_a_passed_deadline_powers_off_even_with_a_job_running(tmp_path: Path, cloud: Cloud) -> None:
    vm = booted(tmp_path, cloud)
    vm.answer("condor_who", "12.0\n")
    cloud.set("drain-by", iso(time.time() - 60))
    vm.agent("tick")
    assert vm.calls("condor_off") == ["condor_off -peaceful -startd"] and vm.calls("poweroff") == ["poweroff "]
    assert vm.console() == ["wlcgcloud-shutdown: 100 Drained at the owner's request"]


def test_a_startd_that_is_gone_counts_as_no_job(tmp_path: Path) -> None:
    with _cloud("openstack") as cloud:
        vm = booted(tmp_path, cloud)
        vm.answer("condor_who", "", rc=1)  # after condor_off -peaceful the startd exits once its jobs end
        cloud.set("drain-by", iso(time.time() + 3600))
        vm.agent("tick")
        assert vm.calls("poweroff") == ["poweroff "]


@pytest.mark.parametrize("cloud_name", ["ec2"])
def test_the_lease_sets_shutdowntime_at_boot_and_ends_the_vm(tmp_path: Path, cloud_name: str) -> None:
    for lease, name in ((3600 * 24 * 365, "long"), (1, "over")):
        with _cloud(cloud_name) as cloud:
            where = tmp_path / name
            where.mkdir()
            vm = booted(where, cloud, lease=datetime.timedelta(seconds=lease))
            assert vm.mf("shutdowntime") == str(kernel_boot_time() + lease)
            vm.answer("condor_who", "12.0\n")
            vm.agent("tick")
            if name == "long":
                assert vm.calls("poweroff") == []
                cloud.set("drain-by", iso(kernel_boot_time() + lease + 3600))  # later than the lease: no change
                vm.agent("tick")
                assert vm.mf("shutdowntime") == str(kernel_boot_time() + lease)
            else:
                assert vm.calls("poweroff") == ["poweroff "] and vm.calls("condor_off") == []
                assert vm.console() == ["wlcgcloud-shutdown: 100 Lease ended"]


def test_the_payloads_own_message_wins_and_a_malformed_one_is_ignored(tmp_path: Path) -> None:
    with _cloud("openstack") as cloud:
        vm = booted(tmp_path, cloud)
        message = vm.root / "run/wlcgcloud/shutdown_message"
        message.write_text("hello, not a code\n")
        joboutputs = vm.root / "jobout"
        joboutputs.mkdir()
        (joboutputs / "shutdown_message").write_text(
            "500 Proxy not accepted by the site \x1b[31mred\x1b[0m" + "x" * 300
        )
        vm.agent("stop", "--idle", extra={"JOBOUTPUTS": "/jobout"})
        [line] = vm.console()
        assert line.startswith("wlcgcloud-shutdown: 500 Proxy not accepted by the site [31mred[0m")
        assert len(line) == len("wlcgcloud-shutdown: 500 ") + 160 and line.isascii() and line.isprintable()
        assert "ignored a malformed" in vm.log() and vm.calls("poweroff") == ["poweroff "]


def test_any_payload_may_leave_its_code_in_joboutputs_but_a_link_is_never_followed(tmp_path: Path) -> None:
    """Jobs and pilots run as other users: $JOBOUTPUTS (exported system-wide) is theirs to write."""
    with _cloud("ec2") as cloud:
        vm = booted(tmp_path, cloud)
        shared = vm.root / "run/wlcgcloud/joboutputs"
        assert shared.stat().st_mode & 0o7777 == 0o1777
        assert "JOBOUTPUTS=/run/wlcgcloud/joboutputs" in (vm.root / "etc/environment").read_text()
        secret = tmp_path / "shadow"
        secret.write_text("root:$6$very-secret-hash:19000:0:99999:7:::\n")
        (shared / "shutdown_message").symlink_to(secret)
        vm.agent("stop", "--idle")
        assert "very-secret" not in vm.log() + "".join(vm.console())
        assert vm.console() == ["wlcgcloud-shutdown: 300 No more work"]
    with _cloud("ec2") as cloud:
        (tmp_path / "second").mkdir()
        vm = booted(tmp_path / "second", cloud)
        (vm.root / "run/wlcgcloud/joboutputs/shutdown_message").write_text("400 Banned by the experiment\n")
        vm.agent("stop", "--idle")
        assert vm.console() == ["wlcgcloud-shutdown: 400 Banned by the experiment"]


@pytest.mark.parametrize(("history", "code"), [("", "300 No more work"), ("41\n", "200 Intended work completed")])
def test_an_idle_htcondor_node_says_whether_it_ever_ran_a_job(tmp_path: Path, history: str, code: str) -> None:
    with _cloud("ec2") as cloud:
        vm = booted(tmp_path, cloud)
        vm.answer("condor_history", history)
        vm.agent("stop", "--idle")
        assert vm.console() == [f"wlcgcloud-shutdown: {code}"]
        assert vm.calls("condor_history") == ["condor_history -startd -limit 1 -af ClusterId"]


@pytest.mark.parametrize(("status", "code"), [("0", "200 Pilot completed"), ("3", "700 Pilot exited with status 3")])
def test_a_pilots_exit_status_gives_the_code(tmp_path: Path, status: str, code: str) -> None:
    with _cloud("opennebula") as cloud:
        vm = booted(tmp_path, cloud, "script")
        assert vm.agent("stop", "--pilot-exit", status).returncode == 0
        assert vm.console() == [f"wlcgcloud-shutdown: {code}"]
        assert cloud.backend.user_template()["WLCG_SHUTDOWN_CODE"] == code[:3]


def test_the_drain_hook_runs_once_and_the_vm_waits_for_the_pilot(tmp_path: Path, cloud: Cloud) -> None:
    hook_log = tmp_path / "hook.log"
    vm = booted(tmp_path, cloud, "script", settings={"DRAIN_HOOK": f"echo drained >> {hook_log}"})
    pilot = subprocess.Popen(["sleep", "60"])
    try:
        state = vm.root / "run/wlcgcloud/vm"
        (state / "pilot.pid").write_text(f"{pilot.pid}\n")
        cloud.set("drain-by", iso(time.time() + 3600))
        vm.agent("tick")
        vm.agent("tick")
        assert hook_log.read_text() == "drained\n" and vm.calls("poweroff") == []
    finally:
        pilot.kill()
        pilot.wait()
    vm.agent("tick")
    assert hook_log.read_text() == "drained\n" and vm.calls("poweroff") == ["poweroff "]
    assert vm.console() == ["wlcgcloud-shutdown: 100 Drained at the owner's request"]


HOSTILE = [
    "tomorrow",
    "2026-13-45T99:99:99Z",
    "$(touch {mark})",
    "`touch {mark}`; touch {mark}",
    "2099-12-06T18:00:00Z; touch {mark}",
    "2099-12-06T18:00:00Z\n$(touch {mark})",
    "2099-12-06 18:00:00",
    "\x00\x01\x02",
]


def test_hostile_metadata_is_ignored_and_never_executed(tmp_path: Path, cloud: Cloud) -> None:
    mark = tmp_path / "executed"
    vm = booted(tmp_path, cloud)
    for value in [v.format(mark=mark) for v in HOSTILE] + ["2099-12-06T18:00:00Z" + " " * 1_000_000]:
        cloud.set("drain-by", value)
        cloud.set("hs06", value)
        assert vm.agent("tick").returncode == 0
        assert vm.agent("boot").returncode == 0
    assert not mark.exists()
    assert vm.mf("shutdowntime") is None and vm.mf("hs06") is None
    assert vm.calls("condor_off") == [] and vm.calls("poweroff") == [] and vm.console() == []
    assert vm.log().count("ignored a malformed drain-by") >= len(HOSTILE) - 1
    assert "more than 65536 bytes" in vm.log()
    assert all(c.isprintable() or c == "\n" for c in vm.log())


def test_cernvm_fs_is_configured_and_waited_for(tmp_path: Path) -> None:
    with _cloud("openstack") as cloud:
        vm = booted(tmp_path, cloud, settings={"CVMFS_REPOSITORIES": "atlas.cern.ch,atlas-condb.cern.ch",
                                               "CVMFS_HTTP_PROXY": "http://squid.example.org:3128;DIRECT"})  # fmt: skip
        assert vm.agent("cvmfs").returncode == 0
        local = (vm.root / "etc/cvmfs/default.local").read_text()
        assert "CVMFS_REPOSITORIES='atlas.cern.ch,atlas-condb.cern.ch'" in local and "CVMFS_QUOTA_LIMIT=4000" in local
        assert "CVMFS_HTTP_PROXY='http://squid.example.org:3128;DIRECT'" in local
        assert vm.calls("cvmfs_config") == ["cvmfs_config setup", "cvmfs_config probe atlas.cern.ch",
                                            "cvmfs_config probe atlas-condb.cern.ch"]  # fmt: skip
        # Configured already (as on CernVM): only waited for; one that never mounts fails in bounded time.
        vm.calls_file.unlink()
        vm.answer("cvmfs_config", rc=1)
        failed = vm.agent("cvmfs", extra={"WLCGCLOUD_CVMFS_WAIT": "0"})
        assert failed.returncode != 0 and "did not mount" in vm.log()
        assert vm.calls("cvmfs_config") == ["cvmfs_config probe atlas.cern.ch"]


@pytest.mark.parametrize(("boot", "lease"), [("htcondor", 48), ("script", None), ("htcondor", None), ("script", 2)])
def test_rendered_user_data_carries_the_agent_and_cloud_init_accepts_it(
    tmp_path: Path, boot: str, lease: int | None
) -> None:
    from test_userdata import body, parts_of, schema_ok

    settings = {**SETTINGS[boot], "CVMFS_REPOSITORIES": "cms.cern.ch", "GRACE_SECS": "600"}
    if boot == "script":
        settings |= {"DRAIN_HOOK": "pkill -USR1 -f pilot", "POWEROFF": "no"}
    document = userdata.compose(None, bootstrap=userdata.bootstrap(boot), settings=settings,
                                lease=datetime.timedelta(hours=lease) if lease else None)  # fmt: skip
    assert document.render() == document.render()
    for n, part in enumerate(parts_of(document.render())):
        if part.get_content_type() == "text/cloud-config":
            schema_ok(body(part), tmp_path / f"part{n}.cfg")
    files = {f["path"]: f for f in our_config(document)["write_files"]}
    agent = files[vmagent.AGENT_PATH]
    assert agent["encoding"] == "gz+b64" and agent["permissions"] == "0755"
    shipped = (Path(userdata.__file__).parent / "vm/wlcgcloud-vm.sh").read_bytes()
    assert content_of(agent) == shipped == vmagent.agent_script()
    env = files[vmagent.ENV_PATH]["content"]
    assert env == (f"LEASE_SECONDS={lease * 3600}\n" if lease else "") + f"BOOTSTRAP={boot}\n"
    assert "ExecStart=/usr/local/sbin/wlcgcloud-vm tick" in files[vmagent.SERVICE_PATH]["content"]
    assert "OnUnitActiveSec=1min" in files[vmagent.TIMER_PATH]["content"]
    shown = repr(document.structure())
    assert vmagent.AGENT_PATH in shown and vmagent.TIMER_PATH in shown and agent["content"][:40] not in shown


def test_an_htcondor_launch_with_a_proxy_still_fits_ec2s_16_kb(tmp_path: Path) -> None:
    grid = make_grid(tmp_path / "grid")
    proxy = read_proxy(grid.grid_proxy_init(tmp_path / "x509up"), datetime.datetime.now(datetime.UTC))
    settings = {**SETTINGS["htcondor"], "CVMFS_REPOSITORIES": "atlas.cern.ch,atlas-condb.cern.ch",
                "CVMFS_HTTP_PROXY": "http://squid.example.org:3128", "START": "TARGET.RequestCpus <= 8"}  # fmt: skip
    document = userdata.compose(proxy, bootstrap=userdata.bootstrap("htcondor"), settings=settings,
                                lease=datetime.timedelta(hours=48))  # fmt: skip
    payload = userdata.fit(document, 16384, "profile 'aws' (ec2)")
    assert payload is not None and len(payload.data) <= 16384
    print(f"EC2 user-data: {payload.summary()}")


SCRIPTS = {
    "wlcgcloud-vm": Path(userdata.__file__).parent / "vm/wlcgcloud-vm.sh",
    "htcondor": Path(userdata.__file__).parent / "bootstraps/htcondor.sh",
    "script": Path(userdata.__file__).parent / "bootstraps/script.sh",
}


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_the_agent_and_the_bootstraps_parse_and_pass_shellcheck(name: str) -> None:
    parsed = subprocess.run(["bash", "-n", str(SCRIPTS[name])], capture_output=True, text=True)
    assert parsed.returncode == 0, parsed.stderr
    checker = shutil.which("shellcheck")
    if checker is None:  # dev/test installs it where it can (as root): CI always lints
        assert not os.environ.get("CI"), "shellcheck is missing in CI: dev/test should have installed it"
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    checked = subprocess.run([checker, "--shell=bash", str(SCRIPTS[name])], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


def test_the_metadata_peers_speak_their_wire_protocols() -> None:
    def call(url: str, method: str = "GET", headers: dict[str, str] | None = None, data: bytes | None = None) -> Any:
        try:
            with urlopen(Request(url, data=data, method=method, headers=headers or {}), timeout=5) as reply:
                return reply.status, reply.read()
        except HTTPError as error:
            return error.code, error.read()

    with IMDSv2Server(MemoryEC2({"wlcg:drain-by": "2099-01-01T00:00:00Z", "a/b": "hidden"})) as imds:
        assert call(f"{imds.url}/latest/meta-data/tags/instance/wlcg:drain-by")[0] == 401
        assert call(f"{imds.url}/latest/api/token", "PUT")[0] == 400
        status, token = call(f"{imds.url}/latest/api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})
        auth = {"X-aws-ec2-metadata-token": token.decode()}
        assert call(f"{imds.url}/latest/meta-data/tags/instance/wlcg:drain-by", headers=auth) == (
            200, b"2099-01-01T00:00:00Z")  # fmt: skip
        assert call(f"{imds.url}/latest/meta-data/tags/instance", headers=auth) == (200, b"wlcg:drain-by")
        assert call(f"{imds.url}/latest/meta-data/tags/instance/nope", headers=auth)[0] == 404
        assert call(f"{imds.url}/latest/meta-data/tags/instance/x", headers={"X-aws-ec2-metadata-token": "x"})[0] == 401
    with NovaMetadataServer(MemoryNova({"wlcg:drain-by": "x"})) as nova:
        status, data = call(f"{nova.url}/openstack/latest/meta_data.json")
        assert status == 200 and json.loads(data)["meta"] == {"wlcg:drain-by": "x"} and "uuid" in json.loads(data)
    one = MemoryOneGate({"A": "1"})
    with OneGateServer(one, vm_id=3, token="tok") as gate:
        good = {"X-ONEGATE-TOKEN": "tok", "X-ONEGATE-VMID": "3"}
        assert call(f"{gate.url}/vm")[0] == 401
        assert call(f"{gate.url}/vm", headers={**good, "X-ONEGATE-VMID": "4"})[0] == 401
        assert call(f"{gate.url}/vm", "PUT", good, b'B = 2\nC="a \\"q\\" b"\n')[0] == 200
        assert json.loads(call(f"{gate.url}/vm", headers=good)[1])["VM"]["USER_TEMPLATE"] == {
            "A": "1", "B": "2", "C": 'a "q" b'}  # fmt: skip
        assert call(f"{gate.url}/vm?type=2", "PUT", good, b"A\n")[0] == 200
        assert one.user_template() == {"B": "2", "C": 'a "q" b'}
        assert call(f"{gate.url}/vm", "PUT", good, b"not a template line")[0] == 400


def test_iso_times_are_read_as_utc() -> None:
    assert iso(calendar.timegm((2026, 12, 6, 18, 0, 0))) == "2026-12-06T18:00:00Z"


def test_a_config_drive_vm_still_reads_drains_from_the_metadata_service_and_a_reboot_boots_again(
    tmp_path: Path,
) -> None:
    """cloud-init's ConfigDrive datasource names the cloud "configdrive" (its platform is openstack)."""
    with _cloud("openstack") as cloud:
        vm = make_vm(tmp_path, cloud, "htcondor")
        data = {"v1": {"cloud_name": "configdrive", "platform": "openstack"}}
        (vm.root / "run/cloud-init/instance-data.json").write_text(json.dumps(data))
        vm.answer("condor_who", "12.0\n")
        assert vm.agent("tick").returncode == 0  # never booted here (or /run emptied by a reboot): it boots first
        assert vm.mf("total_cpu") and vm.mf("shutdowntime") is None
        cloud.set("drain-by", iso(time.time() + 3600))
        assert vm.agent("tick").returncode == 0
        assert vm.calls("condor_off") == ["condor_off -peaceful -startd"], vm.log()
        log = vm.root / "var/log/wlcgcloud-vm.log"
        assert log.stat().st_mode & 0o077 == 0  # what condor_off and the drain hook print is the owner's
