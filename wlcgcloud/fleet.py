"""Instances and fleets across every profile at once: listing, finding, terminating, reconciling.

Every function asks all its profiles in parallel and returns what answered beside what did
not (`Gathered`), so one cloud that is down never hides the others. The CLI turns the
failures into warnings and the exit code of the contract (`Gathered.exit_code`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from wlcgcloud.config import Profile
from wlcgcloud.errors import CloudError, UsageError, WlcgError
from wlcgcloud.providers import for_each_profile
from wlcgcloud.providers.base import STATES, Instance, Outcome, Provider
from wlcgcloud.times import stamp, stamp_or_none

if TYPE_CHECKING:
    from wlcgcloud.ledger import Ledger


@dataclass
class Gathered:
    """Answers from several profiles, and the profiles that failed with why."""

    instances: list[Instance] = field(default_factory=list)
    failures: list[tuple[str, WlcgError]] = field(default_factory=list)
    asked: int = 0

    def exit_code(self) -> int:
        """0; 7 when some profiles failed and others answered; else the first failure's own code.

        The first, because the CLI shows that one as the error line (the others as warnings).
        """
        if not self.failures:
            return 0
        if len(self.failures) < self.asked:
            return 7
        return self.failures[0][1].exit_code


def list_instances(
    profiles: Sequence[Profile], fleet: str | None = None, everything: bool = False, state: str | None = None
) -> Gathered:
    """Instances of our fleets (or one fleet, or with `everything` all) on every profile."""
    if state is not None and state not in STATES:
        raise UsageError(f"unknown state '{state}'; use one of {', '.join(STATES)}.")
    return _gathered(profiles, lambda p: p.instances(fleet=fleet, everything=everything), fleet is None, state)


def _gathered(
    profiles: Sequence[Profile], fetch: Callable[[Provider], list[Instance]], everything: bool, state: str | None = None
) -> Gathered:
    """`fetch` on every profile in parallel; what answered is remembered for completion (`everything`: all of it)."""
    out = Gathered(asked=len(profiles))
    for answer in for_each_profile(profiles, fetch):
        if answer.error is not None:
            out.failures.append((answer.profile.name, answer.error))
        else:
            found = answer.value or []
            remember_names(answer.profile.name, found, complete=everything)
            out.instances.extend(i for i in found if state is None or i.state == state)
    out.instances.sort(key=lambda i: (i.profile, i.fleet or "", i.name, i.id))
    return out


def remember_names(profile: str, instances: Sequence[Instance], complete: bool = False) -> None:
    """Keep the fleet names and instance ids just seen for shell completion (`complete`: all of them)."""
    from wlcgcloud.completion_cache import remember

    live = [i for i in instances if i.state != "terminated"]
    names = {"fleet": {i.fleet for i in live}, "instance": [i.id for i in live]}
    remember(profile, names, complete=complete)


def find_instance(profiles: Sequence[Profile], instance_id: str) -> tuple[Instance, Gathered]:
    """The one instance called `instance_id` on the given profiles; an error if none or several have it."""
    out = Gathered(asked=len(profiles))
    for answer in for_each_profile(profiles, lambda p: p.instance(instance_id)):
        if answer.error is not None:
            out.failures.append((answer.profile.name, answer.error))
        elif answer.value is not None:
            out.instances.append(answer.value)
    if len(out.instances) > 1:
        where = ", ".join(i.profile for i in out.instances)
        raise UsageError(f"instance '{instance_id}' exists in profiles {where}.", "Pick one with -p PROFILE.")
    if not out.instances:
        if out.failures and len(out.failures) == out.asked:
            raise out.failures[0][1]
        raise unknown_ids([instance_id], profiles, out.failures)
    return out.instances[0], out


def unknown_ids(
    ids: Sequence[str], profiles: Sequence[Profile], failures: Sequence[tuple[str, WlcgError]]
) -> WlcgError:
    """The error for ids no profile has: a bad argument (2) when every profile answered; when some
    did not, the id may live there, so it is their failure (6) that is reported, naming them."""
    shown = ", ".join(repr(i) for i in ids)
    asked = ", ".join(p.name for p in profiles)
    if failures:
        silent = ", ".join(name for name, _ in failures)
        return CloudError(
            f"no instance {shown} in the profiles that answered ({asked} asked; {silent} did not answer).",
            "Try again, or narrow with -p PROFILE.",
        )
    return UsageError(f"no instance {shown} in profile(s) {asked}.", "See 'wlcgcloud instance list --all'.")


def resolve_instances(profiles: Sequence[Profile], ids: Sequence[str]) -> tuple[dict[str, list[Instance]], Gathered]:
    """Which profile holds each id, by one listing per profile. Unknown or ambiguous ids are an error."""
    listed = list_instances(profiles, everything=True)
    holders: dict[str, list[Instance]] = {i: [] for i in ids}
    for inst in listed.instances:
        if inst.id in holders:
            holders[inst.id].append(inst)
    unknown = [i for i, found in holders.items() if not found]
    if unknown:
        if listed.failures and len(listed.failures) == listed.asked:
            raise listed.failures[0][1]
        error = unknown_ids(unknown, profiles, listed.failures)
        raise type(error)(error.message.rstrip(".") + "; nothing was terminated.", error.hint)
    ambiguous = {i: [x.profile for x in found] for i, found in holders.items() if len(found) > 1}
    if ambiguous:
        first, where = next(iter(ambiguous.items()))
        raise UsageError(f"instance '{first}' exists in profiles {', '.join(where)}.", "Pick one with -p PROFILE.")
    by_profile: dict[str, list[Instance]] = {}
    for found in holders.values():
        by_profile.setdefault(found[0].profile, []).append(found[0])
    return by_profile, listed


@dataclass
class Terminated:
    """One line of `instance terminate`'s answer."""

    instance: Instance
    error: str | None
    code: int = 6  # the exit code this failure alone would give

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.instance.id,
            "name": self.instance.name,
            "profile": self.instance.profile,
            "fleet": self.instance.fleet,
            "terminated": self.error is None,
            "error": self.error,
        }


