"""Why a profile does or does not work: `doctor` and `profile test`, one checklist.

For each profile, in parallel, the steps a launch depends on, in the order a request travels:
the secret; name resolution; a TCP connection; TLS (the chain to the profile's `ca_bundle`,
else the trust store the SDKs use, the host name, days to expiry); the server's clock (its
`Date` header); the login; the API version; then what a launch needs: the flavor, quota
headroom for one more instance of it, the default endorsed image, the key pair and the network.

Every step has a timing, a verdict (pass, warn, fail, skip) and, when it fails, the next step to
take and the exit class of the failure (3 configuration, 4 credentials, 6 unreachable, 5
policy). A step that an earlier failure makes pointless is skipped, and every network step is
bounded by the profile's timeout (name resolution too, which ignores socket timeouts), so a dead
endpoint is reported within that timeout.
"""

from __future__ import annotations

import email.utils
import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from wlcgcloud.clouds import cloud_of
from wlcgcloud.config import GRID_CA_DIR, Profile
from wlcgcloud.errors import WlcgError, most_severe

CHECKS = ("secret", "dns", "tcp", "tls", "clock", "login", "api", "flavor", "quota", "image", "key pair", "network")
SKEW_FAIL = 300  # seconds: EC2 refuses requests signed more than 5 minutes off; Keystone tokens look expired
SKEW_WARN = 30
EXPIRY_WARN_DAYS = 14
HEADROOM_WARN = 0.1  # warn when less than a tenth of a quota is left

# OpenSSL verify codes (x509_vfy.h) that have a next step of their own.
_EXPIRED, _NOT_YET_VALID, _SELF_SIGNED, _SELF_SIGNED_IN_CHAIN = 10, 9, 18, 19
_NO_LOCAL_ISSUER, _NO_ISSUER, _HOST_MISMATCH = 20, 2, (62, 64)  # 62 a host name, 64 an IP address


@dataclass
class Step:
    """One check of one profile."""

    check: str
    status: str  # pass | warn | fail | skip
    detail: str
    seconds: float = 0.0
    hint: str | None = None
    exit_code: int = 0  # the class of a failure

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "status": self.status, "seconds": round(self.seconds, 3),
                "detail": self.detail, "hint": self.hint}  # fmt: skip


@dataclass
class Diagnosis:
    """A profile's checklist."""

    profile: Profile
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(s.status != "fail" for s in self.steps)

    @property
    def exit_code(self) -> int:
        return most_severe(s.exit_code for s in self.steps if s.status == "fail")

    @property
    def reason(self) -> str:
        """The first failure (with its next step), else what the login said."""
        failed = next((s for s in self.steps if s.status == "fail"), None)
        if failed is not None:
            return f"{failed.detail} {failed.hint}" if failed.hint else failed.detail
        login = next((s for s in self.steps if s.check == "login"), None)
        return login.detail if login else "all checks passed"

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile.name, "provider": self.profile.provider, "ok": self.ok,
                "exit_code": self.exit_code, "reason": self.reason,
                "checks": [s.to_dict() for s in self.steps]}  # fmt: skip


def diagnose_all(profiles: Sequence[Profile]) -> list[Diagnosis]:
    """Every profile's checklist, all profiles at once; answers in profile order."""
    if len(profiles) <= 1:
        return [diagnose(p) for p in profiles]
    with ThreadPoolExecutor(max_workers=min(8, len(profiles)), thread_name_prefix="doctor") as pool:
        return list(pool.map(diagnose, profiles))


def exit_code(results: Sequence[Diagnosis]) -> int:
    """0 when every check passed, else the most severe class found (3, then 4, 6, 5)."""
    return most_severe(r.exit_code for r in results if not r.ok)


def endpoint(profile: Profile) -> str:
    """The URL the profile's SDK talks to first (Keystone for OpenStack)."""
    return cloud_of(profile).endpoint(profile.settings)


