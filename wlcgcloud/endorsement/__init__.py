"""Endorsed images: subscriptions to signed HEPiX image lists, checked before they are stored.

A subscription is keyed by the list's `dc:identifier` (a UUID) and named for people. One file
per subscription in the state directory (`image-lists/<identifier>.json`) holds what we decided
about it and its last good signed list as it came (base64), written atomically, so the two can
never disagree. A list is stored only after every check of formats.md §1 passed; a failing
refresh keeps the last good one and says why.

Who may sign: the authorised endorser DNs, each pinned to the CA that issued it when first
seen, because another CA in the trust anchors could issue a certificate with the same DN.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wlcgcloud import bounded, times
from wlcgcloud.config import GRID_CA_DIR, atomic_write
from wlcgcloud.endorsement.imagelist import EndorsedImage, ImageList, parse, version_key
from wlcgcloud.errors import CloudError, ConfigError, PolicyError, UsageError
from wlcgcloud.paths import state_dir
from wlcgcloud.times import stamp

if TYPE_CHECKING:
    from wlcgcloud.endorsement import smime
    from wlcgcloud.providers.base import Provider

CLOCK_SKEW = timedelta(minutes=5)  # a list "created" this little in the future is a clock, not a lie


@dataclass
class Subscription:
    """One subscribed list: where it comes from, who may sign it, and its last good version."""

    name: str
    identifier: str
    source: str
    trust_anchors: str
    endorsers: list[str]
    pinned: dict[str, str] = field(default_factory=dict)  # endorser DN -> the CA DN that issued it
    title: str = ""
    version: str = ""
    created: str = ""
    expires: str = ""
    fetched_at: str = ""
    warnings: list[str] = field(default_factory=list)
    images: list[dict[str, str]] = field(default_factory=list)  # identifier and title: for completion
    signed: str = field(default="", repr=False)  # the last good signed list, base64

    def to_dict(self) -> dict[str, Any]:
        """The record as shown to people and scripts: everything but the stored list itself."""
        return {k: v for k, v in asdict(self).items() if k != "signed"}

    @property
    def signed_list(self) -> bytes:
        return base64.b64decode(self.signed)


def lists_dir() -> Path:
    return state_dir() / "image-lists"


def subscriptions() -> list[Subscription]:
    """Every subscription, by name."""
    found = []
    for meta in sorted(lists_dir().glob("*.json")):
        try:
            found.append(Subscription(**bounded.read_state_json(meta)))
        except (OSError, ValueError, TypeError) as exc:
            raise ConfigError(f"cannot read subscription {meta}: {exc.__class__.__name__}.") from None
    return sorted(found, key=lambda s: s.name)


def find(name_or_identifier: str) -> Subscription:
    for sub in subscriptions():
        if name_or_identifier in (sub.name, sub.identifier):
            return sub
    known = ", ".join(s.name for s in subscriptions()) or "none"
    raise UsageError(f"no subscribed image list '{name_or_identifier}' (subscribed: {known}).")


def stored_list(sub: Subscription) -> ImageList:
    """The last good list of a subscription (re-read from its signed file, not re-verified)."""
    from wlcgcloud.endorsement import smime  # cryptography's x509 and email: ~75 ms, not for every launch

    content, _ = smime.parts(sub.signed_list)
    return parse(content)


def fetch(source: str, ca_bundle: str | None = None) -> bytes:
    """The signed list at `source`: a local file or an https:// URL (never plain http)."""
    if source.startswith("https://"):
        try:
            with _open_https(source, ca_bundle) as answer:
                data: bytes = answer.read(bounded.IMAGE_LIST_SIZE + 1)
                return data
        except OSError as exc:
            raise CloudError(f"cannot download {source}: {exc}.") from None
    if re.match(r"^[a-z]+://", source):
        raise UsageError(f"{source}: only local files and https:// URLs can be subscribed.")
    try:
        return bounded.read_bytes(Path(source).expanduser(), bounded.IMAGE_LIST_SIZE)
    except bounded.TooLarge:
        raise PolicyError(
            f"{source}: larger than {bounded.size_text(bounded.IMAGE_LIST_SIZE)}; no image list is that big."
        ) from None
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror or exc}.") from None


