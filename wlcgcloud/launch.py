"""Running a launch plan (wlcgcloud.launch_plan): launch, resume, wait, roll back.

`run_plan` records each profile's part in the ledger as an intent before its first API call,
lists what the fleet already has on the cloud (so a re-run after a crash, even a SIGKILL,
resumes instead of duplicating), creates only what is missing, and records every instance the
moment the cloud returns it. Partial failure is normal at this size: what failed stays beside
what launched, and the ledger stays true.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from wlcgcloud import times
from wlcgcloud.errors import CloudError, Interrupted, UsageError, WlcgError
from wlcgcloud.fleet import remember_names
from wlcgcloud.launch_plan import LaunchPlan, ProfilePlan
from wlcgcloud.providers.base import Instance, PartialLaunch, UncertainLaunch
from wlcgcloud.times import human_duration, stamp

if TYPE_CHECKING:
    from wlcgcloud.ledger import Ledger

WAIT_POLL = 3.0  # seconds between listings while --wait waits
SETTLED = ("running", "error", "terminated", "stopped")

# progress(profile, what, done, total): "launching", "launched", "waiting", "resumed"
Progress = Callable[[str, str, int, int], None]


@dataclass
class ProfileLaunched:
    """One profile's outcome: the instances it has for this launch, those an earlier run made included."""

    plan: ProfilePlan
    instances: list[Instance] = field(default_factory=list)
    error: WlcgError | None = None
    found: set[str] = field(default_factory=set)  # ids of instances an earlier run had made, found by the fleet's tags
    uncertain: int = 0  # instances this run may have made that no answer showed (a re-run adopts them)

    @property
    def resumed(self) -> int:
        """Instances it has that an earlier run made."""
        return sum(1 for i in self.instances if i.id in self.found)

    @property
    def launched(self) -> int:
        """Instances it has that this run started."""
        return len(self.instances) - self.resumed

    def to_dict(self) -> dict[str, Any]:
        requested = self.plan.request.count
        return {"profile": self.plan.name, "requested": requested, "launched": self.launched,
                "failed": max(0, requested - len(self.instances) - self.uncertain), "resumed": self.resumed,
                "uncertain": self.uncertain}  # fmt: skip


@dataclass
class Launched:
    """What a launch did, in the contract's `launch -o json` shape."""

    fleet: str
    results: list[ProfileLaunched]
    rolled_back: int = 0
    waited: str | None = None  # "running", or why the wait ended early
    interrupted: bool = False  # Ctrl-C: the result of what had been sent (exit 130)

    def to_dict(self) -> dict[str, Any]:
        rows = [r.to_dict() for r in self.results]
        out: dict[str, Any] = {
            "fleet": self.fleet,
            "requested": sum(r["requested"] for r in rows),
            "launched": sum(r["launched"] for r in rows),
            "failed": sum(r["failed"] for r in rows),
            "resumed": sum(r["resumed"] for r in rows),
            "uncertain": sum(r["uncertain"] for r in rows),
            "profiles": rows,
            "instances": [i.to_dict() for r in self.results for i in r.instances],
            "errors": [{"profile": r.plan.name, "message": str(r.error)} for r in self.results if r.error],
        }
        if self.rolled_back:
            out["rolled_back"] = self.rolled_back
        return out

    def exit_code(self) -> int:
        """0 when everything launched (and, with --wait, ran); 7 when some did, or --wait saw not all of
        them running; else the first failure's code; 130 when interrupted."""
        if self.interrupted:
            return Interrupted.exit_code
        failures = [r.error for r in self.results if r.error]
        if not failures:
            return 7 if self.waited and self.waited != "running" else 0
        if self.rolled_back:
            # Nothing is left: the launch failed as a whole, for the cloud's reason (a partial one is 6).
            return 6 if failures[0].exit_code == 7 else failures[0].exit_code
        if any(r.instances for r in self.results):
            return 7
        return failures[0].exit_code


# Planning


# Launching


BEAT = 0.5  # seconds between a launch's heartbeats in the ledger


