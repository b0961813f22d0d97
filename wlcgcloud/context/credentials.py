"""Find the operator's X.509 proxy or WLCG bearer token, and decide whether it may go into VMs.

Discovery follows the grid's conventions (formats.md §3): a proxy from `--proxy`,
`$X509_USER_PROXY`, `/tmp/x509up_u<euid>`; a token by WLCG Bearer Token Discovery
(`$BEARER_TOKEN`, `$BEARER_TOKEN_FILE`, `$XDG_RUNTIME_DIR/bt_u<euid>`, `/tmp/bt_u<euid>`).
A credential is read, never verified: we only forward it, so what we need is its kind, whose it
is and how long it lives. Its bytes stay in `Credential.data` and nowhere else; everything a
person sees is `Credential.summary()`, which carries a fingerprint instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from wlcgcloud import bounded, times
from wlcgcloud.errors import PolicyError, UsageError
from wlcgcloud.times import human_duration

KINDS = ("auto", "x509", "token", "none")
MIN_LIFETIME = {"x509": timedelta(hours=6), "token": timedelta(minutes=15)}

PROXY_CERT_INFO = "1.3.6.1.5.5.7.1.14"  # RFC 3820
GT3_PROXY_CERT_INFO = "1.3.6.1.4.1.3536.1.222"  # pre-RFC Globus Toolkit 3 proxies
VOMS_AC = "1.3.6.1.4.1.8005.100.100.5"
VOMS_FQANS = "1.3.6.1.4.1.8005.100.100.4"

PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----\r?\n?", re.DOTALL)


@dataclass(frozen=True)
class Credential:
    """A credential that may be forwarded: its kind, where it was found, and what it says of itself."""

    kind: str  # "x509" or "token"
    source: str  # a path, or "$BEARER_TOKEN"
    data: bytes = field(repr=False)  # the secret itself: only user-data ever holds it
    not_after: datetime  # the end of its life: over the whole chain and any VOMS attributes
    subject: str  # the identity: the end-entity DN, or the token's `sub`
    issuer: str  # that identity's CA, or the token's `iss`
    vo: str | None = None  # the VOMS VO, if a proxy carries attributes
    groups: tuple[str, ...] = ()  # VOMS FQANs or the token's wlcg.groups
    scopes: tuple[str, ...] = ()  # the token's scope
    limited: bool = False  # a limited proxy

    @property
    def fingerprint(self) -> str:
        """A short name for these exact bytes that gives nothing of them away."""
        return "sha256:" + hashlib.sha256(self.data).hexdigest()[:16]

    @property
    def file_name(self) -> str:
        """Its file in the VM, under /run/wlcgcloud/."""
        return "x509up" if self.kind == "x509" else "token"

    def lifetime(self, now: datetime) -> timedelta:
        return self.not_after - now

    def summary(self, now: datetime) -> dict[str, Any]:
        """What a person may see of it: never a byte of the credential."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "expires": self.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lifetime_s": int(self.lifetime(now).total_seconds()),
            "lifetime": human_duration(self.lifetime(now).total_seconds()),
            "subject": self.subject,
            "issuer": self.issuer,
        }
        if self.vo:
            out["vo"] = self.vo
        if self.groups:
            out["groups"] = list(self.groups)
        if self.scopes:
            out["scopes"] = list(self.scopes)
        if self.limited:
            out["limited"] = True
        return out


@dataclass(frozen=True)
class Rejected:
    """A credential that was found but may not be forwarded, and why."""

    kind: str
    source: str
    reason: str
    hint: str | None = None

    def __str__(self) -> str:
        reason = self.reason.rstrip(".")
        return reason if self.source in reason else f"{self.kind} {self.source}: {reason}"


@dataclass(frozen=True)
class Choice:
    """What `--credential` came to: the credential (None: launch without) and what to warn of."""

    credential: Credential | None
    warnings: tuple[str, ...] = ()


# Reading proxies