def _open_https(url: str, ca_bundle: str | None) -> Any:
    """An https response, verified against `ca_bundle` (a PEM file or a hashed CA directory) or the system's."""
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(
        cafile=ca_bundle if ca_bundle and Path(ca_bundle).is_file() else None,
        capath=ca_bundle if ca_bundle and Path(ca_bundle).is_dir() else None,
    )

    class HttpsOnly(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
            if not newurl.startswith("https://"):
                raise urllib.error.URLError(f"refused a redirect from https to {newurl.split(':', 1)[0]}")
            return super().redirect_request(req, fp, code, msg, headers, newurl)

    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), HttpsOnly)
    return opener.open(url, timeout=60)


CHUNK = 1024 * 1024


def download(image: EndorsedImage, ca_bundle: str | None = None, progress: Callable[[int], None] | None = None) -> Path:
    """Download an endorsed image into the state directory, checking its size and sha512 as it comes.

    A mismatch (or any failure) leaves no file behind. The caller removes the file when done.
    """
    import hashlib

    if not image.uri.startswith("https://"):
        raise PolicyError(f"'{image.title}' comes from {image.uri}: only https:// sources are downloaded.")
    folder = state_dir() / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=f"{image.identifier}.", suffix=".part")
    target, digest, got = Path(name), hashlib.sha512(), 0
    try:
        with os.fdopen(fd, "wb") as out, _open_https(image.uri, ca_bundle) as answer:
            while chunk := answer.read(CHUNK):
                got += len(chunk)
                if got > image.size:
                    raise PolicyError(f"'{image.title}' is bigger than the list's hv:size {image.size}; refused.")
                digest.update(chunk)
                out.write(chunk)
                if progress:
                    progress(len(chunk))
        if got != image.size:
            raise PolicyError(f"'{image.title}' is {got} bytes, not the list's hv:size {image.size}; refused.")
        if digest.hexdigest() != image.sha512:
            raise PolicyError(f"the sha512 of '{image.title}' differs from the list's sl:checksum:sha512; refused.")
        return target
    except OSError as exc:
        target.unlink(missing_ok=True)
        raise CloudError(f"cannot download {image.uri}: {exc}.") from None
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def check(
    signed: bytes,
    anchors: Path,
    endorsers: list[str],
    pinned: dict[str, str],
    identifier: str | None,
    previous: Subscription | None,
    now: datetime | None = None,
) -> tuple[ImageList, smime.Verified]:
    """Every check of formats.md §1 on a signed list; a PolicyError (exit 5) with the first that fails."""
    from wlcgcloud.endorsement import smime

    now = now or times.now()
    verified = smime.verify(signed, anchors)
    image_list = parse(verified.content)
    signer, issuer = verified.signer_dn, verified.issuer_dn
    if signer != image_list.endorser_dn:
        raise PolicyError(f"the list names endorser {image_list.endorser_dn} but {signer} signed it.")
    if issuer != image_list.endorser_ca:
        raise PolicyError(f"the list names CA {image_list.endorser_ca} but the signer's issuer is {issuer}.")
    if endorsers and signer not in endorsers:
        raise PolicyError(
            f"{signer} is not an authorised endorser of this list.",
            "Authorised: " + "; ".join(endorsers) + ". Add one with --endorser DN.",
        )
    if signer in pinned and pinned[signer] != issuer:
        raise PolicyError(f"{signer} was issued by {pinned[signer]} when first trusted, but this one by {issuer}.")
    expected = identifier or (previous.identifier if previous else None)
    if expected and image_list.identifier != expected.lower():
        raise PolicyError(f"the list's identifier is {image_list.identifier}, not the expected {expected}.")
    if image_list.created > now + CLOCK_SKEW:
        raise PolicyError(f"the list was created in the future ({stamp(image_list.created)}).")
    if image_list.expires <= now:
        raise PolicyError(f"the list expired at {stamp(image_list.expires)}.", "Ask its endorser for a new one.")
    if previous and previous.version:
        new, held = version_key(image_list.version), version_key(previous.version)
        if new < held or (new == held and previous.created and stamp(image_list.created) < previous.created):
            raise PolicyError(
                f"the list (version {image_list.version}, created {stamp(image_list.created)}) is older than the "
                f"subscribed one (version {previous.version}, created {previous.created}); a rollback is refused."
            )
    return image_list, verified


def slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "image-list"


def _store(sub: Subscription) -> None:
    atomic_write(lists_dir() / f"{sub.identifier}.json", json.dumps(asdict(sub), indent=1), what="the subscription")


def _record(base: Subscription, signed: bytes, image_list: ImageList, verified: smime.Verified) -> Subscription:
    """`base` updated with a list that passed: its facts, its signer's CA pinned, the list itself."""
    pinned = {**base.pinned, verified.signer_dn: verified.issuer_dn}
    return Subscription(
        **{
            **asdict(base),
            "identifier": image_list.identifier,
            "pinned": pinned,
            "title": image_list.title,
            "version": image_list.version,
            "created": stamp(image_list.created),
            "expires": stamp(image_list.expires),
            "fetched_at": stamp(times.now()),
            "warnings": list(verified.warnings),
            "images": [{"identifier": i.identifier, "title": i.title} for i in image_list.images],
            "signed": base64.b64encode(signed).decode(),
        }
    )


def subscribe(
    source: str,
    anchors: str | None = None,
    endorsers: list[str] | None = None,
    identifier: str | None = None,
    name: str | None = None,
    ca_bundle: str | None = None,
) -> tuple[Subscription, list[str]]:
    """Fetch, check and store a list; subscribing again to the same list updates it under the same checks.

    Settings not given are kept from an existing subscription to the same list; an endorser
    given again is added to the authorised ones, and said so.
    """
    signed = fetch(source, ca_bundle)
    existing = {s.identifier: s for s in subscriptions()}
    # Which list this is, is read before verifying only to find an existing subscription to it;
    # `check` then verifies everything, against that subscription's own constraints.
    from wlcgcloud.endorsement import smime

    try:
        previous = existing.get(parse(smime.parts(signed)[0]).identifier)
    except PolicyError:
        previous = None
    notes: list[str] = []
    held = previous.endorsers if previous else []
    allowed = list(dict.fromkeys(held + list(endorsers or [])))
    if previous and allowed != held:
        notes.append(f"authorised endorsers of '{previous.name}' are now: {'; '.join(allowed)}.")
    trust = anchors or (previous.trust_anchors if previous else GRID_CA_DIR)
    pinned = previous.pinned if previous else {}
    image_list, verified = check(signed, Path(trust), allowed, pinned, identifier, previous)
    if not allowed:
        allowed = [verified.signer_dn]
        notes.append(f"no --endorser given: trusting the list's own signer {verified.signer_dn} from now on.")
    chosen = name or (previous.name if previous else slug(image_list.title))
    clash = next((s for s in existing.values() if s.name == chosen and s.identifier != image_list.identifier), None)
    if clash:
        raise UsageError(f"a subscription named '{chosen}' exists for another list.", "Pass --name.")
    base = previous or Subscription(chosen, image_list.identifier, source, trust, allowed)
    base = Subscription(
        **{**asdict(base), "name": chosen, "source": source, "trust_anchors": trust, "endorsers": allowed}
    )
    sub = _record(base, signed, image_list, verified)
    _store(sub)
    return sub, notes + list(verified.warnings)


def refresh(sub: Subscription, ca_bundle: str | None = None) -> tuple[Subscription, list[str]]:
    """Fetch a subscription again under the same checks; on failure the last good list stays."""
    signed = fetch(sub.source, ca_bundle)
    image_list, verified = check(signed, Path(sub.trust_anchors), sub.endorsers, sub.pinned, sub.identifier, sub)
    new = _record(sub, signed, image_list, verified)
    _store(new)
    return new, list(verified.warnings)


def unsubscribe(sub: Subscription) -> None:
    (lists_dir() / f"{sub.identifier}.json").unlink(missing_ok=True)