@contextmanager
def _heartbeat(ledger: Ledger, launch_id: int, timeout: float) -> Iterator[None]:
    """While a profile's calls are made, keep the ledger saying until when they may reach the cloud.

    Every call is bounded by the profile's timeout, so a call sent before the process died lands
    (if at all) within a timeout of its last heartbeat; a re-run waits for that (`_calls_of_others`).
    """
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                ledger.calls_may_land_until(launch_id, time.time() + timeout + 2 * BEAT)
            except WlcgError:  # the ledger stayed unreachable past the retries: the launch's next write says so
                return
            if stop.wait(BEAT):
                return

    thread = threading.Thread(target=beat, daemon=True, name="ledger-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _calls_of_others(ledger: Ledger, fleet: str, p: ProfilePlan, launch_id: int, tell: Progress) -> bool:
    """Before listing the fleet to resume it: refuse while another live process launches it here,
    and wait while calls of a killed one may still land (they would not be listed yet). Whether it waited."""
    now = time.time()
    landing = [r for r in ledger.on_the_wire(fleet, p.name, now) if r.id != launch_id]
    live = [r for r in landing if _alive(r.owner)]
    if live:
        raise UsageError(
            f"another wlcgcloud ({live[0].owner}) is launching fleet '{fleet}' on profile '{p.name}' right now.",
            "Wait for it to finish (or stop it), then run this again.",
        )
    if landing:
        until = max(r.calls_until or now for r in landing)
        tell(p.name, f"waiting {until - now:.0f} s for calls of an interrupted launch to land", 0, p.request.count)
        time.sleep(max(0.0, until - time.time()))
    return bool(landing)


LISTING_LAG = 300.0  # seconds: how long a new instance may be missing from a cloud's filtered listing


def _not_listed_yet(ledger: Ledger, fleet: str, p: ProfilePlan, listed: set[str]) -> list[Instance]:
    """Instances the ledger saw made moments ago (by another run, maybe on another machine) that the
    cloud's listing does not show yet: EC2's DescribeInstances is eventually consistent, and a re-run
    that waited for a fleet's lock lists it seconds after the holder made them. Asked for by id."""
    recent = stamp(times.now() - timedelta(seconds=LISTING_LAG))
    rows = [r for r in ledger.instances(fleet=fleet, profile=p.name)
            if r["id"] not in listed and not r["ended_at"] and r["last_seen"] >= recent]  # fmt: skip
    found = [p.provider.instance(r["id"]) for r in rows]
    return [i for i in found if i is not None and _made_for(i, p) and i.state != "terminated"]


def _alive(owner: str | None) -> bool:
    """Whether `owner` (host:pid, as the ledger records it) is another process still running here."""
    host, _, pid = (owner or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


def run_plan(
    plan: LaunchPlan,
    ledger: Ledger,
    *,
    progress: Progress | None = None,
    wait: timedelta | None = None,
    rollback: bool = False,
    resize: bool = False,
    listed: Mapping[str, Sequence[Instance]] | None = None,
    listed_at: float = 0.0,
    rolling: bool = False,
) -> Launched:
    """Launch the plan on each profile in parallel, resuming what an earlier attempt made.

    Raises UsageError (exit 2) when the fleet already holds another launch (use `fleet scale`,
    which passes `resize` to grow a fleet to the plan's count).
    """
    tell = progress or (lambda *_: None)
    if not resize:
        _same_launch(ledger, plan)
    # Every attempt records its intent before its first API call, so when the ledger knows
    # nothing of this fleet on a profile, nothing can exist there from here and the listing is
    # skipped (on a big account it is the slowest call of a launch). A re-run, a resize, or a
    # fleet the ledger learnt of through `fleet reconcile` (say, after losing the machine that
    # launched it) lists the fleet first and launches only the rest.
    earlier = {r.profile for r in ledger.launches(plan.fleet)} | {
        r["profile"] for r in ledger.instances(fleet=plan.fleet)
    }
    intents = {p.name: ledger.record_intent(_intent(plan, p)) for p in plan.profiles}

    def existing(p: ProfilePlan, waited: bool) -> list[Instance]:
        if p.name not in earlier and not resize:
            return []
        # A caller that holds the fleet's lock and has just listed it (fleet maintain) gives its listing
        # (taken at `listed_at`), unless calls of a killed launch may have landed since: not in it.
        given = listed.get(p.name) if listed is not None else None
        if (
            given is not None
            and not waited
            and not any(r.id != intents[p.name] for r in ledger.on_the_wire(plan.fleet, p.name, listed_at))
        ):
            found = given
        else:
            found = p.provider.instances(fleet=plan.fleet)
        here = [i for i in found if _made_for(i, p) and i.state != "terminated"]
        return here + _not_listed_yet(ledger, plan.fleet, p, {i.id for i in here})

    def one(p: ProfilePlan) -> ProfileLaunched:
        launch_id = intents[p.name]
        result = ProfileLaunched(p)
        try:
            waited = _calls_of_others(ledger, plan.fleet, p, launch_id, tell)
            with _heartbeat(ledger, launch_id, p.provider.profile.timeout):
                _launch_on(p, launch_id, result, waited)
        except WlcgError as exc:  # refused: another launch of the fleet is running
            result.error = exc
        result.error = result.error or ledger.lock_lost(plan.fleet)
        state = "launched" if not result.error else ("partial" if result.instances else "failed")
        if result.uncertain:
            state = "intent"  # stays open: what it may have made is adopted by the next listing of the fleet
        ledger.finish(launch_id, state, str(result.error) if result.error else None, uncertain=result.uncertain)
        remember_names(p.name, result.instances)
        return result

    def _launch_on(p: ProfilePlan, launch_id: int, result: ProfileLaunched, waited: bool) -> None:
        try:
            have = existing(p, waited)
            foreign = [i for i in have if i.tags.get("wlcg:image") not in (None, p.request.tags["wlcg:image"])]
            if foreign and not rolling:  # fleet maintain replaces them a few a cycle: a spec's new image
                raise UsageError(
                    f"fleet '{plan.fleet}' on profile '{p.name}' holds instances of another image "
                    f"({foreign[0].tags.get('wlcg:image')}).",
                    "Choose another --fleet, or change the fleet with 'wlcgcloud fleet scale'.",
                )
            ledger.record_instances(have, launch_id)
            if p.name in earlier or resize:  # the fleet was listed: what earlier runs may have made is known now
                ledger.adopted(p.name, launch_id, fleet=plan.fleet)
            result.instances, result.found = list(have), {i.id for i in have}
            if have:
                tell(p.name, "resumed", len(have), p.request.count)
            if p.request.count > sum(1 for i in have if i.drain_by is None):  # draining: on its way out
                _create_missing(p, plan.fleet, have, launch_id, ledger, result, tell)
        except WlcgError as exc:
            result.error = exc  # what was found or made before stays in the result and the ledger

    results, interrupted = _on_each_profile(plan, one)
    usage = [r.error for r in results if isinstance(r.error, UsageError)]
    if usage and not interrupted:
        raise usage[0]
    outcome = Launched(plan.fleet, results, interrupted=interrupted)
    if interrupted:
        return outcome
    if rollback and any(r.error for r in results):
        outcome.rolled_back = _roll_back(results, ledger)
    elif wait is not None:
        outcome.waited = _wait(results, wait, ledger, tell)
    return outcome


def _create_missing(
    p: ProfilePlan, fleet: str, have: list[Instance], launch_id: int, ledger: Ledger,
    result: ProfileLaunched, tell: Progress,
) -> None:  # fmt: skip
    """Create what the profile still lacks of its count; each instance is recorded as soon as its id is known."""
    counted = sum(1 for i in have if i.drain_by is None)  # a draining VM is no longer the fleet's
    missing = p.request.count - counted
    tell(p.name, "launching", counted, p.request.count)
    # Names continue after the ones an earlier attempt used (OpenNebula names each VM).
    pattern = re.compile(rf"{re.escape(fleet)}-(\d+)")
    numbers = [int(m[1]) for i in have if (m := pattern.fullmatch(i.name))]
    # What the fleet here holds and has held: the instances listed, and those the ledger saw end. A retry of
    # this attempt (killed, run again) sees the same and gets the same token, so it adopts what the attempt
    # made, even when the ledger recorded those ids but the cloud lists them not yet; a later attempt, after
    # the fleet changed, does not.
    ended = {r["id"] for r in ledger.instances(fleet=fleet, profile=p.name) if r["ended_at"]}
    known = {i.id for i in have} | ended
    basis = hashlib.sha256(" ".join(sorted(known)).encode()).hexdigest()[:16]
    request = replace(p.request, count=missing, first=max(numbers, default=0) + 1, basis=basis)
    seen: dict[str, Instance] = {}

    def record(known: list[Instance]) -> None:
        ledger.record_instances(known, launch_id)
        seen.update((i.id, i) for i in known)
        lost = ledger.lock_lost(fleet)  # another client changes the fleet now: make no more of it
        if lost:
            raise lost

    try:
        made = p.provider.create(request, record)
    except PartialLaunch as exc:
        made, result.error = exc.instances, exc
    except UncertainLaunch as exc:
        made, result.error, result.uncertain = exc.instances, exc, exc.unknown
    except CloudError as exc:
        if ledger.lock_lost(fleet) is None:
            raise
        made, result.error = list(seen.values()), exc
    # What `record` wrote as the ids came is not written again (a second write of 200 rows, for nothing).
    ledger.record_instances([i for i in made if seen.get(i.id) is not i], launch_id)
    result.instances += made
    tell(p.name, "launched", len(made), missing)


def _on_each_profile(
    plan: LaunchPlan, one: Callable[[ProfilePlan], ProfileLaunched]
) -> tuple[list[ProfileLaunched], bool]:
    """`one` for every profile of the plan in parallel: the results, and whether Ctrl-C came."""
    interrupted = False
    with ThreadPoolExecutor(max_workers=min(8, len(plan.profiles)), thread_name_prefix="launch") as pool:
        futures = [pool.submit(one, p) for p in plan.profiles]
        try:
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            # Ctrl-C: calls already sent cannot be taken back; let each profile finish and record
            # what it made, so the ledger is true and the partial result can be reported.
            interrupted = True
            for future in futures:
                future.cancel()
        results = [f.result() for f in futures if not f.cancelled()]
    return results, interrupted


def _made_for(instance: Instance, p: ProfilePlan) -> bool:
    """An instance of this fleet made for this profile (another tool may leave wlcg:profile out)."""
    return instance.tags.get("wlcg:profile") in (None, p.name)


def _intent(plan: LaunchPlan, p: ProfilePlan) -> dict[str, Any]:
    tags = p.request.tags
    return {
        "fleet": plan.fleet,
        "profile": p.name,
        "provider": p.provider.profile.provider,
        "request_token": p.request.token,
        "image": tags["wlcg:image"] if tags["wlcg:image"] != "none" else p.decision.cloud_image,
        "cloud_image": p.decision.cloud_image,
        "endorsement": tags["wlcg:endorsement"],
        "flavor": p.request.flavor,
        "requested": p.request.count,
        "experiment": tags.get("wlcg:experiment"),
        "credential": tags.get("wlcg:credential"),
        "credential_subject": plan.credential.subject if plan.credential else None,
        "credential_fqan": (plan.credential.groups[0] if plan.credential and plan.credential.groups else None),
        "lease_until": tags.get("wlcg:lease-until"),
        "options": plan.options.recorded(),
    }


def _same_launch(ledger: Ledger, plan: LaunchPlan) -> None:
    """A fleet name already used by another launch (other image, flavor or count) is exit 2.

    Compared with the fleet's latest launch on each profile, so a fleet that `fleet scale`
    resized resumes under its new count.
    """
    latest = {r.profile: r for r in ledger.launches(plan.fleet)}  # in order: the last one wins
    for earlier in latest.values():
        for p in plan.profiles:
            if earlier.profile != p.name:
                continue
            was = (earlier.cloud_image, earlier.flavor, earlier.options.get("count"))
            now = (p.decision.cloud_image, p.request.flavor, plan.options.count)
            if was != now:
                raise UsageError(
                    f"fleet '{plan.fleet}' was launched on profile '{p.name}' with image {was[0]}, flavor {was[1]}, "
                    f"count {was[2]}; this launch differs.",
                    f"Resize it with 'wlcgcloud fleet scale {plan.fleet} --count N', or choose another --fleet.",
                )


def _roll_back(results: list[ProfileLaunched], ledger: Ledger) -> int:
    """Terminate everything this launch has, because the whole fleet could not be had."""
    done = 0
    for r in results:
        if not r.instances:
            continue
        try:
            outcomes = r.plan.provider.terminate([i.id for i in r.instances])
        except WlcgError:
            continue  # still there: the result and the ledger keep them
        gone = [o.id for o in outcomes if o.error is None]
        ledger.mark_ended(r.plan.name, gone)
        done += len(gone)
        r.instances = [i for i in r.instances if i.id not in gone]
    return done


def _wait(results: list[ProfileLaunched], limit: timedelta, ledger: Ledger, tell: Progress) -> str:
    """Poll until every launched instance runs (or failed), or `limit` passes; update the results."""
    deadline = time.monotonic() + limit.total_seconds()
    pending = {r.plan.name: {i.id for i in r.instances} for r in results}
    while True:
        for r in results:
            if not pending[r.plan.name]:
                continue
            try:
                seen = {i.id: i for i in r.plan.provider.instances(fleet=r.instances[0].fleet)}
            except WlcgError:
                continue  # a listing that fails now may answer next time; the deadline bounds it
            ledger.record_instances([seen[i] for i in pending[r.plan.name] if i in seen])
            r.instances = [seen.get(i.id, i) for i in r.instances]
            broken = [i for i in r.instances if i.state in ("error", "terminated")]
            if broken:
                r.instances = [i for i in r.instances if i not in broken]
                if r.error is None:
                    r.error = CloudError(f"profile '{r.plan.name}': {len(broken)} instance(s) went to "
                                         f"{broken[0].state} ({broken[0].provider_state}) after launch.")  # fmt: skip
            pending[r.plan.name] = {i.id for i in r.instances if i.state not in SETTLED}
            running = sum(1 for i in r.instances if i.state == "running")
            tell(r.plan.name, "waiting", running, r.plan.request.count)
        if not any(pending.values()):
            return "running"
        if time.monotonic() > deadline:
            left = sum(len(v) for v in pending.values())
            return f"{left} instance(s) not running after {human_duration(limit.total_seconds())}"
        time.sleep(WAIT_POLL)
