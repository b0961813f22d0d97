"""Instances and fleets across every profile at once: listing, finding, terminating.

Every function asks all its profiles in parallel and returns what answered beside what did
not (`Gathered`), so one cloud that is down never hides the others. The CLI turns the
failures into warnings and the exit code of the contract (`Gathered.exit_code`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wlcgcloud.config import Profile
from wlcgcloud.endorsement import Decision, gate
from wlcgcloud.errors import CloudError, UsageError, WlcgError
from wlcgcloud.providers import each
from wlcgcloud.providers.base import STATES, Instance, LaunchRequest, Outcome, PartialLaunch, Provider, utc
from wlcgcloud.times import human_duration

if TYPE_CHECKING:
    from wlcgcloud.context.credentials import Credential
    from wlcgcloud.context.userdata import Document, Payload


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


# Launching

FLEET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


@dataclass(frozen=True)
class LaunchOptions:
    """What `wlcgcloud launch` was asked for, after parsing."""

    image: str
    count: int = 1
    flavor: str | None = None
    fleet: str | None = None
    experiment: str | None = None
    credential: str = "auto"
    proxy: Path | None = None
    token_file: Path | None = None
    min_lifetime: timedelta | None = None
    credential_owner: str = "root"
    user_data: Path | None = None
    bootstrap: str | None = None
    settings: Mapping[str, str] = field(default_factory=dict)
    lease: timedelta | None = None
    allow_unendorsed: bool = False


@dataclass
class ProfilePlan:
    """What one profile will be asked to do."""

    provider: Provider
    decision: Decision
    request: LaunchRequest
    payload: Payload | None

    @property
    def name(self) -> str:
        return self.provider.name

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        return {
            "profile": self.name,
            "provider": self.provider.kind,
            "requested": self.request.count,
            "image": {
                "endorsed": d.endorsed.identifier if d.endorsed else None,
                "title": d.endorsed.title if d.endorsed else None,
                "cloud_image": d.cloud_image,
                "how": d.how,
            },
            "flavor": self.request.flavor,
            "tags": dict(self.request.tags),
            "request_token": self.request.token,
            "user_data": self.payload.summary() if self.payload else None,
            "api_calls": self.provider.launch_calls(self.request),
        }


@dataclass
class LaunchPlan:
    """A launch worked out and checked, before anything is spent."""

    fleet: str
    profiles: list[ProfilePlan]
    credential: Credential | None
    document: Document
    warnings: list[str]
    now: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "fleet": self.fleet,
            "requested": sum(p.request.count for p in self.profiles),
            "credential": self.credential.summary(self.now) if self.credential else None,
            "user_data": self.document.structure(),
            "profiles": [p.to_dict() for p in self.profiles],
            "warnings": list(self.warnings),
        }


@dataclass
class ProfileLaunched:
    plan: ProfilePlan
    instances: list[Instance] = field(default_factory=list)
    error: WlcgError | None = None

    def to_dict(self) -> dict[str, Any]:
        requested = self.plan.request.count
        return {"profile": self.plan.name, "requested": requested, "launched": len(self.instances),
                "failed": requested - len(self.instances)}  # fmt: skip


@dataclass
class Launched:
    """What a launch did, in the contract's `launch -o json` shape."""

    fleet: str
    results: list[ProfileLaunched]

    def to_dict(self) -> dict[str, Any]:
        rows = [r.to_dict() for r in self.results]
        return {
            "fleet": self.fleet,
            "requested": sum(r["requested"] for r in rows),
            "launched": sum(r["launched"] for r in rows),
            "failed": sum(r["failed"] for r in rows),
            "profiles": rows,
            "instances": [i.to_dict() for r in self.results for i in r.instances],
            "errors": [{"profile": r.plan.name, "message": str(r.error)} for r in self.results if r.error],
        }

    def exit_code(self) -> int:
        """0 when everything launched; 7 when some did; else the first failure's code."""
        failures = [r.error for r in self.results if r.error]
        if not failures:
            return 0
        if any(r.instances for r in self.results):
            return 7
        return failures[0].exit_code


