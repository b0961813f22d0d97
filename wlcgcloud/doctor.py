"""Checks that say why a profile does or does not work.

Today: can wlcgcloud find the profile's secret, reach its cloud and log in (`profile test`).
`wlcgcloud doctor` (issue #8) adds quotas, images, flavors and networks on top of this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from wlcgcloud.config import Profile
from wlcgcloud.errors import most_severe
from wlcgcloud.providers import each


@dataclass(frozen=True)
class ProfileCheck:
    """One profile's answer: did it work, why (not), and the exit class of a failure."""

    profile: Profile
    ok: bool
    reason: str
    exit_code: int = 0

    def to_dict(self) -> dict[str, object]:
        return {"profile": self.profile.name, "provider": self.profile.provider, "ok": self.ok, "reason": self.reason}


def check_profiles(profiles: Sequence[Profile]) -> list[ProfileCheck]:
    """Find each profile's secret, reach its cloud and log in, all profiles in parallel."""
    results = []
    for answer in each(profiles, lambda provider: provider.check()):
        if answer.error is not None:
            results.append(ProfileCheck(answer.profile, False, str(answer.error), answer.error.exit_code))
        elif answer.value is not None:
            check = answer.value
            code = 0 if check.ok else check.exit_code or 6
            results.append(ProfileCheck(answer.profile, check.ok, check.reason, code))
    return results


def exit_code(results: Sequence[ProfileCheck]) -> int:
    """0 when every check passed, else the most severe class found (3, then 4, 6, 5)."""
    return most_severe(r.exit_code for r in results if not r.ok)
