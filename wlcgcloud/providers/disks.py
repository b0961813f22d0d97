"""Disk images as a cloud that takes raw bytes needs them."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from wlcgcloud.errors import UsageError
from wlcgcloud.providers.base import ImageUpload


@contextlib.contextmanager
def raw_disk(upload: ImageUpload, profile: str) -> Iterator[Path]:
    """The image as a raw disk: as it is when raw, else converted with qemu-img into a temporary file.

    For clouds that take only raw bytes (EC2 snapshots written through the EBS direct APIs).
    """
    if upload.disk_format in ("raw", "img"):
        yield upload.path
        return
    qemu_img = shutil.which("qemu-img")
    if not qemu_img:
        raise UsageError(
            f"profile '{profile}': EC2 snapshots hold raw disks, and this image is {upload.disk_format}.",
            "Install qemu-img (Debian: qemu-utils) so wlcgcloud can convert it.",
        )
    with tempfile.TemporaryDirectory(prefix="wlcgcloud-raw-") as tmp:
        raw = Path(tmp) / "disk.raw"
        done = subprocess.run(
            [qemu_img, "convert", "-f", upload.disk_format, "-O", "raw", str(upload.path), str(raw)],
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode != 0:
            raise UsageError(f"profile '{profile}': qemu-img could not convert the image: {done.stderr.strip()[:200]}")
        yield raw