class _Checklist:
    """Runs the steps of one profile in order, timing each and skipping what cannot be known."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.timeout = float(profile.get("timeout") or 30)
        self.diagnosis = Diagnosis(profile)
        self.blocked: dict[str, str] = {}  # check -> why it is skipped

    def step(self, check: str, fn: Callable[[], Step | tuple[str, str] | str]) -> Step:
        """Run `fn`: a Step, (status, detail), or a detail that passed; a WlcgError fails the step."""
        if check in self.blocked:
            result = Step(check, "skip", self.blocked[check])
            self.diagnosis.steps.append(result)
            return result
        start = time.perf_counter()
        try:
            got = fn()
        except WlcgError as exc:
            got = Step(check, "fail", exc.message, hint=exc.hint, exit_code=exc.exit_code)
        if isinstance(got, str):
            got = Step(check, "pass", got)
        elif isinstance(got, tuple):
            got = Step(check, got[0], got[1])
        got.check, got.seconds = check, time.perf_counter() - start
        self.diagnosis.steps.append(got)
        return got

    def block(self, checks: Sequence[str], why: str) -> None:
        for check in checks:
            self.blocked.setdefault(check, why)


def _steps_after(check: str) -> tuple[str, ...]:
    return CHECKS[CHECKS.index(check) + 1 :]


def diagnose(profile: Profile) -> Diagnosis:
    """One profile's checklist (see the module docstring)."""
    from wlcgcloud.secretstore import require_secret

    run = _Checklist(profile)
    url = urlsplit(endpoint(profile))
    host = url.hostname or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    name = profile.name

    secret = run.step("secret", lambda: f"found in {require_secret(profile).source}")
    if secret.status == "fail":
        run.block(("login", *_steps_after("login")), "no secret to log in with")

    addresses: list[Any] = []

    def dns() -> Step | str:
        found = _resolve(host, port, run.timeout)
        if isinstance(found, str):
            key = cloud_of(profile).url_key
            named = (
                f"the host name in {key} ('wlcgcloud profile show {name}')"
                if profile.get(key)
                else f"the region ('{profile.get('region')}': its default EC2 endpoint is {host})"
            )
            return Step("dns", "fail", f"cannot resolve '{host}': {found}.", exit_code=6,
                        hint=f"Check {named} and this machine's DNS (/etc/resolv.conf).")  # fmt: skip
        addresses.extend(found)
        shown = ", ".join(sorted({a[4][0] for a in found})[:3])
        return f"'{host}' is {shown}" if not _is_address(host) else f"{host} is an address: nothing to resolve"

    if run.step("dns", dns).status == "fail":
        run.block(_steps_after("dns"), "the host name did not resolve")

    connected: list[Any] = []

    def tcp() -> Step | str:
        errors = []
        for family, kind, proto, _, sockaddr in addresses[:4]:
            try:
                with socket.socket(family, kind, proto) as sock:
                    sock.settimeout(run.timeout)
                    sock.connect(sockaddr)
            except OSError as exc:
                errors.append(f"{sockaddr[0]}: {_why(exc, run.timeout)}")
                continue
            connected.append(sockaddr)
            return f"connected to {sockaddr[0]} port {port}"
        return Step("tcp", "fail", f"cannot reach {host} port {port} ({'; '.join(errors)}).", exit_code=6,
                    hint="Is the endpoint up and the port right? A firewall in between drops connections silently "
                    "(a timeout); a refused connection means nothing listens there.")  # fmt: skip

    if run.step("tcp", tcp).status == "fail":
        run.block(_steps_after("tcp"), "no connection to the endpoint")

    context: list[ssl.SSLContext] = []
    if url.scheme == "https":
        tls = run.step("tls", lambda: _tls(profile, host, connected[0], run.timeout, context))
        if tls.status == "fail":
            run.block(_steps_after("tls"), "TLS did not verify: nothing safe can be sent")
    else:
        plain = cloud_of(profile).over_plain_http
        run.step("tls", lambda: ("skip", f"{url.scheme}:// endpoint: no TLS ({plain})"))

    run.step("clock", lambda: _clock(url, connected[0], context[0] if context else None, run.timeout))

    provider: list[Any] = []

    def login() -> Step | str:
        from wlcgcloud.providers import connect

        p = connect(profile)
        check = p.check()
        if not check.ok:
            return Step("login", "fail", check.reason, exit_code=check.exit_code or 6)
        provider.append(p)
        return check.reason

    if run.step("login", login).status == "fail":
        run.block(_steps_after("login"), "the login failed")
    clock = next(s for s in run.diagnosis.steps if s.check == "clock")
    if provider and clock.status == "warn" and "no Date" in clock.detail:
        _clock_again(profile, provider[0], clock, run.timeout)

    def api() -> tuple[str, str]:
        detail, warning = provider[0].api_version()
        return ("warn", f"{detail}: {warning}") if warning else ("pass", detail)

    run.step("api", api)
    flavors: list[Any] = []
    run.step("flavor", lambda: _flavor(profile, provider[0], flavors))
    run.step("quota", lambda: _quota(profile, provider[0], flavors[0] if flavors else None))
    run.step("image", lambda: _image(profile, provider[0]))
    run.step("key pair", lambda: _key_pair(profile, provider[0]))
    run.step("network", lambda: _network(profile, provider[0]))
    return run.diagnosis


