#!/usr/bin/env python3
"""A stateful double of OpenStack's wire protocol (Keystone v3, Nova v2.1, Glance v2, a little Neutron), stdlib only.

For the week-long simulation of `wlcgcloud fleet maintain`: thousands of servers per cloud, a clock taken
from a file the simulation driver advances, and control endpoints to break the cloud on cue. Our
provider (openstacksdk inside wlcgcloud/providers/openstack.py) talks to it as to a real cloud.

    python bench/sim/openstack_peer.py --port 0 --config world.json [--clock-file PATH] [--verbose]

prints ``READY http://127.0.0.1:<port>/v3`` (the auth_url) once it listens; SIGTERM or SIGINT end it
with status 0. It binds 127.0.0.1 only. One port serves everything: Keystone at ``/`` and ``/v3``; the
catalog it hands out puts Nova at ``/compute/v2.1``, Glance at ``/image`` and Neutron at ``/network``
(devstack's layout). ``spawn(config, clock_file)`` starts it as a subprocess from Python.

Where the shapes come from (facts, no code copied): the exchanges our provider had with a real
OpenStack Zed, recorded in tests/payloads/openstack/*.json (Keystone token and 401, catalog layout,
version documents, server, flavor, limits, image and usage bodies, headers); Nova's API reference and
source (nova/api/openstack: fault names, microversion checks, pagination links, server view fields by
microversion, create validation and errors; nova/compute/utils.py check_num_instances_quota for the
quota arithmetic and the TooManyInstances wording; nova/compute/api.py for multi-create names).

world.json (every key optional; a missing one takes the default shown)::

    {"region": "RegionOne", "max_microversion": "2.96",   # 2.1 .. 2.100
     "boot_seconds": 120,                 # BUILD this long after creation, then ACTIVE (lazily, no timers)
     "users": [{"name": "operator", "password": "...", "project": "atlas", "project_id": "...", "id": "..."}],
     "application_credentials": [{"id": "...", "secret": "...", "project": "atlas", "user": "operator",
                                  "name": "..."}],
     "projects": [{"name": "atlas", "id": "..."}],        # also made from the users' and credentials' projects
     "flavors": [{"id": "...", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80}],
     "images": [{"id": "...", "name": "...", "os_hash_algo": "sha512", "os_hash_value": "...",
                 "owner": "<project id or name>", "visibility": "public", "status": "active", ...}],
     "networks": [{"id": "...", "name": "private", "cidr": "10.0.0.0/16", "project": null, "shared": true}],
     "keypairs": [{"name": "...", "public_key": "ssh-ed25519 ..."}],
     "quota": {"instances": 10, "cores": -1, "ram": -1},  # per project; -1 unlimited; a missing key: -1
     "hosts": 32,                         # compute hosts servers are spread over (hostId, host names)
     "kill_message": "...",               # the fault message of /sim/kill_all
     "http_date": "system",               # the Date header: "system" (wall clock) or "clock" (the sim clock)
     "seed": null}                        # an int: server ids, passwords and reservation ids repeat per run

Clock: with ``--clock-file``, "now" is the little-endian IEEE-754 double (Unix seconds) in the file's
first 8 bytes, read anew for every request (a file replaced by rename is mapped again); else the wall
clock. Every timestamp of the API comes from it; tokens expire ten years of that clock after issue.

Control, no token, JSON in and out, on the same port (never behind the outage):

    POST /sim/outage {"down": true|false}   while down every other request gets HAProxy's 503 page
    POST /sim/quota {"instances", "cores", "ram", "project"?}   change quotas (every project's by default)
    POST /sim/stop {"ids": [...]}           those ACTIVE servers power off (SHUTOFF), as after `shutdown -h`
    POST /sim/kill_all {"message"?}         every server goes ERROR with a fault (hypervisors lost)
    POST /sim/console {"server": id, "text": "..."}   append lines to that server's serial console (what
                                            os-getConsoleOutput returns), kept while it is SHUTOFF too
    GET  /sim/servers                       [{"id", "name", "status", "created", "tags"}] of live servers
    GET  /sim/calls, POST /sim/calls/reset  API requests counted by "METHOD path-template"
    GET  /sim/unrouted                      requests nothing here could answer (also logged to stderr)
    GET  /sim/now                           {"now": <clock seconds>}

Modelled: application credential and password authentication (401 as Keystone sends it), the
catalog, Nova microversions 2.1 .. max (headers, 400/406 for bad versions, fields by version), server
create with min_count/max_count against the instances/cores/ram quota exactly as Nova counts it,
tags, metadata, user_data and key_name checks, server list (summary and detail) with filters name,
status, tags, tags-any, not-tags, not-tags-any, image, flavor, ip, reservation_id, changes-since,
changes-before, and limit/marker paging with next links (Nova's max_limit 1000), show, delete,
os-stop/os-start/reboot/os-getConsoleOutput actions, flavors, limits, key pairs,
os-simple-tenant-usage, Glance image list/show with paging, Neutron network list/show.
Not modelled: admin APIs, volumes and boot from volume, ports, security group and floating IP APIs,
server groups, resize/rebuild/shelve/rescue, image upload, rate limits, user-level quotas; deleted
servers vanish at once (Nova passes through task_state deleting first); a BUILD server has its
address from the start; listings sort by creation order (Nova: created_at, then id).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import ipaddress
import json
import mmap
import os
import random
import re
import signal
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests"))
from peers.localhttp import LocalServer

Version = tuple[int, int]
Reply = tuple[int, list[tuple[str, str]], bytes]

MIN_VERSION: Version = (2, 1)
TOP_VERSION: Version = (2, 100)  # the highest microversion whose server fields are modelled here
MAX_LIMIT = 1000  # Nova's [api] max_limit
GLANCE_LIMIT, GLANCE_MAX = 25, 1000  # Glance's limit_param_default, api_limit_max
TOKEN_LIFE = 10 * 365.25 * 86400
HAPROXY_503 = (
    b"<html><body><h1>503 Service Unavailable</h1>\nNo server is available to handle this request.\n</body></html>\n"
)
KILL_MESSAGE = "Connection to the hypervisor is broken on host"
UNAUTHORIZED = "The request you have made requires authentication."
STATUSES = frozenset({
    "ACTIVE", "BUILD", "DELETED", "ERROR", "HARD_REBOOT", "MIGRATING", "PASSWORD", "PAUSED", "REBOOT", "REBUILD",
    "RESCUE", "RESIZE", "REVERT_RESIZE", "SHELVED", "SHELVED_OFFLOADED", "SHUTOFF", "SOFT_DELETED", "SUSPENDED",
    "UNKNOWN", "VERIFY_RESIZE",
})  # fmt: skip
VM_STATUS = {"building": "BUILD", "active": "ACTIVE", "stopped": "SHUTOFF", "error": "ERROR", "deleted": "DELETED"}
PROGRESS_STATUSES = frozenset({"ACTIVE", "BUILD"})
TAG = re.compile(r"^[^,/]{1,60}$")
UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
CREATE_KEYS: dict[str, Version] = {  # POST /servers keys and the microversion that allows each
    "name": (2, 1), "imageRef": (2, 1), "flavorRef": (2, 1), "adminPass": (2, 1), "metadata": (2, 1),
    "networks": (2, 1), "OS-DCF:diskConfig": (2, 1), "accessIPv4": (2, 1), "accessIPv6": (2, 1),
    "availability_zone": (2, 1), "block_device_mapping": (2, 1), "block_device_mapping_v2": (2, 1),
    "config_drive": (2, 1), "key_name": (2, 1), "min_count": (2, 1), "max_count": (2, 1),
    "return_reservation_id": (2, 1), "security_groups": (2, 1), "user_data": (2, 1), "personality": (2, 1),
    "description": (2, 19), "tags": (2, 52), "trusted_image_certificates": (2, 63), "host": (2, 74),
    "hypervisor_hostname": (2, 74), "hostname": (2, 90),
}  # fmt: skip
DEFAULT_WORLD: dict[str, Any] = {
    "users": [{"name": "operator", "password": "secret", "project": "atlas"}],
    "application_credentials": [{"id": "0123456789abcdef0123456789abcdef", "secret": "secret", "project": "atlas"}],
    "flavors": [{"id": "m1.large", "name": "m1.large", "vcpus": 4, "ram": 8192, "disk": 80}],
    "images": [],
    "quota": {"instances": 10},
}


# ----------------------------------------------------------------------------- small helpers


def stamp_z(t: float) -> str:
    """Nova's created/updated: 2026-11-24T18:19:30Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def stamp_naive(t: float) -> str:
    """Nova's OS-SRV-USG times and usage times: 2026-11-24T18:19:32.000000 (the database keeps seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000", time.gmtime(t))


def stamp_keystone(t: float) -> str:
    """Keystone's token times: 2026-11-24T18:19:35.000000Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime(t))


def parse_time(text: str) -> float | None:
    """An ISO 8601 time as Nova's query parameters take it (naive means UTC)."""
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def ident(*parts: str) -> str:
    """A stable 32-hex id (Keystone's style) for a named thing."""
    return hashlib.sha256(":".join(parts).encode()).hexdigest()[:32]


def jbytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def version_text(v: Version) -> str:
    return f"{v[0]}.{v[1]}"


def parse_version(text: str) -> Version | None:
    m = re.fullmatch(r"\s*(\d+)\.(\d+)\s*", text)
    return (int(m[1]), int(m[2])) if m else None


def sanitize_hostname(name: str) -> str:
    """Nova's utils.sanitize_hostname, as documented: the display name made a DNS label."""
    text = name.encode("latin-1", "ignore").decode("latin-1")[:63]
    text = re.sub(r"[ _.]", "-", text)
    text = re.sub(r"[^\w.-]+", "", text)
    return text.lower().strip(".-")


