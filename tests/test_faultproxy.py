"""The fault-injecting proxy of tests/peers, against a tiny stdlib upstream and a real botocore client."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import xmlrpc.client
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from peers.faultproxy import Fault, FaultProxy

EC2_DESCRIBE = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">'
    "<requestId>upstream-1</requestId><reservationSet/></DescribeInstancesResponse>"
)


class Upstream(BaseHTTPRequestHandler):
    """Echoes each request as JSON; /status/<n> answers n; /RPC2 speaks XML-RPC; EC2 DescribeInstances."""

    seen: list[dict[str, Any]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body})
        status, ctype = 200, "application/json"
        if self.path.startswith("/status/"):
            status = int(self.path.split("/")[2])
        if self.path.startswith("/RPC2"):
            _, method = xmlrpc.client.loads(body)
            out = xmlrpc.client.dumps(([True, f"upstream {method}", 0],), methodresponse=True).encode()
            ctype = "text/xml"
        elif b"Action=DescribeInstances" in body:
            out, ctype = EC2_DESCRIBE.encode(), "text/xml;charset=UTF-8"
        else:
            out = json.dumps({"method": self.command, "path": self.path, "body": body.decode()}).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("X-Upstream", "yes")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(out)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _serve


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("H", (Upstream,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.fixture
def proxy(upstream: tuple[str, list[dict[str, Any]]]) -> Iterator[FaultProxy]:
    with FaultProxy(upstream[0]) as p:
        yield p


def call(
    url: str, data: bytes | None = None, method: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any, bytes]:
    """(status, headers, body) for a request, whatever the status."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_passthrough_carries_method_path_query_headers_body_and_response(proxy: FaultProxy, upstream: Any) -> None:
    up_url, seen = upstream
    sent = {"X-Custom": "v", "Proxy-Authorization": "secret"}
    status, headers, body = call(proxy.url + "/v2.1/servers?name=a%20b&limit=2", b"hello", "PUT", sent)
    assert status == 200
    assert json.loads(body) == {"method": "PUT", "path": "/v2.1/servers?name=a%20b&limit=2", "body": "hello"}
    assert headers["X-Upstream"] == "yes" and headers["Connection"] == "close"
    got = seen[0]["headers"]
    assert got["X-Custom"] == "v" and got["Content-Length"] == "5"
    assert got["Host"] == up_url.removeprefix("http://")  # fixed for the upstream
    assert "Proxy-Authorization" not in got  # hop-by-hop
    assert proxy.requests[0][:2] == ("PUT", "/v2.1/servers?name=a%20b&limit=2") and proxy.requests[0].fault is None
    assert proxy.forwarded() == 1


def test_passthrough_error_statuses_and_head(proxy: FaultProxy) -> None:
    status, _, body = call(proxy.url + "/status/404")
    assert status == 404 and json.loads(body)["path"] == "/status/404"
    status, headers, body = call(proxy.url + "/status/200", method="HEAD")
    assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
    assert call(proxy.url + "/x", method="DELETE")[0] == 200
    assert [r.method for r in proxy.requests] == ["GET", "HEAD", "DELETE"]


def test_planned_faults_are_used_once_in_order_then_requests_pass(proxy: FaultProxy) -> None:
    proxy.plan(
        Fault("status", status=503, headers={"Retry-After": "1"}),
        Fault("status", status=429, body="slow down"),
        Fault("status", status=500),
        Fault("status", status=502),
    )
    answers = [call(proxy.url + f"/n/{i}") for i in range(5)]
    assert [a[0] for a in answers] == [503, 429, 500, 502, 200]
    assert answers[0][1]["Retry-After"] == "1" and answers[1][2] == b"slow down"
    assert [r.fault for r in proxy.requests] == ["status"] * 4 + [None]
    assert proxy.pending() == 0 and proxy.forwarded() == 1 and proxy.forwarded("/n/4") == 1


