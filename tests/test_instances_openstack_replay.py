"""`instance` commands and the OpenStack provider against replayed payloads of the real peer (no root needed).

The exchanges in tests/payloads/openstack were recorded from the real Keystone + Nova + Glance peer by
tests/peers/openstack_record.py; tests/peers/openstack_replay.py serves them over HTTP. Expected values
come from those files, so a re-recording changes the data, not the tests. Every test also checks that
our provider asked nothing the recording does not hold.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest
from peers.openstack_replay import PAYLOADS, ReplayServer

from wlcgcloud.config import load_config
from wlcgcloud.providers import connect
from wlcgcloud.providers.base import Provider

from conftest import INSTANCE_KEYS, OSK_DIR, Run, World, read_env_file, write_profiles

# Nova server status -> the contract's state, for the statuses the recording holds.
NOVA_STATES = {"ACTIVE": "running", "ERROR": "error", "BUILD": "pending", "SHUTOFF": "stopped", "DELETED": "terminated"}

Start = Callable[[str], ReplayServer]


@pytest.fixture
def replay(world: World, monkeypatch: pytest.MonkeyPatch) -> Iterator[Start]:
    """Start the replay of one scenario, with profile `osk` pointing at it and a secret of the test's own."""
    started: list[ReplayServer] = []

    def start(scenario: str) -> ReplayServer:
        server = ReplayServer(scenario, secret=secrets.token_urlsafe(32))
        started.append(server)
        profile = {**server.doc["profile"], "auth_url": server.auth_url, "timeout": 10}
        write_profiles(world, {"osk": profile})
        monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", server.secret)
        return server

    yield start
    for server in started:
        server.close()


def provider(world: World) -> Provider:
    return connect(load_config(world.config).profile("osk"))


def recorded(server: ReplayServer, method: str, path: str) -> list[Any]:
    """The recorded answers (bodies) to `method path` (query left out), in recorded order."""
    return [x.body for x in server.exchanges if x.method == method and urlsplit(x.path).path == path]


def zulu(nova_time: str) -> str:
    """Nova's `2025-11-24T17:12:42.000000` or `...Z` (UTC) as the contract writes times."""
    return datetime.fromisoformat(nova_time.removesuffix("Z")).strftime("%Y-%m-%dT%H:%M:%SZ")


def expected_row(server: dict[str, Any]) -> dict[str, Any]:
    """What `instance list -o json` must say of one recorded Nova server."""
    task = server.get("OS-EXT-STS:task_state")
    metadata = server.get("metadata") or {}
    return {
        "id": server["id"],
        "name": server["name"],
        "fleet": metadata.get("wlcg:fleet"),
        "profile": "osk",
        "provider": "openstack",
        "state": "stopping" if task == "deleting" else NOVA_STATES[server["status"]],
        "provider_state": server["status"] + (f"/{task}" if task else ""),
        "flavor": server["flavor"]["original_name"],
        "vcpus": server["flavor"]["vcpus"],
        "memory_mb": server["flavor"]["ram"],
        "image": server["image"]["id"] if server["image"] else None,
        "launched_at": zulu(server.get("OS-SRV-USG:launched_at") or server["created"]),
        "addresses": [a["addr"] for net in (server.get("addresses") or {}).values() for a in net],
        "tags": {k: v for k, v in metadata.items() if k.startswith("wlcg:")},
    }


def fleet_servers(server: ReplayServer, nth: int = 0) -> list[dict[str, Any]]:
    """The recorded fleet's servers in the nth recorded `GET /servers/detail`."""
    listing = recorded(server, "GET", "/v2.1/servers/detail")[nth]["servers"]
    return [s for s in listing if (s.get("metadata") or {}).get("wlcg:fleet") == server.doc["fleet"]]


def by_id(rows: Any) -> list[dict[str, Any]]:
    assert isinstance(rows, list)
    return sorted(rows, key=lambda r: str(r["id"]))


def test_list_by_fleet_has_the_contract_shape_and_maps_error(run: Run, world: World, replay: Start) -> None:
    server = replay("list")
    fleet, nova = server.doc["fleet"], fleet_servers(server)
    assert sorted(s["status"] for s in nova) == ["ACTIVE", "ERROR"]  # what the recording was made to hold
    result = run("instance", "list", "--fleet", fleet, "-o", "json")
    assert result.code == 0, result.err
    rows = by_id(result.json())
    assert all(set(row) >= INSTANCE_KEYS for row in rows)
    assert rows == by_id([expected_row(s) for s in nova])
    errors = run("instance", "list", "--fleet", fleet, "--state", "error", "-o", "json").json()
    assert [r["id"] for r in errors] == [s["id"] for s in nova if s["status"] == "ERROR"]  # type: ignore[union-attr]
    assert by_id([i.to_dict() for i in provider(world).instances(fleet=fleet)]) == rows
    assert server.unexpected == []
    listings = [r for r in server.requests if r.startswith("GET /v2.1/servers/detail") and "marker=" not in r]
    assert len(listings) == 3  # each listing pages (limit=500) until a short page


