"""S/MIME detached signatures of image lists, checked against a grid CA directory.

Split in two on purpose:
- `cryptography` reads the signer certificate out of the PKCS#7 part and the CRLs in the CA
  directory (names, dates, revocation), which it can do;
- the signature itself, and the chain to the trust anchors, are checked by the system
  `openssl smime -verify` (OpenSSL 3), because `cryptography` cannot verify PKCS#7 signatures
  nor walk a hashed CA directory. openssl also applies CRLs (`-crl_check`) when the issuing CA
  has one; a CA without a CRL is a warning, as grid tools say when fetch-crl has not run yet.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import re
import shutil
import subprocess
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from wlcgcloud import bounded
from wlcgcloud.errors import ConfigError, PolicyError

# Attribute names as grid tools write DNs in slash form (/DC=ch/DC=cern/OU=.../CN=...).
SHORT_NAMES = {
    NameOID.COUNTRY_NAME: "C",
    NameOID.STATE_OR_PROVINCE_NAME: "ST",
    NameOID.LOCALITY_NAME: "L",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.COMMON_NAME: "CN",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.EMAIL_ADDRESS: "emailAddress",
    NameOID.USER_ID: "UID",
}


def slash_dn(name: x509.Name) -> str:
    """`/DC=ch/DC=cern/CN=Endorser`: the form `hv:dn` and `hv:ca` use."""
    return "".join(
        f"/{SHORT_NAMES.get(a.oid, a.oid.dotted_string)}={a.value if isinstance(a.value, str) else a.value.hex()}"
        for rdn in name.rdns
        for a in rdn
    )


@dataclass(frozen=True)
class Verified:
    """What a good signature proved: the signed bytes, who signed them, and anything to warn about."""

    content: bytes
    signer_dn: str
    issuer_dn: str
    warnings: tuple[str, ...] = field(default=())


def parts(signed: bytes) -> tuple[bytes, bytes]:
    """(the signed content as sent, the DER PKCS#7 signature) of a multipart/signed message.

    The message is split at its boundary by hand, as OpenSSL does: the first part is the signed
    bytes themselves (openssl writes it without MIME headers), which a MIME parser would take
    for headers when the JSON's first line looks like one.
    """
    if len(signed) > bounded.IMAGE_LIST_SIZE:
        raise PolicyError(
            f"the image list is larger than {bounded.size_text(bounded.IMAGE_LIST_SIZE)}; no image list is that big."
        )
    head, blank, _ = signed.partition(b"\n\n") if b"\r\n\r\n" not in signed[:4096] else signed.partition(b"\r\n\r\n")
    headers = email.message_from_bytes(head + b"\n\n", policy=email.policy.compat32)
    boundary = headers.get_param("boundary")
    if headers.get_content_type() != "multipart/signed" or not blank or not isinstance(boundary, str):
        raise PolicyError("this is not an S/MIME signed image list (no multipart/signed message).")
    delimiter = re.compile(rb"\r?\n--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*\r?\n?")
    pieces = delimiter.split(b"\n" + signed[len(head) :].lstrip(b"\r\n"))
    # split() keeps the optional "--" group: [preamble, None, part1, None, part2, "--", epilogue]
    bodies = [p for i, p in enumerate(pieces) if i % 2 == 0][1:]
    if len(bodies) < 2:
        raise PolicyError("the S/MIME message does not have two parts (content and signature): truncated?")
    content, signature = bodies[0], bodies[1]
    sig_head, _, sig_body = signature.replace(b"\r\n", b"\n").partition(b"\n\n")
    sig_headers = email.message_from_bytes(sig_head + b"\n\n", policy=email.policy.compat32)
    if sig_headers.get_content_type() not in ("application/pkcs7-signature", "application/x-pkcs7-signature"):
        raise PolicyError("the S/MIME message's second part is not a PKCS#7 signature.")
    try:
        der = base64.b64decode(b"".join(sig_body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise PolicyError("the PKCS#7 signature is not valid base64 (truncated?).") from None
    return content, der


def signer_certificate(der: bytes) -> x509.Certificate:
    try:
        with warnings.catch_warnings():  # cryptography warns when it falls back to BER: not for our users
            warnings.simplefilter("ignore")
            certs = pkcs7.load_der_pkcs7_certificates(der)
    except ValueError:
        raise PolicyError("the PKCS#7 signature cannot be read (truncated or not PKCS#7).") from None
    if not certs:
        raise PolicyError("the PKCS#7 signature carries no signer certificate.")
    return certs[0]


def _crl_for(issuer: x509.Name, anchors: Path) -> x509.CertificateRevocationList | None:
    """The CRL of `issuer` in a grid CA directory (`<hash>.r0`), if there is one."""
    if not anchors.is_dir():
        return None
    for path in sorted(anchors.glob("*.r[0-9]")):
        try:
            data = bounded.read_bytes(path, bounded.CRL_SIZE)
            crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
        except bounded.TooLarge:
            raise PolicyError(f"the CRL {path} is larger than {bounded.size_text(bounded.CRL_SIZE)}.") from None
        except (OSError, ValueError):
            continue
        if crl.issuer == issuer:
            return crl
    return None


def verify(signed: bytes, anchors: Path) -> Verified:
    """Check the signature and the signer's chain to `anchors` (a CA directory or a PEM file).

    The signer is the certificate openssl reports as having signed (`-signer`), never simply
    the first certificate the message carries: a message may carry others. Exactly one signer.
    """
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError("the 'openssl' command is needed to verify image list signatures and is not installed.")
    if not anchors.exists():
        raise ConfigError(f"trust anchors {anchors} do not exist.", "Pass --trust-anchors DIR|FILE.")
    content, der = parts(signed)
    signer_certificate(der)  # a readable PKCS#7 with a certificate, or a clear refusal before openssl
    warnings: list[str] = []
    base = [openssl, "smime", "-verify", "-purpose", "any", "-inform", "SMIME"]
    base += ["-CApath", str(anchors)] if anchors.is_dir() else ["-CAfile", str(anchors)]
    with tempfile.TemporaryDirectory(prefix="wlcg-smime-") as tmp:
        source, out, who = Path(tmp) / "list.smime", Path(tmp) / "list.json", Path(tmp) / "signer.pem"
        source.write_bytes(signed)

        def openssl_verify(*extra: str) -> None:
            command = [*base, *extra, "-in", str(source), "-out", str(out), "-signer", str(who)]
            done = subprocess.run(command, capture_output=True, timeout=60)
            if done.returncode != 0:
                raise PolicyError(f"the signature does not verify: {_reason(done.stderr)}.")

        openssl_verify()
        signers = x509.load_pem_x509_certificates(who.read_bytes())
        if len(signers) != 1:
            raise PolicyError(f"the list has {len(signers)} signers; an image list has exactly one.")
        signer = signers[0]
        if _is_ca(signer):
            raise PolicyError(f"the signer {slash_dn(signer.subject)} is a CA certificate, not an endorser's.")
        crl = _crl_for(signer.issuer, anchors)
        if crl is not None:
            if crl.get_revoked_certificate_by_serial_number(signer.serial_number) is not None:
                raise PolicyError(f"the signer {slash_dn(signer.subject)} is revoked in its CA's CRL.")
            openssl_verify("-crl_check")  # openssl checks the CRL's own signature and dates too
        elif anchors.is_dir():
            warnings.append(
                f"no CRL for {slash_dn(signer.issuer)} in {anchors}: revocation not checked (run fetch-crl)."
            )
        else:
            warnings.append(f"trust anchors {anchors} are a file, with no CRLs: revocation not checked.")
        verified = out.read_bytes()
    if verified.replace(b"\r\n", b"\n") != content.replace(b"\r\n", b"\n"):
        raise PolicyError("the verified content differs from the message's first part.")
    return Verified(verified, slash_dn(signer.subject), slash_dn(signer.issuer), tuple(warnings))


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


def _reason(stderr: bytes) -> str:
    """openssl's own reason, one line: 'certificate verify error ... unable to get local issuer ...'."""
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    for line in lines:
        if "Verify error:" in line:
            return line.split("Verify error:", 1)[1].strip()
    for line in lines:
        if "error:" in line and ":" in line:
            return line.rsplit(":", 1)[-1].strip() or line
    return lines[0] if lines else "openssl refused it"
