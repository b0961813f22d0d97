"""`wlcgcloud image ...`: subscribe to signed HEPiX image lists and see their endorsed images.

The endorsement layer (and `cryptography`) is imported inside each command, so `--help` and
completion never pay for it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from wlcgcloud.cli.common import emit, globals_of, info, new_app, warn
from wlcgcloud.config import GRID_CA_DIR

if TYPE_CHECKING:  # the endorsement layer (and cryptography) is imported only inside commands
    from wlcgcloud.endorsement import Subscription
    from wlcgcloud.endorsement.imagelist import EndorsedImage
from wlcgcloud.output import Column

app = new_app("Endorsed images: subscribe to signed HEPiX image lists, verify and register them.")

LIST_COLUMNS = [
    Column("identifier", "IDENTIFIER"),
    Column("title", "TITLE"),
    Column("version", "VERSION"),
    Column("os", "OS"),
    Column("arch", "ARCH"),
    Column("size", "SIZE"),
    Column("expires", "EXPIRES"),
    Column("list", "LIST"),
]
SUBSCRIPTION_COLUMNS = [
    Column("name", "NAME"),
    Column("identifier", "IDENTIFIER"),
    Column("version", "VERSION"),
    Column("expires", "EXPIRES"),
    Column("ok", "OK"),
    Column("reason", "REASON"),
]


@app.command("subscribe")
def subscribe(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="A signed image list: a local file or an https:// URL.")],
    trust_anchors: Annotated[
        str | None,
        typer.Option(
            "--trust-anchors",
            help=f"CA directory (hashed names, CRLs *.r0) or PEM file. [default: {GRID_CA_DIR}, or the "
            "subscription's own when subscribing again]",
            show_default=False,
        ),
    ] = None,
    endorser: Annotated[
        list[str] | None, typer.Option("--endorser", help="DN allowed to sign this list; repeatable.")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="Subscription name (default: the list's title).")] = None,
    identifier: Annotated[str | None, typer.Option("--identifier", help="The list's expected dc:identifier.")] = None,
    ca_bundle: Annotated[str | None, typer.Option("--ca-bundle", help="CA bundle for an https download.")] = None,
) -> None:
    """Subscribe to a signed HEPiX image list, after checking it.

    The S/MIME signature must chain to the trust anchors (with CRLs), the signer must be the
    list's endorser and an authorised one, the identifier the expected one, the list neither
    from the future nor expired, and its version never lower than the one held. Only a list
    that passes is stored; subscribing again updates it under the same checks. A refusal
    exits 5 with the reason.

    \b
    Examples:
      wlcgcloud image subscribe https://example.org/atlas/image.list \\
          --endorser '/DC=ch/DC=cern/OU=Users/CN=atlas-endorser' --name atlas
      wlcgcloud image subscribe ./image.list --trust-anchors ./ca-dir -o json
    """
    from wlcgcloud import endorsement

    sub, notes = endorsement.subscribe(source, trust_anchors, list(endorser or []), identifier, name, ca_bundle)
    g = globals_of(ctx)
    for note in notes:
        warn(note, g)
    info(f"Subscribed '{sub.name}': {sub.title} version {sub.version}, expires {sub.expires}.")
    emit(ctx, sub.to_dict() if g.output != "table" else [sub.to_dict()], SUBSCRIPTION_COLUMNS[:4])


@app.command("list")
@app.command("ls", hidden=True)
def list_(ctx: typer.Context) -> None:
    """List the endorsed images of every subscribed list.

    \b
    Examples:
      wlcgcloud image list
      wlcgcloud image list -o json --query '[?os==`CentOS`].identifier'
    """
    from wlcgcloud import endorsement

    rows = [_row(sub, image) for sub, image in endorsement.endorsed_images()]
    if not rows and globals_of(ctx).output == "table":
        info("No endorsed images. Subscribe to a list with 'wlcgcloud image subscribe SOURCE'.")
    emit(ctx, rows, LIST_COLUMNS)


def _row(sub: Subscription, image: EndorsedImage) -> dict[str, object]:
    return {
        "identifier": image.identifier,
        "title": image.title,
        "version": image.version,
        "os": f"{image.os} {image.os_version}".strip(),
        "arch": image.arch,
        "size": image.size,
        "sha512": image.sha512,
        "expires": sub.expires,
        "list": sub.name,
        "list_identifier": sub.identifier,
        "uri": image.uri,
        "core_minimum": image.core_minimum,
        "ram_minimum": image.ram_minimum,
    }


@app.command("show")
def show(
    ctx: typer.Context, image_id: Annotated[str, typer.Argument(help="Endorsed image identifier or title.")]
) -> None:
    """Show one endorsed image: its list, checksum, size, minimums and where it comes from.

    \b
    Examples:
      wlcgcloud image show 4e4e5f1c-0f4b-4d0c-a5f4-1b8c1d1a2b3c -o json
    """
    from wlcgcloud import endorsement
    from wlcgcloud.errors import UsageError

    found = [
        _row(sub, image) for sub, image in endorsement.endorsed_images() if image_id in (image.identifier, image.title)
    ]
    if not found:
        raise UsageError(f"no endorsed image '{image_id}' in the subscribed lists.", "See 'wlcgcloud image list'.")
    if len(found) > 1:
        raise UsageError(f"'{image_id}' names {len(found)} endorsed images.", "Use the identifier.")
    g = globals_of(ctx)
    emit(ctx, found[0] if g.output != "table" else [{"field": k, "value": v} for k, v in found[0].items()])


@app.command("refresh")
def refresh(
    ctx: typer.Context,
    names: Annotated[list[str] | None, typer.Argument(help="Subscriptions to refresh (default: all).")] = None,
    ca_bundle: Annotated[str | None, typer.Option("--ca-bundle", help="CA bundle for https downloads.")] = None,
) -> None:
    """Fetch subscribed lists again, under the same checks as subscribe.

    A list that fails keeps its last good version; the failure is said, and the exit code is 5
    (7 when others were refreshed).

    \b
    Examples:
      wlcgcloud image refresh
      wlcgcloud image refresh atlas -o json
    """
    from wlcgcloud import endorsement
    from wlcgcloud.errors import WlcgError

    g = globals_of(ctx)
    subs = [endorsement.find(n) for n in names] if names else endorsement.subscriptions()
    rows, failed = [], []
    for sub in subs:
        try:
            new, notes = endorsement.refresh(sub, ca_bundle)
            for note in notes:
                warn(f"{sub.name}: {note}", g)
            rows.append({**new.to_dict(), "ok": True, "reason": ""})
        except WlcgError as exc:
            warn(f"{sub.name}: kept version {sub.version}: {exc}", g)
            failed.append(exc)
            rows.append({**sub.to_dict(), "ok": False, "reason": exc.message})
    emit(ctx, rows, SUBSCRIPTION_COLUMNS)
    if failed:
        raise typer.Exit(7 if len(failed) < len(subs) else failed[0].exit_code)


@app.command("unsubscribe")
def unsubscribe(
    ctx: typer.Context, name: Annotated[str, typer.Argument(help="Subscription name or identifier.")]
) -> None:
    """Forget a subscribed image list (its images are no longer endorsed here).

    \b
    Examples:
      wlcgcloud image unsubscribe atlas
    """
    from wlcgcloud import endorsement

    sub = endorsement.find(name)
    endorsement.unsubscribe(sub)
    info(f"Unsubscribed '{sub.name}' ({sub.identifier}).")


VERIFY_COLUMNS = [
    Column("profile", "PROFILE"),
    Column("id", "CLOUD IMAGE"),
    Column("name", "NAME"),
    Column("ok", "OK"),
    Column("how", "HOW IT MATCHED"),
]


@app.command("verify")
def verify(
    ctx: typer.Context, image_id: Annotated[str, typer.Argument(help="Endorsed image identifier or title.")]
) -> None:
    """Find the cloud image that carries an endorsed image on each -p profile, and say how it matched.

    OpenStack: Glance's sha512 (os_hash_value) equals the list's sl:checksum:sha512. EC2 and
    OpenNebula keep no hash, so the image must be marked wlcg:endorsed-id (WLCG_ENDORSED_ID) and
    owned by the profile's image_owners (EC2) or the profile's own user or group (OpenNebula).
    The list itself is verified again first. Exits 5 when a profile has no such image.

    \b
    Examples:
      wlcgcloud image verify 4e4e5f1c-0f4b-4d0c-a5f4-1b8c1d1a2b3c -p cern-atlas
      wlcgcloud image verify 'ATLAS worker node 1' -p aws-atlas -p lal-one -o json
    """
    from wlcgcloud import endorsement
    from wlcgcloud.errors import PolicyError, UsageError, partial_exit
    from wlcgcloud.providers import for_each_profile

    g = globals_of(ctx)
    if not g.profiles:
        raise UsageError("image verify needs the profile(s) to look in.", "Pass -p PROFILE.")
    _, image = endorsement.current(image_id)
    profiles = g.config().select(g.profiles, all_when_empty=False)
    rows: list[dict[str, object]] = []
    codes: list[int] = []
    for answer in for_each_profile(profiles, lambda p: p.find_endorsed(image.identifier, image.sha512)):
        if answer.error is not None:
            warn(str(answer.error), g)
            codes.append(answer.error.exit_code)
            continue
        matches = answer.value or []
        rows.extend({**m.to_dict(), "endorsed": image.identifier} for m in matches)
        if not any(m.ok for m in matches):
            why = PolicyError(
                f"profile '{answer.profile.name}': no cloud image carries endorsed image '{image.title}'"
                + (" (only images that do not match)." if matches else "."),
                f"Register it with 'wlcgcloud image register {image.identifier} -p {answer.profile.name}'.",
            )
            warn(str(why), g)
            codes.append(why.exit_code)
    emit(ctx, rows, VERIFY_COLUMNS)
    raise typer.Exit(partial_exit(codes, len(profiles)))


@app.command("register")
def register(
    ctx: typer.Context,
    image_id: Annotated[str, typer.Argument(help="Endorsed image identifier or title.")],
    ca_bundle: Annotated[str | None, typer.Option("--ca-bundle", help="CA bundle for the image download.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Check the list and say what would happen.")] = False,
) -> None:
    """Download an endorsed image, check its size and sha512, and only then upload it to each -p profile.

    The upload is marked wlcg:endorsed-id, so `image verify` and `launch` find it. A mismatch
    leaves nothing behind, locally or on the cloud. OpenStack: uploaded to Glance, whose own
    sha512 must agree. EC2: written block by block as an EBS snapshot (EBS direct APIs, each
    block's SHA-256 checked by EBS) and registered as an AMI; non-raw images are converted with
    qemu-img. OpenNebula: the datastore fetches hv:uri itself, held to our bytes by MD5 and SHA1.

    \b
    Examples:
      wlcgcloud image register 4e4e5f1c-0f4b-4d0c-a5f4-1b8c1d1a2b3c -p cern-atlas
      wlcgcloud image register 'ATLAS worker node 1' -p cern-atlas --dry-run
    """
    from wlcgcloud import endorsement
    from wlcgcloud.errors import UsageError, partial_exit
    from wlcgcloud.providers import for_each_profile
    from wlcgcloud.providers.base import ImageUpload

    g = globals_of(ctx)
    if not g.profiles:
        raise UsageError("image register needs the profile(s) to upload to.", "Pass -p PROFILE.")
    _, image = endorsement.current(image_id)
    profiles = g.config().select(g.profiles, all_when_empty=False)
    disk_format = str(image.raw.get("hv:format") or "raw").lower()
    if dry_run:
        info(f"dry run: would download {image.uri} ({image.size} bytes), check its sha512, and upload it as")
        info(f"  '{image.title}' ({disk_format}) to {', '.join(p.name for p in profiles)}.")
        return
    with _transfer_progress(g, "Downloading", image.size) as advance:
        path = endorsement.download(image, ca_bundle or _profile_ca(profiles), advance)
    try:
        info(f"Downloaded and checked {image.title} ({image.size} bytes, sha512 as listed).")
        rows: list[dict[str, object]] = []
        codes = []
        upload = ImageUpload(image.title, path, disk_format, image.identifier, image.sha512, image.uri, image.arch)
        with _transfer_progress(g, "Uploading", image.size * len(profiles)) as advance:
            answers = for_each_profile(profiles, lambda p: p.upload_image(upload, advance))
        for answer in answers:
            if answer.error is not None:
                warn(str(answer.error), g)
                codes.append(answer.error.exit_code)
            elif answer.value is not None:
                rows.append({**answer.value.to_dict(), "endorsed": image.identifier})
        emit(ctx, rows, [Column("profile", "PROFILE"), Column("id", "CLOUD IMAGE"), Column("name", "NAME")])
        raise typer.Exit(partial_exit(codes, len(profiles)))
    finally:
        path.unlink(missing_ok=True)


def _profile_ca(profiles: list[Any]) -> str | None:
    """The profiles' common ca_bundle, used for the download when --ca-bundle is not given."""
    bundles = {p.get("ca_bundle") for p in profiles}
    return bundles.pop() if len(bundles) == 1 else None


@contextlib.contextmanager
def _transfer_progress(g: Any, what: str, total: int) -> Iterator[Callable[[int], None] | None]:
    """A progress bar on stderr for a person at a terminal; nothing otherwise. Thread-safe (rich's)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        "[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
        transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)