def plan_launch(profiles: Sequence[Profile], options: LaunchOptions, now: datetime | None = None) -> LaunchPlan:
    """Work out and check a launch without spending anything: the same checks a real launch makes.

    Order matters: what needs no cloud comes first (credential, user-data, its size on each
    cloud), so a refused credential or an oversized document exits 5 before any API call;
    then the endorsement gate, which reads the cloud's images and flavors.
    """
    from wlcgcloud.context import credentials, userdata
    from wlcgcloud.providers import connect

    now = now or datetime.now(UTC)
    if options.count < 1:
        raise UsageError(f"--count {options.count}: launch at least one instance.")
    if options.fleet is not None and not FLEET_NAME.fullmatch(options.fleet):
        raise UsageError(
            f"--fleet '{options.fleet}': fleet names are 1-40 of a-z, 0-9 and '-', starting with a letter or digit."
        )
    if len(profiles) != 1:
        raise UsageError(f"{len(profiles)} profiles given; a launch goes to one.", "Pass one -p, or add --spread.")
    boot = userdata.bootstrap(options.bootstrap) if options.bootstrap else None
    if options.settings and boot is None:
        raise UsageError("--set needs --bootstrap: the settings are the bootstrap's.")
    choice = credentials.choose(
        options.credential, proxy=options.proxy, token_file=options.token_file,
        min_lifetime=options.min_lifetime, now=now,
    )  # fmt: skip
    credential = choice.credential
    warnings = list(choice.warnings)
    document = userdata.compose(
        credential,
        owner=options.credential_owner,
        user_data=options.user_data,
        bootstrap=boot,
        settings=options.settings,
        lease=options.lease,
        now=now,
    )
    providers = [connect(p) for p in profiles]
    payloads = [userdata.fit(document, p.user_data_limit, f"profile '{p.name}' ({p.kind})") for p in providers]
    experiment = options.experiment or next((str(p.get("experiment")) for p in profiles if p.get("experiment")), None)
    warnings += _credential_warnings(credential, options.lease, experiment, now)
    fleet = options.fleet or _fleet_name(experiment, options, profiles, document, now)
    plans = []
    for provider, payload in zip(providers, payloads, strict=True):
        flavor = options.flavor or provider.profile.get("flavor") or provider.profile.get("vm_template")
        if not flavor:
            raise UsageError(
                f"profile '{provider.name}': no flavor given.",
                f"Pass --flavor, or set one with 'wlcgcloud profile edit {provider.name} --flavor NAME'.",
            )
        decision = gate(options.image, provider, str(flavor), options.allow_unendorsed)
        tags = {
            "wlcg:fleet": fleet,
            "wlcg:profile": provider.name,
            "wlcg:experiment": experiment or "none",
            **decision.tags,
            "wlcg:launched-by": _launched_by(),
            "wlcg:created": utc(now) or "",
        }
        if credential is not None:
            tags["wlcg:credential"] = f"{credential.kind} {credential.fingerprint} {utc(credential.not_after)}"
        if options.lease is not None:
            tags["wlcg:lease-until"] = utc(now + options.lease) or ""
        request = LaunchRequest(
            name=fleet,
            image=decision.cloud_image,
            flavor=str(flavor),
            count=options.count,
            user_data=payload.data if payload else None,
            tags=tags,
        )
        plans.append(ProfilePlan(provider, decision, request, payload))
    return LaunchPlan(fleet, plans, credential, document, warnings, now)


def launch(plan: LaunchPlan) -> Launched:
    """Ask each profile of the plan for its instances, in parallel; what failed stays beside what launched."""

    def one(p: ProfilePlan) -> ProfileLaunched:
        try:
            return ProfileLaunched(p, p.provider.create(p.request))
        except PartialLaunch as exc:
            return ProfileLaunched(p, exc.instances, exc)
        except WlcgError as exc:
            return ProfileLaunched(p, [], exc)

    if len(plan.profiles) == 1:
        return Launched(plan.fleet, [one(plan.profiles[0])])
    with ThreadPoolExecutor(max_workers=min(8, len(plan.profiles)), thread_name_prefix="launch") as pool:
        return Launched(plan.fleet, list(pool.map(one, plan.profiles)))


def _credential_warnings(
    credential: Credential | None, lease: timedelta | None, experiment: str | None, now: datetime
) -> list[str]:
    if credential is None:
        return []
    out = []
    left = credential.lifetime(now)
    what = "proxy" if credential.kind == "x509" else "token"
    if lease is not None and lease > left:
        out.append(
            f"the fleet's lease ({human_duration(lease.total_seconds())}) outlasts the forwarded {what} "
            f"({human_duration(left.total_seconds())} left): work in the VMs loses its credential before the end."
        )
    elif credential.kind == "token" and lease is None:
        out.append(
            f"the forwarded token expires in {human_duration(left.total_seconds())} and the VMs have no lease: "
            "long-lived VMs need their own token refresh (e.g. a pool token, or an oidc-agent in the VM)."
        )
    if credential.vo and experiment and credential.vo.lower() != experiment.lower():
        out.append(f"the proxy carries VO '{credential.vo}' but the experiment is '{experiment}'.")
    return out


def _fleet_name(
    experiment: str | None, options: LaunchOptions, profiles: Sequence[Profile], document: Document, now: datetime
) -> str:
    """`<experiment or fleet>-<yyyymmdd>-<4 hex>`; the hex comes from the launch itself, so the same
    launch re-run the same day names the same fleet (and resumes it) instead of starting another."""
    stem = re.sub(r"[^a-z0-9-]+", "-", (experiment or "fleet").lower()).strip("-")[:26] or "fleet"
    what = json.dumps([options.image, options.count, options.flavor, [p.name for p in profiles],
                       hashlib.sha256(document.render() if document.parts else b"").hexdigest()])  # fmt: skip
    return f"{stem}-{now:%Y%m%d}-{hashlib.sha256(what.encode()).hexdigest()[:4]}"


def _launched_by() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"[:255]
