"""Real grid credentials made at test time: a user certificate, RFC 3820 proxies, VOMS proxies, WLCG JWTs.

Proxies come from three independent makers: Debian's `grid-proxy-init` (globus-proxy-utils),
`voms-proxy-fake` (voms-clients, which adds a real VOMS attribute certificate signed by a
throwaway VOMS host), and `cryptography` here, building the ProxyCertInfo extension by hand
(RFC 3820 §3.8), for shapes the tools will not make (expired, key missing, legacy GT2).
Globus signs proxies only with RSA keys, so every key here is RSA.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from peers.gridca import subject_hash


def _now() -> datetime.datetime:
    """Now, when the thing is made: never a moment fixed at import (a long suite would outlive it)."""
    return datetime.datetime.now(datetime.UTC)


TOOLS = {"grid-proxy-init": "globus-proxy-utils", "voms-proxy-fake": "voms-clients"}


def require(tool: str) -> str:
    """The path of a proxy tool; fail (not skip) naming the Debian package when it is missing."""
    import pytest

    found = shutil.which(tool)
    if not found:
        pytest.fail(f"{tool} is missing: install Debian's {TOOLS[tool]} (dev/test does as root).", pytrace=False)
    return found


@dataclass
class Grid:
    """A CA directory, a user certificate and key, and a VOMS host, all in `root`."""

    root: Path
    ca_dir: Path
    ca_key: rsa.RSAPrivateKey
    ca_cert: x509.Certificate
    user_key: rsa.RSAPrivateKey
    user_cert: x509.Certificate
    user_cert_file: Path
    user_key_file: Path
    voms_cert_file: Path
    voms_key_file: Path

    @property
    def user_dn(self) -> str:
        return "/" + "/".join(f"{a.rfc4514_attribute_name}={a.value}" for a in self.user_cert.subject)

    def env(self) -> dict[str, str]:
        return {**os.environ, "X509_CERT_DIR": str(self.ca_dir), "RANDFILE": str(self.root / ".rnd")}

    def grid_proxy_init(self, out: Path, hours: int = 12) -> Path:
        """An RFC 3820 proxy made by Globus's grid-proxy-init."""
        subprocess.run(
            [require("grid-proxy-init"), "-q", "-rfc", "-cert", str(self.user_cert_file), "-key",
             str(self.user_key_file), "-out", str(out), "-hours", str(hours), "-bits", "2048"],
            env=self.env(), check=True, capture_output=True,
        )  # fmt: skip
        return out

    def voms_proxy(self, out: Path, vo: str, fqan: str, hours: int = 12, voms_hours: int = 12) -> Path:
        """An RFC 3820 proxy carrying a VOMS attribute certificate for `vo`, made by voms-proxy-fake."""
        (self.root / ".rnd").touch()
        result = subprocess.run(
            [require("voms-proxy-fake"), "-q", "-rfc", "-cert", str(self.user_cert_file), "-key",
             str(self.user_key_file), "-hostcert", str(self.voms_cert_file), "-hostkey", str(self.voms_key_file),
             "-voms", vo, "-fqan", fqan, "-uri", "voms.wlcgcloud-test.org:15001", "-hours", str(hours),
             "-vomslife", str(voms_hours), "-out", str(out)],
            env=self.env(), capture_output=True, text=True,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        return out

    def proxy(
        self,
        out: Path,
        *,
        lifetime: datetime.timedelta = datetime.timedelta(hours=12),
        key: bool = True,
        legacy: bool = False,
        limited: bool = False,
    ) -> Path:
        """A proxy built here: RFC 3820 (ProxyCertInfo) or legacy GT2 (`CN=proxy`), any lifetime."""
        proxy_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        serial = x509.random_serial_number()
        last = ("limited proxy" if limited else "proxy") if legacy else str(serial % 10**9)
        subject = x509.Name([*self.user_cert.subject, x509.NameAttribute(NameOID.COMMON_NAME, last)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.user_cert.subject)
            .public_key(proxy_key.public_key())
            .serial_number(serial)
            .not_valid_before(_now() - datetime.timedelta(minutes=5) - max(-lifetime, datetime.timedelta(0)))
            .not_valid_after(_now() + lifetime)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        )
        if not legacy:
            language = "1.3.6.1.4.1.3536.1.1.1.9" if limited else "1.3.6.1.5.5.7.21.1"  # limited / inheritAll
            builder = builder.add_extension(
                x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"), proxy_cert_info(language)),
                critical=True,
            )
        cert = builder.sign(self.user_key, hashes.SHA256())
        pem = cert.public_bytes(serialization.Encoding.PEM)
        if key:
            pem += proxy_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )  # fmt: skip
        pem += self.user_cert.public_bytes(serialization.Encoding.PEM)
        write_private(out, pem)
        return out


