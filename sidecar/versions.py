"""Whether a file still holds what its committed entry names (so nothing is sent), and the entry
of a file that was sent: one place for both, shared by the sidecar's workers and `sync`."""

from __future__ import annotations

import dataclasses

from . import manifest, transfer


def unchanged(prev: manifest.FileEntry | None, path: str, seen: transfer.Digest,
              small: int, root: str | None = None) -> manifest.FileEntry | None:
    """`prev` (with the new mtime) when the file still holds what it names, so nothing is sent:
    the same size and mtime (not read at all); or, touched, a small file hashed to the same
    SHA-256 (a read costs less than the upload). A touched large file is sent again.
    `FileChanged` if a small one changes while hashed."""
    if prev is None or prev.size != seen.size:
        return None
    if prev.mtime_ns == seen.mtime_ns:
        return prev
    if seen.size >= small or transfer.hash_file(path, root).sha256 != prev.sha256:
        return None
    return dataclasses.replace(prev, mtime_ns=seen.mtime_ns)


def entry_of(name: str, up: transfer.Upload, policy: str) -> manifest.FileEntry:
    """The manifest entry of a finished upload: its key and the digests of the bytes it sent."""
    return manifest.FileEntry(name, up.key, up.digest.size, up.digest.mtime_ns, up.digest.sha256, policy,
                              up.sums.part_size, up.sums.crc64nvme)
