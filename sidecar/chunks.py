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
from collections.abc import Iterable, Iterator

SIZE = 10_000


def write(s3, bucket: str, prefix: str, token: str, docs: Iterable[dict], size: int = SIZE) -> list[list[str]]:
    """PUT the sorted `docs` in chunks under `prefix`; [[key, sha256], ...] in order."""
    written: list[list[str]] = []
    batch: list[str] = []  # each entry's line as it comes: a str holds it in half a dict's memory

    def flush() -> None:
        body = gzip.compress("".join(batch).encode(), 6, mtime=0)
        digest = hashlib.sha256(body).digest()
        key = f"{prefix}{len(written):06d}-{token}.jsonl.gz"
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/gzip",
                      ChecksumSHA256=base64.b64encode(digest).decode())
        written.append([key, digest.hex()])
        batch.clear()

    for doc in docs:
        batch.append(json.dumps(doc, ensure_ascii=False) + "\n")
        if len(batch) == size:
            flush()
    if batch:
        flush()
    return written


def read(s3, bucket: str, key: str, sha256: str) -> Iterator[dict]:
    """One chunk's entries, checked against the SHA-256 its record names (ValueError if not)."""
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    if hashlib.sha256(body).hexdigest() != sha256:
        raise ValueError(f"chunk {key} does not match the SHA-256 its record names")
    for line in gzip.decompress(body).decode().splitlines():
        yield json.loads(line)
