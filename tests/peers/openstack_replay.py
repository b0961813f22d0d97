"""Replays the real OpenStack peer's recorded HTTP exchanges (tests/payloads/openstack/*.json), stdlib only.

For quick local runs without the peer (which needs root and minutes to start): each payload file is one
scenario recorded by tests/peers/openstack_record.py, a complete conversation of our provider with
Keystone, Nova, Glance and Neutron, authentication and version discovery included.

    with ReplayServer("list", secret="s3cret") as replay:     # one listener per recorded service port
        profile = {"auth_url": replay.auth_url, ...}           # WLCGCLOUD_SECRET_<PROFILE>=s3cret
        ...
        assert replay.unexpected == []

Matching: a request is answered by a recorded exchange with the same service (recorded port), method
and path, the query sorted and the clock-dependent values (`start`, `end` of os-simple-tenant-usage)
ignored. Exchanges with the same key are served in recorded order, the last one again and again. A
Keystone `POST .../auth/tokens` is matched by its secret too: the constructor's secret gets the recorded
token, any other secret the recorded 401 of scenario `wrong_secret`. Requests that carried a token when
recorded must carry one this server issued. Every `http://127.0.0.1:PORT` of a recorded port (catalog,
version discovery, `links`) is rewritten to this server's listener for that port. Anything else is
answered 404 and listed in `unexpected`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from peers.localhttp import LocalServer

PAYLOADS = Path(__file__).resolve().parent.parent / "payloads" / "openstack"
REFUSED = "wrong_secret"  # the scenario whose Keystone 401 answers every wrong secret
VOLATILE = frozenset({"start", "end"})  # query values that depend on when the request was made
URL = re.compile(r"http://127\.0\.0\.1:(\d+)")
# Response headers worth recording and replaying (the rest is Date, Server, lengths, request ids).
KEPT_HEADERS = frozenset(
    {"content-type", "x-subject-token", "openstack-api-version", "x-openstack-nova-api-version", "location", "vary"}
)

Reply = tuple[int, dict[str, str], bytes]  # status, headers, body
# (upstream port, method, path with query, request headers, request body) -> the reply
Answer = Callable[[int, str, str, Message, bytes], Reply]


def normalise(path: str) -> str:
    """`/x?b=2&a=1&start=2025-...` -> `/x?a=1&b=2&start=*`: the path part of the matching key."""
    parts = urlsplit(path)
    query = sorted((k, "*" if k in VOLATILE else v) for k, v in parse_qsl(parts.query, keep_blank_values=True))
    return parts.path + ("?" + urlencode(query) if query else "")


def rewrite(text: str, ports: Mapping[int, int]) -> str:
    """Point every `http://127.0.0.1:PORT` of a mapped port at its new port."""
    return URL.sub(lambda m: f"http://127.0.0.1:{ports.get(int(m[1]), int(m[1]))}", text)


def is_auth(method: str, path: str) -> bool:
    return method == "POST" and urlsplit(path).path.rstrip("/").endswith("/auth/tokens")


def offered_secret(body: bytes) -> str | None:
    """The application credential secret or password of a Keystone v3 auth request."""
    try:
        identity = json.loads(body)["auth"]["identity"]
        method = identity["methods"][0]
        part = identity[method]
        return str(part["secret"] if method == "application_credential" else part["user"]["password"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def encode(body: Any) -> bytes:
    if body is None:
        return b""
    return (body if isinstance(body, str) else json.dumps(body)).encode()


def load(scenario: str, payloads: Path = PAYLOADS) -> dict[str, Any]:
    """One recorded scenario file, as written by openstack_record.py."""
    doc: dict[str, Any] = json.loads((payloads / f"{scenario}.json").read_text())
    return doc


@dataclass(frozen=True)
class Exchange:
    """One recorded request and its answer; `port` is the service's port on the recorded peer."""

    port: int
    method: str
    path: str
    status: int
    headers: dict[str, str]
    body: Any  # JSON, text, or None
    request: Any = None  # the request's JSON body, secrets scrubbed
    authenticated: bool = False  # whether the request carried X-Auth-Token

    @property
    def verdict(self) -> str:
        """For Keystone auth: "accepted" or "refused"; "" for every other request."""
        return ("accepted" if self.status < 400 else "refused") if is_auth(self.method, self.path) else ""

    def key(self) -> tuple[int, str, str, str]:
        return self.port, self.method, normalise(self.path), self.verdict


