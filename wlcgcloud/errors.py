"""One exception family for everything a user can be told; each class carries its exit code.

The CLI edge (`wlcgcloud.__main__`) turns these into one line on stderr and the exit code of
the contract. Messages must never contain a secret, a proxy, a token or user-data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# The contract's order of severity when several things failed: configuration, credentials,
# cloud, policy.
SEVERITY = (3, 4, 6, 5)


def most_severe(codes: Iterable[int]) -> int:
    """Of several failures' exit codes, the one to exit with: 3, then 4, 6, 5; 0 for none."""
    found = set(codes)
    return next((code for code in SEVERITY if code in found), max(found, default=0))


def partial_exit(codes: Sequence[int], attempted: int) -> int:
    """The exit code of a batch: 0 with no failures, 7 when only some of `attempted` failed, else the most severe."""
    if not codes:
        return 0
    return 7 if len(codes) < attempted else most_severe(codes)


class WlcgError(Exception):
    """An error the user can act on. `hint` is the next step, appended to the message."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class UsageError(WlcgError):
    """Bad option or argument, a confirmation needed without a terminal (exit 2)."""

    exit_code = 2


class ConfigError(WlcgError):
    """Unknown or invalid profile, unreadable config, missing secret (exit 3)."""

    exit_code = 3


class AuthError(WlcgError):
    """The cloud refused our credentials or the action (exit 4)."""

    exit_code = 4


class PolicyError(WlcgError):
    """Refused by policy: not endorsed, credential unusable, user-data too large (exit 5)."""

    exit_code = 5


class CloudError(WlcgError):
    """Cloud unreachable, or an API error after retries (exit 6)."""

    exit_code = 6


class PartialFailure(WlcgError):
    """Some profiles or instances succeeded and others failed (exit 7)."""

    exit_code = 7


class Interrupted(WlcgError):
    """Interrupted by the user; state is consistent (exit 130)."""

    exit_code = 130
