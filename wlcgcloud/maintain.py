"""Holding a fleet at its target: one cycle of `wlcgcloud fleet maintain` (the vacuum model, without a batch system).

Each cycle lists the fleet on every profile of its spec in parallel, then:
- records what ended since the last cycle, and why as far as the cloud says (terminated, error,
  powered off, lease over, gone);
- terminates VMs stuck in pending or error longer than `stuck_after`, powered off, or past their lease;
- backs a profile off, exponentially up to `backoff_max`, when its VMs fizzle (end younger than
  `fizzle_after`) or it fails to create (quota, auth, cloud down), while the others carry the target;
- spreads the target over the usable profiles by share (wlcgcloud.fleet_spec.targets), terminates
  the surplus oldest first, and creates the deficit through the same launch path as `launch`
  (ledger intent first, tags, resume), at most `create_per_cycle` VMs per cycle. The credential
  to forward is found again for every creation, so new VMs get the current one.
What it saw and decided is recorded per profile in the ledger (`fleet status` reads it there).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wlcgcloud import drain, times
from wlcgcloud import fleet as fleets
from wlcgcloud.cycle_state import Cycle, ProfileCycle, RunTime, carried, judgement, state_row
from wlcgcloud.errors import UsageError, WlcgError
from wlcgcloud.fleet_spec import FleetSpec, targets
from wlcgcloud.launch import run_plan
from wlcgcloud.launch_plan import LaunchOptions, plan_launch
from wlcgcloud.providers.base import aware
from wlcgcloud.times import human_duration, stamp

if TYPE_CHECKING:
    from wlcgcloud.config import Profile
    from wlcgcloud.ledger import Ledger
    from wlcgcloud.providers.base import Instance
    from wlcgcloud.shutdown import ShutdownMessage

ALIVE = ("pending", "running")
GONE_AFTER = 300.0  # seconds a VM the ledger saw may be missing from a listing before it counts as gone (as launch)


def cycle(spec: FleetSpec, profiles: Sequence[Profile], ledger: Ledger, given: RunTime, dry_run: bool = False) -> Cycle:
    """One cycle of holding `spec`'s fleet at its target (see the module's docstring)."""
    started = times.now()
    clock = time.monotonic()
    now = started.timestamp()
    listed_at = time.time()  # on the wire's clock, as launches record when their calls may land
    found, gathered = fleets.fleet_instances(profiles, [spec.fleet])
    failed = {name: error for name, error in gathered.failures}
    listed: dict[str, list[Instance]] = {p.profile: [] for p in spec.places}
    taken: set[tuple[str, str]] = set()
    for inst in found:  # a VM is its profile's, as launch counts it: two profiles may share an account
        if inst.tags.get("wlcg:profile") in (None, inst.profile) and (inst.provider, inst.id) not in taken:
            taken.add((inst.provider, inst.id))
            listed.setdefault(inst.profile, []).append(inst)
    before = ledger.cycle_state(spec.fleet)
    parts = {p.profile: carried(p.profile, before.get(p.profile)) for p in spec.places}
    doomed: dict[str, list[tuple[Instance, str]]] = {}
    for name, part in parts.items():
        if name in failed:
            part.error = str(failed[name])
            _back_off(part, spec, now, f"the cloud did not answer: {failed[name]}")
            continue  # it holds nothing as far as this cycle knows: the others carry the target
        doomed[name] = _look_at(spec, part, listed[name], ledger, started, dry_run,
                                lambda ended: drain.read_reasons(profiles, ended, ledger))  # fmt: skip
    if not dry_run:  # after looking: what the ledger had not seen end before this cycle ended since the last
        ledger.record_instances(found)
    usable = {n for n, part in parts.items() if n not in failed and not part.backing_off(now)}
    problem, forwarded = _credential_problem(spec, given, started)
    if problem is None and forwarded:
        _retire_ending_credentials(spec, parts, listed, doomed, usable, started)
    if problem is None:
        _retire_other_images(spec, parts, listed, doomed, usable)
    want = targets(spec, usable, {n: part.alive for n, part in parts.items()})
    for name, part in parts.items():
        part.target = want[name]
    order = [p.profile for p in spec.places]
    # The fleet as a whole decides how many go or come; the shares only decide where. So a profile
    # back from a back-off takes VMs over as others end, and no working VM is killed to make room.
    surplus = 0 if failed else max(0, sum(p.alive for p in parts.values()) - spec.target)
    for name in sorted(usable, key=lambda n: (parts[n].target - parts[n].alive, order.index(n))):
        part = parts[name]
        excess = min(part.alive - part.target, surplus)
        if excess > 0:
            alive = [i for i in listed[name] if _live(i) and i.id not in {v.id for v, _ in doomed[name]}]
            _doom(part, doomed[name], _oldest_first(alive)[:excess], "surplus")
            surplus -= excess
    lost = ledger.lock_lost(spec.fleet)
    if lost is not None:  # another maintainer holds the fleet now: change nothing
        raise lost
    _terminate(spec, profiles, doomed, parts, ledger, dry_run)
    deficit = max(0, spec.target - sum(p.alive for p in parts.values()))
    budget = 0 if problem else min(spec.tuning.creations(spec.target), deficit)
    for name in usable if problem else ():
        parts[name].decisions.append(f"not creating: {problem}")
    for name in sorted(usable, key=lambda n: (parts[n].alive - parts[n].target, order.index(n))):
        part = parts[name]
        more = min(part.target - part.alive, budget)
        if more <= 0:
            continue
        budget -= more
        _create(spec, _profile(profiles, name), part, more, (listed_at, listed[name]), doomed.get(name, []), ledger,
                given, dry_run)  # fmt: skip
    for name in usable:  # a profile whose VMs now outlive the fizzle time is trusted again
        part = parts[name]
        if part.proven and part.error is None and not part.backing_off(times.now().timestamp()):
            part.backoff_level, part.backoff_reason = 0, None
    out = Cycle(spec.fleet, started, list(parts.values()), spec.target, dry_run=dry_run, error=problem)
    out.seconds = time.monotonic() - clock
    if not dry_run:
        ledger.record_cycle(spec.fleet, stamp(started), [state_row(p) for p in out.profiles])
    return out


def check_run_time(spec: FleetSpec, given: RunTime) -> None:
    """What would make every creation fail, said before the first cycle (exit 2): a --set key the
    bootstrap does not take, a user_data file that is not there."""
    from wlcgcloud.context.userdata import bootstraps

    boot = bootstraps().get(spec.options.get("bootstrap") or "")
    if given.settings and boot is None:
        raise UsageError("--set (or WLCGCLOUD_SET_...): the spec names no bootstrap to take settings.")
    known = [s.key for s in boot.settings] if boot else []
    for key in given.settings:
        if key not in known:
            raise UsageError(f"--set {key}: bootstrap '{spec.options.get('bootstrap')}' has no setting '{key}'.",
                             f"It takes {', '.join(known)}.")  # fmt: skip
    user_data = spec.options.get("user_data")
    if user_data and not Path(user_data).expanduser().is_file():
        raise UsageError(f"{spec.path}: user_data {user_data} is not a file.")


def _credential_problem(spec: FleetSpec, given: RunTime, started: datetime) -> tuple[str | None, bool]:
    """Why the credential to forward may not go now (expired, too short for the margin, missing), or None.

    It is read again every cycle, so a renewed proxy or token is what new VMs get. When it may not
    go, nothing is created anywhere and nothing is retired for its sake: the running VMs stay.
    """
    from wlcgcloud.context import credentials

    options = _options(spec, None, 1, given)
    try:  # as the launch will check it (min_lifetime, else the kind's own floor) ...
        choice = credentials.choose(options.credential, proxy=options.proxy, token_file=options.token_file,
                                    min_lifetime=options.min_lifetime, now=started)  # fmt: skip
    except WlcgError as exc:
        return str(exc), False
    credential = choice.credential  # ... and it must outlast the margin that retires VMs, or it would retire its own
    if credential is not None and credential.not_after < started + spec.tuning.credential_margin:
        return (f"the {credential.kind} to forward ends {stamp(credential.not_after)}, within credential_margin "
                f"({human_duration(spec.tuning.credential_margin.total_seconds())}): renew it"), True  # fmt: skip
    return None, credential is not None  # none found (auto): nothing to rotate VMs onto


def _credential_end(inst: Instance) -> datetime | None:
    """When the credential forwarded into `inst` ends (its wlcg:credential tag: kind, fingerprint, end)."""
    parts = (inst.tags.get("wlcg:credential") or "").split()
    try:
        return aware(datetime.fromisoformat(parts[2].replace("Z", "+00:00"))) if len(parts) == 3 else None
    except (ValueError, OverflowError):
        return None


def _retire_ending_credentials(
    spec: FleetSpec, parts: Mapping[str, ProfileCycle], listed: Mapping[str, list[Instance]],
    doomed: Mapping[str, list[tuple[Instance, str]]], usable: set[str], started: datetime,
) -> None:  # fmt: skip
    """Retire VMs whose forwarded credential ends within the margin, the soonest first, never all at once:
    at most half a cycle's creations, so their replacements (with the current credential) come in the same cycle."""
    horizon = started + spec.tuning.credential_margin
    going = {i.id for victims in doomed.values() for i, _ in victims}
    ending = sorted(
        ((end, inst) for name in usable for inst in listed[name]
         if _live(inst) and inst.id not in going and (end := _credential_end(inst)) and end < horizon),
        key=lambda pair: (pair[0], pair[1].id),
    )  # fmt: skip
    for end, inst in ending[: max(1, spec.tuning.creations(spec.target) // 2)]:
        _doom(parts[inst.profile], doomed[inst.profile], [inst], f"credential ends {stamp(end)}")


def _endorsed_id(spec: FleetSpec) -> str | None:
    """The identifier of the endorsed image the spec names (by identifier or title), as VMs are tagged."""
    from wlcgcloud.endorsement import endorsed_images

    if spec.options.get("allow_unendorsed"):
        return None  # tagged "none": which image an unendorsed VM runs is not ours to judge
    found = {image.identifier for _, image in endorsed_images() if spec.image in (image.identifier, image.title)}
    return found.pop() if len(found) == 1 else None


def _retire_other_images(
    spec: FleetSpec, parts: Mapping[str, ProfileCycle], listed: Mapping[str, list[Instance]],
    doomed: Mapping[str, list[tuple[Instance, str]]], usable: set[str],
) -> None:  # fmt: skip
    """A spec whose image changed rolls the fleet over: VMs of another endorsed image are retired oldest
    first, never all at once (with the credential's retirements, at most half a cycle's creations), and
    their replacements, of the spec's image, come in the same cycle."""
    wanted = _endorsed_id(spec)
    if wanted is None:
        return
    going = {i.id for victims in doomed.values() for i, _ in victims}
    retiring = sum(1 for victims in doomed.values() for _, why in victims if why.startswith("credential"))
    room = max(1, spec.tuning.creations(spec.target) // 2) - retiring
    other = [inst for name in usable for inst in listed[name] if _live(inst) and inst.id not in going
             and inst.tags.get("wlcg:image") not in (None, "none", wanted)]  # fmt: skip
    for inst in _oldest_first(other)[: max(0, room)]:
        _doom(parts[inst.profile], doomed[inst.profile], [inst], f"image replaced (was {inst.tags.get('wlcg:image')})")


def _doom(part: ProfileCycle, doomed: list[tuple[Instance, str]], victims: list[Instance], reason: str) -> None:
    """Mark live VMs to be terminated this cycle: they no longer count as running or starting."""
    doomed += [(i, reason) for i in victims]
    part.running -= sum(1 for i in victims if i.state == "running")
    part.starting -= sum(1 for i in victims if i.state != "running")


def _live(inst: Instance) -> bool:
    """Counted as the fleet's: starting or running, and not asked to drain."""
    return inst.state in ALIVE and inst.drain_by is None


def _look_at(
    spec: FleetSpec, part: ProfileCycle, instances: list[Instance], ledger: Ledger, started: datetime, dry_run: bool,
    read: Callable[[list[Instance]], Mapping[str, ShutdownMessage]],
) -> list[tuple[Instance, str]]:  # fmt: skip
    """Count what runs, record what ended since the last cycle (and why, in the VMs' own words where
    they left any), and say which VMs must go: powered off, in error, stuck starting, past their
    lease or their drain's deadline."""
    now = started.timestamp()
    rows = {r["id"]: r for r in ledger.instances(fleet=spec.fleet, profile=part.profile)}
    seen = {i.id for i in instances}
    young = spec.tuning.fizzle_after.total_seconds()
    lives: dict[str, float] = {}  # how long each VM that ended since the last cycle had lived
    # A VM made moments ago may be missing from a listing for a while (EC2's are eventually
    # consistent): it is declared gone only once it was last seen a while ago.
    settled = stamp(datetime.fromtimestamp(now - GONE_AFTER, UTC))
    gone = [r for r in rows.values() if r["id"] not in seen and not r["ended_at"] and r["last_seen"] < settled]
    for row in gone:
        part.ended["gone"] += 1
        lives[row["id"]] = _lived(row.get("launched_at"), now)
    if gone and not dry_run:
        ledger.mark_ended(part.profile, [r["id"] for r in gone], state="gone")
    doomed: list[tuple[Instance, str]] = []
    expired = {i.id for i in fleets.expired_leases(instances, started)}
    overdue = {i.id for i in drain.overdue(instances, started)}
    ended_now = [i for i in instances if i.state in ("stopped", "error") or (i.state == "terminated"
                 and not (rows.get(i.id) or {}).get("ended_at"))]  # fmt: skip
    said = read(ended_now) if ended_now and not dry_run else {}
    stuck = 0
    for inst in instances:
        age = now - inst.launched_at.timestamp() if inst.launched_at else float("inf")  # unknown: never young
        if inst.state == "terminated":
            ended = (rows.get(inst.id) or {}).get("ended_at")
            if not ended:  # not ended as far as the ledger knew before this cycle: it ended since the last
                lease = inst.tags.get("wlcg:lease-until")
                part.ended["lease over" if lease and lease <= stamp(started) else "terminated"] += 1
                lives[inst.id] = age
            continue
        reason = _why_it_must_go(inst, age, expired, spec.tuning.stuck_after.total_seconds())
        if reason is None and inst.id in overdue:
            reason = "drain deadline passed"
        if reason is None and inst.drain_by is not None:
            part.draining += 1
            continue
        if reason is None:
            part.running += inst.state == "running"
            part.starting += inst.state != "running"
            part.proven = part.proven or (inst.state == "running" and age >= young)
            continue
        doomed.append((inst, reason))
        stuck += reason.startswith("pending for")
        if reason in ("powered off", "error") and not (rows.get(inst.id) or {}).get("ended_at"):
            part.ended[reason] += 1  # it ended by itself: counted once, though a slow delete lists it again
            lives[inst.id] = age
    messages = {i: said[i] for i in lives if i in said}
    for inst in instances:  # drained: it ended because we asked, so it has no fate, unless it says the site failed
        word = messages.get(inst.id)
        if inst.drain_by is not None and inst.id in lives and (word is None or word.verdict != "failure"):
            lives.pop(inst.id)
            messages.pop(inst.id, None)
    if lives:  # what the VMs that ended said, and so what judged them; else the last cycle's word stands
        part.said = Counter(str(m) for m in messages.values())
        part.judged_by = "lifetimes" if not messages else "messages" if len(messages) == len(lives) else "both"
    failed = [(i, m) for i, m in messages.items() if m.verdict == "failure"]
    verdicts = {i: _fizzled(lived, messages.get(i), young) for i, lived in lives.items()}
    fizzled = sum(verdicts.values())
    share = _judge(part, lives, verdicts, rows.values(), young, now)
    if failed:  # the site, the grid or a ban: one VM saying so is enough, whatever the others did
        _back_off(part, spec, now, f"{len(failed)} VM(s) ended saying {failed[-1][1]} ({failed[-1][0]})")
        part.decisions.append(f"backing off: {part.backoff_reason}")
    elif fizzled and share >= spec.tuning.fizzle_share:
        idle = [m for m in messages.values() if m.verdict == "no work"]
        _back_off(part, spec, now, f"{len(idle)} VM(s) ended saying {idle[-1]}, {share:.0%} of the last "
                  f"{len(part.fates)} fizzled" if idle else f"{fizzled} VM(s) ended within {human_duration(young)} "
                  f"of starting, {share:.0%} of the last {len(part.fates)} (no work for them, or a broken image or "
                  "site)")  # fmt: skip
        part.decisions.append(f"backing off: {part.backoff_reason}")
    elif stuck:
        _back_off(part, spec, now, f"{stuck} VM(s) never started within "
                  f"{human_duration(spec.tuning.stuck_after.total_seconds())} (no room at the site?)")  # fmt: skip
        part.decisions.append(f"backing off: {part.backoff_reason}")
    return doomed


FIZZLE_WINDOW = 10  # a profile backs off on the share of fizzles among its latest this many VMs whose fate is known


def _fizzled(lived: float, message: ShutdownMessage | None, young: float) -> bool:
    """A VM that ended fizzled when it said so (no work, a failure), or, without a message that
    says otherwise (none, or 700), when it ended younger than `young`."""
    if message is not None and message.verdict != "vm error":
        return message.verdict in ("no work", "failure")
    return lived < young


def _judge(
    part: ProfileCycle, lives: Mapping[str, float], fizzled: Mapping[str, bool],
    rows: Iterable[Mapping[str, Any]], young: float, now: float,
) -> float:  # fmt: skip
    """Add the fates learnt this cycle to the profile's window and give the share of fizzles in it.

    A VM's fate is known when it ends by itself younger than `young` (fizzled: at once), or when it
    has lived `young` (worked: then, whatever it does later). VMs the maintainer itself ended young
    (retired, surplus, stuck) have no fate. So an experiment out of work, whose new VMs all fizzle,
    backs its profiles off however many are made a cycle, while a few idle pilots among many busy
    ones do not; early in a fleet's life, fizzles are known before anything has lived `young`.
    `fizzled` says of each VM that ended this cycle whether it fizzled (`_fizzled`): its own message
    overrules its lifetime (docs/vm-side.md), 100 and 200 fine however young, 300 to 699 fizzled
    however old (an old VM that worked is counted twice: it worked, then no more).
    """
    cutoff = now - young
    since = _epoch(part.last_cycle) - young if part.last_cycle else None
    came_of_age = sorted((r["launched_at"], r["id"]) for r in rows if r.get("launched_at")
                         and (since is None or _epoch(r["launched_at"]) > since) and _epoch(r["launched_at"]) <= cutoff
                         and lives.get(r["id"], young) >= young and not _ended_young(r, young))  # fmt: skip
    part.fates += [0] * len(came_of_age[-FIZZLE_WINDOW:])
    part.fates += [1] * sum(fizzled.values())
    part.fates += [0] * sum(1 for i, lived in lives.items() if lived < young and not fizzled[i])
    part.fates = part.fates[-FIZZLE_WINDOW:]
    return sum(part.fates) / len(part.fates) if part.fates else 0.0


def _ended_young(row: Mapping[str, Any], young: float) -> bool:
    ended = row.get("ended_at")
    return isinstance(ended, str) and _lived(row["launched_at"], _epoch(ended)) < young


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _why_it_must_go(inst: Instance, age: float, expired: set[str], stuck: float) -> str | None:
    if inst.id in expired:
        return "lease over"
    if inst.state == "stopped":
        return "powered off"
    if inst.state == "error":
        return "error"
    if inst.state == "pending" and age > stuck:  # never ran (unknown, stopping: the cloud's, left to settle)
        return f"pending for {human_duration(age)}"
    return None


def _lived(launched_at: str | None, now: float) -> float:
    """Seconds since a ledger time (launched_at), infinite when unknown (never counted as young)."""
    if not launched_at:
        return float("inf")
    return now - _epoch(launched_at)


def _back_off(part: ProfileCycle, spec: FleetSpec, now: float, why: str) -> None:
    """Double the profile's pause (from `backoff`, up to `backoff_max`), and say why. A profile already
    backing off keeps its pause: what fails while it waits is the same trouble, not a new one."""
    if part.backing_off(now):
        return
    part.backoff_level += 1
    pause = min(spec.tuning.backoff.total_seconds() * 2 ** (part.backoff_level - 1),
                spec.tuning.backoff_max.total_seconds())  # fmt: skip
    part.backoff_until = now + pause
    part.backoff_reason = why


def _oldest_first(instances: list[Instance]) -> list[Instance]:
    return list(reversed(fleets.newest_first(instances)))


def _profile(profiles: Sequence[Profile], name: str) -> Profile:
    return next(p for p in profiles if p.name == name)


RETIRED = ("surplus", "credential ends", "image replaced")  # reasons a working VM goes: it drains first, if it can


def _terminate(
    spec: FleetSpec, profiles: Sequence[Profile], doomed: Mapping[str, list[tuple[Instance, str]]],
    parts: Mapping[str, ProfileCycle], ledger: Ledger, dry_run: bool,
) -> None:  # fmt: skip
    """Terminate the doomed VMs; working ones retired with an agent are asked to drain instead, by
    `drain_deadline` (or the end of their credential, if sooner), and terminated past it."""
    soon = times.now() + spec.tuning.drain_deadline
    drains: dict[datetime, list[tuple[Instance, str]]] = {}
    for name, victims in doomed.items():
        for inst, reason in victims:
            if inst.state == "running" and drain.drainable(inst) and reason.startswith(RETIRED):
                deadline = min(soon, _credential_end(inst) or soon).replace(microsecond=0)
                drains.setdefault(deadline, []).append((inst, reason))
            else:
                verb = "would terminate" if dry_run else "terminate"
                parts[name].decisions.append(f"{verb} {inst.id} ({reason})")
    draining = {i.id for group in drains.values() for i, _ in group}
    why = {i.id: reason for victims in doomed.values() for i, reason in victims if i.id not in draining}
    for deadline, group in drains.items():
        reasons = {i.id: reason for i, reason in group}
        asked = drain.request(profiles, [i for i, _ in group], deadline) if not dry_run else [
            drain.Drained(i, deadline) for i, _ in group]  # fmt: skip
        for one in asked:
            part, inst = parts[one.instance.profile], one.instance
            if one.error is not None:  # not asked: it works on, and counts as alive (no replacement for it)
                part.running += 1
                part.decisions.append(f"could not drain {inst.id}: {one.error}")
                continue
            part.draining += 1
            part.drained[_kind_of(reasons[inst.id])] += 1
            verb = "would drain" if dry_run else "drain"
            part.decisions.append(f"{verb} {inst.id} ({reasons[inst.id]}) by {stamp(deadline)}")
    if dry_run or not why:
        return
    targets_by_profile = {name: [i for i, _ in victims if i.id in why] for name, victims in doomed.items() if victims}
    for result in fleets.terminate(profiles, targets_by_profile, ledger):
        part = parts[result.instance.profile]
        if result.error is None:
            part.terminated[_kind_of(why[result.instance.id])] += 1
        else:
            part.decisions.append(f"could not terminate {result.instance.id}: {result.error}")


def _kind_of(reason: str) -> str:
    """A reason without its particulars, for counting: 'pending for 31m' -> 'pending'."""
    for tail in (" for ", " ends ", " (was "):
        reason = reason.split(tail)[0]
    return reason


def _create(
    spec: FleetSpec, profile: Profile, part: ProfileCycle, more: int, listing: tuple[float, list[Instance]],
    doomed: list[tuple[Instance, str]], ledger: Ledger, given: RunTime, dry_run: bool,
) -> None:  # fmt: skip
    """Launch `more` VMs of the fleet on the profile, through the launch path; a failure backs the profile off."""
    place = next(p for p in spec.places if p.profile == profile.name)
    listed_at, listed = listing
    going = {i.id for i, _ in doomed}
    # What the launch will count as there: not terminated before this cycle, and not terminated by it.
    there = sum(1 for i in listed if i.state != "terminated" and i.id not in going and i.drain_by is None)
    options = _options(spec, place.flavor, there + more, given)
    if dry_run:
        part.decisions.append(f"would create {more}")
        return
    try:
        plan = plan_launch([profile], options)
        # The launch counts what this cycle listed there (under the same lock), less what it terminated.
        here = {profile.name: [i for i in listed if i.id not in going]}
        result = run_plan(plan, ledger, resize=True, listed=here, listed_at=listed_at, rolling=True)
    except WlcgError as exc:
        part.error = str(exc)  # the message and its next step
        _back_off(part, spec, times.now().timestamp(), f"could not create: {exc}")
        part.decisions.append(f"backing off: {part.backoff_reason}")
        return
    [outcome] = result.results
    part.created = outcome.launched
    # What the launch has that this cycle's listing did not show: what it made now, and what it found
    # that a killed maintainer had made (or a listing did not show yet). Those count as alive too.
    seen = {i.id for i in listed}
    late = [i for i in outcome.instances if i.id not in seen]
    part.running += sum(1 for i in late if i.state == "running")
    part.starting += sum(1 for i in late if i.state != "running")
    found = len(late) - outcome.launched
    part.decisions.append(f"created {outcome.launched} of {more}" + (f", found {found} made already" if found else ""))
    if outcome.error is not None:
        part.error = str(outcome.error)
        _back_off(part, spec, times.now().timestamp(), f"could not create: {outcome.error}")
        part.decisions.append(f"backing off: {part.backoff_reason}")


def _options(spec: FleetSpec, flavor: str | None, count: int, given: RunTime) -> LaunchOptions:
    o = spec.options

    def path(value: Any) -> Path | None:
        return Path(value).expanduser() if value else None

    return LaunchOptions(
        image=spec.image, count=count, flavor=flavor or o.get("flavor"), fleet=spec.fleet,
        experiment=o.get("experiment"), credential=o.get("credential", "auto"),
        proxy=given.proxy or path(o.get("proxy")), token_file=given.token_file or path(o.get("token_file")),
        min_lifetime=o.get("min_lifetime"), credential_owner=o.get("credential_owner") or "root",
        user_data=path(o.get("user_data")), bootstrap=o.get("bootstrap"),
        settings={**spec.settings, **given.settings}, lease=o.get("lease"),
        allow_unendorsed=bool(o.get("allow_unendorsed")), spot=bool(o.get("spot")),
    )  # fmt: skip


def status(spec: FleetSpec, ledger: Ledger) -> list[dict[str, Any]]:
    """What the last cycle saw and did, per profile of the spec (from the ledger: no cloud is asked)."""
    rows = ledger.cycle_state(spec.fleet)
    now = times.now().timestamp()
    out = []
    for place in spec.places:
        row = dict(rows.get(place.profile) or {})
        until, last = row.get("backoff_until"), judgement(row)
        out.append({
            "profile": place.profile, "target": row.get("target"), "running": row.get("running"),
            "starting": row.get("starting"), "ended": json.loads(row.get("ended") or "{}"),
            "created": row.get("created"), "terminated": json.loads(row.get("terminated") or "{}"),
            "backoff_until": stamp(datetime.fromtimestamp(until, UTC)) if until and until > now else None,
            "backoff_reason": row.get("backoff_reason") if until and until > now else None, "error": row.get("error"),
            "last_cycle": row.get("cycle"), "decisions": json.loads(row.get("decisions") or "[]"),
            "draining": last.get("draining", 0), "judged_by": last.get("rule"), "said": last.get("said", {}),
        })  # fmt: skip
    return out
