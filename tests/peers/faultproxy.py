"""A fault-injecting HTTP reverse proxy for tests that talk to real protocol peers.

Put it between a cloud client and a real peer (moto_server for EC2, Keystone/Nova for OpenStack,
an XML-RPC OpenNebula) to make chosen requests fail the way real clouds fail: HTTP error statuses,
EC2 throttling, OpenNebula XML-RPC failures, connection resets, stalls and slow answers. Everything
else is forwarded untouched, so the peer's real behaviour stays under test.

    with FaultProxy("http://127.0.0.1:5000") as proxy:          # listens on 127.0.0.1:<free port>
        proxy.plan(Fault("ec2_throttle", match="Action=RunInstances"), Fault("reset"))
        proxy.always(Fault("status", status=503, headers={"Retry-After": "1"}, match="/servers"))
        ...  # point the client at proxy.url
        assert proxy.forwarded("Action=RunInstances") == 1

A ``status`` fault's body may hold ``{request}`` (the request as received: request line, headers, body)
or ``{body}`` (its body alone), escaped for the fault's Content-Type (JSON, XML/HTML), as servers that
quote a bad request back do; so a test can see whether anything the client sent leaks from the error
it shows.

Matching (``Fault.match``, ``forwarded(match)``): None matches every request; a string matches when
it occurs in ``"METHOD /path?query"`` or in the request body (``"Action=RunInstances"`` for the EC2
query API, ``"/servers"``, ``"one.vm.allocate"`` for XML-RPC); a callable gets (method, path, body).
Planned faults are used once each, the first matching one in plan order; ``always`` faults apply to
every matching request. Planned faults win over ``always``; unmatched requests are forwarded.

Stdlib only; one upstream connection per request and ``Connection: close`` to the client, which is
simple, correct and hides peers without keep-alive. Not restartable after stop().
"""

from __future__ import annotations

import email.utils
import html
import http.client
import json
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
import uuid
import xmlrpc.client
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, NamedTuple
from urllib.parse import urlsplit

Kind = Literal["status", "ec2_throttle", "xmlrpc_fault", "reset", "lose_answer", "stall", "delay", "clock"]
Matcher = str | Callable[[str, str, bytes], bool] | None
KINDS = frozenset(("status", "ec2_throttle", "xmlrpc_fault", "reset", "lose_answer", "stall", "delay", "clock"))

# Hop-by-hop headers (RFC 9110 7.6.1) plus the ones the proxy sets itself: never copied across.
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te"}
_NOT_COPIED = frozenset({*_HOP_BY_HOP, "trailer", "upgrade", "transfer-encoding", "expect", "content-length", "host"})

# What EC2 answers when an account is throttled: HTTP 503 with error code RequestLimitExceeded in the
# EC2 error envelope (note RequestID, not RequestId). botocore's _retry.json matches exactly this
# (ec2 policy "request_limit_exceeded": code RequestLimitExceeded + status 503) and retries/standard.py
# lists RequestLimitExceeded among its throttling codes.
_EC2_THROTTLE = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code>'
    "<Message>Request limit exceeded.</Message></Error></Errors><RequestID>{}</RequestID></Response>"
)


