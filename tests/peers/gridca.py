"""A throwaway grid CA directory, endorsers, CRLs and HEPiX image lists signed with `openssl smime`.

The directory looks like /etc/grid-security/certificates: CA certificates under their OpenSSL
subject hash (`<hash>.0`) and CRLs beside them (`<hash>.r0`). Lists are signed the way vmcaster
does it: `openssl smime -sign -signer cert -inkey key -in list.json` (detached, multipart/signed).
"""

from __future__ import annotations

import datetime
import json
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _now() -> datetime.datetime:
    """Now, when the thing is made: never a moment fixed at import (a long suite would outlive it)."""
    return datetime.datetime.now(datetime.UTC)


def dn(*parts: tuple[Any, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in parts])


@dataclass
class Identity:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    def files(self, directory: Path, stem: str) -> tuple[Path, Path]:
        cert, key = directory / f"{stem}.pem", directory / f"{stem}.key"
        cert.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        key.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert, key


def make_ca(common_name: str) -> Identity:
    name = dn((NameOID.DOMAIN_COMPONENT, "org"), (NameOID.DOMAIN_COMPONENT, "wlcgcloud-test"),
              (NameOID.COMMON_NAME, common_name))  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(days=1))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Identity(name, key, cert)


def make_endorser(ca: Identity, common_name: str, *, expired: bool = False) -> Identity:
    name = dn((NameOID.DOMAIN_COMPONENT, "org"), (NameOID.DOMAIN_COMPONENT, "wlcgcloud-test"),
              (NameOID.ORGANIZATIONAL_UNIT_NAME, "Users"), (NameOID.COMMON_NAME, common_name))  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    start = _now() - datetime.timedelta(days=20 if expired else 1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(ca.name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(_now() - datetime.timedelta(days=1) if expired else _now() + datetime.timedelta(days=10))
        .add_extension(x509.KeyUsage(True, True, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return Identity(name, key, cert)


def subject_hash(cert_file: Path) -> str:
    out = subprocess.run(["openssl", "x509", "-hash", "-noout", "-in", str(cert_file)], capture_output=True, check=True)
    return out.stdout.decode().strip()


def install_ca(directory: Path, ca: Identity, *, crl: bool = True, revoked: tuple[x509.Certificate, ...] = ()) -> None:
    """Put `ca` into a grid CA directory as `<hash>.0`, with a CRL `<hash>.r0` unless `crl` is False."""
    directory.mkdir(parents=True, exist_ok=True)
    pem = directory / "tmp-ca.pem"
    pem.write_bytes(ca.cert.public_bytes(serialization.Encoding.PEM))
    stem = subject_hash(pem)
    pem.rename(directory / f"{stem}.0")
    (directory / f"{stem}.r0").unlink(missing_ok=True)
    if not crl:
        return
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.name)
        .last_update(_now() - datetime.timedelta(hours=1))
        .next_update(_now() + datetime.timedelta(days=7))
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
        .add_extension(x509.CRLNumber(1), critical=False)
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(_now() - datetime.timedelta(minutes=30))
            .build()
        )
    crl_obj = builder.sign(ca.key, hashes.SHA256())
    (directory / f"{stem}.r0").write_bytes(crl_obj.public_bytes(serialization.Encoding.PEM))


def slash(name: x509.Name) -> str:
    short = {NameOID.DOMAIN_COMPONENT: "DC", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.COMMON_NAME: "CN"}
    return "".join(f"/{short[a.oid]}={a.value}" for a in name)


def image_list(endorser: Identity, ca: Identity, **changes: Any) -> dict[str, Any]:
    """A complete HEPiX image list (two images) in the name of `endorser`; `changes` override header fields."""
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    images = [
        {
            "hv:image": {
                "dc:identifier": str(uuid.uuid5(uuid.NAMESPACE_URL, f"wlcg-test-{n}")),
                "dc:title": f"ATLAS worker node {n}",
                "dc:description": "CernVM 4 for ATLAS pilots",
                "hv:uri": f"https://images.example.org/atlas-wn-{n}.qcow2",
                "hv:size": 1024 * n,
                "sl:checksum:sha512": (f"{n:x}" * 128)[:128],
                "sl:arch": "x86_64",
                "sl:os": "Linux",
                "sl:osversion": "EL9",
                "sl:comments": "",
                "hv:hypervisor": "QEMU,KVM",
                "hv:version": f"4.{n}",
                "hv:format": "QCOW2",
                "hv:core_minimum": 2,
                "hv:ram_minimum": 4 * 1024**3,
            }
        }
        for n in (1, 2)
    ]
    body: dict[str, Any] = {
        "dc:identifier": "8f7a2c1e-5b3d-4f6a-9c8e-1d2b3a4c5d6e",
        "dc:title": "ATLAS endorsed images",
        "dc:description": "Images endorsed by ATLAS for the grid",
        "dc:source": "https://images.example.org/",
        "dc:date:created": (_now() - datetime.timedelta(hours=1)).strftime(fmt),
        "dc:date:expires": (_now() + datetime.timedelta(days=14)).strftime(fmt),
        "hv:uri": "https://images.example.org/atlas/image.list",
        "hv:version": "3.1",
        "hv:endorser": {
            "hv:x509": {
                "dc:creator": "ATLAS image endorser",
                "hv:ca": slash(ca.name),
                "hv:dn": slash(endorser.name),
                "hv:email": "endorser@example.org",
            }
        },
        "hv:images": images,
    }
    body.update(changes)
    return {"hv:imagelist": body}


def sign(directory: Path, document: dict[str, Any] | bytes, endorser: Identity, *extra: str) -> Path:
    """`openssl smime -sign` the JSON, detached, as vmcaster does; the signed file's path."""
    directory.mkdir(parents=True, exist_ok=True)
    content = document if isinstance(document, bytes) else json.dumps(document, indent=2).encode()
    stem = uuid.uuid4().hex[:8]
    source, out = directory / f"{stem}.json", directory / f"{stem}.smime"
    source.write_bytes(content)
    cert, key = endorser.files(directory, f"{stem}-signer")
    command = ["openssl", "smime", "-sign", "-signer", str(cert), "-inkey", str(key), "-in", str(source)]
    subprocess.run([*command, "-out", str(out), *extra], check=True, capture_output=True)
    return out