def terminate(profiles: Sequence[Profile], targets: dict[str, list[Instance]], ledger: Ledger) -> list[Terminated]:
    """Terminate the resolved instances, each profile's batch in parallel; one line per instance.

    What was terminated ends now in the ledger too, whichever command asked.
    """
    chosen = [p for p in profiles if p.name in targets]
    results: list[Terminated] = []
    for answer in for_each_profile(chosen, lambda p: p.terminate([i.id for i in targets[p.name]])):
        batch = targets[answer.profile.name]
        if answer.error is not None:
            results.extend(Terminated(i, answer.error.message, answer.error.exit_code) for i in batch)
            continue
        outcomes: dict[str, Outcome] = {o.id: o for o in answer.value or []}
        for inst in batch:
            outcome = outcomes.get(inst.id, Outcome(inst.id, "no answer from the cloud", 6))
            results.append(Terminated(inst, outcome.error, outcome.exit_code or 6))
    for profile, done in by_profile(r.instance for r in results if r.error is None).items():
        ledger.mark_ended(profile, [i.id for i in done])
    return results


def console_log(profiles: Sequence[Profile], instance_id: str, lines: int | None) -> tuple[Instance, str]:
    """Find the instance, then read its console log from its own cloud."""
    inst, _ = find_instance(profiles, instance_id)
    owner = [p for p in profiles if p.name == inst.profile]
    answer = for_each_profile(owner, lambda p: p.console_log(instance_id, lines))[0]
    if answer.error is not None:
        raise answer.error
    return inst, answer.value or ""


# Fleets


@dataclass
class FleetRow:
    """One fleet on one profile, as the cloud reports it."""

    fleet: str
    profile: str
    provider: str
    instances: list[Instance] = field(default_factory=list)

    def states(self) -> str:
        """`running 18, pending 2`: the counts as a table shows them."""
        counts = Counter(i.state for i in self.instances)
        return ", ".join(f"{s} {counts[s]}" for s in STATES if counts[s])

    def to_dict(self) -> dict[str, object]:
        counts = Counter(i.state for i in self.instances)
        tags = [i.tags for i in self.instances]
        created = min((t["wlcg:created"] for t in tags if t.get("wlcg:created")), default=None)
        if created is None:
            created = min((stamp_or_none(i.launched_at) or "" for i in self.instances if i.launched_at), default=None)
        return {
            "fleet": self.fleet,
            "profile": self.profile,
            "provider": self.provider,
            "experiment": _most_common(t.get("wlcg:experiment") for t in tags),
            "image": _most_common(t.get("wlcg:image") for t in tags),
            "flavor": _most_common(i.flavor for i in self.instances),
            "created": created,
            "counts": {s: counts[s] for s in STATES if counts[s]},
            "total": len(self.instances),
        }


def _most_common(values: Iterable[str | None]) -> str | None:
    seen = Counter(v for v in values if v)
    return seen.most_common(1)[0][0] if seen else None


def list_fleets(profiles: Sequence[Profile]) -> tuple[list[FleetRow], Gathered]:
    """One row per fleet and profile, from every profile in parallel (each cloud's lightest listing)."""
    gathered = _gathered(profiles, lambda p: p.fleet_members(), everything=True)
    rows: dict[tuple[str, str], FleetRow] = {}
    for inst in gathered.instances:
        if not inst.fleet:
            continue
        row = rows.setdefault((inst.fleet, inst.profile), FleetRow(inst.fleet, inst.profile, inst.provider))
        row.instances.append(inst)
    return sorted(rows.values(), key=lambda r: (r.fleet, r.profile)), gathered


def fleet_instances(profiles: Sequence[Profile], fleets: Sequence[str]) -> tuple[list[Instance], Gathered]:
    """The instances of these fleets on every profile (terminated ones included): one listing per profile."""
    if len(fleets) == 1:
        gathered = list_instances(profiles, fleet=fleets[0])  # the clouds filter by the fleet tag
    else:
        gathered = list_instances(profiles)
        gathered.instances = [i for i in gathered.instances if i.fleet in fleets]
    return gathered.instances, gathered