@dataclass(frozen=True)
class Fault:
    """One misbehaviour. ``seconds``: the wait for ``delay``; for ``stall``, None = until stop(); for
    ``clock``, how far the answer's ``Date`` header is off (the request is forwarded untouched)."""

    kind: Kind
    match: Matcher = None
    status: int = 503  # kind "status"
    headers: Mapping[str, str] = field(default_factory=dict)  # kind "status"
    body: bytes | str = b""  # kind "status"
    value: Sequence[Any] = ()  # kind "xmlrpc_fault": the methodResponse array, e.g. [False, "msg", 0x2000]
    seconds: float | None = None  # kinds "delay" and "stall"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(KINDS)}")
        if self.kind in ("delay", "clock") and self.seconds is None:
            raise ValueError(f"a {self.kind} fault needs seconds")
        if self.kind == "xmlrpc_fault" and not self.value:
            raise ValueError("an xmlrpc_fault needs value, e.g. [False, 'message', 0x2000, -1, -1]")

    def matches(self, method: str, path: str, body: bytes) -> bool:
        return _matches(self.match, method, path, body)

    def response(self, request: str = "", body: str = "") -> tuple[int, dict[str, str], bytes]:
        """The (status, headers, body) a synthesized answer carries (kinds status/ec2_throttle/xmlrpc_fault).

        ``request`` (the request as received) and ``body`` (its body) replace ``{request}`` and ``{body}``
        in a status fault's body, and ``{header:NAME}`` is the value of that request header (a cloud
        quoting, say, X-Auth-Token back where a cut message still shows it).
        """
        if self.kind == "ec2_throttle":
            body = _EC2_THROTTLE.format(uuid.uuid4()).encode()
            return 503, {"Content-Type": "text/xml;charset=UTF-8"}, body
        if self.kind == "xmlrpc_fault":
            # OpenNebula reports failures in-band: HTTP 200 and a normal methodResponse whose array says False.
            body = xmlrpc.client.dumps((list(self.value),), methodresponse=True, allow_none=True).encode()
            return 200, {"Content-Type": "text/xml"}, body
        answer = self.body.encode() if isinstance(self.body, str) else self.body
        kind = next((v for k, v in self.headers.items() if k.lower() == "content-type"), "").lower()
        quoted = [(f"{{header:{name}}}".encode(), value.strip())
                  for name, _, value in (line.partition(":") for line in request.splitlines()[1:])
                  if f"{{header:{name}}}".encode() in answer]  # fmt: skip
        for mark, text in ((b"{request}", request), (b"{body}", body), *quoted):
            if "json" in kind:
                text = json.dumps(text)[1:-1]
            elif "xml" in kind or "html" in kind:
                text = html.escape(text, quote=False)
            answer = answer.replace(mark, text.encode())
        return self.status, dict(self.headers), answer


class Seen(NamedTuple):
    """One request the proxy received; unpacks as (method, path, at, fault)."""

    method: str
    path: str
    at: float  # time.monotonic() when the request had been read
    fault: str | None  # the kind of fault applied, None if forwarded untouched


@dataclass
class _Entry:
    seen: Seen
    body: bytes
    forwarded: bool = False


def _matches(matcher: Matcher, method: str, path: str, body: bytes) -> bool:
    if matcher is None:
        return True
    if isinstance(matcher, str):
        return matcher in f"{method} {path}" or matcher.encode() in body
    return bool(matcher(method, path, body))