# ----------------------------------------------------------------------------- network steps


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int, deadline: float) -> list[Any] | str:
    """getaddrinfo's answer, or why not; given up after `deadline` seconds (it has no timeout of its own)."""
    answer: dict[str, Any] = {}

    def work() -> None:
        try:
            answer["found"] = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:  # UnicodeError: a label IDNA cannot encode (empty, too long)
            answer["error"] = getattr(exc, "strerror", None) or str(exc)

    worker = threading.Thread(target=work, name="doctor-dns", daemon=True)
    worker.start()
    worker.join(deadline)
    if worker.is_alive():
        return f"no answer from the resolver within {deadline:g} s"
    return answer.get("found") or str(answer.get("error", "no address"))


def _why(exc: OSError, timeout: float) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"no answer within {timeout:g} s"
    return exc.strerror or str(exc)


def _trust(profile: Profile) -> tuple[dict[str, str], str]:
    """What the SDKs verify the endpoint against: `ca_bundle` (a file or a hashed directory), else certifi."""
    bundle = profile.get("ca_bundle")
    if bundle:
        path = str(Path(bundle).expanduser())
        return ({"capath": path} if os.path.isdir(path) else {"cafile": path}), f"ca_bundle {path}"
    try:
        import certifi  # what requests and botocore use when no bundle is given
    except ImportError:
        return {}, "the system's trust store"
    return {"cafile": certifi.where()}, "the default CA bundle (certifi)"


def _context(profile: Profile) -> ssl.SSLContext:
    anchors, _ = _trust(profile)
    return ssl.create_default_context(cafile=anchors.get("cafile"), capath=anchors.get("capath"))


def _tls(profile: Profile, host: str, address: Any, timeout: float, keep: list[ssl.SSLContext]) -> Step | str:
    _, described = _trust(profile)
    try:
        context = _context(profile)
    except (OSError, ssl.SSLError) as exc:
        return Step("tls", "fail", f"cannot read the trust anchors ({described}): {exc}.", exit_code=3,
                    hint=f"Fix ca_bundle: 'wlcgcloud profile edit {profile.name} --ca-bundle FILE'.")  # fmt: skip
    try:
        der = _handshake(context, host, address, timeout)
    except ssl.SSLCertVerificationError as exc:
        return _verify_failed(profile, host, address, timeout, exc, described)
    except ssl.SSLError as exc:
        return Step("tls", "fail", f"the TLS handshake with {host} failed ({exc.reason or exc}).", exit_code=6,
                    hint="Is it an http:// endpoint named https:// (or the other way round)?")  # fmt: skip
    except OSError as exc:
        return Step("tls", "fail", f"the TLS handshake with {host} failed: {_why(exc, timeout)}.", exit_code=6)
    keep.append(context)
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    days = (cert.not_valid_after_utc - datetime.now(UTC)).days
    detail = f"verified against {described}; issued by {_cn(cert.issuer)}, expires in {days} days"
    if days < EXPIRY_WARN_DAYS:
        return Step("tls", "warn", f"{detail}: the site should renew it soon")
    return detail


