"""The simulation's OpenStack wire double (bench/sim/openstack_peer.py), driven through openstacksdk.

Each test spawns its own peer (a subprocess, as the simulation runs it) with a clock file of its
own, so the order of the tests does not matter. Raw HTTP checks the wire shapes openstacksdk hides.
"""

from __future__ import annotations

import json
import struct
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import openstack.exceptions
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench/sim"))
import openstack_peer  # noqa: E402

APPCRED, SECRET = "0f3c2e1a9b8d4c7e8f6a5b4c3d2e1f00", "s3cret-appcred"
IMAGE = "6e19499f-3b03-4844-a6f8-64d2a2848c1d"
FLAVOR = "06af8a07-3111-4dfc-b0bb-ff4848d4d3fd"
T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z
WORLD: dict[str, Any] = {
    "application_credentials": [{"id": APPCRED, "secret": SECRET, "project": "atlas"}],
    "flavors": [{"id": FLAVOR, "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80}],
    "images": [{"id": IMAGE, "name": "atlas-wn", "os_hash_algo": "sha512", "os_hash_value": "ab" * 64,
                "owner": "admin", "visibility": "public", "status": "active"}],
    "quota": {"instances": 300},
    "boot_seconds": 120,
}  # fmt: skip


@dataclass
class Peer:
    auth_url: str
    clock: Path

    @property
    def base(self) -> str:
        return self.auth_url.removesuffix("/v3")

    def at(self, when: float) -> None:
        with self.clock.open("r+b") as fh:  # in place, never truncated: the peer's mapping reads it meanwhile
            fh.write(struct.pack("<d", when))

    def sim(self, method: str, path: str, body: Any = None) -> Any:
        status, _, payload = http(method, self.base + path, body)
        assert status == 200, payload
        return json.loads(payload)

    def sdk(self) -> Any:
        auth = {
            "auth_url": self.auth_url,
            "application_credential_id": APPCRED,
            "application_credential_secret": SECRET,
        }
        return openstack.connect(
            auth_type="v3applicationcredential", auth=auth, region_name="RegionOne",
            load_yaml_config=False, load_envvars=False,
        )  # fmt: skip


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.headers, reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[Peer]:
    clock = tmp_path / "clock"
    clock.write_bytes(struct.pack("<d", T0))
    url, proc = openstack_peer.spawn(WORLD, str(clock))
    try:
        yield Peer(url, clock)
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def create(conn: Any, count: int, tag: str, low: int | None = None) -> Any:
    return conn.compute.create_server(
        name="vm", image_id=IMAGE, flavor_id=FLAVOR, min_count=low or count, max_count=count,
        tags=[f"wlcg:fleet={tag}", "wlcg:request=r1"], metadata={"wlcg:fleet": tag}, networks="auto",
    )  # fmt: skip


def test_keystone_accepts_the_credential_and_refuses_a_wrong_secret(peer: Peer) -> None:
    conn = peer.sdk()
    assert conn.current_project_id == openstack_peer.ident("project", "atlas")
    assert conn.compute.get_endpoint() == f"{peer.base}/compute/v2.1"
    data = conn.compute.get_endpoint_data()
    assert (tuple(data.min_microversion), tuple(data.max_microversion)) == ((2, 1), (2, 96))
    wrong = {"auth": {"identity": {"methods": ["application_credential"],
                                   "application_credential": {"id": APPCRED, "secret": "wrong"}}}}  # fmt: skip
    status, _, body = http("POST", f"{peer.base}/v3/auth/tokens", wrong, {"Content-Type": "application/json"})
    recorded = json.loads((ROOT / "tests/payloads/openstack/wrong_secret.json").read_text())["exchanges"][0]
    assert (status, json.loads(body)) == (recorded["status"], recorded["body"])
    status, headers, _ = http("GET", f"{peer.base}/compute/v2.1/servers/detail")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Keystone uri=")


def test_create_with_min_count_and_tags_then_list_by_tag_over_pages(peer: Peer) -> None:
    conn = peer.sdk()
    first = create(conn, 120, "f1")
    create(conn, 3, "other")
    assert first.admin_password and first.links[0]["href"].endswith(first.id)
    listed = list(conn.compute.servers(details=True, tags="wlcg:fleet=f1", limit=50))
    assert len(listed) == 120 == len({s.id for s in listed})
    assert {s.name for s in listed} == {f"vm-{i}" for i in range(1, 121)}  # Nova numbers a multi-create
    s = listed[0]
    assert (s.status, s.task_state, s.vm_state, s.power_state) == ("BUILD", "spawning", "building", 0)
    assert (s.flavor.original_name, s.flavor.vcpus, s.flavor.ram) == ("m1.large", 4, 8192)
    assert set(s.tags) == {"wlcg:fleet=f1", "wlcg:request=r1"} and s.metadata == {"wlcg:fleet": "f1"}
    assert s.created_at == "2027-01-15T08:00:00Z" and s.addresses["private"][0]["addr"].startswith("10.0.")
    assert len(list(conn.compute.servers(details=True, tags="wlcg:request=r1"))) == 123  # all of a comma list
    assert len(list(conn.compute.servers(details=True, **{"any_tags": "wlcg:fleet=other,nope"}))) == 3
    calls = peer.sim("GET", "/sim/calls")
    # 50 + 50 + 20 by next links, then the SDK probes once more by marker (it gave a limit); one page each after
    assert calls["GET /servers/detail"] == 4 + 1 + 1
    # Nova's own page size: 1000, with a next link on a full page, the marker carried in it.
    peer.sim("POST", "/sim/quota", {"instances": 2000})
    conn.compute.create_server(name="bulk", image_id=IMAGE, flavor_id=FLAVOR, min_count=1177, max_count=1177,
                               networks="none")  # fmt: skip
    page = conn.compute.get("/servers/detail", microversion="2.96").json()
    assert len(page["servers"]) == 1000 and page["servers"][0]["name"].startswith("bulk-")
    nxt = page["servers_links"][0]["href"]
    assert nxt == f"{peer.base}/compute/v2.1/servers/detail?marker={page['servers'][-1]['id']}"
    rest = conn.compute.get(nxt.split("/v2.1", 1)[1], microversion="2.96").json()
    assert len(rest["servers"]) == 300 and "servers_links" not in rest
    assert peer.sim("GET", "/sim/unrouted") == []


def test_the_clock_file_drives_created_and_build_to_active(peer: Peer) -> None:
    conn = peer.sdk()
    peer.at(T0 + 3 * 86400)
    made = create(conn, 2, "clk")
    assert conn.compute.get_server(made.id).created_at == "2027-01-18T08:00:00Z"
    peer.at(T0 + 3 * 86400 + 119.5)
    assert conn.compute.get_server(made.id).status == "BUILD"
    peer.at(T0 + 3 * 86400 + 120)
    s = conn.compute.get_server(made.id)
    assert (s.status, s.vm_state, s.power_state, s.task_state) == ("ACTIVE", "active", 1, None)
    assert s.launched_at == "2027-01-18T08:02:00.000000"
    assert [x["status"] for x in peer.sim("GET", "/sim/servers")] == ["ACTIVE", "ACTIVE"]
    assert peer.sim("GET", "/sim/now") == {"now": T0 + 3 * 86400 + 120}


def test_quota_is_nova_s_403_and_min_count_takes_what_fits(peer: Peer) -> None:
    conn = peer.sdk()
    peer.sim("POST", "/sim/quota", {"instances": 10})
    create(conn, 8, "q")
    with pytest.raises(openstack.exceptions.ForbiddenException) as refused:
        create(conn, 5, "q")
    assert refused.value.details == "Quota exceeded for instances: Requested 5, but already used 8 of 10 instances"
    create(conn, 5, "q2", low=1)  # min_count 1, max_count 5: Nova makes the 2 that fit
    assert len(list(conn.compute.servers(details=True, tags="wlcg:fleet=q2"))) == 2
    limits = conn.compute.get_limits().absolute
    assert (limits.instances, limits.instances_used, limits.total_cores_used) == (10, 10, 40)
    peer.sim("POST", "/sim/quota", {"instances": -1, "cores": 44})
    with pytest.raises(openstack.exceptions.ForbiddenException) as refused:
        create(conn, 2, "q3")
    assert refused.value.details == "Quota exceeded for cores: Requested 8, but already used 40 of 44 cores"
    status, _, body = http(
        "POST", f"{peer.base}/compute/v2.1/servers",
        {"server": {"name": "x", "imageRef": IMAGE, "flavorRef": FLAVOR, "networks": "none", "min_count": 2}},
        {"X-Auth-Token": conn.session.get_token(), "OpenStack-API-Version": "compute 2.96"},
    )  # fmt: skip
    assert status == 403 and json.loads(body)["forbidden"]["code"] == 403


def test_delete_makes_the_server_vanish(peer: Peer) -> None:
    conn = peer.sdk()
    made = create(conn, 2, "d")
    conn.compute.delete_server(made.id)
    left = [s.id for s in conn.compute.servers(details=True)]
    assert len(left) == 1 and made.id not in left
    with pytest.raises(openstack.exceptions.NotFoundException, match=f"Instance {made.id} could not be found"):
        conn.compute.get_server(made.id)
    assert conn.compute.get_limits().absolute.instances_used == 1
    assert conn.compute.find_server("no-such-server") is None


def test_outage_answers_503_and_sim_stop_powers_off(peer: Peer) -> None:
    conn = peer.sdk()
    made = create(conn, 3, "o")
    peer.sim("POST", "/sim/outage", {"down": True})
    status, headers, body = http("GET", f"{peer.base}/compute/v2.1/servers/detail")
    assert (status, headers["Content-Type"]) == (503, "text/html") and b"No server is available" in body
    with pytest.raises(openstack.exceptions.HttpException):
        conn.compute.get_server(made.id)
    peer.sim("POST", "/sim/outage", {"down": False})
    peer.at(T0 + 121)
    ids = [s.id for s in conn.compute.servers(details=True)]
    assert peer.sim("POST", "/sim/stop", {"ids": [*ids[:2], "unknown"]}) == {"stopped": 2}
    s = conn.compute.get_server(ids[0])
    assert (s.status, s.vm_state, s.power_state) == ("SHUTOFF", "stopped", 4)
    conn.compute.start_server(ids[0])
    assert conn.compute.get_server(ids[0]).status == "ACTIVE"
    assert peer.sim("POST", "/sim/kill_all", {}) == {"killed": 3}
    dead = conn.compute.get_server(ids[2])
    assert (dead.status, dead.fault["code"]) == ("ERROR", 500)


def test_microversions_and_call_counts(peer: Peer) -> None:
    conn = peer.sdk()
    token = {"X-Auth-Token": conn.session.get_token()}
    status, headers, _ = http("GET", f"{peer.base}/compute/v2.1/flavors/detail", None, token)
    assert status == 200 and headers["OpenStack-API-Version"] == "compute 2.1"
    status, _, body = http(
        "GET", f"{peer.base}/compute/v2.1/limits", None, {**token, "OpenStack-API-Version": "compute 2.200"}
    )
    assert status == 406 and "Minimum is 2.1 and maximum is 2.96" in body.decode()
    tagged = {"server": {"name": "x", "imageRef": IMAGE, "flavorRef": FLAVOR, "networks": "none", "tags": ["a"]}}
    status, _, body = http("POST", f"{peer.base}/compute/v2.1/servers", tagged,
                           {**token, "X-OpenStack-Nova-API-Version": "2.51"})  # fmt: skip
    assert status == 400 and "('tags' was unexpected)" in json.loads(body)["badRequest"]["message"]
    peer.sim("POST", "/sim/calls/reset")
    assert conn.compute.find_flavor("m1.large", ignore_missing=False).id == FLAVOR
    assert [i.hash_algo for i in conn.image.images(limit=500)] == ["sha512"]
    assert peer.sim("GET", "/sim/calls") == {  # version discovery, find by id (404) then by listing, two image pages
        "GET /compute/v2.1": 1, "GET /flavors/detail": 1, "GET /flavors/{id}": 1, "GET /image": 1, "GET /v2/images": 2,
    }  # fmt: skip
    assert http("GET", f"{peer.base}/compute/v2.1/os-nothing", None, token)[0] == 404
    assert peer.sim("GET", "/sim/unrouted") == ["GET /compute/v2.1/os-nothing"]


def test_sim_console_appends_to_one_server_s_console_and_keeps_it_when_shutoff(peer: Peer) -> None:
    conn = peer.sdk()
    create(conn, 2, "c")
    peer.at(T0 + 121)
    first, second = (s.id for s in conn.compute.servers(details=True))
    assert peer.sim("POST", "/sim/console", {"server": first, "text": "systemd[1]: Stopping\n"}) == {
        "server": first, "lines": 1,
    }  # fmt: skip
    peer.sim("POST", "/sim/console", {"server": first, "text": "wlcgcloud-shutdown: 0 drained\n"})
    lines = conn.compute.get_server_console_output(first)["output"].splitlines()
    assert lines[-2:] == ["systemd[1]: Stopping", "wlcgcloud-shutdown: 0 drained"]
    assert "wlcgcloud-shutdown" not in conn.compute.get_server_console_output(second)["output"]
    peer.sim("POST", "/sim/stop", {"ids": [first]})
    assert conn.compute.get_server(first).status == "SHUTOFF"
    assert conn.compute.get_server_console_output(first, length=2)["output"] == (
        "wlcgcloud-shutdown: 0 drained\nreboot: Power down\n"
    )
    assert conn.compute.get_server_console_output(first, length=0)["output"] == ""
    assert len(conn.compute.get_server_console_output(first)["output"].splitlines()) == 7
    status, _, body = http("POST", f"{peer.base}/sim/console", {"server": "unknown", "text": "x"})
    assert status == 404 and b"no server unknown" in body


def test_our_openstack_profile_reads_the_shutdown_line_a_server_left_on_its_console(
    peer: Peer, run: Any, world: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OpenStack leg of issue 18 that the real Nova's fake driver cannot serve: `instance show` and
    `fleet show` read the line back through os-getConsoleOutput, and keep it in the ledger."""
    from conftest import write_profiles

    write_profiles(world, {"sim": {"provider": "openstack", "auth_url": peer.auth_url, "region": "RegionOne",
                                   "application_credential_id": APPCRED, "timeout": 10}})  # fmt: skip
    monkeypatch.setenv("WLCGCLOUD_SECRET_SIM", SECRET)
    conn = peer.sdk()
    create(conn, 2, "said")
    peer.at(T0 + 121)
    first, second = (s.id for s in conn.compute.servers(details=True))
    for server, line in ((first, "wlcgcloud-shutdown: 500 Proxy not accepted"), (second, "no line of ours")):
        peer.sim("POST", "/sim/console", {"server": server, "text": f"{line}\n"})
    peer.sim("POST", "/sim/stop", {"ids": [first, second]})
    shown = run("instance", "show", first, "-p", "sim", "-o", "json")
    assert shown.code == 0, shown.err
    assert shown.json()["said"] == {"code": 500, "text": "Proxy not accepted", "meaning": "site or environment problem"}
    fleet = run("fleet", "show", "said", "-p", "sim", "-o", "json")
    said = {i["id"]: i["said"] for i in fleet.json()["instances"]}
    assert said == {first: shown.json()["said"], second: None}, fleet.err
