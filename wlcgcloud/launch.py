"""Launching a fleet: plan (every policy check, nothing spent), then launch, resume, wait, roll back.

`plan_launch` works everything out in the order that keeps money and secrets safe: what needs
no cloud first (credential, user-data, its size on each cloud: exit 5 before any API call),
then the endorsement gate and, with `--spread`, the quotas, which only read.

`launch` records each profile's part in the ledger as an intent before its first API call,
lists what the fleet already has on the cloud (so a re-run after a crash, even a SIGKILL,
resumes instead of duplicating), creates only what is missing, and records every instance the
moment the cloud returns it. Partial failure is normal at this size: what failed stays beside
what launched, and the ledger stays true.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wlcgcloud.clouds import SPOT, cloud_of
from wlcgcloud.config import Profile
from wlcgcloud.endorsement import Decision, gate
from wlcgcloud.errors import CloudError, Interrupted, PolicyError, UsageError, WlcgError
from wlcgcloud.fleet import remember_names
from wlcgcloud.providers.base import Flavor, Instance, LaunchRequest, PartialLaunch, Provider, Quota, UncertainLaunch
from wlcgcloud.times import human_duration, stamp

if TYPE_CHECKING:
    from wlcgcloud.context.credentials import Credential
    from wlcgcloud.context.userdata import Document, Payload
    from wlcgcloud.ledger import Ledger

FLEET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
MAX_COUNT = 10_000  # instances in one launch or fleet: beyond any site's quota, below what overflows a cloud's int
WAIT_POLL = 3.0  # seconds between listings while --wait waits
SETTLED = ("running", "error", "terminated", "stopped")

# progress(profile, what, done, total): "launching", "launched", "waiting", "resumed"
Progress = Callable[[str, str, int, int], None]


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
    spread: bool = False
    spot: bool = False

    def recorded(self) -> dict[str, Any]:
        """What the ledger keeps of these options: no secret setting, no credential."""
        from wlcgcloud.context.userdata import is_secret

        return {
            "image": self.image, "count": self.count, "flavor": self.flavor, "experiment": self.experiment,
            "credential": self.credential, "credential_owner": self.credential_owner,
            "user_data": str(self.user_data) if self.user_data else None, "bootstrap": self.bootstrap,
            "settings": {k: v for k, v in self.settings.items() if not is_secret(k)},
            "secret_settings": sorted(k for k in self.settings if is_secret(k)),
            "lease_s": int(self.lease.total_seconds()) if self.lease else None,
            "allow_unendorsed": self.allow_unendorsed, "spread": self.spread, "spot": self.spot,
        }  # fmt: skip


@dataclass
class ProfilePlan:
    """What one profile will be asked to do."""

    provider: Provider
    decision: Decision
    request: LaunchRequest
    payload: Payload | None
    quota: dict[str, Any] | None = None  # with --spread: the quota read and the free capacity

    @property
    def name(self) -> str:
        return self.provider.name

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        out = {
            "profile": self.name,
            "provider": self.provider.profile.provider,  # ec2 | openstack | opennebula, as everywhere
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
        if self.quota is not None:
            out["quota"] = self.quota
        return out


@dataclass
class LaunchPlan:
    """A launch worked out and checked, before anything is spent."""

    fleet: str
    profiles: list[ProfilePlan]
    credential: Credential | None
    document: Document
    warnings: list[str]
    now: datetime
    options: LaunchOptions

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


def plan_launch(
    profiles: Sequence[Profile], options: LaunchOptions, now: datetime | None = None, quotas: bool = False
) -> LaunchPlan:
    """Work out and check a launch without spending anything: the same checks a real launch makes.

    `quotas` (for --dry-run) also reads each profile's quota and says whether the launch fits;
    only --spread refuses on it: a plain launch lets the cloud decide.
    """
    from wlcgcloud.context import credentials, userdata
    from wlcgcloud.providers import connect

    now = now or datetime.now(UTC)
    _check_options(profiles, options)
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
    if options.spot:
        lacking = [p for p in providers if not cloud_of(p.profile).can(SPOT)]
        if lacking:
            raise UsageError(
                f"--spot: not on profile '{lacking[0].name}': {cloud_of(lacking[0].profile).cannot[SPOT]}."
            )
    payloads = [userdata.fit(document, p.user_data_limit, f"profile '{p.name}' ({p.kind})") for p in providers]
    experiment = options.experiment or next((str(p.get("experiment")) for p in profiles if p.get("experiment")), None)
    warnings += _credential_warnings(credential, options.lease, experiment, now)
    fleet = options.fleet or _fleet_name(experiment, options, profiles, document, now)
    flavors = [_flavor_name(p, options) for p in providers]
    decisions = [gate(options.image, p, f, options.allow_unendorsed) for p, f in zip(providers, flavors, strict=True)]
    counts = [options.count]
    quota_read: list[dict[str, Any] | None] = [None] * len(providers)
    if options.spread:
        counts, quota_read = _spread(options.count, providers, flavors)
    elif quotas:
        quota_read = _quotas(providers, flavors)
        free = quota_read[0]["free_instances"] if quota_read[0] else None
        if free is not None and free < options.count:
            warnings.append(f"profile '{providers[0].name}': the quota has room for {free} more of "
                            f"{flavors[0]}, not {options.count}: the cloud will refuse the rest.")  # fmt: skip
    plans = []
    for provider, payload, flavor, decision, count, quota in zip(
        providers, payloads, flavors, decisions, counts, quota_read, strict=True
    ):
        tags = {
            "wlcg:fleet": fleet,
            "wlcg:profile": provider.name,
            "wlcg:experiment": experiment or "none",
            **decision.tags,
            "wlcg:launched-by": _launched_by(),
            "wlcg:created": stamp(now),
            "wlcg:flavor": flavor,
        }
        if credential is not None:
            tags["wlcg:credential"] = f"{credential.kind} {credential.fingerprint} {stamp(credential.not_after)}"
        if options.lease is not None:
            tags["wlcg:lease-until"] = stamp(now + options.lease)
        request = LaunchRequest(
            name=fleet,
            image=decision.cloud_image,
            flavor=flavor,
            count=count,
            user_data=payload.data if payload else None,
            tags=tags,
            spot=options.spot,
            shutdown_terminates=options.lease is not None,
        )
        if count > 0:
            plans.append(ProfilePlan(provider, decision, request, payload, quota))
    return LaunchPlan(fleet, plans, credential, document, warnings, now, options)


def _check_options(profiles: Sequence[Profile], options: LaunchOptions) -> None:
    if not 1 <= options.count <= MAX_COUNT:
        raise UsageError(
            f"--count {options.count}: launch from 1 to {MAX_COUNT} instances at once.",
            "A larger fleet is several launches (or 'fleet scale').",
        )
    if options.fleet is not None and not FLEET_NAME.fullmatch(options.fleet):
        raise UsageError(
            f"--fleet '{options.fleet}': fleet names are 1-40 of a-z, 0-9 and '-', starting with a letter or digit."
        )
    if len(profiles) > 1 and not options.spread:
        raise UsageError(f"{len(profiles)} profiles given; a launch goes to one.", "Pass one -p, or add --spread.")
    if options.spread and len(profiles) < 2:
        raise UsageError("--spread divides a launch over several profiles: pass two or more -p.")


def _flavor_name(provider: Provider, options: LaunchOptions) -> str:
    flavor = options.flavor or provider.profile.get("flavor") or provider.profile.get("vm_template")
    if not flavor:
        raise UsageError(
            f"profile '{provider.name}': no flavor given.",
            f"Pass --flavor, or set one with 'wlcgcloud profile edit {provider.name} --flavor NAME'.",
        )
    return str(flavor)


def free_slots(quota: Quota, flavor: Flavor | None) -> int | None:
    """How many more instances of `flavor` the quota allows (instances, cores, memory); None: no limit."""
    limits = []
    if quota.instances is not None:
        limits.append(quota.instances - (quota.instances_used or 0))
    if quota.cores is not None and flavor and flavor.vcpus:
        limits.append((quota.cores - (quota.cores_used or 0)) // flavor.vcpus)
    if quota.memory_mb is not None and flavor and flavor.memory_mb:
        limits.append((quota.memory_mb - (quota.memory_mb_used or 0)) // flavor.memory_mb)
    return max(0, min(limits)) if limits else None


def _quotas(providers: Sequence[Provider], flavors: Sequence[str]) -> list[dict[str, Any] | None]:
    """Each profile's quota and how many more instances of its flavor fit, read in parallel."""

    def read(provider: Provider, flavor: str) -> dict[str, Any] | None:
        size = next((f for f in provider.flavors() if flavor in (f.name, f.id)), None)
        if size is None:
            raise UsageError(f"profile '{provider.name}': no flavor '{flavor}'.")
        quota = provider.quota()
        return {**quota.to_dict(), "flavor_vcpus": size.vcpus, "flavor_memory_mb": size.memory_mb,
                "free_instances": free_slots(quota, size)}  # fmt: skip

    with ThreadPoolExecutor(max_workers=min(8, len(providers)), thread_name_prefix="quota") as pool:
        return list(pool.map(read, providers, flavors))


