"""Clouds behind one interface (`base.Provider`); each SDK is imported only when its cloud is used.

`connect(profile)` is the one door: it resolves the profile's secret and imports the one module
that speaks that cloud. `for_each_profile(profiles, fn)` runs one operation on several profiles in parallel
and keeps every profile's failure beside the others' answers.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from wlcgcloud.config import Profile
from wlcgcloud.errors import WlcgError
from wlcgcloud.providers.base import Provider
from wlcgcloud.secretstore import Secret, require_secret

MODULES = {
    "ec2": "wlcgcloud.providers.ec2",
    "openstack": "wlcgcloud.providers.openstack",
    "opennebula": "wlcgcloud.providers.opennebula",
}

T = TypeVar("T")


REUSE_FOR = 3600.0  # seconds a reused provider lives: what it cached of the cloud (templates) is read again


@dataclass
class _Kept:
    profile: Profile  # kept alive, so its id stays its own
    secret: str  # a digest of the secret it was made with, never the secret
    made: float  # time.monotonic()
    provider: Provider


_reused: dict[int, _Kept] | None = None  # inside `reusing()`: id of the profile -> its provider
_reused_lock = threading.Lock()


@contextlib.contextmanager
def reusing() -> Iterator[None]:
    """Within it, `connect` gives the same provider again for the same profile: a maintainer cycling for
    weeks logs in to Keystone and builds its EC2 client once an hour, not twice a cycle. A changed
    secret (a rotated key, a renewed OIDC token) replaces the provider at once."""
    global _reused
    with _reused_lock:
        outer, _reused = _reused, ({} if _reused is None else _reused)
    try:
        yield
    finally:
        with _reused_lock:
            _reused = outer


def connect(profile: Profile) -> Provider:
    """The provider for `profile`, with its secret; no network traffic yet."""
    secret = require_secret(profile)
    with _reused_lock:
        kept = _reused
    if kept is None:
        return _connect(profile, secret)
    digest = hashlib.sha256(secret.value.encode()).hexdigest()
    with _reused_lock:
        found = kept.get(id(profile))
    if found is None or found.secret != digest or time.monotonic() - found.made > REUSE_FOR:
        found = _Kept(profile, digest, time.monotonic(), _connect(profile, secret))
        with _reused_lock:
            kept[id(profile)] = found
    return found.provider


def _connect(profile: Profile, secret: Secret) -> Provider:
    # The SDKs log warnings (keystoneauth's version discovery, botocore's retries) that
    # logging's last-resort handler would print on stderr, request details included: our
    # errors say what matters, so their loggers never reach the terminal.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    module = importlib.import_module(MODULES[profile.provider])
    cls: type[Provider] = module.PROVIDER
    provider = cls(profile, secret)
    global _frozen
    if not _frozen:
        # An SDK's client is tens of thousands of long-lived objects (botocore's service model); parsing a
        # big reply makes the collector go over them all again and again (-60 ms rendering a launch of 200).
        # A command lives as long as they do: take them out of its sight. Once, so that a long-lived
        # process (the tests) does not also freeze the garbage of each call.
        gc.freeze()
        _frozen = True
    return provider


_frozen = False


@dataclass
class ProfileAnswer(Generic[T]):
    """One profile's result, or the error that stopped it."""

    profile: Profile
    value: T | None = None
    error: WlcgError | None = None


def for_each_profile(
    profiles: Sequence[Profile], fn: Callable[[Provider], T], workers: int = 8
) -> list[ProfileAnswer[T]]:
    """Run `fn` on every profile's provider in parallel; answers come back in profile order.

    A WlcgError stays with its profile; anything else is a bug and propagates.
    """

    def one(profile: Profile) -> ProfileAnswer[T]:
        try:
            return ProfileAnswer(profile, value=fn(connect(profile)))
        except WlcgError as exc:
            return ProfileAnswer(profile, error=exc)

    if len(profiles) <= 1:
        return [one(p) for p in profiles]
    with ThreadPoolExecutor(max_workers=min(workers, len(profiles)), thread_name_prefix="profile") as pool:
        return list(pool.map(one, profiles))
