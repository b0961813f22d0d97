"""What a VM reads about itself, on each cloud: three small HTTP peers on 127.0.0.1 for the in-VM agent.

* ``IMDSv2Server`` — EC2 instance metadata, session-token mode (HttpTokens=required) with
  InstanceMetadataTags=enabled: ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds``
  (1-21600) gives a token; every GET needs it in ``X-aws-ec2-metadata-token`` (401 without or with a
  wrong one); ``/latest/meta-data/tags/instance`` lists the tag keys, ``.../tags/instance/<key>`` is the
  value as text/plain, 404 for no such tag. Keys with ``/`` or spaces are not shown (as EC2).
  A PUT with ``X-Forwarded-For`` is refused (403), as IMDS refuses requests through a proxy.
* ``NovaMetadataServer`` — the Nova metadata service: ``/openstack`` (versions),
  ``/openstack/latest/`` (the files), ``/openstack/latest/meta_data.json`` with ``uuid``, ``name``,
  ``hostname``, ``launch_index``, ``availability_zone``, ``project_id``, ``devices`` and ``meta`` (the
  server metadata, read at each request, so a change shows at once, unlike a config drive).
* ``OneGateServer`` — OpenNebula OneGate: ``GET /vm`` is ``{"VM": {..., "USER_TEMPLATE": {...}}}``;
  ``PUT /vm`` takes OpenNebula template text, ``KEY = VALUE`` or ``KEY = "VALUE"`` lines, and merges
  them into USER_TEMPLATE (``PUT /vm?type=2`` with ``KEY`` lines deletes); both need
  ``X-ONEGATE-TOKEN`` and ``X-ONEGATE-VMID`` of this VM (401 otherwise).

Each server answers from a backend object, so a test can back it with memory or with a real cloud
peer (e.g. tests/peers/opennebula.py, moto): the protocols are ``EC2Backend.tags()``,
``NovaBackend.meta()`` and ``OneGateBackend.user_template()`` / ``.update(values)`` / ``.delete(keys)``.

Use: ``with IMDSv2Server(MemoryEC2({"wlcg:drain-by": "..."})) as imds: imds.url`` (no trailing
slash; the agent's WLCGCLOUD_METADATA_URL); ``server.requests`` lists (method, path) seen.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from peers.localhttp import LocalServer

# --- backends -----------------------------------------------------------------------------------


class EC2Backend(Protocol):
    def tags(self) -> dict[str, str]: ...


class NovaBackend(Protocol):
    def meta(self) -> dict[str, str]: ...


class OneGateBackend(Protocol):
    def user_template(self) -> dict[str, str]: ...

    def update(self, values: dict[str, str]) -> None: ...

    def delete(self, keys: list[str]) -> None: ...


class MemoryEC2:
    """An instance's tags, in memory; a test changes ``.tag`` as the owner would with CreateTags."""

    def __init__(self, tags: dict[str, str] | None = None) -> None:
        self.tag: dict[str, str] = dict(tags or {})

    def tags(self) -> dict[str, str]:
        return dict(self.tag)


class MemoryNova:
    """A server's metadata (``openstack server set --property``), in memory."""

    def __init__(self, meta: dict[str, str] | None = None) -> None:
        self.metadata: dict[str, str] = dict(meta or {})

    def meta(self) -> dict[str, str]:
        return dict(self.metadata)


class MemoryOneGate:
    """A VM's USER_TEMPLATE, in memory."""

    def __init__(self, template: dict[str, str] | None = None) -> None:
        self.template: dict[str, str] = dict(template or {})
        self.lock = threading.Lock()

    def user_template(self) -> dict[str, str]:
        with self.lock:
            return dict(self.template)

    def update(self, values: dict[str, str]) -> None:
        with self.lock:
            self.template.update(values)

    def delete(self, keys: list[str]) -> None:
        with self.lock:
            for key in keys:
                self.template.pop(key, None)


# --- servers ------------------------------------------------------------------------------------


