"""A format-2 base listing in chunks: `manifests/<seq:012d>.base/<k:06d>-<token>.jsonl.gz`, one
JSON entry per line, sorted by name, `SIZE` entries each.

A reader holds one chunk at a time (about 1 MB compressed at 10,000 entries), whatever the
listing's size. The key carries the writer's random token: two writers racing for one number
each write their own chunks (only one commit record can name them, If-None-Match), so the
loser can never overwrite what the winner's record names. The record names each chunk with its
SHA-256, so a damaged or swapped chunk is refused, never read as the commit.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import zlib
from collections.abc import Iterable, Iterator

SIZE = 10_000


def write(s3, bucket: str, prefix: str, token: str, docs: Iterable[dict], size: int = SIZE) -> list[list[str]]:
    """PUT the sorted `docs` in chunks under `prefix`; [[key, sha256], ...] in order. Each line
    is compressed as it comes: a chunk is held only compressed (about 1 MB at 10,000 entries,
    not the 3 MB of its text, twice over, beside it)."""
    written: list[list[str]] = []
    parts: list[bytes] = []
    packer, count = None, 0

    def flush() -> None:
        parts.append(packer.flush())
        body = b"".join(parts)
        parts.clear()
        digest = hashlib.sha256(body).digest()
        key = f"{prefix}{len(written):06d}-{token}.jsonl.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/gzip",
                      ChecksumSHA256=base64.b64encode(digest).decode())
        written.append([key, digest.hex()])

    for doc in docs:
        if packer is None:  # gzip, level 6, no name, mtime 0: the bytes gzip.compress(text, 6, mtime=0) gives
            packer, count = zlib.compressobj(6, zlib.DEFLATED, 31), 0
        parts.append(packer.compress((json.dumps(doc, ensure_ascii=False) + "\n").encode()))
        count += 1
        if count == size:
            flush()
            packer = None
    if packer is not None:
        flush()
    return written


def read(s3, bucket: str, key: str, sha256: str) -> Iterator[dict]:
    """One chunk's entries, checked against the SHA-256 its record names (ValueError if not)."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    if hashlib.sha256(body).hexdigest() != sha256:
        raise ValueError(f"chunk {key} does not match the SHA-256 its record names")
    lines = gzip.decompress(body).decode().splitlines()
    for at in range(0, len(lines), _PARSE_BATCH):
        yield from _parse(lines[at:at + _PARSE_BATCH])


_PARSE_BATCH = 256
"""Lines parsed in one `json.loads`: a third of the CPU of one call a line, few dicts alive at once."""


def _parse(lines: list[str]) -> list:
    """The JSON values of `lines`, one a line: parsed as one array, and line by line (which names
    the bad line) when that is not exactly one value a line."""
    try:
        values = json.loads("[" + ",".join(lines) + "]")
        if len(values) == len(lines) and all(isinstance(v, dict) for v in values):
            return values
    except ValueError:
        pass
    return [json.loads(line) for line in lines]
