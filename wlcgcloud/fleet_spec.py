"""Fleet specs: a small TOML file saying what a maintained fleet is and where it lives.

A spec can live in git and be used by CI, so it never holds a secret: a bootstrap setting whose
name says it is secret is refused here and given at run time (`fleet maintain --set`). Every
key means what the `launch` option of the same name means; `[profiles.NAME]` says where, with a
target or a share each and a maximum; `[maintain]` tunes the maintainer.

    fleet = "atlas-vac"
    image = "ATLAS worker node 1"
    flavor = "m1.large"
    experiment = "atlas"
    bootstrap = "htcondor"
    credential = "token"
    lease = "48h"
    target = 30                      # the whole fleet; spread over the profiles by share

    [settings]
    COLLECTOR = "cm.example.org"

    [profiles.cern-atlas]
    share = 2
    max = 25

    [profiles.aws-atlas]             # share 1

    [maintain]
    create_per_cycle = "10%"         # of the target (at least 1), or a number
    stuck_after = "30m"              # pending or error longer than this: terminated
    fizzle_after = "10m"             # a VM that ended younger than this fizzled ...
    fizzle_share = "50%"             # ... and its profile backs off when this share of its last 10 did
    backoff = "2m"                   # the first back-off; doubled each time, up to backoff_max
    backoff_max = "1h"
    credential_margin = "2h"         # a VM whose forwarded credential ends sooner is replaced; a
                                     # current credential shorter than this creates nothing
    drain_deadline = "2h"            # a VM retired with an agent (a shipped bootstrap) drains this long first

Errors name the file, the line, the key and a near miss, as config.toml's do (exit 3).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wlcgcloud import bounded
from wlcgcloud.config import closest, load_toml
from wlcgcloud.errors import ConfigError, UsageError
from wlcgcloud.times import parse_duration

if TYPE_CHECKING:
    from wlcgcloud.ledger import Ledger

FLEET_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")  # launch's --fleet too
TEXT_KEYS = ("image", "flavor", "experiment", "bootstrap", "user_data", "proxy", "token_file", "credential_owner")
DURATION_KEYS = ("min_lifetime", "lease")
FLAG_KEYS = ("allow_unendorsed", "spot")
TOP = ("fleet", "target", "credential", *TEXT_KEYS, *DURATION_KEYS, *FLAG_KEYS, "settings", "profiles", "maintain")
PROFILE_KEYS = ("target", "share", "max", "flavor")
MAINTAIN_DEFAULTS: dict[str, str] = {
    "create_per_cycle": "10%", "stuck_after": "30m", "fizzle_after": "10m", "backoff": "2m", "backoff_max": "1h",
    "credential_margin": "2h", "fizzle_share": "50%", "drain_deadline": "2h",
}  # fmt: skip


@dataclass(frozen=True)
class Place:
    """One profile of a spec: its weight in the target, and at most how many it may hold."""

    profile: str
    share: float
    max: int | None = None
    flavor: str | None = None


@dataclass(frozen=True)
class Tuning:
    """How the maintainer paces itself (the spec's [maintain])."""

    create_per_cycle: str = "10%"
    stuck_after: timedelta = timedelta(minutes=30)
    fizzle_after: timedelta = timedelta(minutes=10)
    fizzle_share: float = (
        0.5  # of a profile's last FIZZLE_WINDOW VMs whose fate is known: that many fizzled, it backs off
    )
    backoff: timedelta = timedelta(minutes=2)
    backoff_max: timedelta = timedelta(hours=1)
    credential_margin: timedelta = timedelta(hours=2)
    drain_deadline: timedelta = timedelta(hours=2)  # how long a retired VM with an agent drains before it goes

    def creations(self, target: int) -> int:
        """How many VMs one cycle may create: the rate limit."""
        if self.create_per_cycle.endswith("%"):
            return max(1, math.ceil(target * float(self.create_per_cycle[:-1]) / 100))
        return max(1, int(self.create_per_cycle))


@dataclass(frozen=True)
class FleetSpec:
    fleet: str
    image: str
    target: int
    places: tuple[Place, ...]
    options: Mapping[str, Any] = field(default_factory=dict)  # launch options: flavor, bootstrap, lease, ...
    settings: Mapping[str, str] = field(default_factory=dict)
    tuning: Tuning = field(default_factory=Tuning)
    path: Path | None = None

    def profiles(self) -> list[str]:
        return [p.profile for p in self.places]


# ----------------------------------------------------------------------------- reading


def read_spec(path: Path) -> FleetSpec:
    """Read and check a spec file; a ConfigError (exit 3) names the file, line and key of what is wrong."""
    try:
        text = bounded.read_bytes(path, bounded.CONFIG_SIZE).decode("utf-8")
    except FileNotFoundError:
        hint = "Write one with 'wlcgcloud fleet spec FLEET > FILE'."
        raise UsageError(f"{path}: no such fleet spec.", hint) from None
    except bounded.TooLarge:
        raise ConfigError(f"{path}: larger than {bounded.size_text(bounded.CONFIG_SIZE)}; not a fleet spec.") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read the fleet spec: {reason}.") from None
    return parse_spec(text, path)


def parse_spec(text: str, path: Path) -> FleetSpec:
    return _Checker(text, path).spec(load_toml(text, path, "no fleet spec is"))


class _Checker:
    """Checks a parsed spec, saying where each mistake is."""

    def __init__(self, text: str, path: Path) -> None:
        self.lines = text.splitlines()
        self.path = path

    def where(self, key: str, table: str | None = None) -> str:
        """`file:line: key 'k'` (in [table]): the line of the key's assignment, when it can be found."""
        current: str | None = None
        for number, line in enumerate(self.lines, start=1):
            stripped = line.strip()
            if stripped.startswith("["):
                current = stripped.strip("[]").strip()
                continue
            if current == table and re.match(rf"{re.escape(key)}\s*=", stripped):
                return f"{self.path}:{number}: key '{key}'" + (f" in [{table}]" if table else "")
        return f"{self.path}: key '{key}'" + (f" in [{table}]" if table else "")

    def fail(self, key: str, table: str | None, why: str) -> ConfigError:
        return ConfigError(f"{self.where(key, table)}: {why}.")

    def unknown(self, key: str, table: str | None, allowed: tuple[str, ...] | list[str]) -> ConfigError:
        near = closest(key, list(allowed))
        return self.fail(key, table, "unknown key" + (f" (did you mean '{near}'?)" if near else ""))

    def text(self, data: Mapping[str, Any], key: str, table: str | None = None) -> str | None:
        value = data.get(key)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip() or not value.isprintable() or len(value) > 1024:
            raise self.fail(key, table, "expected one line of text")
        return value

    def duration(self, data: Mapping[str, Any], key: str, table: str | None = None) -> timedelta | None:
        value = self.text(data, key, table)
        if value is None:
            return None
        try:
            return parse_duration(value, key)
        except UsageError:
            raise self.fail(key, table, f"'{value[:40]}' is not a duration (90m, 12h, 7d)") from None

    def count(self, data: Mapping[str, Any], key: str, table: str | None = None) -> int | None:
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100_000:
            raise self.fail(key, table, "expected a whole number from 0 to 100000")
        return value

    def spec(self, data: Mapping[str, Any]) -> FleetSpec:
        for key in data:
            if key not in TOP:
                raise self.unknown(key, None, TOP)
        fleet, image = self.text(data, "fleet"), self.text(data, "image")
        if fleet is None or not FLEET_NAME.fullmatch(fleet):
            raise self.fail("fleet", None, "expected the fleet's name: 1-40 of a-z, 0-9 and '-'")
        if image is None:
            raise self.fail("image", None, "missing: the endorsed image's identifier or title")
        options: dict[str, Any] = {k: self.text(data, k) for k in TEXT_KEYS if k != "image"}
        options.update({k: self.duration(data, k) for k in DURATION_KEYS})
        for key in FLAG_KEYS:
            if not isinstance(data.get(key, False), bool):
                raise self.fail(key, None, "expected true or false")
            options[key] = bool(data.get(key, False))
        from wlcgcloud.context.credentials import KINDS

        credential = data.get("credential", "auto")
        if credential not in KINDS:
            raise self.fail("credential", None, f"expected one of {', '.join(KINDS)}")
        options["credential"] = credential
        base = self.path.expanduser().absolute().parent
        for key in ("user_data", "proxy", "token_file"):  # relative to the spec, not to where it runs (systemd: /)
            if options.get(key) and not Path(options[key]).expanduser().is_absolute():
                options[key] = str(base / options[key])
        places = self.places(data.get("profiles"))
        target = self.count(data, "target")
        explicit = [n for n, t in data["profiles"].items() if isinstance(t, dict) and "target" in t]
        if target is None:
            if len(explicit) != len(places):
                raise self.fail("target", None, "missing: the whole fleet's size (or a target in every profile)")
            target = int(sum(p.share for p in places))
        if all(p.max is not None for p in places) and sum(p.max or 0 for p in places) < target:
            raise self.fail("target", None, f"the profiles' max add up to {sum(p.max or 0 for p in places)}, "
                            f"fewer than the target {target}: it could never be met")  # fmt: skip
        settings = self.settings(data.get("settings"), options.get("bootstrap"))
        return FleetSpec(fleet, image, target, tuple(places), {k: v for k, v in options.items() if v is not None},
                         settings, self.tuning(data.get("maintain")), self.path)  # fmt: skip

    def places(self, tables: Any) -> list[Place]:
        if not isinstance(tables, dict) or not tables:
            raise self.fail("profiles", None, "expected [profiles.NAME] tables, saying where the fleet lives")
        out = []
        for name, table in tables.items():
            where = f"profiles.{name}"
            if not isinstance(table, dict):
                raise self.fail(name, "profiles", "expected a table [profiles.NAME]")
            for key in table:
                if key not in PROFILE_KEYS:
                    raise self.unknown(key, where, PROFILE_KEYS)
            if "target" in table and "share" in table:
                raise self.fail("share", where, "give a target or a share, not both")
            share = table.get("share", 1)
            if "target" in table:
                share = self.count(table, "target", where)
            elif isinstance(share, bool) or not isinstance(share, int | float) or not 0 < share <= 1_000_000:
                raise self.fail("share", where, "expected a positive number")
            top = self.count(table, "max", where)
            out.append(Place(name, float(share or 0), top, self.text(table, "flavor", where)))
        return out

    def settings(self, table: Any, bootstrap: str | None) -> dict[str, str]:
        from wlcgcloud.context.userdata import bootstraps, is_secret

        if table is None:
            return {}
        if not isinstance(table, dict):
            raise self.fail("settings", None, 'expected a table [settings] of KEY = "value"')
        boot = bootstraps().get(bootstrap or "")
        known = [s.key for s in boot.settings] if boot else []
        out = {}
        for key, value in table.items():
            if is_secret(key):
                raise self.fail(key, "settings", "a secret setting never sits in a spec (it may live in git); give it "
                                f"at run time: --set {key.upper()}=... or WLCGCLOUD_SET_{key.upper()}")  # fmt: skip
            if boot is None:
                raise self.fail("settings", None, 'settings are a bootstrap\'s: give bootstrap = "NAME" too '
                                f"(shipped: {', '.join(bootstraps())})")  # fmt: skip
            if key.upper() not in known:
                near = closest(key.upper(), known)
                hint = f" (did you mean '{near}'?)" if near else f"; it takes {', '.join(known)}"
                raise self.fail(key, "settings", f"bootstrap '{bootstrap}' has no such setting{hint}")
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise self.fail(key, "settings", "expected text or a number")
            out[key.upper()] = str(value)
        return out

    def tuning(self, table: Any) -> Tuning:
        table = table or {}
        if not isinstance(table, dict):
            raise self.fail("maintain", None, "expected a table [maintain]")
        for key in table:
            if key not in MAINTAIN_DEFAULTS:
                raise self.unknown(key, "maintain", list(MAINTAIN_DEFAULTS))
        rate = table.get("create_per_cycle", MAINTAIN_DEFAULTS["create_per_cycle"])
        if isinstance(rate, bool) or not (
            (isinstance(rate, int) and 1 <= rate <= 100_000)
            or (isinstance(rate, str) and re.fullmatch(r"([1-9][0-9]?|100)%", rate))
        ):
            raise self.fail("create_per_cycle", "maintain", "expected a number of VMs (1 or more) or a share (10%)")
        share = table.get("fizzle_share", MAINTAIN_DEFAULTS["fizzle_share"])
        if not (isinstance(share, str) and re.fullmatch(r"([1-9][0-9]?|100)%", share)):
            raise self.fail("fizzle_share", "maintain", 'expected a share of the last VMs, "1%" to "100%"')
        times = {}
        for key, default in MAINTAIN_DEFAULTS.items():
            if key not in ("create_per_cycle", "fizzle_share"):
                given = self.duration(table, key, "maintain")
                times[key] = parse_duration(default) if given is None else given
        return Tuning(str(rate), fizzle_share=int(share[:-1]) / 100, **times)


# ----------------------------------------------------------------------------- placing the target


def targets(spec: FleetSpec, usable: set[str], held: Mapping[str, int]) -> dict[str, int]:
    """How many VMs each profile should hold now.

    The whole target is spread over the `usable` profiles by share (largest remainders), each up to
    its max; what a full profile cannot hold spills to the others. A profile that is not usable
    (backing off, not answering) keeps what it `held` and that much is not asked of the others.
    """
    want = {p.profile: 0 for p in spec.places}
    left = spec.target - sum(held.get(p.profile, 0) for p in spec.places if p.profile not in usable)
    open_places = [p for p in spec.places if p.profile in usable and p.share > 0]
    # Water-filling: a place whose share is more than it may hold is filled to its max, and the rest
    # is shared again among the others; then whole VMs by the largest remainders.
    while left > 0 and open_places:
        weight = sum(p.share for p in open_places)
        capped = [p for p in open_places if p.max is not None and left * p.share / weight > p.max]
        if not capped:
            exact = {p.profile: left * p.share / weight for p in open_places}
            given = {name: math.floor(v) for name, v in exact.items()}
            for name in sorted(exact, key=lambda n: exact[n] - given[n], reverse=True)[: left - sum(given.values())]:
                given[name] += 1
            want.update(given)
            break
        for p in capped:
            want[p.profile] = p.max or 0
            left -= p.max or 0
        open_places = [p for p in open_places if p not in capped]
    for p in spec.places:
        if p.profile not in usable:
            want[p.profile] = held.get(p.profile, 0)
    return want


# ----------------------------------------------------------------------------- writing a spec


def from_ledger(ledger: Ledger, fleet: str) -> dict[str, Any]:
    """The spec of an existing fleet, from its launches in the ledger: the latest launch on each
    profile says what and how many (a fleet that `fleet scale` resized keeps its new size)."""
    latest = {r.profile: r for r in ledger.launches(fleet)}  # in order: the last one wins
    if not latest:
        raise UsageError(f"the ledger knows no launch of fleet '{fleet}'.", "See 'wlcgcloud fleet list'.")
    # How many each profile holds: what the ledger knows alive there (a fleet shrunk by `fleet scale`
    # keeps its new size), else what its latest launch asked of that profile (a --spread launch's part).
    live = {name: sum(1 for r in ledger.instances(fleet=fleet, profile=name) if not r["ended_at"]) for name in latest}
    size = {name: live[name] or record.requested for name, record in latest.items()}
    newest = max(latest.values(), key=lambda r: r.id)
    o = newest.options
    spec: dict[str, Any] = {"fleet": fleet, "image": o.get("image") or newest.image}
    for key in ("flavor", "experiment", "bootstrap", "user_data", "credential_owner"):
        if o.get(key) and not (key == "credential_owner" and o[key] == "root"):
            spec[key] = o[key]
    spec["credential"] = o.get("credential", "auto")
    if o.get("lease_s"):
        spec["lease"] = _duration_text(int(o["lease_s"]))
    for key in FLAG_KEYS:
        if o.get(key):
            spec[key] = True
    spec["target"] = sum(size.values())
    if o.get("settings"):
        spec["settings"] = dict(o["settings"])
    spec["profiles"] = {name: {"target": size[name]} for name in latest}
    for name, record in latest.items():
        if record.flavor != spec.get("flavor"):
            spec["profiles"][name]["flavor"] = record.flavor
    if o.get("secret_settings"):
        spec["_secret_settings"] = list(o["secret_settings"])
    return spec


def _duration_text(seconds: int) -> str:
    """Seconds as hours, minutes or seconds, whole: 172800 -> "48h", 5400 -> "90m"."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def to_toml(spec: Mapping[str, Any]) -> str:
    """A spec as a file: the keys in the documented order, with a comment for what it cannot hold."""
    import tomlkit

    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"wlcgcloud fleet spec for '{spec['fleet']}': 'wlcgcloud fleet maintain FILE' holds it."))
    secret = spec.get("_secret_settings")
    if secret:
        given = " ".join(f"--set {key}=..." for key in secret)
        doc.add(tomlkit.comment(f"Secret settings are not kept here: give them to fleet maintain ({given})."))
    for key, value in spec.items():
        if key.startswith("_") or isinstance(value, dict):
            continue
        doc[key] = value
    for key in ("settings", "profiles"):
        if key in spec:
            doc[key] = spec[key]
    return tomlkit.dumps(doc)
