"""Credential discovery and checks on real proxies (grid-proxy-init, voms-proxy-fake, hand-built) and WLCG JWTs."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from peers.proxies import Grid, make_grid, make_token, write_private

from wlcgcloud.context.credentials import choose, read_proxy, read_token
from wlcgcloud.errors import PolicyError

HOUR = datetime.timedelta(hours=1)
SLACK = datetime.timedelta(minutes=5)  # `now` is taken when a test starts, a little before its proxies are made


@pytest.fixture
def now() -> datetime.datetime:
    """The moment a test starts: never the time the module was collected (a long suite would outlive it)."""
    return datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def grid(tmp_path_factory: pytest.TempPathFactory) -> Grid:
    return make_grid(tmp_path_factory.mktemp("grid"))


def nothing_else(tmp_path: Path) -> dict[str, str]:
    """An environment where discovery finds nothing unless a test puts it there."""
    return {"X509_USER_PROXY": str(tmp_path / "no-proxy"), "XDG_RUNTIME_DIR": str(tmp_path / "no-runtime")}


def test_a_grid_proxy_init_proxy_is_read_with_its_identity_and_life(
    now: datetime.datetime, grid: Grid, tmp_path: Path
) -> None:
    path = grid.grid_proxy_init(tmp_path / "x509up", hours=12)
    cred = read_proxy(path, now)
    assert cred.kind == "x509" and cred.subject == grid.user_dn and cred.issuer.endswith("/CN=Grid Test CA")
    assert 11 * HOUR < cred.lifetime(now) <= 12 * HOUR + SLACK
    assert cred.data == path.read_bytes() and cred.vo is None
    chosen = choose("x509", proxy=path, env=nothing_else(tmp_path), now=now)
    assert chosen.credential == cred


def test_a_voms_proxy_lives_as_long_as_its_attribute_certificate(
    now: datetime.datetime, grid: Grid, tmp_path: Path
) -> None:
    path = grid.voms_proxy(tmp_path / "x509up", "atlas", "/atlas/Role=production", hours=12, voms_hours=2)
    cred = read_proxy(path, now)
    assert cred.vo == "atlas" and cred.groups == ("/atlas/Role=production",)
    assert HOUR < cred.lifetime(now) <= 2 * HOUR + SLACK  # the AC's 2 h, not the proxy's 12 h
    with pytest.raises(PolicyError, match=r"left, less than --min-lifetime 6h"):
        choose("x509", proxy=path, env=nothing_else(tmp_path), now=now)
    assert choose("x509", proxy=path, min_lifetime=HOUR, env=nothing_else(tmp_path), now=now).credential == cred


@pytest.mark.parametrize(
    ("shape", "mode", "message"),
    [
        ({"lifetime": -HOUR}, 0o600, "expired at"),
        ({"lifetime": HOUR}, 0o600, r"(59m|1h) left, less than --min-lifetime 6h"),
        ({}, 0o644, r"is readable by others \(mode 0644\)"),
        ({"key": False}, 0o600, "holds no private key"),
    ],
)
def test_unusable_proxies_are_refused_with_the_reason(
    now: datetime.datetime, grid: Grid, tmp_path: Path, shape: dict[str, object], mode: int, message: str
) -> None:
    path = grid.proxy(tmp_path / "x509up", **shape)  # type: ignore[arg-type]
    path.chmod(mode)
    with pytest.raises(PolicyError, match=message):
        choose("x509", proxy=path, env=nothing_else(tmp_path), now=now)


def test_a_plain_certificate_is_not_a_proxy(now: datetime.datetime, grid: Grid, tmp_path: Path) -> None:
    both = tmp_path / "usercert-and-key.pem"
    write_private(both, grid.user_cert_file.read_bytes() + grid.user_key_file.read_bytes())
    with pytest.raises(PolicyError, match=r"is a plain certificate .* not a proxy"):
        read_proxy(both, now)


def test_legacy_and_limited_proxies_are_recognised(now: datetime.datetime, grid: Grid, tmp_path: Path) -> None:
    legacy = read_proxy(grid.proxy(tmp_path / "gt2", legacy=True), now)
    assert legacy.kind == "x509" and legacy.subject == grid.user_dn and not legacy.limited
    limited = read_proxy(grid.proxy(tmp_path / "limited", limited=True), now)
    assert limited.limited and limited.summary(now)["limited"] is True


def test_tokens_are_read_without_verifying_and_checked_for_life(now: datetime.datetime, tmp_path: Path) -> None:
    good = read_token(make_token(), "$BEARER_TOKEN")
    assert good.kind == "token" and good.issuer == "https://atlas-auth.wlcgcloud-test.org/"
    assert good.groups == ("/atlas", "/atlas/production") and "compute.create" in good.scopes
    env = {"BEARER_TOKEN": make_token(datetime.timedelta(minutes=5)).decode(), **nothing_else(tmp_path)}
    with pytest.raises(PolicyError, match=r"[45]m left, less than --min-lifetime 15m"):
        choose("token", env=env, now=now)
    env["BEARER_TOKEN"] = make_token(-HOUR).decode()
    with pytest.raises(PolicyError, match="expired at"):
        choose("token", env=env, now=now)
    for bad, why in ((b"not-a-token", "does not hold a JWT"), (b"e30.e30.", "no 'exp' claim"),
                     (b"a.%%%.b", "claims do not decode")):  # fmt: skip
        with pytest.raises(PolicyError, match=why):
            read_token(bad, "test")


def test_token_discovery_follows_the_wlcg_order(now: datetime.datetime, tmp_path: Path) -> None:
    runtime = tmp_path / "runtime"
    write_private(runtime / f"bt_u{os.geteuid()}", make_token(sub="from-runtime-dir") + b"\n")
    write_private(tmp_path / "file", make_token(sub="from-file"))
    env = {"XDG_RUNTIME_DIR": str(runtime), "X509_USER_PROXY": str(tmp_path / "none")}
    assert choose("token", env=env, now=now).credential.subject == "from-runtime-dir"  # type: ignore[union-attr]
    env["BEARER_TOKEN_FILE"] = str(tmp_path / "file")
    assert choose("token", env=env, now=now).credential.subject == "from-file"  # type: ignore[union-attr]
    env["BEARER_TOKEN"] = "  " + make_token(sub="from-env").decode() + "\n"
    found = choose("token", env=env, now=now).credential
    assert found is not None and found.subject == "from-env" and found.source == "$BEARER_TOKEN"
    env["BEARER_TOKEN"] = "   "  # empty: on to the next step
    assert choose("token", env=env, now=now).credential.subject == "from-file"  # type: ignore[union-attr]
    (tmp_path / "file").chmod(0o644)
    with pytest.raises(PolicyError, match="readable by others"):
        choose("token", env=env, now=now)


def test_auto_prefers_a_token_falls_back_to_a_proxy_and_lists_every_failure(
    now: datetime.datetime, grid: Grid, tmp_path: Path
) -> None:
    proxy = grid.proxy(tmp_path / "x509up")
    env = {**nothing_else(tmp_path), "X509_USER_PROXY": str(proxy), "BEARER_TOKEN": make_token().decode()}
    assert choose("auto", env=env, now=now).credential.kind == "token"  # type: ignore[union-attr]
    env["BEARER_TOKEN"] = make_token(-HOUR).decode()
    fallback = choose("auto", env=env, now=now)
    assert fallback.credential is not None and fallback.credential.kind == "x509"
    assert any("not forwarding token $BEARER_TOKEN: expired" in w for w in fallback.warnings)
    proxy.chmod(0o640)
    with pytest.raises(PolicyError) as failed:
        choose("auto", env=env, now=now)
    assert "token $BEARER_TOKEN: expired" in failed.value.message and "readable by others" in failed.value.message
    nothing = choose("auto", env=nothing_else(tmp_path), now=now)
    assert nothing.credential is None and "no credential found" in nothing.warnings[0]
    with pytest.raises(PolicyError, match=r"--credential x509: none found \(looked for an X.509 proxy"):
        choose("x509", env=nothing_else(tmp_path), now=now)
    assert choose("none", env=env, now=now).credential is None


def test_the_summary_never_holds_the_credential(now: datetime.datetime, grid: Grid, tmp_path: Path) -> None:
    cred = read_proxy(grid.proxy(tmp_path / "x509up"), now)
    shown = repr(cred) + repr(cred.summary(now))
    key_lines = [line for line in cred.data.decode().splitlines() if line and not line.startswith("-----")]
    assert key_lines and not any(line in shown for line in key_lines)
    assert cred.fingerprint.startswith("sha256:") and cred.fingerprint in shown