class Fail(Exception):
    """An HTTP error reply, raised from anywhere in a handler."""

    def __init__(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        super().__init__(status)
        self.status, self.body, self.content_type = status, body, content_type


NOVA_FAULTS = {400: "badRequest", 401: "unauthorized", 403: "forbidden", 404: "itemNotFound", 405: "badMethod",
               409: "conflictingRequest", 413: "overLimit", 415: "badMediaType", 429: "overLimit",
               501: "notImplemented", 503: "serviceUnavailable"}  # fmt: skip
KEYSTONE_TITLES = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}
HTTP_TITLES = {400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict"}


def nova_fail(status: int, message: str) -> Fail:
    return Fail(status, jbytes({NOVA_FAULTS.get(status, "computeFault"): {"code": status, "message": message}}))


def keystone_fail(status: int, message: str) -> Fail:
    title = KEYSTONE_TITLES.get(status, "Error")
    return Fail(status, jbytes({"error": {"code": status, "message": message, "title": title}}))


def webob_fail(status: int, detail: str) -> Fail:
    """Glance's errors: webob's HTML page."""
    title = f"{status} {HTTP_TITLES.get(status, 'Error')}"
    page = f"<html>\n <head>\n  <title>{title}</title>\n </head>\n <body>\n  <h1>{title}</h1>\n  {detail}<br /><br />\n"
    return Fail(status, (page + "\n\n\n </body>\n</html>").encode(), "text/html; charset=UTF-8")


def neutron_fail(status: int, kind: str, message: str) -> Fail:
    return Fail(status, jbytes({"NeutronError": {"type": kind, "message": message, "detail": ""}}))


def schema_fail(attribute: str, value: Any, why: str) -> Fail:
    shown = repr(value) if isinstance(value, str) else json.dumps(value) if value is not None else "None"
    return nova_fail(400, f"Invalid input for field/attribute {attribute}. Value: {shown}. {why}")


# ----------------------------------------------------------------------------- clock


class Clock:
    """Unix seconds: the file's first 8 bytes (little-endian double) when a path is given, else the wall clock."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._map: mmap.mmap | None = None
        self._inode = -1
        if path:
            self._open()

    def _open(self) -> None:
        assert self.path
        with open(self.path, "rb") as fh:
            inode = os.fstat(fh.fileno()).st_ino
            self._map = mmap.mmap(fh.fileno(), 8, access=mmap.ACCESS_READ)
        self._inode = inode

    def now(self) -> float:
        if not self.path:
            return time.time()
        try:
            if os.stat(self.path).st_ino != self._inode:  # replaced by a rename: map the new file
                self._open()
        except (OSError, ValueError):
            pass  # mid-replacement: the old mapping still holds the last value
        assert self._map is not None
        return float(struct.unpack_from("<d", self._map, 0)[0])


# ----------------------------------------------------------------------------- the world's objects


@dataclass(frozen=True)
class Project:
    id: str
    name: str


@dataclass(frozen=True)
class Flavor:
    id: str
    name: str
    vcpus: int
    ram: int
    disk: int
    ephemeral: int = 0
    swap: int = 0
    is_public: bool = True
    description: str | None = None
    extra_specs: dict[str, str] = field(default_factory=dict)


@dataclass
class Network:
    id: str
    name: str
    project_id: str
    shared: bool
    cidr: ipaddress.IPv4Network
    subnet_id: str
    created: float
    taken: set[int] = field(default_factory=set)
    next_host: int = 2

    def allocate(self) -> str:
        size = self.cidr.num_addresses
        for _ in range(size):
            host, self.next_host = self.next_host, self.next_host + 1
            if self.next_host >= size - 1:
                self.next_host = 2
            if host not in self.taken:
                self.taken.add(host)
                return str(self.cidr.network_address + host)
        raise nova_fail(400, f"No more IP addresses available on network {self.id}.")

    def release(self, address: str) -> None:
        self.taken.discard(int(ipaddress.IPv4Address(address)) - int(self.cidr.network_address))


@dataclass(eq=False)
class Server:
    id: str
    seq: int
    name: str
    hostname: str
    project_id: str
    user_id: str
    flavor: Flavor
    image_id: str
    created: float
    ready_at: float
    host: str
    host_id: str
    reservation_id: str
    launch_index: int
    tags: list[str]
    metadata: dict[str, str]
    key_name: str | None
    description: str | None
    pinned_az: str | None
    security_groups: list[str]
    addresses: dict[str, list[dict[str, Any]]]
    leases: list[tuple[Network, str]]
    vm_state: str = "building"
    task_state: str | None = "spawning"
    power_state: int = 0
    updated: float = 0.0
    launched_at: float | None = None
    terminated_at: float | None = None
    fault: dict[str, Any] | None = None
    console: list[str] = field(default_factory=list)  # lines the guest wrote (POST /sim/console)

    def settle(self, now: float) -> None:
        """The lazy clock: a building server whose boot time has passed is ACTIVE since then."""
        if self.vm_state == "building" and now >= self.ready_at:
            self.vm_state, self.task_state, self.power_state = "active", None, 1
            self.launched_at = self.updated = self.ready_at

    @property
    def status(self) -> str:
        return VM_STATUS.get(self.vm_state, "UNKNOWN")

    @property
    def deleted(self) -> bool:
        return self.vm_state == "deleted"


@dataclass
class Auth:
    """What a token stands for."""

    token: str
    user_id: str
    user_name: str
    project: Project
    methods: list[str]
    issued: float
    expires: float
    app_cred: dict[str, Any] | None = None


@dataclass
class Request:
    method: str
    path: str  # without the query
    query: list[tuple[str, str]]
    headers: Message
    body: bytes
    base: str  # http://host:port as the client addressed us
    now: float
    auth: Auth | None = None
    version: Version = (2, 1)

    def arg(self, key: str) -> str | None:
        """The last value of a query parameter (as webob's dict view gives it)."""
        found = None
        for k, v in self.query:
            if k == key:
                found = v
        return found

    def args(self, key: str) -> list[str]:
        return [v for k, v in self.query if k == key]

    def json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError:
            raise nova_fail(400, "Malformed request body") from None

    def at_least(self, major: int, minor: int) -> bool:
        return self.version >= (major, minor)


# ----------------------------------------------------------------------------- state


class World:
    """Everything the peer knows; one lock guards it all (handlers are short)."""

    def __init__(self, config: dict[str, Any], clock: Clock) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.config = config
        self.rng = random.Random(config.get("seed"))
        self.region = str(config.get("region", "RegionOne"))
        top = parse_version(str(config.get("max_microversion", "2.96")))
        if top is None or not MIN_VERSION <= top <= TOP_VERSION:
            raise ValueError(f"max_microversion must lie between 2.1 and {version_text(TOP_VERSION)}")
        self.max_version: Version = top
        self.boot_seconds = float(config.get("boot_seconds", 120))
        self.hosts = max(1, int(config.get("hosts", 32)))
        self.kill_message = str(config.get("kill_message", KILL_MESSAGE))
        self.date_from_clock = config.get("http_date", "system") == "clock"
        self.start = clock.now()
        self.projects: dict[str, Project] = {}  # by id
        self.users: dict[str, dict[str, Any]] = {}  # by name
        self.app_creds: dict[str, dict[str, Any]] = {}  # by id
        self._load_identities(config)
        self.admin_project = self.project(None, "admin")
        self.flavors = [self._flavor(f) for f in config.get("flavors", [])]
        self.images = [self._image(i) for i in config.get("images", [])]
        nets = config.get("networks") or [{"name": "private", "cidr": "10.0.0.0/16"}]
        self.networks = [self._network(n) for n in nets]
        self.keypairs = [self._keypair(k) for k in config.get("keypairs", [])]
        limits = {"instances": -1, "cores": -1, "ram": -1, **config.get("quota", {})}
        self.quotas = {p: {k: int(v) for k, v in limits.items()} for p in self.projects}
        self.servers: dict[str, Server] = {}  # every server ever made, deleted ones too (markers, usage)
        self.order: list[Server] = []  # creation order
        self.live: dict[str, Server] = {}
        self.tokens: dict[str, Auth] = {}
        self.calls: Counter[str] = Counter()
        self.unrouted: list[str] = []
        self.down = False
        self.base_url = "http://127.0.0.1:0"  # where the catalog points; set by OpenStackPeer.start

    # -- configuration

    def project(self, project_id: str | None, name: str) -> Project:
        for p in self.projects.values():
            if p.name == name:
                return p
        found = Project(project_id or ident("project", name), name)
        self.projects[found.id] = found
        return found

    def project_named(self, name_or_id: str) -> Project | None:
        return self.projects.get(name_or_id) or next((p for p in self.projects.values() if p.name == name_or_id), None)

    def _load_identities(self, config: dict[str, Any]) -> None:
        for p in config.get("projects", []):
            self.project(p.get("id"), p["name"])
        for u in config.get("users", []):
            project = self.project(u.get("project_id"), u.get("project", "atlas"))
            user = {**u, "id": u.get("id") or ident("user", u["name"]), "project_id": project.id}
            user.setdefault("domain", "Default")
            self.users[u["name"]] = user
        for c in config.get("application_credentials", []):
            project = self.project(c.get("project_id"), c.get("project", "atlas"))
            owner = c.get("user", "operator")
            user_id = self.users[owner]["id"] if owner in self.users else ident("user", owner)
            self.app_creds[c["id"]] = {**c, "project_id": project.id, "user_id": user_id, "user_name": owner}

    def _flavor(self, f: dict[str, Any]) -> Flavor:
        return Flavor(
            id=str(f.get("id") or f["name"]), name=f["name"], vcpus=int(f["vcpus"]), ram=int(f["ram"]),
            disk=int(f.get("disk", 0)), ephemeral=int(f.get("ephemeral", 0)), swap=int(f.get("swap", 0)),
            is_public=bool(f.get("is_public", True)), description=f.get("description"),
            extra_specs=dict(f.get("extra_specs", {})),
        )  # fmt: skip

    def _image(self, i: dict[str, Any]) -> dict[str, Any]:
        owner = i.get("owner") or "admin"
        project = self.project_named(owner)
        image = {
            "name": i.get("name"), "disk_format": "qcow2", "container_format": "bare", "visibility": "public",
            "size": 1024, "virtual_size": None, "status": "active", "checksum": None, "protected": False,
            "min_ram": 0, "min_disk": 0, "os_hidden": False, "os_hash_algo": None, "os_hash_value": None,
            "created_at": stamp_z(self.start), "updated_at": stamp_z(self.start), "tags": [], **i,
            "owner": project.id if project else owner,
        }  # fmt: skip
        image["id"] = str(i.get("id") or uuid.UUID(int=self.rng.getrandbits(128), version=4))
        image["self"] = f"/v2/images/{image['id']}"
        image["file"] = f"/v2/images/{image['id']}/file"
        image["schema"] = "/v2/schemas/image"
        image.setdefault("stores", "fs")
        return image

    def _network(self, n: dict[str, Any]) -> Network:
        owner = self.project_named(n["project"]) if n.get("project") else None
        name = str(n.get("name", "private"))
        return Network(
            id=str(n.get("id") or uuid.UUID(ident("network", name), version=4)), name=name,
            project_id=owner.id if owner else self.admin_project.id,
            shared=bool(n.get("shared", owner is None)), cidr=ipaddress.IPv4Network(n.get("cidr", "10.0.0.0/16")),
            subnet_id=str(uuid.UUID(ident("subnet", name), version=4)), created=self.start,
        )  # fmt: skip

    def _keypair(self, k: dict[str, Any]) -> dict[str, Any]:
        key = str(k.get("public_key", f"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{ident('key', k['name'])} {k['name']}"))
        digest = hashlib.md5(key.encode()).hexdigest()  # Nova's fingerprint is an MD5
        fingerprint = ":".join(digest[i : i + 2] for i in range(0, 32, 2))
        return {"name": k["name"], "public_key": key, "fingerprint": fingerprint, "type": k.get("type", "ssh")}

    # -- lookups and accounting

    def new_uuid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def random_text(self, n: int, alphabet: str = string.ascii_letters + string.digits) -> str:
        return "".join(self.rng.choice(alphabet) for _ in range(n))

    def used(self, project_id: str) -> dict[str, int]:
        mine = [s for s in self.live.values() if s.project_id == project_id]
        return {
            "instances": len(mine),
            "cores": sum(s.flavor.vcpus for s in mine),
            "ram": sum(s.flavor.ram for s in mine),
        }

    def visible_networks(self, project_id: str) -> list[Network]:
        return [n for n in self.networks if n.shared or n.project_id == project_id]

    def visible_images(self, project_id: str) -> list[dict[str, Any]]:
        return [i for i in self.images if i["visibility"] in ("public", "shared") or i["owner"] == project_id]

    def authenticate(self, token: str | None) -> Auth | None:
        return self.tokens.get(token or "")

    def record(self, template: str) -> None:
        self.calls[template] += 1

    # -- changes

    def make(
        self, req: Request, name: str, count: int, flavor: Flavor, image_id: str, networks: list[Network],
        tags: list[str], metadata: dict[str, str], key_name: str | None, groups: list[str], asked: dict[str, Any],
    ) -> list[Server]:  # fmt: skip
        assert req.auth is not None
        reservation = "r-" + self.random_text(8, string.ascii_lowercase + string.digits)
        made = []
        base_host = sanitize_hostname(str(asked.get("hostname") or name)) or "server"
        for index in range(count):
            server_id = self.new_uuid()
            host = f"compute-{(len(self.order) % self.hosts):02d}"
            leases = [(net, net.allocate()) for net in networks]
            addresses: dict[str, list[dict[str, Any]]] = {}
            for net, addr in leases:
                mac = "fa:16:3e:" + ":".join(f"{b:02x}" for b in self.rng.getrandbits(24).to_bytes(3, "big"))
                addresses.setdefault(net.name, []).append(
                    {"version": 4, "addr": addr, "OS-EXT-IPS:type": "fixed", "OS-EXT-IPS-MAC:mac_addr": mac}
                )
            s = Server(
                id=server_id, seq=len(self.order), name=f"{name}-{index + 1}" if count > 1 else name,
                hostname=f"{base_host}-{index + 1}" if count > 1 else base_host, project_id=req.auth.project.id,
                user_id=req.auth.user_id, flavor=flavor, image_id=image_id, created=req.now,
                ready_at=req.now + self.boot_seconds, host=host,
                host_id=hashlib.sha224((req.auth.project.id + host).encode()).hexdigest(),
                reservation_id=reservation, launch_index=index, tags=list(tags), metadata=dict(metadata),
                key_name=key_name, description=asked.get("description") if req.version >= (2, 19) else name,
                pinned_az=asked.get("availability_zone"), security_groups=groups, addresses=addresses,
                leases=leases, updated=req.now,
            )  # fmt: skip
            s.settle(req.now)
            self.servers[s.id] = s
            self.order.append(s)
            self.live[s.id] = s
            made.append(s)
        return made

    def remove(self, s: Server, now: float) -> None:
        s.vm_state, s.task_state, s.power_state = "deleted", None, 0
        s.terminated_at = s.updated = now
        for net, addr in s.leases:
            net.release(addr)
        self.live.pop(s.id, None)


# ----------------------------------------------------------------------------- routing


Handler = Callable[..., Reply]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    template: str
    handler: Handler


def route(method: str, path: str, handler: Handler, template: str | None = None) -> Route:
    """`path` with `{name}` segments; the template counted in /sim/calls is `template` or `path`."""
    regex = re.sub(r"\\\{\w+\\\}", "([^/]+)", re.escape(path))
    return Route(method, re.compile(regex + "/?"), template or path, handler)


def reply(status: int, obj: Any = None, headers: Iterable[tuple[str, str]] = ()) -> Reply:
    body = b"" if obj is None else obj if isinstance(obj, bytes) else jbytes(obj)
    head = [("Content-Type", "application/json"), *headers] if obj is not None or status != 204 else list(headers)
    return status, head, body


# ----------------------------------------------------------------------------- Keystone


class Keystone:
    def __init__(self, world: World) -> None:
        self.w = world

    def routes(self) -> list[Route]:
        return [
            route("GET", "/", self.versions, "GET /"),
            route("GET", "/v3", self.version),
            route("POST", "/v3/auth/tokens", self.issue),
            route("GET", "/v3/auth/tokens", self.validate),
        ]

    def _version_doc(self, req: Request) -> dict[str, Any]:
        return {
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": f"{req.base}/v3/"}],
            "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
        }

    def versions(self, req: Request) -> Reply:
        return reply(300, {"versions": {"values": [self._version_doc(req)]}}, [("Vary", "X-Auth-Token")])

    def version(self, req: Request) -> Reply:
        return reply(200, {"version": self._version_doc(req)}, [("Vary", "X-Auth-Token")])

    def issue(self, req: Request) -> Reply:
        try:
            identity = json.loads(req.body)["auth"]["identity"]
            methods = list(identity["methods"])
        except (ValueError, KeyError, TypeError):
            raise keystone_fail(400, "Invalid input for field 'identity': 'methods' is a required property") from None
        auth = self._identify(req, methods, identity)
        self.w.tokens[auth.token] = auth
        head = [("X-Subject-Token", auth.token), ("Vary", "X-Auth-Token")]
        return reply(201, {"token": self.token_body(req, auth)}, head)

    def validate(self, req: Request) -> Reply:
        if self.w.authenticate(req.headers.get("X-Auth-Token")) is None:
            raise keystone_fail(401, UNAUTHORIZED)
        auth = self.w.authenticate(req.headers.get("X-Subject-Token"))
        if auth is None:
            raise keystone_fail(404, f"Could not find token: {req.headers.get('X-Subject-Token')}.")
        return reply(200, {"token": self.token_body(req, auth)}, [("X-Subject-Token", auth.token)])

    def _identify(self, req: Request, methods: list[str], identity: dict[str, Any]) -> Auth:
        method = methods[0] if methods else ""
        part = identity.get(method) or {}
        if method == "application_credential":
            cred = self._app_cred(part)
            project = self.w.projects[cred["project_id"]]
            app = {"id": cred["id"], "name": cred.get("name", f"cred-{cred['id'][:8]}"), "restricted": True}
            return self._auth(req, cred["user_id"], cred["user_name"], project, ["application_credential"], app)
        if method == "password":
            user = self._password_user(part)
            project = self._scope(req, user)
            return self._auth(req, user["id"], user["name"], project, ["password"], None)
        if method == "token":
            earlier = self.w.authenticate(str(part.get("id", "")))
            if earlier is None:
                raise keystone_fail(401, UNAUTHORIZED)
            return self._auth(req, earlier.user_id, earlier.user_name, earlier.project, ["token"], earlier.app_cred)
        raise keystone_fail(401, UNAUTHORIZED)

    def _app_cred(self, part: dict[str, Any]) -> dict[str, Any]:
        cred = self.w.app_creds.get(str(part.get("id", "")))
        if cred is None and part.get("name"):
            user = part.get("user") or {}
            cred = next(
                (c for c in self.w.app_creds.values()
                 if c.get("name") == part["name"] and user.get("id", c["user_id"]) == c["user_id"]
                 and user.get("name", c["user_name"]) == c["user_name"]),
                None,
            )  # fmt: skip
        if cred is None or str(part.get("secret")) != str(cred["secret"]):
            raise keystone_fail(401, UNAUTHORIZED)
        return cred

    def _password_user(self, part: dict[str, Any]) -> dict[str, Any]:
        given = part.get("user") or {}
        user = next(
            (u for u in self.w.users.values() if given.get("id") == u["id"] or given.get("name") == u["name"]), None
        )
        if user is None or str(given.get("password")) != str(user.get("password")):
            raise keystone_fail(401, UNAUTHORIZED)
        return user

    def _scope(self, req: Request, user: dict[str, Any]) -> Project:
        scope = (json.loads(req.body)["auth"].get("scope") or {}).get("project") or {}
        if not scope:
            return self.w.projects[user["project_id"]]
        project = self.w.projects.get(str(scope.get("id"))) or self.w.project_named(str(scope.get("name")))
        if project is None or project.id != user["project_id"]:
            raise keystone_fail(401, UNAUTHORIZED)
        return project

    def _auth(
        self, req: Request, user_id: str, name: str, project: Project, methods: list[str], app: dict[str, Any] | None
    ) -> Auth:
        token = "gAAAAAB" + base64.urlsafe_b64encode(os.urandom(132)).decode().rstrip("=")
        return Auth(token, user_id, name, project, methods, req.now, req.now + TOKEN_LIFE, app)

    def token_body(self, req: Request, auth: Auth) -> dict[str, Any]:
        domain = {"id": "default", "name": "Default"}
        body: dict[str, Any] = {
            "methods": auth.methods,
            "user": {"domain": domain, "id": auth.user_id, "name": auth.user_name, "password_expires_at": None},
            "audit_ids": [base64.urlsafe_b64encode(hashlib.sha256(auth.token.encode()).digest()[:16]).decode()[:22]],
            "expires_at": stamp_keystone(auth.expires),
            "issued_at": stamp_keystone(auth.issued),
            "project": {"domain": domain, "id": auth.project.id, "name": auth.project.name},
            "is_domain": False,
            "roles": [{"id": ident("role", r), "name": r} for r in ("member", "reader")],
            "catalog": self.catalog(),
        }  # fmt: skip
        if auth.app_cred:
            body["application_credential"] = auth.app_cred
        return body

    def catalog(self) -> list[dict[str, Any]]:
        base = self.w.base_url
        services = [("compute", "nova", f"{base}/compute/v2.1"), ("network", "neutron", f"{base}/network"),
                    ("identity", "keystone", f"{base}/v3/"), ("image", "glance", f"{base}/image")]  # fmt: skip
        return [
            {
                "endpoints": [
                    {"id": ident("endpoint", kind, i), "interface": i, "region_id": self.w.region, "url": url,
                     "region": self.w.region}
                    for i in ("public", "internal", "admin")
                ],
                "id": ident("service", kind), "type": kind, "name": name,
            }
            for kind, name, url in services
        ]  # fmt: skip


# ----------------------------------------------------------------------------- Nova


class Nova:
    PREFIX = "/compute/v2.1"

    def __init__(self, world: World) -> None:
        self.w = world

    def routes(self) -> list[Route]:
        p = self.PREFIX
        return [
            route("GET", "/compute", self.root, "GET /compute"),
            route("GET", p, self.version_doc, "GET /compute/v2.1"),
            *[
                route(method, p + path, handler, f"{method} {path}")
                for method, path, handler in (
                    ("GET", "/servers/detail", self.list_detail),
                    ("GET", "/servers", self.list_summary),
                    ("POST", "/servers", self.create),
                    ("GET", "/servers/{id}", self.show),
                    ("DELETE", "/servers/{id}", self.delete),
                    ("POST", "/servers/{id}/action", self.action),
                    ("GET", "/flavors/detail", self.flavors_detail),
                    ("GET", "/flavors", self.flavors_summary),
                    ("GET", "/flavors/{id}", self.flavor),
                    ("GET", "/limits", self.limits),
                    ("GET", "/os-keypairs", self.keypairs),
                    ("GET", "/os-keypairs/{name}", self.keypair),
                    ("GET", "/os-simple-tenant-usage/{project}", self.usage),
                )
            ],
        ]

    # -- versions

    def _v21(self, req: Request) -> dict[str, Any]:
        return {
            "id": "v2.1", "status": "CURRENT", "version": version_text(self.w.max_version),
            "min_version": version_text(MIN_VERSION), "updated": "2013-07-23T11:33:21Z",
            "links": [{"rel": "self", "href": f"{req.base}/compute/v2.1/"}],
        }  # fmt: skip

    def root(self, req: Request) -> Reply:
        v20 = {"id": "v2.0", "status": "SUPPORTED", "version": "", "min_version": "", "updated": "2011-01-21T11:33:21Z",
               "links": [{"rel": "self", "href": f"{req.base}/compute/v2/"}]}  # fmt: skip
        return reply(200, {"versions": [v20, self._v21(req)]})

    def version_doc(self, req: Request) -> Reply:
        doc = self._v21(req)
        doc["links"].append({"rel": "describedby", "type": "text/html", "href": "http://docs.openstack.org/"})
        doc["media-types"] = [
            {"base": "application/json", "type": "application/vnd.openstack.compute+json;version=2.1"}
        ]
        return reply(200, {"version": doc})

    def negotiate(self, headers: Message) -> Version:
        """The request's microversion (OpenStack-API-Version, else the legacy header), checked as Nova does."""
        asked = None
        for part in (headers.get("OpenStack-API-Version") or "").split(","):
            service, _, value = part.strip().partition(" ")
            if service.lower() == "compute":
                asked = value.strip()
        if asked is None:
            asked = headers.get("X-OpenStack-Nova-API-Version")
        if asked is None:
            return MIN_VERSION
        if asked.strip().lower() == "latest":
            return self.w.max_version
        version = parse_version(asked)
        if version is None:
            raise nova_fail(
                400, f"API Version String {asked} is of invalid format. Must be of format MajorNum.MinorNum."
            )
        if not MIN_VERSION <= version <= self.w.max_version:
            low, top = version_text(MIN_VERSION), version_text(self.w.max_version)
            raise nova_fail(406, f"Version {version_text(version)} is not supported by the API. "
                                 f"Minimum is {low} and maximum is {top}.")  # fmt: skip
        return version

    # -- links and views

    def _links(self, req: Request, collection: str, item: str) -> list[dict[str, str]]:
        return [
            {"rel": "self", "href": f"{req.base}{self.PREFIX}/{collection}/{item}"},
            {"rel": "bookmark", "href": f"{req.base}/compute/{collection}/{item}"},
        ]

    def _next(self, req: Request, collection: str, page: list[Any], limit: int, last_id: str) -> list[dict[str, str]]:
        if not page or len(page) != limit:
            return []
        params = dict(sorted(req.query))
        params["marker"] = last_id
        return [{"rel": "next", "href": f"{req.base}{self.PREFIX}/{collection}?{urlencode(params)}"}]

    def _flavor_view(self, req: Request, f: Flavor) -> dict[str, Any]:
        if not req.at_least(2, 47):
            return {"id": f.id, "links": [{"rel": "bookmark", "href": f"{req.base}/compute/flavors/{f.id}"}]}
        return {"vcpus": f.vcpus, "ram": f.ram, "disk": f.disk, "ephemeral": f.ephemeral, "swap": f.swap,
                "original_name": f.name, "extra_specs": dict(f.extra_specs)}  # fmt: skip

    def _image_view(self, req: Request, s: Server) -> dict[str, Any]:
        image: dict[str, Any] = {
            "id": s.image_id,
            "links": [{"rel": "bookmark", "href": f"{req.base}/compute/images/{s.image_id}"}],
        }
        if req.at_least(2, 98):
            image["properties"] = {}
        return image

    def server_view(self, req: Request, s: Server, show: bool) -> dict[str, Any]:
        status = s.status
        view: dict[str, Any] = {
            "id": s.id, "name": s.name, "status": status, "tenant_id": s.project_id, "user_id": s.user_id,
            "metadata": s.metadata, "hostId": s.host_id, "image": self._image_view(req, s),
            "flavor": self._flavor_view(req, s.flavor), "created": stamp_z(s.created), "updated": stamp_z(s.updated),
            "addresses": s.addresses, "accessIPv4": "", "accessIPv6": "", "links": self._links(req, "servers", s.id),
            "OS-DCF:diskConfig": "MANUAL",
        }  # fmt: skip
        if s.fault and status in ("ERROR", "DELETED"):
            view["fault"] = s.fault
        if status in PROGRESS_STATUSES:
            view["progress"] = 0
        view["OS-EXT-AZ:availability_zone"] = "nova" if s.host else ""
        view["config_drive"] = ""
        view["key_name"] = s.key_name
        view["OS-SRV-USG:launched_at"] = stamp_naive(s.launched_at) if s.launched_at is not None else None
        view["OS-SRV-USG:terminated_at"] = stamp_naive(s.terminated_at) if s.terminated_at is not None else None
        if show and s.addresses:
            view["security_groups"] = [{"name": g} for g in s.security_groups]
        view["OS-EXT-STS:task_state"] = s.task_state
        view["OS-EXT-STS:vm_state"] = s.vm_state
        view["OS-EXT-STS:power_state"] = s.power_state
        view["os-extended-volumes:volumes_attached"] = []
        self._versioned_fields(req, s, view, show)
        if not show and s.addresses:
            view["security_groups"] = [{"name": g} for g in s.security_groups]
        return view

    def _versioned_fields(self, req: Request, s: Server, view: dict[str, Any], show: bool) -> None:
        v = req.version
        if v >= (2, 9):
            view["locked"] = False
        if v >= (2, 73):
            view["locked_reason"] = None
        if v >= (2, 19):
            view["description"] = s.description
        if v >= (2, 26):
            view["tags"] = s.tags
        if v >= (2, 63):
            view["trusted_image_certificates"] = None
        if v >= (2, 90):
            view["OS-EXT-SRV-ATTR:hostname"] = s.hostname
        if v >= (2, 96):
            view["pinned_availability_zone"] = s.pinned_az
        if v >= (2, 100):
            view["scheduler_hints"] = {}
        if show and v >= (2, 71):
            view["server_groups"] = []

    # -- servers

    def _server(self, req: Request, server_id: str) -> Server:
        assert req.auth is not None
        s = self.w.live.get(server_id)
        if s is None or s.project_id != req.auth.project.id:
            raise nova_fail(404, f"Instance {server_id} could not be found.")
        s.settle(req.now)
        return s

    def _page_params(self, req: Request) -> tuple[int, str | None]:
        limit = MAX_LIMIT
        text = req.arg("limit")
        if text is not None:
            if not text.isdigit():
                raise nova_fail(400, f"Invalid input for query parameters limit. Value: {text}. "
                                     f"'{text}' does not match '^[0-9]*$'")  # fmt: skip
            limit = min(MAX_LIMIT, int(text))
        return limit, req.arg("marker")

    def _matcher(self, req: Request) -> Callable[[Server], bool]:
        """The non-admin filters of GET /servers[/detail] as one predicate (unknown ones are ignored, as Nova does)."""
        tests: list[Callable[[Server], bool]] = []
        if (name := req.arg("name")) is not None:
            try:
                rx = re.compile(name)
                tests.append(lambda s: rx.search(s.name) is not None)
            except re.error:
                tests.append(lambda s: name in s.name)
        statuses = [x.upper() for x in req.args("status")]
        if statuses:
            if "DELETED" in statuses:
                raise nova_fail(403, "Only administrators may list deleted instances")
            if not set(statuses) & STATUSES and req.at_least(2, 38):
                raise nova_fail(400, "Invalid status value")
            tests.append(lambda s: s.status in statuses)
        if req.at_least(2, 26):
            tests.extend(self._tag_tests(req))
        for key, attr in (("image", "image_id"), ("reservation_id", "reservation_id")):
            if (value := req.arg(key)) is not None:
                want = value.rstrip("/").rsplit("/", 1)[-1]
                tests.append(lambda s, a=attr, w=want: getattr(s, a) == w)  # type: ignore[misc]
        if (flavor := req.arg("flavor")) is not None:
            tests.append(lambda s: s.flavor.id == flavor)
        if (ip := req.arg("ip")) is not None:
            try:
                ip_rx = re.compile(ip)
            except re.error:
                ip_rx = re.compile(re.escape(ip))
            tests.append(lambda s: any(ip_rx.search(a) for _, a in s.leases))
        return lambda s: all(t(s) for t in tests)

    def _tag_tests(self, req: Request) -> Iterator[Callable[[Server], bool]]:
        for key in ("tags", "tags-any", "not-tags", "not-tags-any"):
            value = req.arg(key)
            if value is None:
                continue
            wanted = set(value.split(","))
            if key == "tags":
                yield lambda s, w=wanted: w.issubset(s.tags)  # type: ignore[misc]
            elif key == "tags-any":
                yield lambda s, w=wanted: not w.isdisjoint(s.tags)  # type: ignore[misc]
            elif key == "not-tags":
                yield lambda s, w=wanted: not w.issubset(s.tags)  # type: ignore[misc]
            else:
                yield lambda s, w=wanted: w.isdisjoint(s.tags)  # type: ignore[misc]

    def _window(self, req: Request) -> tuple[float | None, float | None]:
        since = before = None
        for key in ("changes-since", "changes-before"):
            text = req.arg(key)
            if text is None:
                continue
            moment = parse_time(text)
            if moment is None:
                raise nova_fail(400, f"Invalid filter field: {key}.")
            if key == "changes-since":
                since = moment
            else:
                before = moment
        if since is not None and before is not None and before < since:
            raise nova_fail(400, "The value of changes-since must be less than or equal to changes-before.")
        return since, before

    def _select(self, req: Request) -> tuple[list[Server], int]:
        """One page of the project's servers, newest first, after the marker."""
        assert req.auth is not None
        everyone = req.arg("all_tenants")
        if everyone is not None and everyone.lower() not in ("0", "f", "false", "n", "no", "off"):
            raise nova_fail(403, "Policy doesn't allow os_compute_api:servers:detail:get_all_tenants to be performed.")
        limit, marker = self._page_params(req)
        since, before = self._window(req)
        with_deleted = since is not None or before is not None
        match = self._matcher(req)
        project = req.auth.project.id
        start = len(self.w.order) - 1
        if marker is not None:
            found = self.w.servers.get(marker)
            if found is None or found.project_id != project:
                raise nova_fail(400, f"marker [{marker}] not found")
            start = found.seq - 1
        page: list[Server] = []
        order, now = self.w.order, req.now
        for i in range(start, -1, -1):
            if len(page) >= limit:
                break
            s = order[i]
            if s.project_id != project or (s.deleted and not with_deleted):
                continue
            s.settle(now)
            if since is not None and s.updated < since:
                continue
            if before is not None and s.updated > before:
                continue
            if match(s):
                page.append(s)
        return page, limit

    def list_detail(self, req: Request) -> Reply:
        page, limit = self._select(req)
        body: dict[str, Any] = {"servers": [self.server_view(req, s, show=False) for s in page]}
        if links := self._next(req, "servers/detail", page, limit, page[-1].id if page else ""):
            body["servers_links"] = links
        return reply(200, body)

    def list_summary(self, req: Request) -> Reply:
        page, limit = self._select(req)
        body: dict[str, Any] = {
            "servers": [{"id": s.id, "name": s.name, "links": self._links(req, "servers", s.id)} for s in page]
        }
        if links := self._next(req, "servers", page, limit, page[-1].id if page else ""):
            body["servers_links"] = links
        return reply(200, body)

    def show(self, req: Request, server_id: str) -> Reply:
        return reply(200, {"server": self.server_view(req, self._server(req, server_id), show=True)})

    def delete(self, req: Request, server_id: str) -> Reply:
        s = self._server(req, server_id)
        self.w.remove(s, req.now)
        return reply(204)

    def action(self, req: Request, server_id: str) -> Reply:
        s = self._server(req, server_id)
        body = req.json()
        if not isinstance(body, dict) or len(body) != 1:
            raise nova_fail(400, "Malformed request body")
        name = next(iter(body))
        if name == "os-stop":
            self._require(s, ("active", "error"), "stop")
            s.vm_state, s.power_state, s.task_state, s.updated = "stopped", 4, None, req.now
        elif name == "os-start":
            self._require(s, ("stopped",), "start")
            s.vm_state, s.power_state, s.task_state, s.updated = "active", 1, None, req.now
        elif name == "reboot":
            self._require(s, ("active", "stopped", "error"), "reboot")
            s.vm_state, s.power_state, s.task_state, s.updated = "active", 1, None, req.now
        elif name == "os-getConsoleOutput":
            return reply(200, {"output": self._console(s, body[name])})
        else:
            raise nova_fail(400, f"There is no such action: {name}")
        return reply(202)

    @staticmethod
    def _console(s: Server, asked: Any) -> str:
        """A made-up serial console: the boot so far, then what /sim/console appended (the guest's own lines),
        then the kernel's last line if it is powered off; `length` keeps the last lines, as Nova's does."""
        lines = [f"[    0.000000] Linux version 5.14.0-427.el9.x86_64 ({s.hostname})", "[    1.021337] Run /init"]
        if s.launched_at is not None:
            lines += ["Cloud-init finished", f"{s.hostname} login: "]
        lines += s.console
        if s.vm_state == "stopped":
            lines += ["reboot: Power down"]
        length = (asked or {}).get("length") if isinstance(asked, dict) else None
        if length is not None and str(length).isdigit():  # -1 (or none): all of it
            lines = lines[-int(length) :] if int(length) else []
        return "\n".join(lines) + ("\n" if lines else "")

    @staticmethod
    def _require(s: Server, states: tuple[str, ...], action: str) -> None:
        """Nova's check_instance_state: the vm_state first, then no task under way."""
        if s.vm_state not in states:
            raise nova_fail(409, f"Cannot '{action}' instance {s.id} while it is in vm_state {s.vm_state}")
        if s.task_state is not None:
            raise nova_fail(409, f"Cannot '{action}' instance {s.id} while it is in task_state {s.task_state}")

    # -- create

    def create(self, req: Request) -> Reply:
        assert req.auth is not None
        body = req.json()
        server = body.get("server") if isinstance(body, dict) else None
        if not isinstance(server, dict):
            raise schema_fail("server", server, "'server' is a required property")
        self._check_keys(req, server)
        name = server.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 255 or name != name.strip():
            raise schema_fail("name", name, "Invalid server name")
        min_count, max_count = self._counts(server)
        tags = self._tags(req, server)
        metadata = self._metadata(server)
        self._user_data(server)
        flavor = self._find_flavor(server)
        image = self._find_image(req, server)
        networks = self._networks(req, server)
        key_name = server.get("key_name")
        if key_name is not None and not any(k["name"] == key_name for k in self.w.keypairs):
            raise nova_fail(400, "Invalid key_name provided.")
        groups = sorted({g["name"] for g in server.get("security_groups") or [] if g.get("name")}) or ["default"]
        count = self.quota_check(req.auth.project.id, flavor, min_count, max_count)
        made = self.w.make(req, name, count, flavor, image["id"], networks, tags, metadata, key_name, groups, server)
        if server.get("return_reservation_id"):
            return reply(202, {"reservation_id": made[0].reservation_id})
        first = made[0]
        out = {
            "id": first.id,
            "links": self._links(req, "servers", first.id),
            "OS-DCF:diskConfig": "MANUAL",
            "security_groups": server.get("security_groups") or [{"name": "default"}],
            "adminPass": server.get("adminPass") or self.w.random_text(12),
        }
        return reply(202, {"server": out}, [("Location", f"{req.base}{self.PREFIX}/servers/{first.id}")])

    def _check_keys(self, req: Request, server: dict[str, Any]) -> None:
        extra = sorted(k for k in server if k not in CREATE_KEYS or req.version < CREATE_KEYS[k])
        if req.at_least(2, 57) and "personality" in server:
            extra = sorted({*extra, "personality"})
        if extra:
            listed = ", ".join(repr(k) for k in extra)
            raise schema_fail("server", server, f"Additional properties are not allowed ({listed} "
                                                f"{'was' if len(extra) == 1 else 'were'} unexpected)")  # fmt: skip
        for key in ("name", "flavorRef"):
            if key not in server:
                raise schema_fail("server", server, f"'{key}' is a required property")
        if req.at_least(2, 37) and "networks" not in server:
            raise schema_fail("server", server, "'networks' is a required property")

    @staticmethod
    def _counts(server: dict[str, Any]) -> tuple[int, int]:
        values = {}
        for key in ("min_count", "max_count"):
            raw = server.get(key)
            if raw is None:
                continue
            text = str(raw)
            if isinstance(raw, bool) or not re.fullmatch(r"[0-9]+", text):
                raise schema_fail(key, raw, f"{raw!r} is not of type 'integer', 'string'")
            if int(text) < 1:
                raise schema_fail(key, raw, f"{raw} is less than the minimum of 1")
            values[key] = int(text)
        low = values.get("min_count", 1)
        high = values.get("max_count", low)
        if low > high:
            raise nova_fail(400, "min_count must be <= max_count")
        return low, high

    @staticmethod
    def _tags(req: Request, server: dict[str, Any]) -> list[str]:
        tags = server.get("tags")
        if tags is None:
            return []
        if not isinstance(tags, list) or len(tags) > 50:
            raise schema_fail("tags", tags, "is not a valid list of at most 50 tags")
        for tag in tags:
            if not isinstance(tag, str) or not TAG.match(tag):
                raise schema_fail("tags/0", tag, f"{tag!r} does not match '^[^,/]*$' or is longer than 60")
        return list(dict.fromkeys(tags))

    @staticmethod
    def _metadata(server: dict[str, Any]) -> dict[str, str]:
        metadata = server.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise schema_fail("metadata", metadata, f"{metadata!r} is not of type 'object'")
        for key, value in metadata.items():
            if not 1 <= len(key) <= 255 or not isinstance(value, str) or len(value) > 255:
                raise schema_fail("metadata", metadata, f"'{key}' does not match any of the regexes")
        if len(metadata) > 128:
            raise nova_fail(403, "Quota exceeded for metadata_items: Requested "
                                 f"{len(metadata)}, but already used 0 of 128 metadata_items")  # fmt: skip
        return dict(metadata)

    @staticmethod
    def _user_data(server: dict[str, Any]) -> None:
        data = server.get("user_data")
        if data is None:
            return
        if not isinstance(data, str) or len(data) > 65535:
            raise schema_fail("user_data", data, "is too long or not a string")
        try:
            base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise schema_fail("user_data", data[:40], f"{data[:40]!r} is not a 'base64'") from None

    def _find_flavor(self, server: dict[str, Any]) -> Flavor:
        ref = str(server["flavorRef"]).rstrip("/").rsplit("/", 1)[-1]
        flavor = next((f for f in self.w.flavors if f.id == ref), None)
        if flavor is None:
            raise nova_fail(400, f"Flavor {ref} could not be found.")
        return flavor

    def _find_image(self, req: Request, server: dict[str, Any]) -> dict[str, Any]:
        assert req.auth is not None
        ref = str(server.get("imageRef") or "").rstrip("/").rsplit("/", 1)[-1]
        if not ref:
            raise nova_fail(400, "Block Device Mapping is Invalid: Boot sequence for the instance and image/block "
                                 "device mapping combination is not valid.")  # fmt: skip
        image = next((i for i in self.w.visible_images(req.auth.project.id) if i["id"] == ref), None)
        if image is None:
            raise nova_fail(400, "Can not find requested image")
        if image.get("status") != "active":
            raise nova_fail(400, f"Image {ref} is not active.")
        return image

    def _networks(self, req: Request, server: dict[str, Any]) -> list[Network]:
        assert req.auth is not None
        visible = self.w.visible_networks(req.auth.project.id)
        asked = server.get("networks")
        if asked is None or asked == "auto":
            if not visible:
                raise nova_fail(400, f"Unable to automatically allocate a network for project {req.auth.project.id}")
            return visible[:1]
        if asked == "none":
            return []
        if not isinstance(asked, list) or (isinstance(asked, str) and not req.at_least(2, 37)):
            raise schema_fail("networks", asked, f"{asked!r} is not valid under any of the given schemas")
        chosen = []
        for item in asked:
            if not isinstance(item, dict):
                raise schema_fail("networks", asked, f"{item!r} is not of type 'object'")
            if item.get("port"):
                raise nova_fail(400, f"Port id {item['port']} could not be found.")
            net_id = str(item.get("uuid", ""))
            if not UUID.match(net_id):
                raise nova_fail(400, f"Bad networks format: network uuid is not in proper format ({net_id})")
            net = next((n for n in visible if n.id == net_id), None)
            if net is None:
                raise nova_fail(400, f"Network {net_id} could not be found.")
            chosen.append(net)
        return chosen

    def quota_check(self, project_id: str, flavor: Flavor, min_count: int, max_count: int) -> int:
        """How many of min_count..max_count the project's quota allows: nova.compute.utils's arithmetic."""
        quotas = self.w.quotas[project_id]
        usages = self.w.used(project_id)
        deltas = {"instances": max_count, "cores": max_count * flavor.vcpus, "ram": max_count * flavor.ram}
        overs = sorted(k for k in deltas if quotas[k] >= 0 and quotas[k] < usages[k] + deltas[k])
        if not overs:
            return max_count
        headroom: dict[str, float] = {k: quotas[k] - usages[k] for k in deltas}
        for res in ("cores", "ram"):
            if quotas[res] == -1:
                headroom[res] = (
                    headroom["instances"] * deltas[res] / deltas["instances"] if deltas[res] else headroom["instances"]
                )
        allowed = headroom["instances"]
        if flavor.vcpus:
            allowed = min(allowed, headroom["cores"] // flavor.vcpus)
        if flavor.ram:
            allowed = min(allowed, headroom["ram"] // flavor.ram)
        if min_count <= allowed <= max_count and allowed > 0:
            return self.quota_check(project_id, flavor, min_count, int(allowed))
        asked = str(min_count) if min_count == max_count else f"{min_count}-{max_count}"
        requested = {"instances": asked, "cores": deltas["cores"], "ram": deltas["ram"]}
        names = ", ".join(overs)
        reqs = ", ".join(str(requested[r]) for r in overs)
        used = ", ".join(str(int(quotas[r] - headroom[r])) for r in overs)
        limits = ", ".join(str(quotas[r]) for r in overs)
        message = f"Quota exceeded for {names}: Requested {reqs}, but already used {used} of {limits} {names}"
        raise nova_fail(403, message)

    # -- flavors, limits, key pairs, usage

    def _flavor_detail(self, req: Request, f: Flavor) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": f.id, "name": f.name, "ram": f.ram, "disk": f.disk,
            "swap": f.swap if req.at_least(2, 75) else (f.swap or ""), "OS-FLV-EXT-DATA:ephemeral": f.ephemeral,
            "OS-FLV-DISABLED:disabled": False, "vcpus": f.vcpus, "os-flavor-access:is_public": f.is_public,
            "rxtx_factor": 1.0, "links": self._links(req, "flavors", f.id),
        }  # fmt: skip
        if req.at_least(2, 55):
            view["description"] = f.description
        if req.at_least(2, 61):
            view["extra_specs"] = dict(f.extra_specs)
        return view

    def _flavor_page(self, req: Request) -> tuple[list[Flavor], int]:
        public = (req.arg("is_public") or "true").lower()
        flavors = sorted(self.w.flavors, key=lambda f: f.id)
        if public in ("true", "t", "1", "yes", "y", "on"):
            flavors = [f for f in flavors if f.is_public]
        elif public not in ("none",):
            flavors = [f for f in flavors if not f.is_public]
        if (min_ram := req.arg("minRam")) and min_ram.isdigit():
            flavors = [f for f in flavors if f.ram >= int(min_ram)]
        if (min_disk := req.arg("minDisk")) and min_disk.isdigit():
            flavors = [f for f in flavors if f.disk >= int(min_disk)]
        limit, marker = self._page_params(req)
        if marker is not None:
            at = next((i for i, f in enumerate(flavors) if f.id == marker), None)
            if at is None:
                raise nova_fail(400, f"marker [{marker}] not found")
            flavors = flavors[at + 1 :]
        return flavors[:limit], limit

    def flavors_detail(self, req: Request) -> Reply:
        page, limit = self._flavor_page(req)
        body: dict[str, Any] = {"flavors": [self._flavor_detail(req, f) for f in page]}
        if links := self._next(req, "flavors/detail", page, limit, page[-1].id if page else ""):
            body["flavors_links"] = links
        return reply(200, body)

    def flavors_summary(self, req: Request) -> Reply:
        page, limit = self._flavor_page(req)
        rows = []
        for f in page:
            row: dict[str, Any] = {"id": f.id, "name": f.name, "links": self._links(req, "flavors", f.id)}
            if req.at_least(2, 55):
                row["description"] = f.description
            rows.append(row)
        body: dict[str, Any] = {"flavors": rows}
        if links := self._next(req, "flavors", page, limit, page[-1].id if page else ""):
            body["flavors_links"] = links
        return reply(200, body)

    def flavor(self, req: Request, flavor_id: str) -> Reply:
        found = next((f for f in self.w.flavors if f.id == flavor_id), None)
        if found is None:
            raise nova_fail(404, f"Flavor {flavor_id} could not be found.")
        return reply(200, {"flavor": self._flavor_detail(req, found)})

    def limits(self, req: Request) -> Reply:
        assert req.auth is not None
        q = self.w.quotas[req.auth.project.id]
        used = self.w.used(req.auth.project.id)
        absolute: dict[str, int] = {
            "maxTotalInstances": q["instances"], "maxTotalCores": q["cores"], "maxTotalRAMSize": q["ram"],
            "maxServerMeta": 128, "maxImageMeta": 128, "maxPersonality": 5, "maxPersonalitySize": 10240,
            "maxTotalKeypairs": 100, "maxServerGroups": 10, "maxServerGroupMembers": 10, "maxTotalFloatingIps": -1,
            "maxSecurityGroups": -1, "maxSecurityGroupRules": -1, "totalRAMUsed": used["ram"],
            "totalCoresUsed": used["cores"], "totalInstancesUsed": used["instances"], "totalFloatingIpsUsed": 0,
            "totalSecurityGroupsUsed": 0, "totalServerGroupsUsed": 0,
        }  # fmt: skip
        dropped: list[str] = []
        if req.at_least(2, 36):
            dropped += ["maxTotalFloatingIps", "maxSecurityGroups", "maxSecurityGroupRules"]
            dropped += ["totalFloatingIpsUsed", "totalSecurityGroupsUsed"]
        if req.at_least(2, 39):
            dropped.append("maxImageMeta")
        if req.at_least(2, 57):
            dropped += ["maxPersonality", "maxPersonalitySize"]
        for key in dropped:
            absolute.pop(key, None)
        return reply(200, {"limits": {"rate": [], "absolute": absolute}})

    def _keypair_view(self, req: Request, k: dict[str, Any]) -> dict[str, Any]:
        view = {"name": k["name"], "public_key": k["public_key"], "fingerprint": k["fingerprint"]}
        if req.at_least(2, 2):
            view["type"] = k["type"]
        return view

    def keypairs(self, req: Request) -> Reply:
        rows = sorted(self.w.keypairs, key=lambda k: k["name"])
        limit, marker = MAX_LIMIT, None
        if req.at_least(2, 35):
            limit, marker = self._page_params(req)
        if marker is not None:
            at = next((i for i, k in enumerate(rows) if k["name"] == marker), None)
            if at is None:
                raise nova_fail(404, f"Marker {marker} could not be found.")
            rows = rows[at + 1 :]
        page = rows[:limit]
        body: dict[str, Any] = {"keypairs": [{"keypair": self._keypair_view(req, k)} for k in page]}
        last = page[-1]["name"] if page else ""
        if req.at_least(2, 35) and (links := self._next(req, "os-keypairs", page, limit, last)):
            body["keypairs_links"] = links
        return reply(200, body)

    def keypair(self, req: Request, name: str) -> Reply:
        assert req.auth is not None
        found = next((k for k in self.w.keypairs if k["name"] == name), None)
        if found is None:
            raise nova_fail(404, f"Keypair {name} not found for user {req.auth.user_id}")
        view = {**self._keypair_view(req, found), "user_id": req.auth.user_id, "deleted": False,
                "created_at": stamp_naive(self.w.start), "deleted_at": None, "updated_at": None, "id": 1}  # fmt: skip
        return reply(200, {"keypair": view})

    def usage(self, req: Request, project_id: str) -> Reply:
        """os-simple-tenant-usage for one project: servers launched before `end` and not ended before `start`."""
        assert req.auth is not None
        if project_id != req.auth.project.id:
            raise nova_fail(403, "Policy doesn't allow os_compute_api:os-simple-tenant-usage:show to be performed.")
        start = parse_time(req.arg("start") or "") or req.now - 86400
        end = min(parse_time(req.arg("end") or "") or req.now, req.now)
        limit, marker = self._page_params(req) if req.at_least(2, 40) else (MAX_LIMIT * 1000, None)
        rows = []
        for s in sorted(self.w.servers.values(), key=lambda x: x.id):
            s.settle(req.now)
            if s.project_id != project_id or s.launched_at is None or s.launched_at >= end:
                continue
            if s.terminated_at is not None and s.terminated_at <= start:
                continue
            if marker is not None and s.id <= marker:
                continue
            rows.append(self._usage_row(s, start, end, req.now))
            if len(rows) >= limit:
                break
        body: dict[str, Any] = {"tenant_usage": self._usage_totals(project_id, rows, start, end) if rows else {}}
        if req.at_least(2, 40) and (links := self._next(req, f"os-simple-tenant-usage/{project_id}", rows, limit,
                                                          rows[-1]["instance_id"] if rows else "")):  # fmt: skip
            body["tenant_usage_links"] = links
        return reply(200, body)

    @staticmethod
    def _usage_row(s: Server, start: float, end: float, now: float) -> dict[str, Any]:
        assert s.launched_at is not None
        began = max(s.launched_at, start)
        ended = min(s.terminated_at if s.terminated_at is not None else end, end)
        hours = max(0.0, ended - began) / 3600
        state = "terminated" if s.terminated_at is not None else s.vm_state
        uptime = (s.terminated_at if s.terminated_at is not None else now) - s.launched_at
        return {
            "hours": hours, "flavor": s.flavor.name, "instance_id": s.id, "name": s.name, "tenant_id": s.project_id,
            "memory_mb": s.flavor.ram, "local_gb": s.flavor.disk, "vcpus": s.flavor.vcpus,
            "started_at": stamp_naive(s.launched_at),
            "ended_at": stamp_naive(s.terminated_at) if s.terminated_at is not None else None,
            "state": state, "uptime": int(uptime),
        }  # fmt: skip

    @staticmethod
    def _usage_totals(project_id: str, rows: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
        return {
            "tenant_id": project_id, "server_usages": rows,
            "total_local_gb_usage": sum(r["local_gb"] * r["hours"] for r in rows),
            "total_vcpus_usage": sum(r["vcpus"] * r["hours"] for r in rows),
            "total_memory_mb_usage": sum(r["memory_mb"] * r["hours"] for r in rows),
            "total_hours": sum(r["hours"] for r in rows),
            "start": stamp_naive(start), "stop": stamp_naive(end),
        }  # fmt: skip


# ----------------------------------------------------------------------------- Glance, Neutron


class Glance:
    def __init__(self, world: World) -> None:
        self.w = world

    def routes(self) -> list[Route]:
        return [
            route("GET", "/image", self.versions, "GET /image"),
            route("GET", "/image/v2/images", self.images, "GET /v2/images"),
            route("GET", "/image/v2/images/{id}", self.image, "GET /v2/images/{id}"),
        ]

    def versions(self, req: Request) -> Reply:
        values = [
            {"id": f"v2.{n}", "status": "CURRENT" if n == 16 else "SUPPORTED",
             "links": [{"rel": "self", "href": f"{req.base}/image/v2/"}]}
            for n in range(16, -1, -1)
        ]  # fmt: skip
        return reply(300, {"versions": values})

    def images(self, req: Request) -> Reply:
        assert req.auth is not None
        text = req.arg("limit")
        if text is not None and not text.isdigit():
            raise webob_fail(400, "limit param must be an integer")
        limit = min(GLANCE_MAX, int(text)) if text is not None else GLANCE_LIMIT
        rows = self.w.visible_images(req.auth.project.id)
        for key in ("name", "status", "owner", "visibility", "os_hidden"):
            if (value := req.arg(key)) is not None:
                rows = [i for i in rows if str(i.get(key)).lower() == value.lower()]
        rows = sorted(rows, key=lambda i: (i["created_at"], i["id"]), reverse=True)
        if (marker := req.arg("marker")) is not None:
            at = next((n for n, i in enumerate(rows) if i["id"] == marker), None)
            if at is None:
                raise webob_fail(400, f"marker [{marker}] not found")
            rows = rows[at + 1 :]
        page = rows[:limit]
        others = [(k, v) for k, v in req.query if k != "marker"]
        body: dict[str, Any] = {"images": page, "first": "/v2/images" + (f"?{urlencode(others)}" if others else "")}
        body["schema"] = "/v2/schemas/images"
        if page and len(page) == limit:
            body["next"] = "/v2/images?" + urlencode([*others, ("marker", page[-1]["id"])])
        return reply(200, body)

    def image(self, req: Request, image_id: str) -> Reply:
        assert req.auth is not None
        found = next((i for i in self.w.visible_images(req.auth.project.id) if i["id"] == image_id), None)
        if found is None:
            raise webob_fail(404, f"No image found with ID {image_id}")
        return reply(200, found)


class Neutron:
    def __init__(self, world: World) -> None:
        self.w = world

    def routes(self) -> list[Route]:
        return [
            route("GET", "/network", self.versions, "GET /network"),
            route("GET", "/network/v2.0/networks", self.networks, "GET /v2.0/networks"),
            route("GET", "/network/v2.0/networks/{id}", self.network, "GET /v2.0/networks/{id}"),
        ]

    def versions(self, req: Request) -> Reply:
        link = {"href": f"{req.base}/network/v2.0/", "rel": "self"}
        return reply(200, {"versions": [{"status": "CURRENT", "id": "v2.0", "links": [link]}]})

    def _view(self, n: Network) -> dict[str, Any]:
        return {
            "id": n.id, "name": n.name, "tenant_id": n.project_id, "admin_state_up": True, "mtu": 1450,
            "status": "ACTIVE", "subnets": [n.subnet_id], "shared": n.shared, "availability_zone_hints": [],
            "availability_zones": ["nova"], "ipv4_address_scope": None, "ipv6_address_scope": None,
            "router:external": False, "description": "", "port_security_enabled": True, "qos_policy_id": None,
            "l2_adjacency": True, "tags": [], "created_at": stamp_z(n.created), "updated_at": stamp_z(n.created),
            "revision_number": 2, "project_id": n.project_id,
        }  # fmt: skip

    def networks(self, req: Request) -> Reply:
        assert req.auth is not None
        rows = [self._view(n) for n in self.w.visible_networks(req.auth.project.id)]
        for key in ("id", "name", "shared", "status", "project_id", "tenant_id"):
            wanted = req.args(key)
            if wanted:
                rows = [r for r in rows if str(r[key]).lower() in {w.lower() for w in wanted}]
        fields = req.args("fields")
        if fields:
            rows = [{k: v for k, v in r.items() if k in fields} for r in rows]
        return reply(200, {"networks": rows})

    def network(self, req: Request, net_id: str) -> Reply:
        assert req.auth is not None
        found = next((n for n in self.w.visible_networks(req.auth.project.id) if n.id == net_id), None)
        if found is None:
            raise neutron_fail(404, "NetworkNotFound", f"Network {net_id} could not be found.")
        return reply(200, {"network": self._view(found)})


# ----------------------------------------------------------------------------- the simulation's controls


class Control:
    def __init__(self, world: World) -> None:
        self.w = world

    def routes(self) -> list[Route]:
        return [
            route("POST", "/sim/outage", self.outage),
            route("POST", "/sim/quota", self.quota),
            route("POST", "/sim/stop", self.stop),
            route("POST", "/sim/kill_all", self.kill_all),
            route("POST", "/sim/console", self.console),
            route("GET", "/sim/servers", self.servers),
            route("GET", "/sim/calls", self.calls),
            route("POST", "/sim/calls/reset", self.reset),
            route("GET", "/sim/unrouted", self.unrouted),
            route("GET", "/sim/now", self.now),
        ]

    @staticmethod
    def _body(req: Request) -> dict[str, Any]:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError:
            raise Fail(400, jbytes({"error": "the body is not JSON"})) from None
        if not isinstance(body, dict):
            raise Fail(400, jbytes({"error": "the body must be a JSON object"}))
        return body

    def outage(self, req: Request) -> Reply:
        self.w.down = bool(self._body(req).get("down", True))
        return reply(200, {"down": self.w.down})

    def quota(self, req: Request) -> Reply:
        body = self._body(req)
        if body.get("project"):
            project = self.w.project_named(str(body["project"]))
            if project is None:
                raise Fail(404, jbytes({"error": f"no project {body['project']}"}))
            targets = [project.id]
        else:
            targets = list(self.w.quotas)
        for project_id in targets:
            for key in ("instances", "cores", "ram"):
                if key in body:
                    self.w.quotas[project_id][key] = int(body[key])
        return reply(200, {self.w.projects[p].name: self.w.quotas[p] for p in targets})

    def stop(self, req: Request) -> Reply:
        ids = self._body(req).get("ids") or []
        stopped = 0
        for server_id in ids:
            s = self.w.live.get(str(server_id))
            if s is None:
                continue
            s.settle(req.now)
            if s.vm_state == "active":
                s.vm_state, s.power_state, s.task_state, s.updated = "stopped", 4, None, req.now
                stopped += 1
        return reply(200, {"stopped": stopped})

    def kill_all(self, req: Request) -> Reply:
        message = str(self._body(req).get("message") or self.w.kill_message)
        for s in self.w.live.values():
            s.settle(req.now)
            s.vm_state, s.task_state, s.power_state, s.updated = "error", None, 0, req.now
            s.fault = {"code": 500, "created": stamp_z(req.now), "message": message}
        return reply(200, {"killed": len(self.w.live)})

    def console(self, req: Request) -> Reply:
        body = self._body(req)
        s = self.w.live.get(str(body.get("server")))
        if s is None:
            raise Fail(404, jbytes({"error": f"no server {body.get('server')}"}))
        text = body.get("text")
        if not isinstance(text, str):
            raise Fail(400, jbytes({"error": "text must be a string"}))
        s.console += text.splitlines()
        return reply(200, {"server": s.id, "lines": len(s.console)})

    def servers(self, req: Request) -> Reply:
        rows = []
        for s in self.w.live.values():
            s.settle(req.now)
            rows.append({"id": s.id, "name": s.name, "status": s.status, "created": stamp_z(s.created), "tags": s.tags})
        return reply(200, rows)

    def calls(self, req: Request) -> Reply:
        return reply(200, dict(sorted(self.w.calls.items())))

    def reset(self, req: Request) -> Reply:
        self.w.calls.clear()
        return reply(200, {})

    def unrouted(self, req: Request) -> Reply:
        return reply(200, list(self.w.unrouted))

    def now(self, req: Request) -> Reply:
        return reply(200, {"now": req.now})


# ----------------------------------------------------------------------------- the peer


class OpenStackPeer:
    """Keystone, Nova, Glance and Neutron on one 127.0.0.1 port, from start() until stop()."""

    def __init__(self, config: dict[str, Any], clock_file: str | None = None, verbose: bool = False) -> None:
        self.world = World(config, Clock(clock_file))
        self.verbose = verbose
        self.nova = Nova(self.world)
        self.services: list[tuple[str, list[Route]]] = [
            ("sim", Control(self.world).routes()),
            ("compute", self.nova.routes()),
            ("image", Glance(self.world).routes()),
            ("network", Neutron(self.world).routes()),
            ("identity", Keystone(self.world).routes()),
        ]
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def auth_url(self) -> str:
        return f"{self.world.base_url}/v3"

    def start(self, port: int = 0) -> str:
        server = _HTTPServer(("127.0.0.1", port), _Handler)
        server.peer = self
        self._server = server
        self.world.base_url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(target=server.serve_forever, args=(0.2,), daemon=True)
        self._thread.start()
        return self.auth_url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> OpenStackPeer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- one request

    def _find(self, method: str, path: str) -> tuple[str, Route | None, tuple[str, ...], bool]:
        """(service, route, groups, path_known): the route for this method and path."""
        known = False
        for service, routes in self.services:
            for r in routes:
                m = r.pattern.fullmatch(path)
                if m is None:
                    continue
                if r.method == method:
                    return service, r, m.groups(), True
                known = True
        return "", None, (), known

    def answer(self, method: str, target: str, headers: Message, body: bytes) -> Reply:
        parts = urlsplit(target)
        path = re.sub(r"/{2,}", "/", parts.path) or "/"
        base = f"http://{headers.get('Host') or self.world.base_url.removeprefix('http://')}"
        w = self.world
        with w.lock:
            now = w.clock.now()
            req = Request(method, path, parse_qsl(parts.query, keep_blank_values=True), headers, body, base, now)
            service, found, groups, known = self._find(method, path)
            if service != "sim":
                w.record(f"{method} {found.template.split(' ', 1)[-1]}" if found else f"{method} {path} (unrouted)")
                if w.down:
                    return 503, [("Content-Type", "text/html"), ("Cache-Control", "no-cache")], HAPROXY_503
            if found is None:
                return self._unrouted(method, target, known)
            try:
                return self._serve(service, found, req, groups)
            except Fail as fail:
                extra = self._version_headers(req) if service == "compute" else []
                return fail.status, [("Content-Type", fail.content_type), *extra], fail.body

    def _serve(self, service: str, found: Route, req: Request, groups: tuple[str, ...]) -> Reply:
        needs_token = service in ("compute", "image", "network") and not self._is_discovery(found)
        if needs_token:
            req.auth = self.world.authenticate(req.headers.get("X-Auth-Token"))
            if req.auth is None:
                auth_header = ("WWW-Authenticate", f'Keystone uri="{self.world.base_url}/v3"')
                return (
                    401,
                    [("Content-Type", "application/json"), auth_header],
                    jbytes({"error": {"code": 401, "title": "Unauthorized", "message": UNAUTHORIZED}}),
                )
        if service == "compute" and needs_token:
            req.version = self.nova.negotiate(req.headers)
        status, head, payload = found.handler(req, *groups)
        rid = f"req-{uuid.uuid4()}"
        if service == "compute":
            head = [*head, *self._version_headers(req), ("x-openstack-request-id", rid), ("x-compute-request-id", rid)]
        elif service != "sim":
            head = [*head, ("x-openstack-request-id", rid)]
        return status, head, payload

    @staticmethod
    def _is_discovery(found: Route) -> bool:
        return found.template in ("GET /compute", "GET /compute/v2.1", "GET /image", "GET /network")

    @staticmethod
    def _version_headers(req: Request) -> list[tuple[str, str]]:
        text = version_text(req.version)
        return [
            ("OpenStack-API-Version", f"compute {text}"),
            ("X-OpenStack-Nova-API-Version", text),
            ("Vary", "OpenStack-API-Version"),
            ("Vary", "X-OpenStack-Nova-API-Version"),
        ]

    def _unrouted(self, method: str, target: str, known: bool) -> Reply:
        self.world.unrouted.append(f"{method} {target}")
        print(f"openstack_peer: cannot answer {method} {target}", file=sys.stderr, flush=True)
        if known:
            return (
                405,
                [("Content-Type", "application/json"), ("Allow", "GET, POST, DELETE")],
                jbytes({"error": {"code": 405, "message": "The method is not allowed for the requested URL."}}),
            )
        return (
            404,
            [("Content-Type", "application/json")],
            jbytes({"error": {"code": 404, "message": "The resource could not be found."}}),
        )

    def date_header(self) -> str:
        return formatdate(self.world.clock.now() if self.world.date_from_clock else time.time(), usegmt=True)


class _HTTPServer(LocalServer):
    request_queue_size = 128
    peer: OpenStackPeer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "openstack-peer"
    disable_nagle_algorithm = True  # headers and body leave as two writes: no 40 ms delayed-ACK stalls
    timeout = 300
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.peer.verbose:
            sys.stderr.write(f"openstack_peer: {format % args}\n")

    def version_string(self) -> str:
        return self.server_version

    def date_time_string(self, timestamp: float | None = None) -> str:
        return self.server.peer.date_header()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        status, headers, payload = self.server.peer.answer(self.command, self.path, self.headers, body)
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD" and payload:
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


# ----------------------------------------------------------------------------- command line, spawn()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stateful OpenStack wire double (Keystone, Nova, Glance, Neutron)")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free one)")
    parser.add_argument("--config", help="world.json (see the module docstring); default: a small world")
    parser.add_argument("--clock-file", help="take 'now' from this file's first 8 bytes (little-endian double)")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    config = DEFAULT_WORLD
    if args.config:
        with open(args.config, encoding="utf-8") as fh:
            config = json.load(fh)
    try:
        peer = OpenStackPeer(config, args.clock_file, verbose=args.verbose)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        print(f"openstack_peer: bad configuration: {exc!r}", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"READY {peer.start(args.port)}", flush=True)
    while not stop.wait(0.5):
        pass
    peer.stop()
    return 0


def spawn(
    config: dict[str, Any], clock_file: str | None = None, *, log: str | None = None, timeout: float = 15.0
) -> tuple[str, subprocess.Popen[str]]:
    """Start the peer as a subprocess; return (auth_url, process) once it is READY.

    Its stderr (unanswerable requests, --verbose) goes to `log` when given, else to a temporary file
    removed once it is up (a file, not a pipe nobody drains). Stop it with proc.terminate() (exit 0).
    """
    cfd, config_path = tempfile.mkstemp(prefix="osk-world-", suffix=".json")
    with os.fdopen(cfd, "w", encoding="utf-8") as fh:
        json.dump(config, fh)
    if log is None:
        fd, log_path = tempfile.mkstemp(prefix="osk-peer-", suffix=".log")
    else:
        fd, log_path = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644), log
    try:
        cmd = [sys.executable, os.path.abspath(__file__), "--port", "0", "--config", config_path]
        if clock_file:
            cmd += ["--clock-file", clock_file]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=fd, text=True)
    finally:
        os.close(fd)
    line: list[str] = []
    reader = threading.Thread(target=lambda: line.append(proc.stdout.readline() if proc.stdout else ""), daemon=True)
    reader.start()
    reader.join(timeout)
    os.unlink(config_path)
    with open(log_path, encoding="utf-8", errors="replace") as fh:
        said = fh.read()[-2000:]
    if log is None:
        os.unlink(log_path)
    if not line or not line[0].startswith("READY "):
        proc.kill()
        proc.wait(timeout=5)
        raise RuntimeError(f"OpenStack peer did not become ready: {(line or [''])[0]!r} {said}")
    return line[0].split()[1], proc


if __name__ == "__main__":
    sys.exit(main())
