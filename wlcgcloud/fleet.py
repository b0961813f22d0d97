"""Instances and fleets across every profile at once: listing, finding, terminating.

Every function asks all its profiles in parallel and returns what answered beside what did
not (`Gathered`), so one cloud that is down never hides the others. The CLI turns the
failures into warnings and the exit code of the contract (`Gathered.exit_code`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wlcgcloud.config import Profile
from wlcgcloud.errors import CloudError, UsageError, WlcgError
from wlcgcloud.providers import each
from wlcgcloud.providers.base import STATES, Instance, Outcome

if TYPE_CHECKING:
    pass


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
    out = Gathered(asked=len(profiles))
    for answer in each(profiles, lambda p: p.instances(fleet=fleet, everything=everything)):
        if answer.error is not None:
            out.failures.append((answer.profile.name, answer.error))
        else:
            out.instances.extend(i for i in answer.value or [] if state is None or i.state == state)
    out.instances.sort(key=lambda i: (i.profile, i.fleet or "", i.name, i.id))
    return out


def find_instance(profiles: Sequence[Profile], instance_id: str) -> tuple[Instance, Gathered]:
    """The one instance called `instance_id` on the given profiles; an error if none or several have it."""
    out = Gathered(asked=len(profiles))
    for answer in each(profiles, lambda p: p.instance(instance_id)):
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
        names = ", ".join(p.name for p in profiles)
        unanswered = f" ({len(out.failures)} did not answer)" if out.failures else ""
        raise CloudError(
            f"no instance '{instance_id}' in profile(s) {names}{unanswered}.", "See 'wlcgcloud instance list --all'."
        )
    return out.instances[0], out


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
        silent = f"; {len(listed.failures)} profile(s) did not answer" if listed.failures else ""
        raise CloudError(
            f"no instance {', '.join(repr(u) for u in unknown)} in the profiles asked{silent}; nothing was terminated.",
            "See 'wlcgcloud instance list --all'.",
        )
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


def terminate(profiles: Sequence[Profile], targets: dict[str, list[Instance]]) -> list[Terminated]:
    """Terminate the resolved instances, each profile's batch in parallel; one line per instance."""
    chosen = [p for p in profiles if p.name in targets]
    results: list[Terminated] = []
    for answer in each(chosen, lambda p: p.terminate([i.id for i in targets[p.name]])):
        batch = targets[answer.profile.name]
        if answer.error is not None:
            results.extend(Terminated(i, answer.error.message, answer.error.exit_code) for i in batch)
            continue
        outcomes: dict[str, Outcome] = {o.id: o for o in answer.value or []}
        for inst in batch:
            outcome = outcomes.get(inst.id, Outcome(inst.id, "no answer from the cloud", 6))
            results.append(Terminated(inst, outcome.error, outcome.exit_code or 6))
    return results


def console_log(profiles: Sequence[Profile], instance_id: str, lines: int | None) -> tuple[Instance, str]:
    """Find the instance, then read its console log from its own cloud."""
    inst, _ = find_instance(profiles, instance_id)
    owner = [p for p in profiles if p.name == inst.profile]
    answer = each(owner, lambda p: p.console_log(instance_id, lines))[0]
    if answer.error is not None:
        raise answer.error
    return inst, answer.value or ""
