"""moto's EC2 server, with a serial console a test chooses per instance.

    python -P tests/peers/moto_console.py -H 127.0.0.1 -p PORT    (moto_server's own options)

This is moto_server (``moto.server.main``: same options, request handler, threading and signal
handling, same environment such as INITIAL_NO_AUTH_ACTION_COUNT) with two changes:

- GetConsoleOutput returns, base64-encoded as EC2 sends it, the text set for that instance, or moto's
  fixed sample text when none was set. As on EC2, only the last 64 KB of the output are served. The
  instance is looked up first, as moto does, so an unknown id still gets InvalidInstanceID.NotFound.
- One path of our own, outside the AWS API: ``POST /_peer/console/{instance-id}`` with the text as
  the request body (UTF-8) sets that instance's console, ``DELETE`` clears it, ``GET`` reads it back
  (404 when none is set). No signature is asked for there.

It is run by file path, with ``-P`` so that this folder (whose modules are named ec2, tls, proxies...)
is not put in front of sys.path. It imports only moto, werkzeug and the standard library.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
from collections.abc import Iterable
from typing import Any

PREFIX = "/_peer/console/"
CONSOLE_LIMIT = 64 * 1024  # EC2 keeps the most recent 64 KB of an instance's console output

_consoles: dict[str, bytes] = {}
_lock = threading.Lock()


def console_tail(text: bytes) -> bytes:
    return text[-CONSOLE_LIMIT:]


def _get_console_output(self: Any) -> Any:
    """moto's General.get_console_output, with the text set through /_peer/console/ when there is one."""
    from moto.core.responses import ActionResult
    from moto.core.types import Base64EncodedString
    from moto.core.utils import utcnow
    from moto.ec2.responses.general import SAMPLE_CONSOLE_OUTPUT

    instance = self.ec2_backend.get_instance(self._get_param("InstanceId"))  # InvalidInstanceID.NotFound
    with _lock:
        text = _consoles.get(instance.id)
    raw = console_tail(SAMPLE_CONSOLE_OUTPUT.encode() if text is None else text)
    output = Base64EncodedString(base64.b64encode(raw).decode("ascii"))
    return ActionResult({"InstanceId": instance.id, "Timestamp": utcnow(), "Output": output})


class ConsolePaths:
    """WSGI middleware: serves /_peer/console/{id}, hands every other request to moto unchanged."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not path.startswith(PREFIX):
            served: Iterable[bytes] = self.app(environ, start_response)
            return served
        status, content_type, body = self._console(path.removeprefix(PREFIX), environ)
        start_response(status, [("Content-Type", content_type), ("Content-Length", str(len(body)))])
        return [body]

    @staticmethod
    def _console(instance_id: str, environ: dict[str, Any]) -> tuple[str, str, bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        if not instance_id or "/" in instance_id:
            return "404 Not Found", "application/json", b'{"error": "no such path"}'
        if method in ("POST", "PUT"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            text = environ["wsgi.input"].read(length) if length else b""
            with _lock:
                _consoles[instance_id] = text
            return "200 OK", "application/json", json.dumps({"instance": instance_id, "bytes": len(text)}).encode()
        if method == "DELETE":
            with _lock:
                _consoles.pop(instance_id, None)
            return "200 OK", "application/json", json.dumps({"instance": instance_id, "cleared": True}).encode()
        if method == "GET":
            with _lock:
                text = _consoles.get(instance_id)
            if text is None:
                body = json.dumps({"error": f"no console set for {instance_id}"}).encode()
                return "404 Not Found", "application/json", body
            return "200 OK", "text/plain; charset=utf-8", text
        body = json.dumps({"error": f"{method} is not allowed here"}).encode()
        return "405 Method Not Allowed", "application/json", body


def main(argv: list[str] | None = None) -> int:
    import moto.server
    from moto.ec2.responses import EC2Response
    from werkzeug.serving import run_simple

    EC2Response.get_console_output = _get_console_output  # type: ignore[method-assign]

    def run_wrapped(host: str, port: int, app: Any, **kwargs: Any) -> None:
        run_simple(host, port, ConsolePaths(app), **kwargs)

    moto.server.run_simple = run_wrapped  # type: ignore[attr-defined,assignment]
    moto.server.main(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
