"""A simulation's clock, shared by processes through a file: 8 bytes, a little-endian IEEE-754 double
of Unix seconds. The driver writes it; the peers (``--clock-file``) and the maintainer (through
``wlcgcloud.times.use_clock``) read it on every use, so nothing moves unless the driver moves it."""

from __future__ import annotations

import mmap
import struct
from pathlib import Path


class SharedClock:
    def __init__(self, path: Path, start: float | None = None) -> None:
        self.path = path
        if start is not None or not path.exists():
            path.write_bytes(struct.pack("<d", start or 0.0))
        self._fh = path.open("r+b")
        self._map = mmap.mmap(self._fh.fileno(), 8)

    def now(self) -> float:
        return float(struct.unpack_from("<d", self._map, 0)[0])

    def set(self, when: float) -> None:
        struct.pack_into("<d", self._map, 0, when)

    def close(self) -> None:
        self._map.close()
        self._fh.close()
