"""Clouds behind one interface (`base.Provider`); each SDK is imported only when its cloud is used.

`connect(profile)` is the one door: it resolves the profile's secret and imports the one module
that speaks that cloud. `for_each_profile(profiles, fn)` runs one operation on several profiles in parallel
and keeps every profile's failure beside the others' answers.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from wlcgcloud.config import Profile
from wlcgcloud.errors import WlcgError
from wlcgcloud.providers.base import Provider
from wlcgcloud.secretstore import require_secret

MODULES = {
    "ec2": "wlcgcloud.providers.ec2",
    "openstack": "wlcgcloud.providers.openstack",
    "opennebula": "wlcgcloud.providers.opennebula",
}

T = TypeVar("T")


def connect(profile: Profile) -> Provider:
    """The provider for `profile`, with its secret; no network traffic yet."""
    # The SDKs log warnings (keystoneauth's version discovery, botocore's retries) that
    # logging's last-resort handler would print on stderr, request details included: our
    # errors say what matters, so their loggers never reach the terminal.
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    module = importlib.import_module(MODULES[profile.provider])
    cls: type[Provider] = module.PROVIDER
    return cls(profile, require_secret(profile))


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

    if len(profiles) == 1:
        return [one(profiles[0])]
    with ThreadPoolExecutor(max_workers=min(workers, len(profiles)), thread_name_prefix="profile") as pool:
        return list(pool.map(one, profiles))
