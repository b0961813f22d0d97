"""EC2's `image register`: an AMI from checked bytes, through the EBS direct APIs.

Apart from the provider module because only `image register` needs it.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from wlcgcloud.errors import WlcgError
from wlcgcloud.providers.base import ENDORSED_ID_TAG, Image, ImageUpload
from wlcgcloud.providers.disks import raw_disk

if TYPE_CHECKING:
    from wlcgcloud.providers.ec2 import EC2Provider

EBS_BLOCK = 512 * 1024  # the EBS direct APIs' block size
_ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64", "i386": "i386"}


def upload_image(ec2: EC2Provider, upload: ImageUpload, advance: Callable[[int], None] | None = None) -> Image:
    """See `EC2Provider.upload_image`."""
    with raw_disk(upload, ec2.name) as raw:
        size = raw.stat().st_size
        gib = max(1, -(-size // 2**30))
        started = ec2.call(
            "start snapshot", ec2.ebs.start_snapshot, VolumeSize=gib, Timeout=60,
            Description=f"wlcgcloud: {upload.name}", ClientToken=upload.sha512[:64],
            Tags=[{"Key": ENDORSED_ID_TAG, "Value": upload.endorsed_id}],
        )  # fmt: skip
        snapshot = started["SnapshotId"]
        image_id = None
        try:
            checksums, sent = [], 0
            with raw.open("rb") as f:
                for index in itertools.count():
                    block = f.read(EBS_BLOCK)
                    if not block:
                        break
                    if block.count(0) != len(block):
                        block = block.ljust(EBS_BLOCK, b"\0")
                        digest = hashlib.sha256(block).digest()
                        checksums.append(digest)
                        ec2.call(
                            "upload snapshot block", ec2.ebs.put_snapshot_block, SnapshotId=snapshot,
                            BlockIndex=index, BlockData=block, DataLength=EBS_BLOCK,
                            Checksum=base64.b64encode(digest).decode(), ChecksumAlgorithm="SHA256",
                        )  # fmt: skip
                        sent += 1
                    if advance:
                        advance(len(block))
            aggregate = base64.b64encode(hashlib.sha256(b"".join(checksums)).digest()).decode()
            ec2.call(
                "complete snapshot", ec2.ebs.complete_snapshot, SnapshotId=snapshot, ChangedBlocksCount=sent,
                Checksum=aggregate, ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR",
            )  # fmt: skip
            image_id = ec2.call(
                "register image", ec2.client.register_image, Name=upload.name[:128],
                Description=f"endorsed image {upload.endorsed_id}", Architecture=_ARCH.get(upload.arch, "x86_64"),
                RootDeviceName="/dev/xvda", VirtualizationType="hvm", EnaSupport=True,
                BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                                      "Ebs": {"SnapshotId": snapshot, "DeleteOnTermination": True}}],
            )["ImageId"]  # fmt: skip
            ec2.call(
                "mark image", ec2.client.create_tags, Resources=[image_id],
                Tags=[{"Key": ENDORSED_ID_TAG, "Value": upload.endorsed_id}, {"Key": "Name", "Value": upload.name}],
            )  # fmt: skip
            found = ec2.call("show image", ec2.client.describe_images, ImageIds=[image_id])["Images"]
            return ec2._image(found[0])
        except WlcgError:
            with contextlib.suppress(WlcgError):
                if image_id:
                    ec2.call("deregister image", ec2.client.deregister_image, ImageId=image_id)
                ec2.call("delete snapshot", ec2.client.delete_snapshot, SnapshotId=snapshot)
            raise
