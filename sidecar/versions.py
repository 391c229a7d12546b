"""Whether a file still holds what its committed entry names (so nothing is sent), and the entry
of a file that was sent: one place for both, shared by the sidecar's workers and `sync`."""

from __future__ import annotations

import dataclasses

from . import hashing, manifest, transfer


def unchanged(prev: manifest.FileEntry | None, path: str, seen: transfer.Digest,
              small: int, root: str | None = None) -> manifest.FileEntry | None:
    """`prev` (with the new mtime) when the file still holds what it names, so nothing is sent:
    the same size and mtime (not read at all); or, touched, a small file read to the same part
    CRCs (or format 1's SHA-256: `hashing.holds`; a read costs less than the upload). A touched
    large file is sent again. `FileChanged` if a small one changes while read."""
    if prev is None or prev.size != seen.size:
        return None
    if prev.mtime_ns == seen.mtime_ns:
        return prev
    if seen.size >= small or not hashing.holds(path, prev, root):
        return None
    return dataclasses.replace(prev, mtime_ns=seen.mtime_ns)


def reads(prev: manifest.FileEntry | None, seen: transfer.Digest, small: int) -> bool:
    """Whether `unchanged` reads the file to answer: a touched small file (same size, another mtime)."""
    return prev is not None and prev.size == seen.size and prev.mtime_ns != seen.mtime_ns and seen.size < small


def entry_of(name: str, up: transfer.Upload, policy: str) -> manifest.FileEntry:
    """The manifest entry of a finished upload: its key and the part CRCs of the bytes it sent
    (no SHA-256: docs/format-2.md, "Content identity")."""
    return manifest.FileEntry(name, up.key, up.digest.size, up.digest.mtime_ns, "", policy,
                              up.sums.part_size, up.sums.crc64nvme)