def endorsed_images() -> list[tuple[Subscription, EndorsedImage]]:
    """Every image of every subscribed list, with its list."""
    out: list[tuple[Subscription, EndorsedImage]] = []
    for sub in subscriptions():
        out.extend((sub, image) for image in stored_list(sub).images)
    return out


def current(reference: str, now: datetime | None = None) -> tuple[Subscription, EndorsedImage]:
    """The endorsed image named by identifier or title, from a list that still passes every check.

    The stored list is verified again (signature, chain, CRLs as they are now, dates), so an
    endorsement that expired or whose signer was revoked since subscribing no longer counts.
    """
    found = [(s, i) for s, i in endorsed_images() if reference in (i.identifier, i.title)]
    if not found:
        raise PolicyError(
            f"'{reference}' is not an endorsed image of any subscribed list.",
            "See 'wlcgcloud image list'; a raw cloud image id is never endorsed.",
        )
    if len(found) > 1:
        raise UsageError(f"'{reference}' names {len(found)} endorsed images.", "Use the identifier.")
    sub, image = found[0]
    try:
        check(sub.signed_list, Path(sub.trust_anchors), sub.endorsers, sub.pinned, sub.identifier, None, now)
    except PolicyError as exc:
        raise PolicyError(f"the endorsement of '{image.title}' no longer holds: {exc.message}", exc.hint) from None
    return sub, image


@dataclass(frozen=True)
class Decision:
    """What `launch` may start on one profile, and the tags that say why."""

    cloud_image: str  # the cloud's image id to launch
    endorsed: EndorsedImage | None  # None when launched unendorsed (--allow-unendorsed)
    how: str  # how the cloud image was matched, or why it is not endorsed
    tags: dict[str, str]  # wlcg:image and wlcg:endorsement, for the fleet


def gate(reference: str, provider: Provider, flavor: str | None, allow_unendorsed: bool = False) -> Decision:
    """Decide whether `reference` may be launched on `provider` with `flavor`; read calls only.

    `reference` is an endorsed identifier or title. It must come from a list that still passes
    every check, have a matching cloud copy on the profile (as `image verify` finds it), and the
    flavor must meet the image's hv:core_minimum / hv:ram_minimum; else a PolicyError (exit 5).
    A raw cloud image id is never endorsed: with `allow_unendorsed` it is launched as it is,
    and the fleet is tagged wlcg:endorsement=none.
    """
    try:
        _, image = current(reference)
    except PolicyError:
        if not allow_unendorsed:
            raise
        reason = f"not endorsed: launched as the cloud image '{reference}' because of --allow-unendorsed"
        return Decision(reference, None, reason, {"wlcg:image": "none", "wlcg:endorsement": "none"})
    matches = [m for m in provider.find_endorsed(image.identifier, image.sha512) if m.ok]
    if not matches:
        raise PolicyError(
            f"profile '{provider.name}': no cloud image carries endorsed image '{image.title}'.",
            f"Register it with 'wlcgcloud image register {image.identifier} -p {provider.name}'.",
        )
    if flavor and (image.core_minimum or image.ram_minimum):
        size = provider.flavor(flavor)
        if size is None:
            raise UsageError(f"profile '{provider.name}': no flavor '{flavor}'.")
        short = []
        if image.core_minimum and (size.vcpus or 0) < image.core_minimum:
            short.append(f"{size.vcpus} vCPUs < hv:core_minimum {image.core_minimum}")
        if image.ram_minimum and (size.memory_mb or 0) * 1024 * 1024 < image.ram_minimum:
            short.append(f"{size.memory_mb} MiB < hv:ram_minimum {image.ram_minimum // (1024 * 1024)} MiB")
        if short:
            raise PolicyError(
                f"profile '{provider.name}': flavor '{flavor}' is below what '{image.title}' needs: {'; '.join(short)}."
            )
    chosen = matches[0]
    tags = {"wlcg:image": image.identifier, "wlcg:endorsement": "verified"}
    return Decision(chosen.image.id, image, chosen.how, tags)