def by_profile(instances: Iterable[Instance]) -> dict[str, list[Instance]]:
    grouped: dict[str, list[Instance]] = {}
    for inst in instances:
        grouped.setdefault(inst.profile, []).append(inst)
    return grouped


def expired_leases(instances: Iterable[Instance], now: datetime) -> list[Instance]:
    """Instances still alive past their fleet's wlcg:lease-until."""
    now_stamp = stamp(now)
    return [i for i in instances if i.state != "terminated" and (i.tags.get("wlcg:lease-until") or "~") < now_stamp]


def newest_first(instances: Iterable[Instance]) -> list[Instance]:
    """Which instances go first when a fleet shrinks: the newest (least work lost), then by id."""
    floor = datetime.min.replace(tzinfo=UTC)
    return sorted(instances, key=lambda i: (i.launched_at or floor, i.id), reverse=True)


@dataclass(frozen=True)
class ScalePlan:
    """What `fleet scale` does: the one profile the fleet lives on, its live instances there, the count to reach."""

    fleet: str
    profile: Profile
    count: int
    alive: tuple[Instance, ...]

    @property
    def more(self) -> int:
        """How many instances to launch (0 unless the fleet grows)."""
        return max(0, self.count - len(self.alive))

    @property
    def victims(self) -> list[Instance]:
        """Which instances to terminate (none unless the fleet shrinks): the newest first."""
        return newest_first(self.alive)[: max(0, len(self.alive) - self.count)]


def scale_plan(
    profiles: Sequence[Profile], name: str, count: int, instances: Iterable[Instance], ledger: Ledger
) -> ScalePlan:
    """Where fleet `name` is scaled: the profiles holding live instances of it (`instances`, its listing),
    else the asked profiles the ledger launched it on. None, or several, is a UsageError."""
    alive = [i for i in instances if i.state != "terminated" and i.drain_by is None]  # draining: on its way out
    holders = sorted({i.profile for i in alive})
    launched_on = sorted({r.profile for r in ledger.launches(name)})
    by_name = {p.name: p for p in profiles}
    where = holders or [p for p in launched_on if p in by_name]
    if not where:
        asked = ", ".join(p.name for p in profiles)
        raise UsageError(f"no fleet '{name}' on profile(s) {asked}.", "See 'wlcgcloud fleet list'.")
    if len(where) > 1:
        raise UsageError(f"fleet '{name}' lives on profiles {', '.join(where)}.", "Scale one at a time with -p.")
    profile = by_name[where[0]]
    return ScalePlan(name, profile, count, tuple(i for i in alive if i.profile == profile.name))


@dataclass
class Finding:
    """One difference between the ledger and what a cloud reports (`fleet reconcile`)."""

    profile: str
    fleet: str | None
    id: str
    finding: str  # "not in the ledger", "gone from the cloud", "launched elsewhere"
    action: str  # what reconcile did about it

    def to_dict(self) -> dict[str, object]:
        return dict(self.__dict__)


def reconcile(profiles: Sequence[Profile], ledger: Ledger, write: bool = True) -> tuple[list[Finding], Gathered]:
    """Compare the ledger with the clouds; cloud tags are the truth, the ledger is brought in line.

    Launches left open because they may have made instances no answer showed are closed
    ('adopted') on every profile that answered: those instances are recorded now.
    """
    gathered = list_instances(profiles)
    answered = {p.name for p in profiles} - {name for name, _ in gathered.failures}
    seen = {(i.profile, i.id): i for i in gathered.instances}
    known = {(r["profile"], r["id"]): r for r in ledger.instances() if r["profile"] in answered}
    launched_here = {launch.fleet for launch in ledger.launches()}
    findings: list[Finding] = []
    unknown = [i for key, i in seen.items() if key not in known]
    for inst in unknown:
        elsewhere = inst.fleet not in launched_here
        what = "launched elsewhere (another machine or tool)" if elsewhere else "not in the ledger"
        findings.append(Finding(inst.profile, inst.fleet, inst.id, what, "recorded" if write else "none"))
    gone = [r for key, r in known.items() if key not in seen and not r["ended_at"]]
    for row in gone:
        findings.append(Finding(row["profile"], row["fleet"], row["id"], "gone from the cloud",
                                "marked ended" if write else "none"))  # fmt: skip
    if write:
        ledger.record_instances(unknown)
        for name, rows in itertools.groupby(sorted(gone, key=lambda r: r["profile"]), key=lambda r: r["profile"]):
            ledger.mark_ended(name, [r["id"] for r in rows], state="unknown")
        ledger.record_instances(i for key, i in seen.items() if key in known)  # states and ends, as seen now
        for name in answered:  # every fleet there is recorded now: so is whatever launches may have made unseen
            ledger.adopted(name)
    return findings, gathered
