"""moto's EC2 server on 127.0.0.1 with its clock in a file, for the fleet simulation.

    python bench/sim/ec2_peer.py --port 0 --clock-file CLOCK    -> prints "READY http://127.0.0.1:PORT"

The only changes to moto are its clock (an instance's LaunchTime and state-transition reasons
come from the simulation's clock file instead of the wall clock) and paths of our own, outside
the AWS API, for the simulation's driver: ``GET /sim/calls`` (the EC2 actions asked for so far,
by name), ``POST /sim/calls/reset``, ``GET /sim/forget?before=T`` (drop instances terminated before T, as
EC2 forgets them after about an hour), and ``GET /sim/instances`` (each instance's id, state and
launch time, read from moto's backend: the driver's view of the world, without the seconds
DescribeInstances takes at 2,000 instances). Everything else is moto's own wire behaviour.
"""

from __future__ import annotations

import argparse
import io
import json
import mmap
import signal
import socket
import struct
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs


def _clocked(path: str) -> Callable[[], datetime]:
    fh = open(path, "rb")  # noqa: SIM115 - kept open for the life of the process
    clock = mmap.mmap(fh.fileno(), 8, access=mmap.ACCESS_READ)

    def utcnow() -> datetime:  # moto's own convention: naive UTC
        return datetime.fromtimestamp(struct.unpack_from("<d", clock, 0)[0], UTC).replace(tzinfo=None)

    return utcnow


class Counting:
    """WSGI middleware: counts EC2 actions (the Action of a query-protocol request) and serves /sim/."""

    def __init__(self, app: Any) -> None:
        self.app, self.calls, self.lock = app, Counter[str](), threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path.startswith("/sim/"):
            if path == "/sim/calls/reset":
                with self.lock:
                    self.calls.clear()
            if path == "/sim/instances":
                body = json.dumps(_instances()).encode()
            elif path == "/sim/forget":  # as EC2 does, about an hour after it terminated them
                body = json.dumps({"forgot": _forget(float(parse_qs(environ.get("QUERY_STRING", ""))["before"][0]))})
                body = body.encode()
            else:
                with self.lock:
                    body = json.dumps(dict(self.calls)).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        action = (
            parse_qs(raw.decode("latin-1")).get("Action")
            or parse_qs(environ.get("QUERY_STRING", "")).get("Action")
            or ["?"]
        )[0]
        with self.lock:
            self.calls[action] += 1
        environ["wsgi.input"] = io.BytesIO(raw)
        return self.app(environ, start_response)


def _instances() -> list[dict[str, Any]]:
    from moto.ec2.models import ec2_backends

    out = []
    for regions in list(ec2_backends.values()):
        for backend in list(regions.values()):
            for reservation in list(backend.reservations.values()):
                for inst in reservation.instances:
                    launched = inst.launch_time
                    when = launched.replace(tzinfo=UTC).timestamp() if isinstance(launched, datetime) else None
                    out.append({"id": inst.id, "state": inst._state.name, "launched": when})
    return out


def _forget(before: float) -> int:
    """Drop instances terminated before `before` (Unix seconds of the simulation's clock) from moto's
    backend: EC2 lists a terminated instance for about an hour, moto for ever, and its listings
    would grow through a simulated week."""
    from moto.ec2.models import ec2_backends

    gone = 0
    for regions in list(ec2_backends.values()):
        for backend in list(regions.values()):
            for rid, reservation in list(backend.reservations.items()):
                keep = []
                for inst in reservation.instances:
                    when = _terminated_at(inst)
                    if inst._state.name == "terminated" and when is not None and when < before:
                        gone += 1
                    else:
                        keep.append(inst)
                reservation.instances = keep
                if not keep:
                    del backend.reservations[rid]
    return gone


def _terminated_at(inst: Any) -> float | None:
    """When moto terminated it, from its state-transition reason ("User initiated (YYYY-MM-DD HH:MM:SS UTC)")."""
    reason = str(getattr(inst, "_reason", "") or "")
    if "(" not in reason:
        return None
    try:
        return datetime.strptime(reason.split("(")[1][:19], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--clock-file", required=True)
    args = parser.parse_args(argv)
    import moto.core.utils
    from moto.ec2.models import instances
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import make_server

    utcnow = _clocked(args.clock_file)
    instances.utcnow = utcnow  # type: ignore[attr-defined]
    moto.core.utils.utcnow = utcnow  # type: ignore[assignment]
    port = args.port
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    server = make_server("127.0.0.1", port, Counting(DomainDispatcherApplication(create_backend_app)), threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"READY http://127.0.0.1:{port}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
