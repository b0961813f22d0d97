"""Files written whole or not at all, and read-modify-write cycles that two processes never interleave.

The one home of lock + temporary file + rename: the config, the completion cache, subscribed
image lists, completion scripts and a user's secret_file are all written through it. Errors
are plain OSError; each caller says in its own words what could not be written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path`.lock (made 0600, its directory 0700) while the block runs."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` through a temporary file in the same directory and a rename.

    Readers see the old file or the new one, never half of one. The temporary file has `mode`
    before anything is written to it (mkstemp makes it 0600), so a secret is never readable by
    others even for a moment. A symlinked `path` is written where the link points, so the link
    stays. The data and the directory entry are synced before this returns.
    """
    with writing(path, mode) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextlib.contextmanager
def writing(path: Path, mode: int = 0o600) -> Iterator[BinaryIO]:
    """`write`, for data written piece by piece (a ledger export): the file appears whole when the block ends,
    and not at all when it fails."""
    path = path.resolve() if path.is_symlink() else path
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dirfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
