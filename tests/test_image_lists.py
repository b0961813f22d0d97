"""`image subscribe | list | show | refresh | unsubscribe` on real S/MIME lists signed by a throwaway CA."""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from peers import gridca

from conftest import Run, World

FMT = "%Y-%m-%dT%H:%M:%SZ"


@dataclass
class Grid:
    root: Path
    anchors: Path
    ca: gridca.Identity
    endorser: gridca.Identity
    endorser_dn: str

    def signed(
        self, endorser: gridca.Identity | None = None, ca: gridca.Identity | None = None, **changes: Any
    ) -> Path:
        signer = endorser or self.endorser
        return gridca.sign(self.root / "lists", gridca.image_list(signer, ca or self.ca, **changes), signer)


@pytest.fixture(scope="module")
def grid_keys() -> tuple[gridca.Identity, gridca.Identity]:
    ca = gridca.make_ca("wlcgcloud Test CA")
    return ca, gridca.make_endorser(ca, "atlas-endorser")


@pytest.fixture
def grid(world: World, grid_keys: tuple[gridca.Identity, gridca.Identity]) -> Grid:
    ca, endorser = grid_keys
    anchors = world.root / "certificates"
    gridca.install_ca(anchors, ca)
    return Grid(world.root, anchors, ca, endorser, gridca.slash(endorser.name))


def subscribe(run: Run, grid: Grid, path: Path, *extra: str) -> Any:
    return run(
        "image", "subscribe", str(path), "--trust-anchors", str(grid.anchors), "--endorser", grid.endorser_dn, *extra
    )


def stored(world: World) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((world.state / "image-lists").glob("*"))}


def test_good_list_is_subscribed_listed_and_shown(run: Run, world: World, grid: Grid) -> None:
    result = subscribe(run, grid, grid.signed(), "-o", "json")
    assert result.code == 0, result.err
    sub = result.json()
    assert sub["name"] == "atlas-endorsed-images" and sub["version"] == "3.1" and sub["endorsers"] == [grid.endorser_dn]
    images = run("image", "list", "-o", "json").json()
    assert [i["title"] for i in images] == ["ATLAS worker node 1", "ATLAS worker node 2"]  # type: ignore[union-attr]
    first = images[0]  # type: ignore[index]
    assert (first["os"], first["arch"], first["size"], first["list"]) == ("Linux EL9", "x86_64", 1024, sub["name"])
    shown = run("image", "show", first["identifier"], "-o", "json").json()
    assert shown["sha512"] == "1" * 128 and shown["ram_minimum"] == 4 * 1024**3  # type: ignore[index]
    table = run("image", "list")
    assert table.out.splitlines()[0].split()[:3] == ["IDENTIFIER", "TITLE", "VERSION"]


