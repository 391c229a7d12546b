"""Per-part CRC64NVME: how storage format 2 checks every part of a file as it moves.

A format-2 manifest entry records `part_size` and one CRC64NVME per part (base64 of the 8
big-endian bytes, as S3's `x-amz-checksum-crc64nvme` header spells it). A download fetches parts
in parallel and checks each one as it lands, so no second pass over the file is needed. With
the size, the part CRCs are the entry's content identity: no whole-file SHA-256 is taken
(docs/format-2.md, "Content identity"; older entries keep theirs). CRC64NVME is computed by the
AWS CRT in native code (about 5x SHA-256's speed here), and S3 checks the same algorithm itself.
Parts of an entry: consecutive, from offset 0, each `part_size` bytes but the last (shorter,
never empty); an empty file has no part. A file's digests are read in one place: `hashing`.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Iterable

MiB = 1024 * 1024
PART_SIZE = 16 * MiB
"""The default part size (the multipart chunk size of uploads)."""


@functools.cache
def _crc():
    from awscrt import checksums  # 60 ms of imports: only when a part is checked

    return checksums


def crc64nvme(data: bytes | memoryview, previous: int = 0) -> int:
    return _crc().crc64nvme(data, previous)


def encode(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(8, "big")).decode()


def decode(text: str) -> int:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != 8:
        raise ValueError(f"a CRC64NVME is 8 bytes, got {len(raw)}")
    return int.from_bytes(raw, "big")


def combine(first: int, second: int, second_len: int) -> int:
    """The CRC64NVME of two consecutive pieces (S3's full-object checksum from part checksums)."""
    return _crc().combine_crc64nvme(first, second, second_len)


def part_count(size: int, part_size: int) -> int:
    return 0 if size == 0 else -(-size // part_size)


def part_range(index: int, size: int, part_size: int) -> tuple[int, int]:
    """(offset, length) of part `index` of a `size`-byte file."""
    offset = index * part_size
    return offset, min(part_size, size - offset)


def whole(crcs: Iterable[str], size: int, part_size: int) -> int:
    """The CRC64NVME of a whole `size`-byte file from its part CRCs (S3's full-object checksum of
    a multipart object whose parts are these)."""
    total = 0
    for i, crc in enumerate(crcs):
        total = combine(total, decode(crc), part_range(i, size, part_size)[1])
    return total