def _spread(
    count: int, providers: Sequence[Provider], flavors: Sequence[str]
) -> tuple[list[int], list[dict[str, Any] | None]]:
    """`count` divided over the profiles in proportion to their free quota (largest remainder)."""
    details = _quotas(providers, flavors)
    free = [d["free_instances"] if d else None for d in details]
    caps = [count if f is None else f for f in free]  # no limit: room for the whole launch
    total = sum(caps)
    if total < count:
        where = ", ".join(f"{p.name} {c}" for p, c in zip(providers, caps, strict=True))
        raise PolicyError(f"--spread: the profiles' free quota holds {total} of the {count} instances ({where}).")
    # Largest remainder: no share exceeds its profile's room, since count * cap / total <= cap.
    shares = [count * c // total for c in caps]
    order = sorted(range(len(caps)), key=lambda i: (count * caps[i] % total, caps[i]), reverse=True)
    for i in order[: count - sum(shares)]:
        shares[i] += 1
    return shares, details


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

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"[:255]


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
            ledger.calls_may_land_until(launch_id, time.time() + timeout + 2 * BEAT)
            if stop.wait(BEAT):
                return

    thread = threading.Thread(target=beat, daemon=True, name="ledger-heartbeat")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _calls_of_others(ledger: Ledger, fleet: str, p: ProfilePlan, launch_id: int, tell: Progress) -> None:
    """Before listing the fleet to resume it: refuse while another live process launches it here,
    and wait while calls of a killed one may still land (they would not be listed yet)."""
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


def launch(
    plan: LaunchPlan,
    ledger: Ledger,
    *,
    progress: Progress | None = None,
    wait: timedelta | None = None,
    rollback: bool = False,
    resize: bool = False,
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

    def existing(p: ProfilePlan) -> list[Instance]:
        if p.name not in earlier and not resize:
            return []
        return [i for i in p.provider.instances(fleet=plan.fleet) if _ours(i, p) and i.state != "terminated"]

    def one(p: ProfilePlan) -> ProfileLaunched:
        launch_id = intents[p.name]
        result = ProfileLaunched(p)
        try:
            _calls_of_others(ledger, plan.fleet, p, launch_id, tell)
            with _heartbeat(ledger, launch_id, p.provider.profile.timeout):
                _launch_on(p, launch_id, result)
        except WlcgError as exc:  # refused: another launch of the fleet is running
            result.error = exc
        state = "launched" if not result.error else ("partial" if result.instances else "failed")
        if result.uncertain:
            state = "intent"  # stays open: what it may have made is adopted by the next listing of the fleet
        ledger.finish(launch_id, state, str(result.error) if result.error else None, uncertain=result.uncertain)
        remember_names(p.name, result.instances)
        return result

    def _launch_on(p: ProfilePlan, launch_id: int, result: ProfileLaunched) -> None:
        try:
            have = existing(p)
            foreign = [i for i in have if i.tags.get("wlcg:image") not in (None, p.request.tags["wlcg:image"])]
            if foreign:
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
            if p.request.count > len(have):
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
    missing = p.request.count - len(have)
    tell(p.name, "launching", len(have), p.request.count)
    # Names continue after the ones an earlier attempt used (OpenNebula names each VM).
    pattern = re.compile(rf"{re.escape(fleet)}-(\d+)")
    numbers = [int(m[1]) for i in have if (m := pattern.fullmatch(i.name))]
    request = replace(p.request, count=missing, first=max(numbers, default=0) + 1)
    try:
        made = p.provider.create(request, lambda known: ledger.record_instances(known, launch_id))
    except PartialLaunch as exc:
        made, result.error = exc.instances, exc
    except UncertainLaunch as exc:
        made, result.error, result.uncertain = exc.instances, exc, exc.unknown
    ledger.record_instances(made, launch_id)
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


def _ours(instance: Instance, p: ProfilePlan) -> bool:
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


def options_to_grow(ledger: Ledger, fleet: str, profile: str, count: int, given: Mapping[str, Any]) -> LaunchOptions:
    """The options of the fleet's last launch on `profile`, for `fleet scale` to launch more of the same.

    The ledger keeps no secret: a bootstrap's secret settings (and the credential, found afresh)
    must be given again; `given` holds what the user passed now (credential options, settings).
    """
    records = [r for r in ledger.launches(fleet) if r.profile == profile]
    if not records:
        raise UsageError(
            f"fleet '{fleet}' on profile '{profile}' was not launched from here: the ledger does not know how.",
            f"Shrinking works; to grow it, launch the same image with '--fleet {fleet}' from the machine that made it.",
        )
    o = records[-1].options
    settings = {**o.get("settings", {}), **given.get("settings", {})}
    missing = [k for k in o.get("secret_settings", []) if k not in settings]
    if missing:
        raise UsageError(f"fleet '{fleet}' was launched with --set {missing[0]}=...; give it again (it is not kept).")
    lease = o.get("lease_s")
    return LaunchOptions(
        image=o["image"], count=count, flavor=o.get("flavor") or records[-1].flavor, fleet=fleet,
        experiment=o.get("experiment"), credential=given.get("credential") or o.get("credential", "auto"),
        proxy=given.get("proxy"), token_file=given.get("token_file"), min_lifetime=given.get("min_lifetime"),
        credential_owner=o.get("credential_owner", "root"),
        user_data=Path(o["user_data"]) if o.get("user_data") else None, bootstrap=o.get("bootstrap"),
        settings=settings, lease=timedelta(seconds=lease) if lease else None,
        allow_unendorsed=bool(o.get("allow_unendorsed")), spot=bool(o.get("spot")),
    )  # fmt: skip
