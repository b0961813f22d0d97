"""Planning a launch: every policy check, nothing spent.

`plan_launch` works everything out in the order that keeps money and secrets safe: what needs
no cloud first (credential, user-data, its size on each cloud: exit 5 before any API call),
then the endorsement gate and, with `--spread`, the quotas, which only read. Running the plan
(ledger intent, resume, create, wait, roll back) is wlcgcloud.launch.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wlcgcloud import times
from wlcgcloud.clouds import SPOT, cloud_of
from wlcgcloud.config import Profile
from wlcgcloud.endorsement import Decision, gate
from wlcgcloud.errors import PolicyError, UsageError
from wlcgcloud.fleet_spec import FLEET_NAME
from wlcgcloud.providers.base import Flavor, LaunchRequest, Provider, Quota
from wlcgcloud.times import human_duration, stamp

if TYPE_CHECKING:
    from wlcgcloud.context.credentials import Credential
    from wlcgcloud.context.userdata import Document, Payload
    from wlcgcloud.ledger import Ledger


MAX_COUNT = 10_000  # instances in one launch or fleet: beyond any site's quota, below what overflows a cloud's int


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


def plan_launch(
    profiles: Sequence[Profile], options: LaunchOptions, now: datetime | None = None, quotas: bool = False
) -> LaunchPlan:
    """Work out and check a launch without spending anything: the same checks a real launch makes.

    `quotas` (for --dry-run) also reads each profile's quota and says whether the launch fits;
    only --spread refuses on it: a plain launch lets the cloud decide.
    """
    from wlcgcloud.context import credentials, userdata
    from wlcgcloud.providers import connect

    now = now or times.now()
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
        if boot is not None:  # the shipped bootstraps carry the VM agent (docs/vm-side.md)
            tags["wlcg:drainable"] = "yes"
            tags.update(_hs06(provider.profile, flavor))
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


def _hs06(profile: Profile, flavor: str) -> dict[str, str]:
    """The VM's HEP-SPEC06 from the profile's benchmarks, as a tag its agent gives Machine Features."""
    marks = dict(profile.get("benchmarks") or {})
    kind = str(marks.get("type") or "").replace("-", "").replace(" ", "").upper()
    value = marks.get(flavor)
    return {"wlcg:hs06": str(value)} if kind in ("HS06", "HEPSPEC06") and value is not None else {}


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
        size = provider.flavor(flavor)
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