def test_show_active_and_error_servers(run: Run, world: World, replay: Start) -> None:
    server = replay("show")
    for role in ("active", "error"):
        server_id = server.doc["servers"][role]
        (nova,) = (b["server"] for b in recorded(server, "GET", f"/v2.1/servers/{server_id}"))
        shown = run("instance", "show", server_id, "-o", "json")
        assert shown.code == 0, shown.err
        data = shown.json()
        assert isinstance(data, dict)
        extra = {
            "fault": (nova.get("fault") or {}).get("message"),
            "availability_zone": nova["OS-EXT-AZ:availability_zone"],
        }
        assert data == {**expected_row(nova), "extra": {k: v for k, v in extra.items() if v is not None}}
        inst = provider(world).instance(server_id)
        assert inst is not None and inst.to_dict() == expected_row(nova)
    assert server.doc["servers"]["error"] != server.doc["servers"]["active"]
    assert server.unexpected == []


def test_console_log(run: Run, replay: Start) -> None:
    server = replay("console_log")
    active = server.doc["servers"]["active"]
    (answer,) = recorded(server, "POST", f"/v2.1/servers/{active}/action")
    output = answer["output"]
    whole = run("instance", "console-log", active)
    assert whole.code == 0, whole.err
    assert whole.out == output + ("" if output.endswith("\n") else "\n")
    last = run("instance", "console-log", active, "-n", "2", "-o", "json")
    assert last.json() == {"id": active, "profile": "osk", "output": "\n".join(output.splitlines()[-2:])}
    assert server.unexpected == []


def test_usage_records(world: World, replay: Start) -> None:
    server = replay("usage")
    window = server.doc["window"]
    since, until = datetime.fromisoformat(window["since"]), datetime.fromisoformat(window["until"])
    pages = [x.body for x in server.exchanges if "/os-simple-tenant-usage/" in x.path]
    assert len(pages) >= 2 and not pages[-1]["tenant_usage"].get("server_usages")  # paged until an empty page
    nova = [u for page in pages for u in page["tenant_usage"].get("server_usages", [])]
    assert nova, "the recording holds no usage"
    records = provider(world).usage(since, until)
    got = [(r.instance_id, r.name, r.flavor, r.vcpus, r.memory_mb, r.started_at, r.ended_at) for r in records]

    def moment(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value).replace(tzinfo=UTC) if value else None

    expected = [
        (
            u["instance_id"],
            u["name"],
            u["flavor"],
            u["vcpus"],
            u["memory_mb"],
            moment(u["started_at"]),
            moment(u["ended_at"]),
        )
        for u in nova
    ]
    assert got == expected
    assert {r.profile for r in records} == {"osk"} and {r.provider for r in records} == {"openstack"}
    assert server.unexpected == []


def test_quota_values(world: World, replay: Start) -> None:
    server = replay("quota")
    (answer,) = recorded(server, "GET", "/v2.1/limits")
    absolute = answer["limits"]["absolute"]

    def limit(key: str) -> int | None:
        return None if absolute[key] < 0 else absolute[key]

    assert provider(world).quota().to_dict() == {
        "instances": limit("maxTotalInstances"),
        "instances_used": absolute["totalInstancesUsed"],
        "cores": limit("maxTotalCores"),
        "cores_used": absolute["totalCoresUsed"],
        "memory_mb": limit("maxTotalRAMSize"),
        "memory_mb_used": absolute["totalRAMUsed"],
    }
    assert server.unexpected == []


def test_flavors(world: World, replay: Start) -> None:
    server = replay("flavors")
    pages = recorded(server, "GET", "/v2.1/flavors/detail")
    expected = [
        {"name": f["name"], "id": f["id"], "vcpus": f["vcpus"], "memory_mb": f["ram"], "disk_gb": f["disk"]}
        for page in pages
        for f in page["flavors"]
    ]
    assert [f.to_dict() for f in provider(world).flavors()] == expected
    assert {"m1.small", "osk-nowhere"} <= {f["name"] for f in expected}
    assert server.unexpected == []