def proxy_cert_info(language: str) -> bytes:
    """DER of ProxyCertInfo ::= SEQUENCE { proxyPolicy SEQUENCE { policyLanguage OID } } (RFC 3820 §3.8)."""
    return der(0x30, der(0x30, der(0x06, oid(language))))


def der(tag: int, content: bytes) -> bytes:
    n = len(content)
    size = (n.bit_length() + 7) // 8
    length = bytes([n]) if n < 0x80 else bytes([0x80 | size]) + n.to_bytes(size, "big")
    return bytes([tag]) + length + content


def oid(dotted: str) -> bytes:
    first, second, *rest = (int(p) for p in dotted.split("."))
    out = [40 * first + second]
    for value in rest:
        groups = [value & 0x7F]
        value >>= 7
        while value:
            groups.append(0x80 | (value & 0x7F))
            value >>= 7
        out.extend(reversed(groups))
    return bytes(out)


def write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)


def _rsa_cert(
    subject: x509.Name, issuer: x509.Name, key: rsa.RSAPrivateKey, signer: rsa.RSAPrivateKey, ca: bool,
    issuer_key: rsa.RSAPrivateKey | None = None,
) -> x509.Certificate:  # fmt: skip
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(days=1))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key((issuer_key or key).public_key()), critical=False
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True
        )
    return builder.sign(signer, hashes.SHA256())


def make_grid(root: Path, user: str = "Alice Operator") -> Grid:
    """A throwaway grid: CA directory (hashed names), a user certificate, a VOMS host certificate."""
    root.mkdir(parents=True, exist_ok=True)

    def name(cn: str) -> x509.Name:
        return x509.Name([
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"),
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "wlcgcloud-test"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ])  # fmt: skip

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_cert = _rsa_cert(name("Grid Test CA"), name("Grid Test CA"), ca_key, ca_key, ca=True)
    ca_dir = root / "certificates"
    ca_dir.mkdir(exist_ok=True)
    ca_file = root / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    shutil.copy(ca_file, ca_dir / f"{subject_hash(ca_file)}.0")

    def issue(cn: str, stem: str) -> tuple[rsa.RSAPrivateKey, x509.Certificate, Path, Path]:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        cert = _rsa_cert(name(cn), ca_cert.subject, key, ca_key, ca=False, issuer_key=ca_key)
        cert_file, key_file = root / f"{stem}cert.pem", root / f"{stem}key.pem"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_private(key_file, key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        ), 0o400)  # fmt: skip
        return key, cert, cert_file, key_file

    user_key, user_cert, user_cert_file, user_key_file = issue(user, "user")
    _, _, voms_cert_file, voms_key_file = issue("voms.wlcgcloud-test.org", "voms")
    return Grid(root, ca_dir, ca_key, ca_cert, user_key, user_cert, user_cert_file, user_key_file,
                voms_cert_file, voms_key_file)  # fmt: skip


# WLCG JWTs (WLCG Common JWT Profiles v1.0), signed with a throwaway key: we never verify them,
# but they are shaped as an issuer would make them.

_SIGNER = ec.generate_private_key(ec.SECP256R1())


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def make_token(lifetime: datetime.timedelta = datetime.timedelta(hours=1), **claims: Any) -> bytes:
    """A signed WLCG access token living `lifetime` from now; `claims` add or override."""
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    now = int(_now().timestamp())
    body = {
        "wlcg.ver": "1.0",
        "sub": "e1eb758b-b73c-4761-bfff-adc793da409c",
        "aud": "https://wlcg.cern.ch/jwt/v1/any",
        "iss": "https://atlas-auth.wlcgcloud-test.org/",
        "exp": now + int(lifetime.total_seconds()),
        "iat": now - 60,
        "nbf": now - 60,
        "jti": "c2a5ad4c-3ad5-4d1b-b5b9-2b1c43e3d1c4",
        "scope": "compute.read compute.create compute.modify storage.read:/",
        "wlcg.groups": ["/atlas", "/atlas/production"],
    }
    body.update(claims)
    header = _b64(json.dumps({"alg": "ES256", "typ": "JWT", "kid": "wlcgcloud-test"}).encode())
    payload = _b64(json.dumps(body).encode())
    r, s = decode_dss_signature(_SIGNER.sign(header + b"." + payload, ec.ECDSA(hashes.SHA256())))
    return header + b"." + payload + b"." + _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