class FaultProxy:
    """Reverse proxy from 127.0.0.1:<free port> to ``upstream``; thread-safe; also a context manager.

    ``preserve_host=True`` passes the client's Host header on instead of the upstream's (for peers
    that check SigV4 signatures, which cover Host, or that build self-links from it).
    """

    def __init__(
        self,
        upstream: str,
        *,
        upstream_timeout: float = 60.0,
        preserve_host: bool = False,
        tls: ssl.SSLContext | None = None,  # serve https with this server context (peers/tls.py)
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port[/prefix], not {upstream!r}")
        self.upstream = upstream
        self._host, self._port = parts.hostname, parts.port or 80
        self._netloc, self._prefix = parts.netloc, parts.path.rstrip("/")
        self.upstream_timeout = upstream_timeout
        self.preserve_host = preserve_host
        self.tls = tls
        self._lock = threading.Lock()
        self._planned: list[Fault] = []
        self._always: list[Fault] = []
        self._log: list[_Entry] = []
        self._stopping = threading.Event()  # wakes stalled and delayed handlers so stop() is prompt
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("proxy not started")
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("proxy already started")
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        if self.tls is not None:
            self._server.socket = self.tls.wrap_socket(self._server.socket, server_side=True)
        # A short poll interval keeps shutdown() quick; the default 0.5 s adds up across many tests.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._thread = None

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def plan(self, *faults: Fault) -> None:
        """Queue faults; each is used once, by the next request it matches, in order."""
        with self._lock:
            self._planned.extend(faults)

    def always(self, fault: Fault) -> None:
        """Apply ``fault`` to every matching request until clear()."""
        with self._lock:
            self._always.append(fault)

    def clear(self) -> None:
        """Drop planned and always faults (the request log stays)."""
        with self._lock:
            self._planned.clear()
            self._always.clear()

    def pending(self) -> int:
        """How many planned faults have not been used yet."""
        with self._lock:
            return len(self._planned)

    @property
    def requests(self) -> list[Seen]:
        with self._lock:
            return [e.seen for e in self._log]

    def bodies(self, match: Matcher = None) -> list[bytes]:
        """The bodies of the matching requests received, forwarded or not, in order."""
        with self._lock:
            return [e.body for e in self._log if _matches(match, e.seen.method, e.seen.path, e.body)]

    def forwarded(self, match: Matcher = None) -> int:
        """How many matching requests actually reached the upstream."""
        with self._lock:
            return sum(e.forwarded and _matches(match, e.seen.method, e.seen.path, e.body) for e in self._log)

    def _take(self, method: str, path: str, body: bytes) -> tuple[Fault | None, _Entry]:
        """Pick the fault for a request and log it, atomically so concurrent requests each get their own."""
        with self._lock:
            fault = next((f for f in self._planned if f.matches(method, path, body)), None)
            if fault is not None:
                self._planned.remove(fault)
            else:
                fault = next((f for f in self._always if f.matches(method, path, body)), None)
            entry = _Entry(Seen(method, path, time.monotonic(), fault.kind if fault else None), body)
            self._log.append(entry)
            return fault, entry


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # an in-flight upstream call must not hold up stop()
    proxy: FaultProxy

    def server_bind(self) -> None:
        # HTTPServer.server_bind does a reverse DNS lookup (getfqdn), which can take seconds in sandboxes.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # clients hanging up is normal here
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # a client that never finishes sending its request must not pin a thread forever
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests assert on proxy.requests
        pass

    def _serve(self) -> None:
        self.close_connection = True
        proxy = self.server.proxy
        body = self._read_body()
        fault, entry = proxy._take(self.command, self.path, body)
        if fault is None:
            self._forward(body, entry)
        elif fault.kind == "delay":
            if not proxy._stopping.wait(fault.seconds):
                self._forward(body, entry)
        elif fault.kind == "clock":
            self._forward(body, entry, date_offset=fault.seconds)
        elif fault.kind == "lose_answer":
            # The request reaches the peer and is acted on; its answer never reaches the client.
            self._forward(body, entry, answer=False)
            self._reset()
        elif fault.kind == "reset":
            self._reset()
        elif fault.kind == "stall":
            proxy._stopping.wait(fault.seconds)  # then close without answering
        else:
            head = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items())
            text = body.decode(errors="replace")
            self._answer(*fault.response(f"{self.command} {self.path}\r\n{head}\r\n{text}", text))

    def _reset(self) -> None:
        # SO_LINGER on with timeout 0 makes close() send RST instead of FIN: a connection reset.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.rfile.close()  # the makefile() reader holds a reference that would postpone the close
        self.connection.close()

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _serve

    def _read_body(self) -> bytes:
        if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailer fields, up to the blank line
            pass
        return b"".join(chunks)

    def _forward(self, body: bytes, entry: _Entry, answer: bool = True, date_offset: float | None = None) -> None:
        proxy = self.server.proxy
        dropped = _NOT_COPIED | {h.strip().lower() for h in self.headers.get("Connection", "").split(",")}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
        headers["Host"] = self.headers.get("Host", proxy._netloc) if proxy.preserve_host else proxy._netloc
        has_body = body or "Content-Length" in self.headers or "Transfer-Encoding" in self.headers
        if has_body:
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(proxy._host, proxy._port, timeout=proxy.upstream_timeout)
        try:
            conn.request(self.command, proxy._prefix + self.path, body if has_body else None, headers)
            with proxy._lock:
                entry.forwarded = True
            resp = conn.getresponse()
            payload = resp.read()
        except OSError as e:  # refused, reset, timed out: answer as a gateway would
            self._answer(502, {"Content-Type": "text/plain"}, f"faultproxy: upstream {proxy.upstream}: {e}".encode())
            return
        finally:
            conn.close()
        if not answer:
            return
        # send_response_only: the upstream's own Date and Server headers are passed on, not doubled.
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if date_offset is not None and k.lower() == "date":
                continue
            if k.lower() not in _NOT_COPIED or (k.lower() == "content-length" and self.command == "HEAD"):
                self.send_header(k, v)
        if date_offset is not None:  # a server whose clock is off
            self.send_header("Date", email.utils.formatdate(time.time() + date_offset, usegmt=True))
        if self.command != "HEAD" and resp.status >= 200 and resp.status not in (204, 304):
            self.send_header("Content-Length", str(len(payload)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _answer(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