def test_images_with_glance_multihash_as_checksum(world: World, replay: Start) -> None:
    server = replay("images")
    pages = recorded(server, "GET", "/v2/images")
    expected = [
        {
            "id": i["id"],
            "name": i["name"],
            "profile": "osk",
            "provider": "openstack",
            "size_bytes": i["size"],
            "checksum": f"{i['os_hash_algo']}:{i['os_hash_value']}" if i.get("os_hash_algo") else None,
            "endorsed_id": i.get("wlcg:endorsed-id"),
        }
        for page in pages
        for i in page["images"]
    ]
    images = provider(world).images()
    assert [i.to_dict() for i in images] == expected
    assert any(i.checksum and i.checksum[0] == "sha512" for i in images)
    assert server.unexpected == []


def test_check_names_the_project(world: World, replay: Start) -> None:
    server = replay("check")
    (token,) = recorded(server, "POST", "/v3/auth/tokens")
    check = provider(world).check()
    assert check.ok, check.reason
    assert check.reason.endswith(f"Nova answered for project {token['token']['project']['id']}")
    assert server.requests[-1] == "GET /v2.1/limits" and server.unexpected == []


def test_terminate_then_the_fleet_is_gone(run: Run, replay: Start) -> None:
    server = replay("terminate")
    fleet = server.doc["fleet"]
    ids = sorted(s["id"] for s in fleet_servers(server))
    deleted = sorted(x.path.rsplit("/", 1)[1] for x in server.exchanges if x.method == "DELETE")
    assert ids == deleted and len(ids) == 2
    done = run("instance", "terminate", *ids, "--yes", "-o", "json")
    assert done.code == 0, done.err
    assert by_id(done.json()) == [
        {"id": s["id"], "name": s["name"], "profile": "osk", "fleet": fleet, "terminated": True, "error": None}
        for s in by_id(fleet_servers(server))
    ]
    assert sorted(r.split()[1].rsplit("/", 1)[1] for r in server.requests if r.startswith("DELETE")) == ids
    after = run("instance", "list", "--fleet", fleet, "-o", "json")
    assert after.code == 0 and after.json() == [expected_row(s) for s in fleet_servers(server, 1)]
    assert server.unexpected == []


def test_wrong_application_credential_secret_is_exit_4(
    run: Run, world: World, replay: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = replay("list")
    monkeypatch.setenv("WLCGCLOUD_SECRET_OSK", "not-" + server.secret)
    result = run("instance", "list")
    assert result.code == 4
    assert result.err.startswith("error: profile 'osk': Keystone refused the application credential (HTTP 401).")
    assert server.secret not in result.err
    check = provider(world).check()
    assert not check.ok and check.exit_code == 4
    assert server.requests == ["POST /v3/auth/tokens"] * 2 and server.unexpected == []


def test_the_replay_reports_requests_it_has_no_recording_for(run: Run, replay: Start) -> None:
    server = replay("list")
    stranger = str(uuid.uuid4())
    result = run("instance", "show", stranger)
    assert result.code != 0
    assert f"GET /v2.1/servers/{stranger}" in server.unexpected
    # A recorded request, but without the token Keystone issued: not answered either.
    (nova,) = {x.port for x in server.exchanges if urlsplit(x.path).path == "/v2.1/servers/detail"}
    url = f"http://127.0.0.1:{server.listeners.ports[nova]}/v2.1/servers/detail"
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(urllib.request.Request(url, headers={"X-Auth-Token": "made-up"}), timeout=5)
    assert answer.value.code == 404 and server.unexpected[-1] == "GET /v2.1/servers/detail"


def test_payloads_hold_no_real_secret() -> None:
    files = sorted(PAYLOADS.glob("*.json"))
    assert {f.stem for f in files} >= {"check", "flavors", "images", "quota", "list", "show", "console_log"}
    real: list[str] = []
    for name, key in (("appcred.env", "OS_APPLICATION_CREDENTIAL_SECRET"), ("openrc", "OS_PASSWORD")):
        with contextlib.suppress(OSError, KeyError):  # no peer here: the placeholders must still hold
            real.append(read_env_file(OSK_DIR / name)[key])
    for path in files:
        text = path.read_text()
        assert "gAAAAA" not in text, f"{path.name}: a Fernet token"
        assert not any(secret in text for secret in real), f"{path.name}: a real secret"
        for x in json.loads(text)["exchanges"]:
            assert x["headers"].get("X-Subject-Token", "scrubbed-token").startswith("scrubbed-token")
            offered = ((x["request"] or {}).get("auth") or {}).get("identity", {}).get("application_credential")
            if offered:
                assert offered["secret"] == "<secret>" if x["status"] < 400 else offered["secret"].startswith("wrong-")