def _handshake(context: ssl.SSLContext, host: str, address: Any, timeout: float) -> bytes:
    with (
        socket.create_connection(address[:2], timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        return tls.getpeercert(binary_form=True) or b""


def _cn(name: Any) -> str:
    from cryptography.x509.oid import NameOID

    found = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"'{found[0].value}'" if found else name.rfc4514_string()


def _verify_failed(
    profile: Profile, host: str, address: Any, timeout: float, exc: ssl.SSLCertVerificationError, described: str
) -> Step:
    """Say why the certificate did not verify, from the certificate itself (fetched again, unverified)."""
    from cryptography import x509

    name = profile.name
    code = exc.verify_code
    looked = ssl.create_default_context()
    looked.check_hostname, looked.verify_mode = False, ssl.CERT_NONE
    try:
        cert = x509.load_der_x509_certificate(_handshake(looked, host, address, timeout))
    except (OSError, ValueError):
        cert = None
    fix_trust = f"'wlcgcloud profile edit {name} --ca-bundle FILE'"
    if code == _EXPIRED and cert is not None:
        ended = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
        return Step("tls", "fail", f"the certificate of {host} expired on {ended}.", exit_code=6,
                    hint="Tell the site to renew its certificate; until then nothing connects safely.")  # fmt: skip
    if code == _NOT_YET_VALID:
        return Step("tls", "fail", f"the certificate of {host} is not valid yet.", exit_code=6,
                    hint="Check this machine's clock (timedatectl), then tell the site.")  # fmt: skip
    if code in _HOST_MISMATCH:
        held = _names(cert) if cert is not None else "other names"
        return Step("tls", "fail", f"the certificate is for {held}, not '{host}'.", exit_code=6,
                    hint=f"Use a name the certificate holds in {cloud_of(profile).url_key} "
                    f"('wlcgcloud profile edit {name} --{cloud_of(profile).url_key.replace('_', '-')} URL'), "
                    "or tell the site.")  # fmt: skip
    if code in (_SELF_SIGNED, _SELF_SIGNED_IN_CHAIN):
        return Step("tls", "fail", f"the certificate of {host} is self-signed ({exc.verify_message}).", exit_code=6,
                    hint=f"If you trust it, make it the profile's trust anchor: {fix_trust} with that "
                    "certificate (ask the site for it; never copy it from the connection unchecked).")  # fmt: skip
    grid = ""
    if code in (_NO_LOCAL_ISSUER, _NO_ISSUER) and os.path.isdir(GRID_CA_DIR) and not profile.get("ca_bundle"):
        with_grid = ssl.create_default_context(capath=GRID_CA_DIR)
        try:
            _handshake(with_grid, host, address, timeout)
            grid = f" It chains to the grid CAs: 'wlcgcloud profile edit {name} --ca-bundle {GRID_CA_DIR}'."
        except (OSError, ssl.SSLError):
            grid = ""
    issuer = f" (issued by {_cn(cert.issuer)})" if cert is not None else ""
    return Step("tls", "fail", f"the certificate of {host}{issuer} does not chain to {described} "
                f"({exc.verify_message}).", exit_code=6,
                hint=grid.strip() or f"Point ca_bundle at the CA that signed it: {fix_trust}.")  # fmt: skip


def _names(cert: Any) -> str:
    from cryptography import x509

    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in alt.get_values_for_type(x509.DNSName)]
        names += [str(v) for v in alt.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return ", ".join(f"'{n}'" for n in names) or _cn(cert.subject)


def _clock(url: Any, address: Any, context: ssl.SSLContext | None, timeout: float) -> Step | str:
    """Compare this machine's clock with the server's `Date` header (one GET of the endpoint's path)."""
    conn = http.client.HTTPConnection(url.hostname, address[1], timeout=timeout)
    try:
        before = time.time()
        raw = socket.create_connection(address[:2], timeout=timeout)  # the address the TCP step reached
        # TLS names the endpoint's host (SNI, certificate check), as the SDKs do.
        conn.sock = context.wrap_socket(raw, server_hostname=url.hostname) if context is not None else raw
        conn.request("GET", url.path or "/", headers={"Host": url.netloc, "User-Agent": "wlcgcloud-doctor"})
        response = conn.getresponse()
        response.read(64 * 1024)  # only its headers matter: a hostile endpoint's endless body is not read
        after = time.time()
    except (OSError, http.client.HTTPException) as exc:
        return Step("clock", "warn", f"no answer to read the server's clock from ({exc}).")
    finally:
        conn.close()
    stamp = response.getheader("Date")
    parsed = email.utils.parsedate_to_datetime(stamp) if stamp else None
    if parsed is None:
        return Step("clock", "warn", "the server sent no Date header: clock skew cannot be told.")
    skew = parsed.timestamp() - (before + after) / 2
    side = "behind" if skew > 0 else "ahead of"
    said = f"this machine's clock is {abs(skew):.0f} s {side} the server's"
    if abs(skew) >= SKEW_FAIL:
        return Step("clock", "fail", f"{said} (more than {SKEW_FAIL // 60} minutes).", exit_code=6,
                    hint="EC2 refuses requests signed that far off and Keystone tokens look expired: "
                    "synchronise the clock ('timedatectl set-ntp true', or chronyd); if this machine is right, "
                    "tell the site.")  # fmt: skip
    if abs(skew) >= SKEW_WARN:
        return Step("clock", "warn", f"{said}: keep it synchronised ('timedatectl set-ntp true').")
    return f"within {max(abs(skew), 1):.0f} s of the server's"


def _clock_again(profile: Profile, provider: Any, clock: Step, timeout: float) -> None:
    """Read the time from the API endpoint behind the profile's URL instead (Keystone behind uWSGI sends
    no Date header; Nova does), updating the clock step in place. Nothing changes when there is none."""
    start = time.perf_counter()
    try:
        found = provider.service_url()
        if not found:
            return
        service = urlsplit(found)
        address = (service.hostname, service.port or (443 if service.scheme == "https" else 80))
        again = _clock(service, address, _context(profile) if service.scheme == "https" else None, timeout)
    except (WlcgError, OSError, ssl.SSLError):
        return
    if isinstance(again, str):
        again = Step("clock", "pass", again)
    clock.status, clock.hint, clock.exit_code = again.status, again.hint, again.exit_code
    clock.detail = f"{again.detail} (from {service.scheme}://{service.netloc}: the endpoint sent no Date header)"
    clock.seconds += time.perf_counter() - start


# ----------------------------------------------------------------------------- cloud steps


def _remember(profile: Profile, kind: str, values: Sequence[str]) -> None:
    from wlcgcloud.completion_cache import remember

    remember(profile.name, {kind: values}, complete=True)


def _flavor(profile: Profile, provider: Any, found: list[Any]) -> Step | str:
    flavors = provider.flavors()
    _remember(profile, "flavor", [f.name for f in flavors])
    wanted = cloud_of(profile).default_flavor(profile.settings)
    if not wanted:
        return Step("flavor", "skip", f"no default flavor set ({len(flavors)} on the cloud; launch takes --flavor)")
    match = next((f for f in flavors if wanted in (f.name, f.id)), None)
    if match is None:
        some = ", ".join(sorted(f.name for f in flavors)[:8])
        return Step("flavor", "fail", f"the cloud has no flavor '{wanted}' (it has: {some or 'none'}).", exit_code=3,
                    hint=f"'wlcgcloud profile edit {profile.name} --flavor NAME' (TAB completes).")  # fmt: skip
    found.append(match)
    return f"'{match.name}': {match.vcpus} vCPUs, {match.memory_mb} MiB"


def _quota(profile: Profile, provider: Any, flavor: Any) -> Step | str:
    quota = provider.quota()
    need = {"instances": 1, "cores": (flavor.vcpus or 1) if flavor else 1,
            "memory": (flavor.memory_mb or 0) if flavor else 0}  # fmt: skip
    rows = (("instances", quota.instances, quota.instances_used),
            ("cores", quota.cores, quota.cores_used),
            ("memory", quota.memory_mb, quota.memory_mb_used))  # fmt: skip

    def shown(what: str, value: int | None) -> str:
        if value is None:
            return "?"
        if what != "memory":
            return str(value)
        return f"{value / 1024:g} GiB" if value >= 1024 else f"{value} MiB"

    parts, short, low = [], [], []
    for what, limit, used in rows:
        if limit is None or limit < 0:
            parts.append(f"{what} {shown(what, used)} used, no limit")
            continue
        free = limit - (used or 0)
        said = f"{what} {shown(what, used or 0)} of {shown(what, limit)}"
        parts.append(said)
        if free < need[what] or free <= 0:
            short.append(said)
        elif limit and free / limit < HEADROOM_WARN:
            low.append(what)
    detail = ", ".join(parts)
    if short:
        one = f"one more '{flavor.name}'" if flavor else "one more instance"
        return Step("quota", "fail", f"no room for {one}: {', '.join(short)} in use.", exit_code=5,
                    hint="Terminate what is not needed ('wlcgcloud fleet list', 'wlcgcloud fleet scale') "
                    "or ask the site for more quota.")  # fmt: skip
    if low:
        return Step("quota", "warn", f"{detail}: less than {HEADROOM_WARN:.0%} left of {', '.join(low)}")
    return detail


def _image(profile: Profile, provider: Any) -> Step | str:
    reference = profile.get("image")
    if not reference:
        return Step("image", "skip", "no default image set (launch names one)")
    from wlcgcloud.endorsement import gate

    decision = gate(str(reference), provider, None)
    title = decision.endorsed.title if decision.endorsed else reference
    return f"'{title}' is endorsed; cloud image {decision.cloud_image} ({decision.how})"


def _key_pair(profile: Profile, provider: Any) -> Step | str:
    wanted = profile.get("key_name")
    if not wanted:
        return Step("key pair", "skip", "no key_name set")
    names = provider.key_pairs()
    if names is None:
        return Step("key pair", "skip", "this cloud has no key pairs (SSH keys come from the user's template)")
    if wanted not in names:
        return Step("key pair", "fail", f"no key pair '{wanted}' (there are: {', '.join(sorted(names)) or 'none'}).",
                    exit_code=3, hint=f"Create it on the cloud, or 'wlcgcloud profile edit {profile.name} "
                    "--key-name NAME'.")  # fmt: skip
    return f"'{wanted}' exists"


def _network(profile: Profile, provider: Any) -> Step | str:
    key = cloud_of(profile).network_key
    wanted = profile.get(key)
    networks = provider.networks()
    _remember(profile, "network", [name or ident for ident, name in networks])
    if not wanted:
        return Step("network", "skip", f"no {key} set ({len(networks)} on the cloud)")
    match = next(((i, n) for i, n in networks if wanted in (i, n)), None)
    if match is None:
        some = ", ".join(sorted(n or i for i, n in networks)[:8])
        return Step("network", "fail", f"no {key} '{wanted}' (there are: {some or 'none'}).", exit_code=3,
                    hint=f"'wlcgcloud profile edit {profile.name} --{key} NAME' (TAB completes).")  # fmt: skip
    return f"{key} '{wanted}' exists ({match[0]})"