def read_proxy(path: Path, now: datetime) -> Credential:
    """An X.509 proxy file read and checked; PolicyError naming what is wrong with it otherwise."""
    data = _private_file(path, "proxy", bounded.PROXY_SIZE)
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from wlcgcloud.endorsement.smime import slash_dn

    blocks = [(m.group(1).decode(), m.group(0)) for m in PEM_BLOCK.finditer(data)]
    certs_pem = [b for label, b in blocks if label == "CERTIFICATE"]
    keys_pem = [b for label, b in blocks if label.endswith("PRIVATE KEY")]
    if not certs_pem:
        raise PolicyError(f"{path} holds no certificate: it is not a proxy.")
    try:
        chain = [x509.load_pem_x509_certificate(b) for b in certs_pem]
    except ValueError as exc:
        raise PolicyError(f"{path}: a certificate in it does not parse ({exc}).") from None
    kind = _proxy_kind(chain[0])
    if not kind:
        raise PolicyError(
            f"{path} is a plain certificate ({chain[0].subject.rfc4514_string()}), not a proxy.",
            "Make a proxy with 'voms-proxy-init' or 'grid-proxy-init'; never forward a long-lived key.",
        )
    if not keys_pem:
        raise PolicyError(f"{path} holds no private key: the proxy cannot be used.", "Make a new proxy.")
    try:
        key = serialization.load_pem_private_key(keys_pem[0], password=None)
    except (ValueError, TypeError) as exc:
        raise PolicyError(f"{path}: its private key does not load ({type(exc).__name__}).") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != chain[0].public_key().public_bytes(*spki):
        raise PolicyError(f"{path}: its private key is not the proxy certificate's.", "Make a new proxy.")

    end_entity = next((c for c in chain if not _proxy_kind(c)), chain[-1])
    ends = [c.not_valid_after_utc for c in chain]
    vo: str | None = None
    fqans: tuple[str, ...] = ()
    for cert in chain:
        for ext in cert.extensions:
            if ext.oid.dotted_string == VOMS_AC:
                ac_end, vo, fqans = voms_attributes(ext.value.public_bytes())
                ends.append(ac_end)
        if vo:
            break
    not_before = max(c.not_valid_before_utc for c in chain)
    if not_before > now + timedelta(minutes=5):
        raise PolicyError(f"{path}: the proxy is not valid before {not_before:%Y-%m-%d %H:%M} UTC.")
    return Credential(
        kind="x509",
        source=str(path),
        data=data,
        not_after=min(ends),
        subject=slash_dn(end_entity.subject),
        issuer=slash_dn(end_entity.issuer),
        vo=vo,
        groups=fqans,
        limited=kind == "limited",
    )


def _proxy_kind(cert: Any) -> str | None:
    """ "rfc3820", "gt3", "gt2" or "limited" for a proxy certificate; None for any other."""
    from cryptography.x509.oid import NameOID

    oids = {ext.oid.dotted_string for ext in cert.extensions}
    last = cert.subject.rdns[-1] if cert.subject.rdns else None
    last_cn = next((a.value for a in last if a.oid == NameOID.COMMON_NAME), None) if last else None
    if PROXY_CERT_INFO in oids or GT3_PROXY_CERT_INFO in oids:
        limited = _limited_policy(cert) or last_cn == "limited proxy"
        return "limited" if limited else ("rfc3820" if PROXY_CERT_INFO in oids else "gt3")
    # Legacy GT2: the issuer's DN plus "CN=proxy" or "CN=limited proxy", no extension at all.
    if last_cn in ("proxy", "limited proxy") and cert.subject.rdns[:-1] == cert.issuer.rdns:
        return "limited" if last_cn == "limited proxy" else "gt2"
    return None


LIMITED_POLICY = "1.3.6.1.4.1.3536.1.1.1.9"  # the proxy policy language of a limited proxy


def _limited_policy(cert: Any) -> bool:
    """Whether the proxy's ProxyCertInfo names the limited-proxy policy language."""
    return any(
        ext.oid.dotted_string in (PROXY_CERT_INFO, GT3_PROXY_CERT_INFO)
        and _oid(LIMITED_POLICY) in ext.value.public_bytes()
        for ext in cert.extensions
    )


# The VOMS attribute certificate (RFC 5755 with VOMS's attribute), read just far enough for
# its end of validity and its FQANs. cryptography does not parse attribute certificates.


def voms_attributes(extension: bytes) -> tuple[datetime, str | None, tuple[str, ...]]:
    """(notAfter, VO, FQANs) of the first attribute certificate in a VOMS AC extension value."""
    try:
        # ACSeq, then the attribute certificate, nested one level more or less depending on the
        # VOMS version: go down first elements until AttributeCertificateInfo (it opens with its version).
        _, start, end = _content(extension, 0)
        for _depth in range(6):
            info = _children(extension, start, end)
            if not info or info[0][0] != 0x30:
                break
            start, end = info[0][1], info[0][2]
        if not info or info[0][0] != 0x02:
            raise ValueError("no attribute certificate")
        not_after = None
        fqans: list[str] = []
        vo = None
        for tag, start, end in info:
            if tag != 0x30:
                continue
            inner = _children(extension, start, end)
            if len(inner) == 2 and all(t == 0x18 for t, _, _ in inner):  # the validity period
                t = extension[inner[1][1] : inner[1][2]].decode()
                not_after = datetime.strptime(t[:14], "%Y%m%d%H%M%S").replace(tzinfo=UTC)
            for atag, astart, aend in inner:  # the attributes, where we meet VOMS's
                if atag != 0x30:
                    continue
                attribute = _children(extension, astart, aend)
                if (
                    attribute
                    and attribute[0][0] == 0x06
                    and extension[attribute[0][1] : attribute[0][2]] == _oid(VOMS_FQANS)
                ):
                    vo, fqans = _ietf_values(extension, attribute[1])
        if not_after is None:
            raise ValueError("no validity period")
        return not_after, vo or (fqans[0].split("/")[1] if fqans else None), tuple(fqans)
    except (IndexError, ValueError, UnicodeDecodeError) as exc:
        raise PolicyError(f"the proxy's VOMS attribute certificate does not parse ({exc}).") from None