def test_a_status_body_can_quote_the_request_escaped_for_its_content_type(proxy: FaultProxy) -> None:
    """`{request}` in a status fault's body: the request as received, as a server quoting a bad request."""
    echo = '{"error": {"code": 400, "message": "bad request: {request}"}}'
    xml = {"Content-Type": "text/xml"}
    proxy.plan(Fault("status", status=400, headers={"Content-Type": "application/json"}, body=echo),
               Fault("status", status=400, headers=xml, body="<Message>{request}</Message>"))  # fmt: skip
    status, _, body = call(proxy.url + "/v3/auth/tokens", b'{"secret": "a<b"}', "POST", {"X-Auth-Token": "tok-1"})
    message = json.loads(body)["error"]["message"]  # still JSON: quotes and newlines escaped
    assert status == 400 and message.startswith("bad request: POST /v3/auth/tokens\r\n")
    assert "X-Auth-Token: tok-1" in message and message.endswith('{"secret": "a<b"}')
    _, _, body = call(proxy.url + "/", b"Action=RunInstances&UserData=a<b")
    assert ET.fromstring(body).text.endswith("Action=RunInstances&UserData=a<b")  # type: ignore[union-attr]
    proxy.plan(Fault("status", status=400, body="you sent {body}"))
    assert call(proxy.url + "/", b"x=1")[2] == b"you sent x=1"
    assert proxy.forwarded() == 0


def test_always_applies_until_clear(proxy: FaultProxy) -> None:
    proxy.always(Fault("status", status=502))
    assert [call(proxy.url + "/")[0] for _ in range(3)] == [502, 502, 502]
    assert proxy.forwarded() == 0
    proxy.clear()
    assert call(proxy.url + "/")[0] == 200 and proxy.forwarded() == 1


def test_match_by_body_path_and_callable(proxy: FaultProxy) -> None:
    proxy.plan(Fault("status", status=503, match="Action=RunInstances"))
    proxy.always(Fault("status", status=409, match="/servers"))
    proxy.always(Fault("status", status=418, match=lambda method, path, body: method == "DELETE"))
    assert call(proxy.url + "/", b"Action=DescribeInstances&Version=2016-11-15")[0] == 200
    assert call(proxy.url + "/", b"Action=RunInstances&MinCount=1")[0] == 503
    assert call(proxy.url + "/", b"Action=RunInstances&MinCount=1")[0] == 200  # the planned one is used up
    assert call(proxy.url + "/v2.1/servers/detail")[0] == 409
    assert call(proxy.url + "/v2.1/flavors", method="DELETE")[0] == 418
    assert call(proxy.url + "/v2.1/flavors")[0] == 200
    assert proxy.forwarded("Action=RunInstances") == 1 and proxy.forwarded("Action=") == 2
    assert proxy.forwarded(lambda m, p, b: m == "GET") == 1


def test_planned_fault_waits_for_its_match(proxy: FaultProxy) -> None:
    proxy.plan(Fault("status", status=500, match="/a"), Fault("status", status=501))
    assert call(proxy.url + "/b")[0] == 501  # first planned fault that matches, not the first in the queue
    assert call(proxy.url + "/a")[0] == 500


def test_ec2_throttle_is_503_with_the_ec2_error_envelope(proxy: FaultProxy) -> None:
    proxy.plan(Fault("ec2_throttle"))
    status, headers, body = call(proxy.url + "/", b"Action=RunInstances")
    assert status == 503 and headers["Content-Type"].startswith("text/xml")
    root = ET.fromstring(body)
    assert root.tag == "Response"
    assert root.findtext("Errors/Error/Code") == "RequestLimitExceeded"
    assert root.findtext("Errors/Error/Message") == "Request limit exceeded."
    assert root.findtext("RequestID")
    assert proxy.forwarded() == 0


def test_xmlrpc_fault_answers_only_the_matching_method(proxy: FaultProxy) -> None:
    failure = [False, "[one.vm.allocate] quota exceeded", 0x2000, -1, -1]  # OpenNebula's in-band error array
    proxy.plan(Fault("xmlrpc_fault", value=failure, match="one.vm.allocate"))
    one = xmlrpc.client.ServerProxy(proxy.url + "/RPC2")
    assert one.one.vm.info("user:pw", 7) == [True, "upstream one.vm.info", 0]
    assert one.one.vm.allocate("user:pw", "NAME=x", False) == failure
    assert one.one.vm.allocate("user:pw", "NAME=x", False) == [True, "upstream one.vm.allocate", 0]
    assert proxy.forwarded("one.vm.allocate") == 1


