"""Where wlcgcloud keeps its files: the XDG base directories of the contract, through platformdirs.

A module of its own that imports nothing of ours, so that shell completion finds the config file
and the state directory exactly as the commands do, without importing the config schema.
"""

from __future__ import annotations

import os
from pathlib import Path


def default_config_path() -> Path:
    """`WLCGCLOUD_CONFIG`, else config.toml in the XDG config directory."""
    env = os.environ.get("WLCGCLOUD_CONFIG")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_config_path

    return user_config_path("wlcgcloud") / "config.toml"


def state_dir() -> Path:
    """`WLCGCLOUD_STATE_DIR`, else the XDG state directory: ledger, caches, image lists."""
    env = os.environ.get("WLCGCLOUD_STATE_DIR")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_state_path

    return user_state_path("wlcgcloud")
