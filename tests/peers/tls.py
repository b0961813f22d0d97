"""A throwaway certificate authority and a server certificate for 127.0.0.1, made at test time.

Used to put a peer behind TLS (FaultProxy(tls=...)) so the profile's `ca_bundle` is exercised
for real: verification against our CA passes, against the system store it fails.
make_server_files writes a CA, certificate and key as PEM files instead, for servers set up by file
name (PostgreSQL: tests/peers/postgres.py).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class ThrowawayCA:
    ca_file: Path  # PEM: what a profile's ca_bundle points at
    server: ssl.SSLContext  # server side, presenting a certificate for 127.0.0.1 signed by the CA


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wlcgcloud tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])  # fmt: skip


def _new_ca(now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A CA key and its self-signed certificate, valid from five minutes ago for a day."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("wlcgcloud test CA"))
        .issuer_name(_name("wlcgcloud test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return ca_key, ca_cert


def make_ca(directory: Path, names: tuple[str, ...] = ("127.0.0.1",), expired: bool = False) -> ThrowawayCA:
    """A CA and a server certificate it signed for `names` (IP addresses or DNS names); `expired`: ended yesterday."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = _new_ca(now)
    directory.mkdir(parents=True, exist_ok=True)
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    starts = now - datetime.timedelta(days=2)
    ends = now - datetime.timedelta(days=1) if expired else now + datetime.timedelta(days=1)
    return ThrowawayCA(ca_file, _server(directory, names, ca_cert.subject, ca_key, starts, ends))


def self_signed(directory: Path, names: tuple[str, ...] = ("127.0.0.1",)) -> ssl.SSLContext:
    """A server context presenting a certificate that signed itself (no CA), for `names`."""
    now = datetime.datetime.now(datetime.UTC)
    return _server(directory, names, None, None, now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=30))


def _server_cert(
    names: tuple[str, ...], issuer: x509.Name | None, ca_key: Any, start: Any, end: Any
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server key and certificate for `names` (IP addresses or DNS names), signed by `ca_key` (else by itself)."""
    key = ec.generate_private_key(ec.SECP256R1())
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(names[0]))
        .issuer_name(issuer or _name(names[0]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key or key, hashes.SHA256())
    )
    return key, cert


def _server(
    directory: Path, names: tuple[str, ...], issuer: x509.Name | None, ca_key: Any, start: Any, end: Any
) -> ssl.SSLContext:
    key, cert = _server_cert(names, issuer, ca_key, start, end)
    directory.mkdir(parents=True, exist_ok=True)
    chain = directory / f"server-{x509.random_serial_number():x}.pem"
    chain.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + cert.public_bytes(serialization.Encoding.PEM)
    )
    chain.chmod(0o600)
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(chain)
    return server


@dataclass(frozen=True)
class ServerFiles:
    """A throwaway CA and a server certificate it signed, as PEM files, for servers set up by file name."""

    ca_file: Path  # the CA's certificate (mode 0644): what a client verifies against
    cert_file: Path  # the server's certificate
    key_file: Path  # the server's private key, unencrypted, mode 0600


def make_server_files(directory: Path, names: tuple[str, ...] = ("127.0.0.1",)) -> ServerFiles:
    """A new CA and a server certificate for `names` (IP addresses or DNS names), valid for a day, written to files."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = _new_ca(now)
    key, cert = _server_cert(names, ca_cert.subject, ca_key, now - datetime.timedelta(minutes=5),
                             now + datetime.timedelta(days=1))  # fmt: skip
    directory.mkdir(parents=True, exist_ok=True)
    files = ServerFiles(directory / "ca.pem", directory / "server.crt", directory / "server.key")
    files.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.ca_file.chmod(0o644)
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(files.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    files.key_file.chmod(0o600)  # also when it was there before
    return files