def test_reset_is_a_connection_reset_for_the_client(proxy: FaultProxy) -> None:
    proxy.plan(Fault("reset"), Fault("reset"))
    port = int(proxy.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        with pytest.raises(ConnectionResetError):  # RST, not an orderly FIN (recv would return b"")
            s.recv(1024)
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(proxy.url + "/", timeout=5)
    assert proxy.forwarded() == 0 and [r.fault for r in proxy.requests] == ["reset", "reset"]
    assert call(proxy.url + "/")[0] == 200


def test_stall_times_the_client_out_and_stop_is_prompt(upstream: Any) -> None:
    proxy = FaultProxy(upstream[0])
    proxy.start()
    try:
        proxy.always(Fault("stall"))
        conn = http.client.HTTPConnection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]), timeout=0.5)
        started = time.monotonic()
        conn.request("GET", "/")
        with pytest.raises(TimeoutError):
            conn.getresponse()
        assert 0.4 < time.monotonic() - started < 2
        # A second stalled connection still open while stopping.
        other = socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])), timeout=5)
        other.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)
    finally:
        started = time.monotonic()
        proxy.stop()
        assert time.monotonic() - started < 1
    other.settimeout(1)
    assert other.recv(1024) == b""  # closed without an answer as soon as the proxy stops
    other.close()
    conn.close()
    assert proxy.forwarded() == 0


def test_stall_for_some_seconds_then_hang_up(proxy: FaultProxy) -> None:
    proxy.plan(Fault("stall", seconds=0.3))
    conn = http.client.HTTPConnection("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]), timeout=5)
    started = time.monotonic()
    conn.request("GET", "/")
    with pytest.raises(http.client.RemoteDisconnected):
        conn.getresponse()
    assert 0.25 < time.monotonic() - started < 2


def test_delay_forwards_after_waiting(proxy: FaultProxy) -> None:
    proxy.plan(Fault("delay", seconds=0.3))
    started = time.monotonic()
    assert call(proxy.url + "/slow")[0] == 200
    assert time.monotonic() - started >= 0.3
    assert proxy.forwarded() == 1 and proxy.requests[0].fault == "delay"


def test_unreachable_upstream_is_a_502() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with FaultProxy(f"http://127.0.0.1:{port}") as proxy:
        status, _, body = call(proxy.url + "/")
    assert status == 502 and b"faultproxy" in body and proxy.forwarded() == 0


def test_bad_faults_are_refused() -> None:
    with pytest.raises(ValueError):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fault("delay")
    with pytest.raises(ValueError):
        Fault("xmlrpc_fault")
    with pytest.raises(ValueError):
        FaultProxy("https://127.0.0.1:1")


@pytest.fixture
def ec2(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")

    def client(attempts: int) -> Any:
        import boto3
        from botocore.config import Config

        # total_max_attempts counts the first try; Config's "max_attempts" counts only retries (1 = two requests).
        retries = {"mode": "standard", "total_max_attempts": attempts}
        config = Config(retries=retries, connect_timeout=5, read_timeout=5)
        return boto3.session.Session().client("ec2", region_name="us-east-1", endpoint_url=proxy.url, config=config)

    return client


def test_botocore_sees_ec2_throttle_as_throttling(proxy: FaultProxy, ec2: Any) -> None:
    from botocore.exceptions import ClientError
    from botocore.retries.standard import RetryEventAdapter, ThrottlingErrorDetector

    client = ec2(1)
    detector = ThrottlingErrorDetector(RetryEventAdapter())
    verdicts: list[bool] = []
    client.meta.events.register("needs-retry.ec2", lambda **kw: verdicts.append(detector.is_throttling_error(**kw)))
    proxy.always(Fault("ec2_throttle", match="Action=DescribeInstances"))
    with pytest.raises(ClientError) as caught:
        client.describe_instances()
    error = caught.value.response
    assert error["Error"]["Code"] == "RequestLimitExceeded"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503 and error["ResponseMetadata"]["RequestId"]
    assert verdicts == [True]
    assert len(proxy.requests) == 1 and proxy.forwarded() == 0  # one attempt, never reached the upstream


def test_botocore_retries_after_ec2_throttle(proxy: FaultProxy, ec2: Any) -> None:
    proxy.plan(Fault("ec2_throttle", match="Action=DescribeInstances"))
    reply = ec2(3).describe_instances()
    assert reply["Reservations"] == [] and reply["ResponseMetadata"]["RequestId"] == "upstream-1"
    assert [r.fault for r in proxy.requests] == ["ec2_throttle", None] and proxy.forwarded() == 1