def test_subscribing_without_endorser_trusts_the_signer_on_first_use(run: Run, grid: Grid) -> None:
    result = run("image", "subscribe", str(grid.signed()), "--trust-anchors", str(grid.anchors))
    assert result.code == 0 and "trusting the list's own signer" in result.err


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("tampered", "signature does not verify"),
        ("untrusted_ca", "signature does not verify"),
        ("not_authorised", "is not an authorised endorser"),
        ("revoked", "is revoked in its CA's CRL"),
        ("expired", "the list expired at"),
        ("from_the_future", "created in the future"),
        ("wrong_identifier", "not the expected"),
        ("dn_mismatch", "but /DC=org/DC=wlcgcloud-test/OU=Users/CN=atlas-endorser signed it"),
        ("missing_fields", "lacks hv:uri"),
        ("not_smime", "not an S/MIME signed image list"),
        ("truncated", "truncated"),
        ("huge", "no image list is that big"),
    ],
)
def test_bad_lists_are_refused_with_one_line_and_exit_5(
    run: Run, world: World, grid: Grid, grid_keys: Any, case: str, reason: str
) -> None:
    good = subscribe(run, grid, grid.signed())
    assert good.code == 0, good.err
    before = stored(world)
    now = datetime.datetime.now(datetime.UTC)
    extra: tuple[str, ...] = ()
    if case == "tampered":
        path = grid.signed()
        text = path.read_bytes().replace(b'"hv:version": "3.1"', b'"hv:version": "3.2"')
        path.write_bytes(text)
    elif case == "untrusted_ca":
        other_ca = gridca.make_ca("Some Other CA")
        impostor = gridca.make_endorser(other_ca, "atlas-endorser")
        path = grid.signed(endorser=impostor, ca=other_ca)
    elif case == "not_authorised":
        stranger = gridca.make_endorser(grid.ca, "someone-else")
        path = grid.signed(endorser=stranger)
    elif case == "revoked":
        gridca.install_ca(grid.anchors, grid.ca, revoked=(grid.endorser.cert,))
        path = grid.signed()
    elif case == "expired":
        path = grid.signed(**{"dc:date:expires": (now - datetime.timedelta(hours=1)).strftime(FMT)})
    elif case == "from_the_future":
        path = grid.signed(**{"dc:date:created": (now + datetime.timedelta(days=1)).strftime(FMT), "hv:version": "3.2"})
    elif case == "wrong_identifier":
        path = grid.signed(**{"hv:version": "3.2"})
        extra = ("--identifier", "00000000-0000-0000-0000-000000000000")
    elif case == "dn_mismatch":
        document = gridca.image_list(grid.endorser, grid.ca)
        document["hv:imagelist"]["hv:endorser"]["hv:x509"]["hv:dn"] = "/DC=org/CN=somebody"
        path = gridca.sign(grid.root / "lists", document, grid.endorser)
    elif case == "missing_fields":
        document = gridca.image_list(grid.endorser, grid.ca)
        del document["hv:imagelist"]["hv:uri"]
        path = gridca.sign(grid.root / "lists", document, grid.endorser)
    elif case == "not_smime":
        path = grid.root / "plain.json"
        path.write_text(json.dumps(gridca.image_list(grid.endorser, grid.ca)))
    elif case == "truncated":
        data = grid.signed().read_bytes()
        path = grid.root / "truncated.smime"
        path.write_bytes(data[: len(data) - 300])
    else:  # huge
        path = grid.root / "huge.smime"
        path.write_bytes(b"A" * (50 * 1024 * 1024))
    result = subscribe(run, grid, path, *extra)
    assert result.code == 5, (result.code, result.err)
    assert reason in result.err and result.err.count("\n") == 1 and result.err.startswith("error: ")
    assert stored(world) == before  # the good list is never replaced by a bad one


def test_version_rollback_is_refused_and_upgrade_accepted(run: Run, world: World, grid: Grid) -> None:
    assert subscribe(run, grid, grid.signed(**{"hv:version": "3.10"})).code == 0
    older = subscribe(run, grid, grid.signed(**{"hv:version": "3.9"}))
    assert older.code == 5 and "older than the subscribed one (version 3.10" in older.err
    newer = subscribe(run, grid, grid.signed(**{"hv:version": "3.11"}), "-o", "json")
    assert newer.code == 0 and newer.json()["version"] == "3.11"  # type: ignore[index]


def test_a_ca_without_crl_is_a_warning(run: Run, world: World, grid: Grid) -> None:
    gridca.install_ca(grid.anchors, grid.ca, crl=False)
    result = subscribe(run, grid, grid.signed())
    assert result.code == 0 and "revocation not checked" in result.err


def test_refresh_keeps_the_last_good_list_and_unsubscribe_forgets(run: Run, world: World, grid: Grid) -> None:
    path = grid.signed()
    assert subscribe(run, grid, path).code == 0
    fresh = gridca.sign(
        grid.root / "lists", gridca.image_list(grid.endorser, grid.ca, **{"hv:version": "3.2"}), grid.endorser
    )
    path.write_bytes(fresh.read_bytes())
    refreshed = run("image", "refresh", "-o", "json")
    assert refreshed.code == 0 and refreshed.json()[0]["version"] == "3.2"  # type: ignore[index]
    path.write_bytes(path.read_bytes().replace(b"ATLAS worker node 1", b"ATLAS worker node X"))
    before = stored(world)
    failed = run("image", "refresh")
    assert failed.code == 5 and "kept version 3.2" in failed.err
    assert stored(world) == before
    assert run("image", "unsubscribe", "atlas-endorsed-images").code == 0
    assert run("image", "list", "-o", "json").json() == []
    assert run("image", "show", "nothing").code == 2


