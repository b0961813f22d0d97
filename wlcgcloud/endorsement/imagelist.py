"""The HEPiX image list: what an endorser signs, read leniently, checked for what must be there.

Format (formats.md §1; hepixvmitrust, the HEPiX book): a JSON object `hv:imagelist` with the
list's identity and dates, its endorser, and `hv:images`. We require exactly the fields the
format requires and keep everything else as it came.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from wlcgcloud import bounded
from wlcgcloud.errors import PolicyError

LIST_FIELDS = ("dc:date:created", "dc:date:expires", "dc:identifier", "dc:description", "dc:title",
               "dc:source", "hv:version", "hv:uri", "hv:endorser", "hv:images")  # fmt: skip
ENDORSER_FIELDS = ("hv:ca", "hv:dn", "hv:email", "dc:creator")
IMAGE_FIELDS = ("dc:identifier", "dc:title", "dc:description", "hv:uri", "hv:size", "sl:checksum:sha512",
                "sl:arch", "sl:os", "sl:osversion", "sl:comments", "hv:hypervisor", "hv:version")  # fmt: skip


@dataclass(frozen=True)
class EndorsedImage:
    """One image of a list: its identity, what it is, and how to check its bytes."""

    identifier: str
    title: str
    version: str
    os: str
    os_version: str
    arch: str
    size: int
    sha512: str
    uri: str
    core_minimum: int | None = None
    ram_minimum: int | None = None  # bytes
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class ImageList:
    """A parsed image list (not yet trusted: see `endorsement.verify`)."""

    identifier: str
    title: str
    version: str
    created: datetime
    expires: datetime
    endorser_dn: str
    endorser_ca: str
    images: tuple[EndorsedImage, ...]
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def _time(value: Any, where: str) -> datetime:
    try:
        return datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        raise PolicyError(
            f"the image list's {where} is not a time like 2026-11-24T12:00:00Z: {str(value)[:40]!r}."
        ) from None


def _missing(obj: Any, fields: tuple[str, ...], what: str) -> None:
    if not isinstance(obj, dict):
        raise PolicyError(f"the image list's {what} is not an object.")
    absent = [f for f in fields if f not in obj]
    if absent:
        raise PolicyError(f"the image list's {what} lacks {', '.join(absent)}.")


UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def _uuid(value: Any, where: str) -> str:
    """A dc:identifier: a UUID, as the format says (it also names files and completes in shells)."""
    text = str(value)
    if not UUID.fullmatch(text):
        raise PolicyError(f"{where} dc:identifier is not a UUID: {text[:40]!r}.")
    return text.lower()


def _int(value: Any, where: str) -> int:
    """A size or minimum: a whole number from 0 to 2^63 (a float of 1e400 reads as infinity)."""
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        raise PolicyError(f"{where} is not a whole number: {str(value)[:40]!r}.") from None
    if not 0 <= number < 2**63:
        raise PolicyError(f"{where} is out of range: {str(value)[:40]!r}.")
    return number


def parse(content: bytes) -> ImageList:
    """The list in `content` (the signed JSON), or a PolicyError saying what is wrong with it.

    Its nesting is bounded before json parses it: a validly signed list is still outside input.
    """
    try:
        text = content.decode("utf-8-sig")
        if bounded.too_deep(text):
            raise PolicyError(f"the signed content nests more than {bounded.MAX_DEPTH} levels deep: not an image list.")
        doc = json.loads(text)
    except ValueError as exc:  # not UTF-8, not JSON, or a number of more than 4300 digits
        raise PolicyError(f"the signed content is not a JSON image list ({exc.__class__.__name__}).") from None
    body = doc.get("hv:imagelist") if isinstance(doc, dict) else None
    if body is None:
        raise PolicyError("the signed content is JSON but not an image list (no hv:imagelist).")
    _missing(body, LIST_FIELDS, "header")
    endorser = body["hv:endorser"].get("hv:x509") if isinstance(body["hv:endorser"], dict) else None
    _missing(endorser, ENDORSER_FIELDS, "endorser (hv:endorser/hv:x509)")
    assert isinstance(endorser, dict)
    if not isinstance(body["hv:images"], list):
        raise PolicyError("the image list's hv:images is not a list.")
    images = []
    for n, entry in enumerate(body["hv:images"], 1):
        image = entry.get("hv:image") if isinstance(entry, dict) else None
        _missing(image, IMAGE_FIELDS, f"image {n}")
        assert isinstance(image, dict)
        sha512 = str(image["sl:checksum:sha512"]).lower()
        if not re.fullmatch(r"[0-9a-f]{128}", sha512):
            raise PolicyError(f"image {n} ({image['dc:identifier']}): sl:checksum:sha512 is not a sha512.")
        images.append(
            EndorsedImage(
                identifier=_uuid(image["dc:identifier"], f"image {n}'s"),
                title=str(image["dc:title"]),
                version=str(image["hv:version"]),
                os=str(image["sl:os"]),
                os_version=str(image["sl:osversion"]),
                arch=str(image["sl:arch"]),
                size=_int(image["hv:size"], f"image {n}'s hv:size"),
                sha512=sha512,
                uri=str(image["hv:uri"]),
                core_minimum=_int(image["hv:core_minimum"], "hv:core_minimum") if "hv:core_minimum" in image else None,
                ram_minimum=_int(image["hv:ram_minimum"], "hv:ram_minimum") if "hv:ram_minimum" in image else None,
                raw=image,
            )
        )
    return ImageList(
        identifier=_uuid(body["dc:identifier"], "the list's"),
        title=str(body["dc:title"]),
        version=str(body["hv:version"]),
        created=_time(body["dc:date:created"], "dc:date:created"),
        expires=_time(body["dc:date:expires"], "dc:date:expires"),
        endorser_dn=str(endorser["hv:dn"]),
        endorser_ca=str(endorser["hv:ca"]),
        images=tuple(images),
        raw=body,
    )


def version_key(version: str) -> tuple[tuple[int, str], ...]:
    """A dotted version as a sortable key: `1.10` > `1.9`; non-numeric parts compare as text."""
    parts = re.split(r"[.\-]", version.strip())
    # Only ASCII digits of sane length are numbers: int() of "²" or of 5000 digits raises.
    return tuple((int(p), "") if p.isascii() and p.isdigit() and len(p) <= 18 else (-1, p) for p in parts)
