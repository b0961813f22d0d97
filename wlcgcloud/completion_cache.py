"""The completion cache: names the clouds have told us (fleets, instance ids, flavors, networks) per profile.

A store, below the domain: listings, launches and doctor write what they learnt here, and the
completer (wlcgcloud.completion) reads it, so completion stays off the network. It imports
nothing of wlcgcloud but the bounded reader, the atomic writer and the paths.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from wlcgcloud import bounded
from wlcgcloud.paths import state_dir

CACHE = "completion.json"
CACHED_KINDS = ("fleet", "instance", "flavor", "network")
CACHE_LIMIT = 5000  # values per profile and kind: enough for any fleet, and completion stays fast


def cache_path() -> Path:
    return state_dir() / CACHE


def read_cache(path: Path | None = None) -> dict[str, Any]:
    """{profile: {kind: [names]}}; empty when the cache is missing, broken or larger than its bound."""
    try:
        data = bounded.read_state_json(path or cache_path())
    except (OSError, ValueError):
        return {}
    profiles = data.get("profiles") if isinstance(data, dict) else None
    return profiles if isinstance(profiles, dict) else {}


def remember(profile: str, names: dict[str, Any], complete: bool = False) -> None:
    """Note the names a command just learnt from `profile`'s cloud, by kind, for completion.

    `complete=True` means the values are everything of their kind the profile has (a full
    listing): they replace what was cached. Otherwise they are added. A cache that cannot be
    written is skipped silently: it only ever makes completion poorer, never a command fail.
    """
    from wlcgcloud import atomic  # writing only: the completer, which reads, does without tempfile

    unknown = set(names) - set(CACHED_KINDS)
    if unknown:
        raise ValueError(f"unknown completion cache kinds {sorted(unknown)}")
    path = cache_path()
    with contextlib.suppress(OSError), atomic.locked(path):  # two commands at once: neither loses the other's names
        profiles = read_cache(path)
        entry = profiles.setdefault(profile, {})
        for kind, values in names.items():
            old = set() if complete else {v for v in entry.get(kind, []) if isinstance(v, str)}
            entry[kind] = sorted(old | {str(v) for v in values if v})[:CACHE_LIMIT]
        atomic.write(path, json.dumps({"version": 1, "profiles": profiles}, sort_keys=True))
