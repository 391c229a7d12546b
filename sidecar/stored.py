"""What S3 stored, checked against what was read for the manifest, before a commit names it.

A multipart upload's parts are checked by S3 against the CRC64NVME the uploader (the CRT, or
botocore) computed from the bytes it sent; the entry's part CRCs come from a second read of the
same descriptor (hashing.of_fd). Both read the page cache, so they agree unless the file was
rewritten in place without a new size or mtime (an mmap, a writer that restores the mtime) or a
byte was damaged in memory. S3's full-object CRC64NVME (HeadObject with ChecksumMode=ENABLED)
must equal the entry's part CRCs combined; a single PUT needs no such check (S3 verified the body
against the CRC computed from the very buffer the entry's digests came from).
"""

from __future__ import annotations

import threading

from . import checksums, hashing
from .errors import StoreError
from .logs import log

_unchecked = threading.Event()
"""Set once a store answered without a full-object CRC64NVME (logged once per process)."""


def check(s3, bucket: str, key: str, sums: hashing.Digests, size: int, path: str) -> None:
    """`StoreError` unless the object at `key` holds the bytes `sums` describe (see above); a
    store that reports no full-object CRC64NVME is logged once and trusted on its part checks."""
    head = s3.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    theirs = head.get("ChecksumCRC64NVME")
    if not theirs or head.get("ChecksumType", "FULL_OBJECT") != "FULL_OBJECT":
        if not _unchecked.is_set():
            _unchecked.set()
            log.warning("the store reports no full-object CRC64NVME; multipart uploads are checked per part only",
                        extra={"fields": {"key": key, "checksum": theirs, "type": head.get("ChecksumType")}})
        return
    ours = checksums.encode(checksums.whole(sums.crc64nvme, size, sums.part_size))
    if theirs != ours:
        raise StoreError(
            f"s3://{bucket}/{key} ({path}): S3's full-object checksum CRC64NVME {theirs} differs from {ours}, "
            "the part checksums of the bytes read for the manifest combined; the file was rewritten in place "
            "while it uploaded (same size and mtime) or bytes were damaged; not committed, sent again")
