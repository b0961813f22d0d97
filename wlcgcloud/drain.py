"""Draining VMs by a deadline, and learning from each VM why it ended (docs/vm-side.md).

A drain is one key on the VM, `wlcg:drain-by` = the deadline, set through the cloud's own
metadata where the VM's agent reads it (EC2 instance tags, Nova server metadata, OpenNebula's
USER_TEMPLATE through OneGate). The agent of a shipped bootstrap stops taking work, moves the
Machine Features `shutdowntime` to the deadline, and powers off when its work is done or the
deadline comes, leaving a HEPiX shutdown message. A draining VM is never terminated before its
deadline; past it (and a grace for the VM's own power-off), `fleet reap` and `fleet maintain`
terminate it. VMs without an agent (`wlcg:drainable` absent) are terminated instead of drained.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from wlcgcloud.errors import UsageError, WlcgError
from wlcgcloud.fleet import by_profile, newest_first
from wlcgcloud.providers import for_each_profile
from wlcgcloud.providers.base import Instance, Outcome, Provider
from wlcgcloud.shutdown import ShutdownMessage, parse_stored
from wlcgcloud.times import stamp

if TYPE_CHECKING:
    from wlcgcloud.config import Profile
    from wlcgcloud.ledger import Ledger

log = logging.getLogger(__name__)
DRAIN_TAG = "wlcg:drain-by"
ALIVE = ("pending", "running")
GRACE = timedelta(minutes=10)  # past a deadline, the VM's own power-off and message get this long before we terminate
READS = 32  # shutdown messages one call reads per profile (a console read each, on EC2 and OpenStack)
PARALLEL_READS = 8


@dataclass
class Drained:
    """One line of `fleet drain`'s answer."""

    instance: Instance
    deadline: datetime
    error: str | None = None
    code: int = 6  # the exit code this failure alone would give

    def to_dict(self) -> dict[str, object]:
        inst = self.instance
        return {
            "id": inst.id, "name": inst.name, "profile": inst.profile, "fleet": inst.fleet,
            "drain_by": stamp(self.deadline), "agent": drainable(inst), "asked": self.error is None,
            "error": self.error,
        }  # fmt: skip


def drainable(inst: Instance) -> bool:
    """It carries the agent of a shipped bootstrap, which acts on a drain request."""
    return inst.tags.get("wlcg:drainable") == "yes"


def draining(inst: Instance) -> bool:
    """Alive, and asked to drain: on its way out, no longer counted as the fleet's."""
    return inst.state in ALIVE and inst.drain_by is not None


def overdue(instances: Iterable[Instance], now: datetime) -> list[Instance]:
    """Drained VMs to terminate: powered off (done), or alive past the deadline and the grace for
    their own power-off."""
    return [i for i in instances if i.drain_by is not None  # now - GRACE: a deadline in year 9999 must not overflow
            and (i.state == "stopped" or (i.state in ALIVE and i.drain_by <= now - GRACE))]  # fmt: skip


def choose(instances: Sequence[Instance], count: int | None, ids: Sequence[str]) -> list[Instance]:
    """Which VMs `fleet drain` asks: the ids given (alive ones of the fleet; asking again moves a deadline),
    else `count` of those not draining yet: running ones first, the newest first (least work lost)."""
    alive = [i for i in instances if i.state in ALIVE]
    if ids:
        known = {i.id: i for i in alive}
        missing = [i for i in ids if i not in known]
        if missing:
            fleet = next((i.fleet for i in instances if i.fleet), None) or "FLEET"
            raise UsageError(
                f"{missing[0]}: not a live instance of fleet {fleet}.", f"See 'wlcgcloud fleet show {fleet}'."
            )
        return [known[i] for i in dict.fromkeys(ids)]
    if count is None:
        raise UsageError("say how many to drain (--count N) or which (INSTANCE...).")
    # Running ones first: one still building has no work to finish (and Nova refuses its metadata until built).
    free = newest_first(i for i in alive if not draining(i))
    return sorted(free, key=lambda i: i.state != "running")[:count]


def request(profiles: Sequence[Profile], victims: Sequence[Instance], deadline: datetime) -> list[Drained]:
    """Ask `victims` to drain by `deadline`, each profile's in parallel; one line per VM. A VM asked before
    keeps an earlier deadline: its agent never moves one later."""
    results: list[Drained] = []
    by_deadline: dict[datetime, list[Instance]] = {}
    for inst in victims:
        by_deadline.setdefault(min(deadline, inst.drain_by or deadline), []).append(inst)
    for when, group in by_deadline.items():
        targets = by_profile(group)
        chosen = [p for p in profiles if p.name in targets]
        value = {DRAIN_TAG: stamp(when)}

        def ask(p: Provider, t: dict[str, list[Instance]] = targets, v: dict[str, str] = value) -> list[Outcome]:
            return p.set_tags([i.id for i in t[p.name]], v)

        for answer in for_each_profile(chosen, ask):
            batch = targets[answer.profile.name]
            if answer.error is not None:
                results += [Drained(i, when, answer.error.message, answer.error.exit_code) for i in batch]
                continue
            outcomes = {o.id: o for o in answer.value or []}
            for inst in batch:
                outcome = outcomes.get(inst.id, Outcome(inst.id, "no answer from the cloud", 6))
                results.append(Drained(inst, when, outcome.error, outcome.exit_code or 6))
    return results


def read_reasons(profiles: Sequence[Profile], ended: Iterable[Instance], ledger: Ledger) -> dict[str, ShutdownMessage]:
    """The shutdown message of each VM that ended, by id: from the ledger when read before, else from
    its cloud (a console line; OpenNebula's OneGate attributes), recorded in the ledger as it is read.

    At most READS new reads per profile a call; a VM whose console cannot be read has no message.
    """
    out: dict[str, ShutdownMessage] = {}
    todo: dict[str, list[Instance]] = {}
    for name, group in by_profile(ended).items():
        rows = {r["id"]: r for r in ledger.instances(profile=name, ids=[i.id for i in group])}
        unknown = [i for i in group if i.id not in rows]
        if unknown:  # first seen already ended: a row to keep its message in
            ledger.record_instances(unknown)
        for inst in group:
            row = rows.get(inst.id) or {}
            known = parse_stored(row.get("end_code"), row.get("end_reason"))
            if known is not None:
                out[inst.id] = known
            else:
                todo.setdefault(name, []).append(inst)
    chosen = [p for p in profiles if p.name in todo]
    for answer in for_each_profile(chosen, lambda p: _read(p, todo[p.name][:READS])):
        found = answer.value or {}
        out.update(found)
        ledger.record_end_reasons(answer.profile.name, {i: (m.code, m.text) for i, m in found.items()})
    return out


def _read(provider: Provider, instances: Sequence[Instance]) -> dict[str, ShutdownMessage]:
    def one(inst: Instance) -> tuple[str, ShutdownMessage | None]:
        try:
            return inst.id, provider.shutdown_message(inst)
        except WlcgError:  # console gone with the VM, or not readable: no message, the lifetime decides
            return inst.id, None
        except Exception as exc:  # what a VM wrote must not stop a cycle: one message lost, and said so
            log.warning("profile '%s': could not read why %s ended: %s", provider.name, inst.id, exc)
            return inst.id, None

    with ThreadPoolExecutor(max_workers=PARALLEL_READS, thread_name_prefix="reasons") as pool:
        return {i: m for i, m in pool.map(one, instances) if m is not None}