class _Peer:
    """One HTTP server on a free 127.0.0.1 port, served from a thread; a context manager."""

    def __init__(self) -> None:
        peer = self
        self.requests: list[tuple[str, str]] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _any(self) -> None:
                peer.requests.append((self.command, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if 0 < length <= 1 << 20 else b""
                status, kind, reply = peer.answer(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            do_GET = do_PUT = do_POST = do_DELETE = _any

        self.server = LocalServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> _Peer:
        self.thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        raise NotImplementedError


def _header(headers: dict[str, str], name: str) -> str | None:
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


TEXT = "text/plain"


class IMDSv2Server(_Peer):
    def __init__(self, backend: EC2Backend) -> None:
        super().__init__()
        self.backend = backend
        self.tokens: dict[str, float] = {}  # token -> expiry

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        path = urlsplit(path).path
        token: str | None
        if path == "/latest/api/token":
            if method != "PUT":
                return 405, TEXT, b""
            if _header(headers, "X-Forwarded-For") is not None:
                return 403, TEXT, b""
            ttl = _header(headers, "X-aws-ec2-metadata-token-ttl-seconds") or ""
            if not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, TEXT, b""
            token = secrets.token_urlsafe(40)
            self.tokens[token] = time.time() + int(ttl)
            return 200, TEXT, token.encode()
        token = _header(headers, "X-aws-ec2-metadata-token")
        if token is None or self.tokens.get(token, 0) < time.time():
            return 401, TEXT, b""
        if method != "GET":
            return 405, TEXT, b""
        tags = {k: v for k, v in self.backend.tags().items() if "/" not in k and " " not in k}
        if path in ("/latest/meta-data/tags/instance", "/latest/meta-data/tags/instance/"):
            return 200, TEXT, "\n".join(sorted(tags)).encode()
        prefix = "/latest/meta-data/tags/instance/"
        if path.startswith(prefix):
            key = unquote(path[len(prefix) :])
            if key in tags:
                return 200, TEXT, tags[key].encode("utf-8", "surrogateescape")
        return 404, TEXT, b""


class NovaMetadataServer(_Peer):
    def __init__(self, backend: NovaBackend, uuid: str = "0b6c3c1e-5a7e-4d0e-9d4a-1f2a3b4c5d6e",
                 name: str = "wlcg-vm-1") -> None:  # fmt: skip
        super().__init__()
        self.backend, self.uuid, self.name = backend, uuid, name

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        path = urlsplit(path).path
        if method != "GET":
            return 405, TEXT, b""
        if path in ("/openstack", "/openstack/"):
            return 200, TEXT, b"2012-08-10\n2013-04-04\n2016-06-30\n2018-08-27\n2020-10-14\nlatest"
        if path == "/openstack/latest/":
            return 200, TEXT, b"meta_data.json\nnetwork_data.json\nuser_data\nvendor_data.json"
        if path == "/openstack/latest/meta_data.json":
            document = {
                "uuid": self.uuid,
                "meta": self.backend.meta(),
                "hostname": f"{self.name}.novalocal",
                "name": self.name,
                "launch_index": 0,
                "availability_zone": "nova",
                "project_id": "6f0a6b7ee0a94aa6b4d0b8a7f3c2e1d0",
                "devices": [],
            }
            return 200, "application/json", json.dumps(document).encode()
        return 404, TEXT, b""


TEMPLATE_LINE = re.compile(r'^\s*([A-Za-z0-9_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^"]*?))\s*$')


class OneGateServer(_Peer):
    def __init__(self, backend: OneGateBackend, vm_id: int = 7, token: str | None = None) -> None:
        super().__init__()
        self.backend, self.vm_id = backend, vm_id
        self.token = token or secrets.token_urlsafe(16)

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        parts = urlsplit(path)
        if _header(headers, "X-ONEGATE-TOKEN") != self.token or _header(headers, "X-ONEGATE-VMID") != str(self.vm_id):
            return 401, TEXT, b"Not authorized"
        if parts.path != "/vm":
            return 404, TEXT, b""
        if method == "GET":
            document = {"VM": {"NAME": f"wlcg-{self.vm_id}", "ID": str(self.vm_id), "STATE": "3", "LCM_STATE": "3",
                               "USER_TEMPLATE": self.backend.user_template(), "TEMPLATE": {"NIC": []}}}  # fmt: skip
            return 200, "application/json", json.dumps(document).encode()
        if method != "PUT":
            return 405, TEXT, b""
        text = body.decode("utf-8", "replace")
        if parts.query == "type=2":
            self.backend.delete([line.strip() for line in text.splitlines() if line.strip()])
            return 200, TEXT, b""
        values: dict[str, str] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            match = TEMPLATE_LINE.match(line)
            if not match:
                return 400, TEXT, f"Error parsing template: {line[:80]}".encode()
            quoted, bare = match[2], match[3]
            values[match[1].upper()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        self.backend.update(values)
        return 200, TEXT, b""