def test_endorsed_identifiers_and_list_names_complete(run: Run, grid: Grid) -> None:
    from wlcgcloud.completion import complete

    assert subscribe(run, grid, grid.signed(), "--name", "atlas").code == 0
    listed: Any = run("image", "list", "-o", "json").json()
    identifiers = [i["identifier"] for i in listed]
    assert complete(["wlcgcloud", "image", "show", ""], 3) == sorted(identifiers + [i["title"] for i in listed])
    assert complete(["wlcgcloud", "image", "verify", identifiers[0][:6]], 3) == [identifiers[0]]
    assert complete(["wlcgcloud", "image", "unsubscribe", "at"], 3) == ["atlas"]


def test_a_signer_other_than_the_first_certificate_carried_is_the_one_checked(
    run: Run, world: World, grid: Grid
) -> None:
    """Mallory, certified by another CA in the anchors, signs and ships the endorser's certificate first."""
    assert subscribe(run, grid, grid.signed()).code == 0
    before = stored(world)
    other_ca = gridca.make_ca("Another Trusted CA")
    gridca.install_ca(grid.anchors, other_ca)
    mallory = gridca.make_endorser(other_ca, "mallory")
    document = gridca.image_list(grid.endorser, grid.ca, **{"hv:version": "99"})
    endorser_pem, _ = grid.endorser.files(grid.root, "endorser")
    mallory_pem, _ = mallory.files(grid.root, "mallory")
    bundle = grid.root / "carried.pem"
    bundle.write_bytes(endorser_pem.read_bytes() + mallory_pem.read_bytes())
    path = gridca.sign(grid.root / "lists", document, mallory, "-nocerts", "-certfile", str(bundle))
    result = subscribe(run, grid, path)
    assert result.code == 5 and "but /DC=org/DC=wlcgcloud-test/OU=Users/CN=mallory signed it" in result.err
    assert stored(world) == before


def test_the_same_dn_from_another_trusted_ca_is_refused(run: Run, world: World, grid: Grid) -> None:
    assert subscribe(run, grid, grid.signed()).code == 0  # pins the endorser to the CA that issued it
    other_ca = gridca.make_ca("Another Trusted CA")
    gridca.install_ca(grid.anchors, other_ca)
    twin = gridca.make_endorser(other_ca, "atlas-endorser")
    result = subscribe(run, grid, grid.signed(endorser=twin, ca=other_ca, **{"hv:version": "3.2"}))
    assert result.code == 5 and "when first trusted" in result.err


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired_signer", "certificate has expired"),
        ("ca_mismatch", "the list names CA /DC=org/CN=Somebody Else CA"),
        ("not_a_uuid", "dc:identifier is not a UUID"),
    ],
)
def test_more_refusals(run: Run, world: World, grid: Grid, case: str, reason: str) -> None:
    if case == "expired_signer":
        old = gridca.make_endorser(grid.ca, "atlas-endorser", expired=True)
        path = grid.signed(endorser=old)
    elif case == "ca_mismatch":
        document = gridca.image_list(grid.endorser, grid.ca)
        document["hv:imagelist"]["hv:endorser"]["hv:x509"]["hv:ca"] = "/DC=org/CN=Somebody Else CA"
        path = gridca.sign(grid.root / "lists", document, grid.endorser)
    else:
        path = grid.signed(**{"dc:identifier": "../../outside"})
    result = subscribe(run, grid, path)
    assert result.code == 5 and reason in result.err, result.err
    assert not (world.root / "outside.json").exists()


def test_a_pem_file_of_anchors_says_revocation_is_not_checked(run: Run, world: World, grid: Grid) -> None:
    anchors = grid.root / "ca.pem"
    anchors.write_bytes(next(grid.anchors.glob("*.0")).read_bytes())
    result = run(
        "image", "subscribe", str(grid.signed()), "--trust-anchors", str(anchors), "--endorser", grid.endorser_dn
    )
    assert result.code == 0 and "no CRLs: revocation not checked" in result.err
