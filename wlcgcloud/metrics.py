"""`fleet maintain --metrics-port`: the maintainer's figures where sites already look, for Prometheus.

Per fleet and profile: the target, running and starting VMs, VMs ended (by why), created and
terminated (by why), and the back-off left; per fleet: whether the last cycle met the target and
how long it took. The official prometheus_client serves them, from its own registry, on the
address given (127.0.0.1 unless told otherwise); it is imported only when asked for.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from wlcgcloud.errors import UsageError

LABELS = ("fleet", "profile")


class FleetMetrics:
    def __init__(self, port: int, address: str = "127.0.0.1") -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics, start_http_server

        disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series beside each counter
        r = self.registry = CollectorRegistry()
        self.target = Gauge("wlcgcloud_fleet_target", "VMs wanted on the profile now", LABELS, registry=r)
        self.running = Gauge("wlcgcloud_fleet_running", "VMs running", LABELS, registry=r)
        self.starting = Gauge("wlcgcloud_fleet_starting", "VMs starting (pending)", LABELS, registry=r)
        self.ended = Counter("wlcgcloud_fleet_ended", "VMs that ended, by why", (*LABELS, "reason"), registry=r)
        self.created = Counter("wlcgcloud_fleet_launched", "VMs the maintainer launched", LABELS, registry=r)
        self.terminated = Counter("wlcgcloud_fleet_terminated", "VMs the maintainer terminated, by why",
                                  (*LABELS, "reason"), registry=r)  # fmt: skip
        self.backoff = Gauge("wlcgcloud_fleet_backoff_seconds", "Seconds the profile still backs off (0: it does not)",
                             LABELS, registry=r)  # fmt: skip
        self.met = Gauge("wlcgcloud_fleet_target_met", "1 when the last cycle left the fleet at its target", ("fleet",),
                         registry=r)  # fmt: skip
        self.cycle = Gauge("wlcgcloud_fleet_cycle_seconds", "How long the last cycle took", ("fleet",), registry=r)
        try:
            self.server, self.thread = start_http_server(port, addr=address, registry=r)
        except OSError as exc:
            raise UsageError(f"--metrics-port {port}: cannot serve metrics on {address}:{port} ({exc.strerror}).",
                             "Choose another port, or stop what listens there.") from None  # fmt: skip

    def observe(self, cycle: dict[str, Any]) -> None:
        """One cycle's figures (wlcgcloud.maintain.Cycle.to_dict())."""
        fleet = cycle["fleet"]
        self.met.labels(fleet).set(1 if cycle["met"] else 0)
        self.cycle.labels(fleet).set(cycle["seconds"])
        started = datetime.fromisoformat(cycle["started"].replace("Z", "+00:00")).timestamp()
        for p in cycle["profiles"]:
            labels = (fleet, p["profile"])
            self.target.labels(*labels).set(p["target"])
            self.running.labels(*labels).set(p["running"])
            self.starting.labels(*labels).set(p["starting"])
            self.created.labels(*labels).inc(p["created"])
            for reason, count in p["ended"].items():
                self.ended.labels(*labels, reason).inc(count)
            for reason, count in p["terminated"].items():
                self.terminated.labels(*labels, reason).inc(count)
            until = p["backoff_until"]
            left = datetime.fromisoformat(until.replace("Z", "+00:00")).timestamp() - started if until else 0.0
            self.backoff.labels(*labels).set(max(0.0, left))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