class _Server(LocalServer):
    upstream: int
    answer: Answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        self.close_connection = True
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers, payload = self.server.answer(self.server.upstream, self.command, self.path, self.headers, body)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class Listeners:
    """One listener on 127.0.0.1:<free port> per upstream port, every request answered by `answer`."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.ports: dict[int, int] = {}  # upstream port -> ours
        self._servers: list[_Server] = []
        self._lock = threading.Lock()

    def add(self, upstream: int) -> int:
        with self._lock:
            if upstream not in self.ports:
                server = _Server(("127.0.0.1", 0), _Handler)
                server.upstream, server.answer = upstream, self.answer
                threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
                self._servers.append(server)
                self.ports[upstream] = server.server_address[1]
            return self.ports[upstream]

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()


class ReplayServer:
    """Serves one recorded scenario from construction until close(); `requests` and `unexpected` list "METHOD /path"."""

    def __init__(self, scenario: str, secret: str, payloads: Path = PAYLOADS) -> None:
        self.doc = load(scenario, payloads)
        self.secret = secret
        self.exchanges = [Exchange(**x) for x in self.doc["exchanges"]]
        refused = [Exchange(**x) for x in load(REFUSED, payloads)["exchanges"]]
        self._queues: dict[tuple[int, str, str, str], list[Exchange]] = {}
        for x in self.exchanges + [r for r in refused if r.verdict == "refused"]:
            self._queues.setdefault(x.key(), []).append(x)
        if not any(k[3] == "refused" for k in self._queues):
            raise ValueError(f"{payloads / REFUSED}.json holds no refused Keystone authentication")
        self.tokens = {x.headers["X-Subject-Token"] for x in self.exchanges if "X-Subject-Token" in x.headers}
        self.requests: list[str] = []
        self.unexpected: list[str] = []
        self._lock = threading.Lock()
        self.listeners = Listeners(self._answer)
        for port in self.doc["ports"]:
            self.listeners.add(port)

    @property
    def auth_url(self) -> str:
        """The recorded profile's Keystone URL, pointing here."""
        return rewrite(self.doc["profile"]["auth_url"], self.listeners.ports)

    def close(self) -> None:
        self.listeners.close()

    def __enter__(self) -> ReplayServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _answer(self, port: int, method: str, path: str, headers: Message, body: bytes) -> Reply:
        verdict = ""
        if is_auth(method, path):
            verdict = "accepted" if offered_secret(body) == self.secret else "refused"
        with self._lock:
            self.requests.append(f"{method} {path}")
            queue = self._queues.get((port, method, normalise(path), verdict))
            if not queue:
                return self._unknown(port, method, path, "no recorded exchange")
            exchange = queue.pop(0) if len(queue) > 1 else queue[0]
            if exchange.authenticated and headers.get("X-Auth-Token") not in self.tokens:
                return self._unknown(port, method, path, "no X-Auth-Token this server issued")
        payload = exchange.body
        if verdict == "accepted" and isinstance(payload, dict) and "token" in payload:
            now = datetime.now(UTC)  # a fresh token: keystoneauth would re-authenticate for an expired one
            payload = {"token": {**payload["token"], "issued_at": stamp(now), "expires_at": stamp(now + timedelta(1))}}
        ports = self.listeners.ports
        out = {k: rewrite(v, ports) for k, v in exchange.headers.items()}
        return exchange.status, out, rewrite(encode(payload).decode(), ports).encode()

    def _unknown(self, port: int, method: str, path: str, why: str) -> Reply:
        message = f"openstack_replay: {why} for {method} {path} (recorded port {port})"
        self.unexpected.append(f"{method} {path}")
        return 404, {"Content-Type": "application/json"}, encode({"error": {"code": 404, "message": message}})


def stamp(moment: datetime) -> str:
    """Keystone's time format: 2025-11-24T17:10:12.000000Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