def _ietf_values(data: bytes, values_set: tuple[int, int, int]) -> tuple[str | None, list[str]]:
    vo = None
    fqans: list[str] = []
    for _, s, e in _children(data, values_set[1], values_set[2]):  # SET OF IetfAttrSyntax
        for tag, s2, e2 in _children(data, s, e):
            if tag == 0xA0:  # policyAuthority: GeneralNames, the URI "vo://host:port"
                for ntag, s3, e3 in _children(data, s2, e2):
                    if ntag == 0x86:
                        vo = data[s3:e3].decode().split("://")[0]
            elif tag == 0x30:
                fqans += [data[s3:e3].decode() for t3, s3, e3 in _children(data, s2, e2) if t3 in (0x04, 0x0C)]
    return vo, fqans


def _content(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start, end) of the DER element at `pos`."""
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > len(data):
        raise ValueError("truncated")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        element = _content(data, start)
        out.append(element)
        start = element[2]
    return out


def _oid(dotted: str) -> bytes:
    numbers = [int(n) for n in dotted.split(".")]
    out = bytearray([40 * numbers[0] + numbers[1]])
    for n in numbers[2:]:
        chunk = [n & 0x7F]
        while n > 0x7F:
            n >>= 7
            chunk.append(0x80 | (n & 0x7F))
        out += bytes(reversed(chunk))
    return bytes(out)


# Reading tokens


def read_token(text: bytes, source: str) -> Credential:
    """A WLCG JWT read without verifying its signature (we are not its audience).

    Bounded like a token file (64 KiB), its claims' nesting and its `exp` (a time before 2200).
    """
    token = text.strip()
    if len(token) > bounded.TOKEN_SIZE:
        raise PolicyError(f"{source}: more than {bounded.size_text(bounded.TOKEN_SIZE)}; no token is that big.")
    parts = token.split(b".")
    if len(parts) != 3 or not all(parts[:2]):
        raise PolicyError(f"{source} does not hold a JWT (expected three base64url parts separated by dots).")
    try:
        payload = base64.urlsafe_b64decode(parts[1] + b"=" * (-len(parts[1]) % 4)).decode("utf-8")
        if bounded.too_deep(payload):
            raise PolicyError(f"{source}: the token's claims nest more than {bounded.MAX_DEPTH} levels deep.")
        claims = json.loads(payload)
    except (binascii.Error, ValueError) as exc:
        raise PolicyError(f"{source}: the token's claims do not decode ({type(exc).__name__}).") from None
    if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int | float):
        raise PolicyError(f"{source}: the token has no 'exp' claim; a token that never expires is not forwarded.")
    # `not <=` also refuses NaN; beyond 2200 (10^30, infinity) is no time a token lives to.
    if not bounded.EARLIEST_EPOCH <= claims["exp"] <= bounded.LATEST_EPOCH:
        raise PolicyError(
            f"{source}: the token's 'exp' claim is no time before {bounded.LATEST_YEAR}: it is not a usable token."
        )
    groups = claims.get("wlcg.groups") or []
    scope = claims.get("scope") or ""
    return Credential(
        kind="token",
        source=source,
        data=token,
        not_after=datetime.fromtimestamp(claims["exp"], UTC),
        subject=str(claims.get("sub", "")),
        issuer=str(claims.get("iss", "")),
        groups=tuple(str(g) for g in groups) if isinstance(groups, list) else (),
        scopes=tuple(str(scope).split()),
    )


# Discovery


def proxy_locations(given: Path | None, env: Mapping[str, str]) -> list[Path]:
    """Where to look for a proxy, in order: `--proxy`, else $X509_USER_PROXY, else /tmp/x509up_u<euid>."""
    if given:
        return [given]
    if env.get("X509_USER_PROXY"):
        return [Path(env["X509_USER_PROXY"])]
    return [Path(f"/tmp/x509up_u{os.geteuid()}")]


def find_token(given: Path | None, env: Mapping[str, str]) -> tuple[str, bytes] | None:
    """(source, token) by WLCG Bearer Token Discovery, or `--token-file`; None when there is none.

    An empty value or file passes on to the next step, as the discovery document says.
    """
    if given:
        return str(given), _private_file(given, "token", bounded.TOKEN_SIZE)
    if env.get("BEARER_TOKEN", "").strip():
        return "$BEARER_TOKEN", env["BEARER_TOKEN"].strip().encode()
    places = []
    if env.get("BEARER_TOKEN_FILE"):
        places.append(Path(env["BEARER_TOKEN_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        places.append(Path(env["XDG_RUNTIME_DIR"]) / f"bt_u{os.geteuid()}")
    places.append(Path(f"/tmp/bt_u{os.geteuid()}"))
    for place in places:
        if place.is_file() and place.stat().st_size:
            data = _private_file(place, "token", bounded.TOKEN_SIZE)
            if data.strip():
                return str(place), data
    return None


def choose(
    kind: str,
    *,
    proxy: Path | None = None,
    token_file: Path | None = None,
    min_lifetime: timedelta | None = None,
    env: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> Choice:
    """The credential `--credential KIND` selects, checked; PolicyError (exit 5) when it may not go.

    `auto` takes a token if one is discoverable and passes, else a proxy; when some were found
    and none passes, the error lists each and why. Nothing found at all under `auto` means no
    credential, with a warning.
    """
    if kind not in KINDS:
        raise UsageError(f"--credential: '{kind}' is not one of {', '.join(KINDS)}.")
    if kind == "none":
        return Choice(None)
    env = os.environ if env is None else env
    now = now or times.now()
    found: list[Credential] = []
    rejected: list[Rejected] = []
    looked: list[str] = []

    def attempt(what: str, source: str, read: Any) -> None:
        try:
            credential = read()
        except PolicyError as exc:
            rejected.append(Rejected(what, source, exc.message, exc.hint))
            return
        floor = min_lifetime if min_lifetime is not None else MIN_LIFETIME[what]
        left = credential.lifetime(now)
        if left <= timedelta(0):
            rejected.append(Rejected(what, source, f"expired at {credential.not_after:%Y-%m-%d %H:%M} UTC"))
        elif left < floor:
            rejected.append(
                Rejected(
                    what,
                    source,
                    f"{human_duration(left.total_seconds())} left, less than "
                    f"--min-lifetime {human_duration(floor.total_seconds())}",
                )
            )
        else:
            found.append(credential)

    if kind in ("auto", "token"):
        try:
            token = find_token(token_file, env)
        except PolicyError as exc:
            token = None
            rejected.append(Rejected("token", str(token_file), exc.message, exc.hint))
        if token:
            attempt("token", token[0], lambda: read_token(token[1], token[0]))
        looked.append("a bearer token ($BEARER_TOKEN, $BEARER_TOKEN_FILE, bt_u<uid>)")
    if kind in ("auto", "x509") and not found:
        for path in proxy_locations(proxy, env):
            if path.exists() or proxy:
                attempt("x509", str(path), lambda path=path: read_proxy(path, now))
        looked.append("an X.509 proxy ($X509_USER_PROXY, /tmp/x509up_u<uid>)")
    if found:
        return Choice(found[0], tuple(f"not forwarding {r}" for r in rejected))
    if rejected:
        lines = "; ".join(str(r) for r in rejected)
        hint = rejected[0].hint if len(rejected) == 1 and rejected[0].hint else None
        raise PolicyError(
            f"no usable credential to forward: {lines}.",
            hint or "Renew it (voms-proxy-init, htgettoken, oidc-token), or pass --credential none.",
        )
    if kind != "auto":
        raise PolicyError(
            f"--credential {kind}: none found (looked for {looked[0]}).",
            "Make one, or point at it with --proxy / --token-file.",
        )
    return Choice(None, (f"no credential found (looked for {' and '.join(looked)}); the VMs get none.",))


def _private_file(path: Path, what: str, limit: int) -> bytes:
    """The bytes of a credential file that only its owner can read, at most `limit`; PolicyError otherwise."""
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise PolicyError(f"{what} {path} is not a file.")
        if info.st_mode & 0o077:
            raise PolicyError(
                f"{what} file {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}).",
                f"Run 'chmod 600 {path}' and make a new {what}: this one may have been copied.",
            )
        return bounded.read_bytes(path, limit)
    except FileNotFoundError:
        raise PolicyError(f"{what} file {path} does not exist.") from None
    except PermissionError:
        raise PolicyError(f"{what} file {path} is not readable by you.") from None
    except bounded.TooLarge:
        raise PolicyError(
            f"{what} file {path} holds more than {bounded.size_text(limit)}; no {what} is that big."
        ) from None
    except OSError as exc:
        raise PolicyError(f"{what} file {path} cannot be read: {exc.strerror or exc}.") from None
