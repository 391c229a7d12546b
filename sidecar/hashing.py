"""Reading the run dir's files for upload: a regular file, never through a symlink, inside the
run dir, hashed with the size, mtime and inode it had (so the upload sends that very file)."""

from __future__ import annotations

import dataclasses
import errno
import functools
import hashlib
import io
import os
import stat
from pathlib import Path

from . import checksums

MiB = 1024 * 1024


class FileChanged(Exception):
    """The file changed while it was read: it is not complete yet."""


class NotRegular(FileNotFoundError):
    """No regular file by that name inside the run dir: a symlink, a directory, a FIFO, or a path
    that leads out of the run dir. Nothing to upload, as if it were gone."""


@dataclasses.dataclass(frozen=True)
class Digest:
    sha256: str
    size: int
    mtime_ns: int
    inode: tuple[int, int] = (0, 0)
    """(st_dev, st_ino) of the file hashed: the upload sends that file, or none."""

    @classmethod
    def of(cls, st: os.stat_result, sha256: str = "") -> "Digest":
        """The file `st` describes, as looked at then (`sha256` when it was read whole)."""
        return cls(sha256, st.st_size, st.st_mtime_ns, (st.st_dev, st.st_ino))

    @property
    def seen(self) -> tuple[int, int]:
        """Its (size, mtime_ns) when looked at, to compare with `seen(os.fstat(...))` now."""
        return self.size, self.mtime_ns


def seen(st: os.stat_result) -> tuple[int, int]:
    """A file's size and mtime (ns): the one test of "unchanged since it was looked at" (an
    upload's file at its open, read and end; `sync --clean`; a restore's "already here") is
    that these are equal. A rewrite at the same size within the same mtime tick is not seen,
    as by rsync's quick check (size and mtime)."""
    return st.st_size, st.st_mtime_ns


# The path of an open descriptor, which reopens its very file (Linux): what was checked and
# hashed is what the transfer managers read, whatever the name points to by then.
_FD_PATH = "/proc/self/fd/{}" if os.path.isdir("/proc/self/fd") else None
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


_NOT_REGULAR = {
    errno.ELOOP: "a symlink, never followed",  # O_NOFOLLOW's answer to a symlink (EMLINK on some BSDs)
    errno.EMLINK: "a symlink, never followed",
    errno.ENXIO: "not a regular file",  # a socket
    errno.ENOTDIR: "no such file (a part of its path is not a directory)",  # a dir on the way became a file
}
"""What `os.open` refuses with, for a path that names no regular file inside the run dir."""


def open_regular(path: str | Path, root: str | Path | None = None) -> int:
    """A descriptor of the regular file at `path`, opened without following a symlink (a FIFO
    never blocks it); with `root`, only a file that really lies inside `root` (no symlinked
    directory on the way). `NotRegular` otherwise."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        why = _NOT_REGULAR.get(err.errno)
        if why is None:
            raise  # missing, unreadable: the caller's to tell apart
        raise NotRegular(f"{path}: {why}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(f"{path}: not a regular file")
        if root is not None and _FD_PATH is not None:
            real, top = os.readlink(_FD_PATH.format(fd)), _real_root(root)
            if not real.startswith(top.rstrip("/") + "/"):
                raise NotRegular(f"{path}: leads out of the run dir {top} (to {real})")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _real_root(root: str | Path) -> str:
    """The run dir's real path, resolved once per directory it names (a symlink to the run dir
    pointed elsewhere is resolved again): an lstat a path component, a file, were a good part of
    the small uploads' cost."""
    st = os.stat(root)
    return _resolved(root, st.st_dev, st.st_ino)


@functools.lru_cache(maxsize=16)
def _resolved(root: str | Path, dev: int, ino: int) -> str:
    return os.path.realpath(root)


def hash_file(path: str | Path, root: str | Path | None = None, block: int = MiB) -> Digest:
    """SHA-256 of a regular file (see `open_regular`), with the size, mtime and inode it had;
    `FileChanged` if it changed meanwhile."""
    fd = open_regular(path, root)
    with os.fdopen(fd, "rb") as f:
        before = os.fstat(fd)
        h = hashlib.sha256()
        while chunk := f.read(block):
            h.update(chunk)
        after = os.fstat(fd)
    if seen(before) != seen(after):
        raise FileChanged(str(path))
    return Digest.of(after, h.hexdigest())


def look(path: str | Path, root: str | Path | None = None) -> Digest:
    """The size, mtime and inode of a regular file (see `open_regular`), unread: its digests are
    taken as it uploads (`Digests`); `sha256` stays empty (format 2 records part CRCs)."""
    fd = open_regular(path, root)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return Digest.of(st)


@dataclasses.dataclass(frozen=True)
class Digests:
    """What an upload sent: one CRC64NVME per part (checksums.py). With the size, this is the
    content's identity in format 2: no whole-file SHA-256 is taken on the way to the commit
    (docs/format-2.md, "Content identity")."""

    part_size: int
    crc64nvme: tuple[str, ...]


def of_buffer(data: bytes, part_size: int) -> Digests:
    """The digests of a file read whole (one PUT), over that buffer."""
    view = memoryview(data)
    return Digests(part_size, tuple(checksums.encode(checksums.crc64nvme(view[i:i + part_size]))
                                    for i in range(0, len(data), part_size)))


class PartCRCs:
    """The CRC64NVMEs of a file's parts as its first `size` bytes come in, in order, in pieces of
    any length: parts consecutive from offset 0, each `part_size` bytes but the last (shorter,
    never empty); an empty file has none (checksums.py). `of_fd` and `Reading` both take theirs here."""

    def __init__(self, size: int, part_size: int):
        self.size, self.part_size = size, part_size
        self.offset, self._crc, self._crcs = 0, 0, []

    def add(self, data: memoryview) -> None:
        done = 0
        while done < len(data):  # a piece may end parts: each part's CRC is its own
            piece = data[done:done + self.part_size - self.offset % self.part_size]
            self._crc = checksums.crc64nvme(piece, self._crc)
            self.offset += len(piece)
            done += len(piece)
            if self.offset % self.part_size == 0 or self.offset == self.size:
                self._crcs.append(checksums.encode(self._crc))
                self._crc = 0

    def digests(self) -> Digests:
        return Digests(self.part_size, tuple(self._crcs))


class Reading(io.RawIOBase):
    """The file at `path`, open as `fd`, as a stream the CRT reads one PUT's
    body from, CRC'd as they land in the CRT's own buffer: the bytes S3 gets are the very bytes
    `finish` names, read with one copy (the kernel's, into that buffer, the GIL released) where
    a bytes object read whole was copied again into the CRT's buffer under the GIL
    (bench/README.md, "The CRT reads a small file itself"). The CRT reads the whole body before
    it sends a byte (it computes its checksum header from that buffer), so a file found changed
    at the end of the read, or a failed read, ends the stream short: the CRT refuses to send it
    ("body length must match Content-Length") and `finish` raises why. An exception raised
    here would reach the CRT as an unknown error, its traceback on stderr. `looked`: the file
    as it was looked at."""

    def __init__(self, fd: int, path: str, looked: Digest, part_size: int):
        super().__init__()
        self.fd, self.path, self.looked, self.part_size = fd, path, looked, part_size
        self.failed: BaseException | None = None
        """Why the stream ended short: `FileChanged`, or the read's OSError."""
        self._reset()

    def _reset(self) -> None:
        self.parts = PartCRCs(self.looked.size, self.part_size)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        size = self.looked.size
        view = memoryview(buffer).cast("B")
        if self.failed or self.parts.offset >= size or not len(view):
            return 0
        try:
            n = os.preadv(self.fd, [view[:size - self.parts.offset]], self.parts.offset)
            if not n:
                raise FileChanged(self.path)  # shorter than it was: being rewritten
            self.parts.add(view[:n])
            if self.parts.offset == size:
                self.check()
        except (OSError, FileChanged) as err:
            self.failed = err
            return 0  # this piece never reaches the CRT's body: nothing is sent
        return n

    readinto1 = readinto

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Only back to the start (the CRT's retry of a body it did not keep): read again."""
        if (offset, whence) != (0, io.SEEK_SET):
            raise io.UnsupportedOperation(f"seek({offset}, {whence})")
        self._reset()
        return 0

    def check(self) -> None:
        """`FileChanged` unless the file is as it was looked at (an empty one, which the CRT
        never reads, is asked before its PUT)."""
        if seen(os.fstat(self.fd)) != self.looked.seen:
            raise FileChanged(self.path)

    def finish(self) -> Digests:
        """The digests of the bytes sent, once the PUT is over; why the stream ended short, if
        it did (then the PUT failed: nothing was sent)."""
        if self.failed is not None:
            raise self.failed
        if self.parts.offset != self.looked.size:
            raise FileChanged(self.path)
        return self.parts.digests()


def of_fd(fd: int, size: int, part_size: int, block: int = MiB) -> Digests:
    """The digests of the first `size` bytes of `fd`, read with pread beside a multipart upload
    of the same file (the page cache serves both); `FileChanged` if it is shorter now. One
    buffer, reused: a new 4 MiB bytes object per read cost a fifth of this pass's CPU in page
    faults (0.27 against 0.21 CPU-s/GiB here)."""
    view = memoryview(bytearray(min(block, part_size)))
    parts = PartCRCs(size, part_size)
    while parts.offset < size:
        n = os.preadv(fd, [view[:min(len(view), size - parts.offset)]], parts.offset)
        if not n:
            raise FileChanged(f"fd {fd}: shorter than {size} bytes")
        parts.add(view[:n])
    return parts.digests()


def holds(path: str | Path, entry, root: str | Path | None = None) -> bool:
    """Whether the regular file at `path` holds the content a manifest entry names (its `size`,
    and its part CRC64NVMEs, or format 1's SHA-256 when it has none): the one test of "unchanged
    content" for uploads, `sync --clean` and a restore's "already here". `FileChanged` if the
    file changes while read."""
    if not entry.part_size:
        digest = hash_file(path, root)
        return (digest.size, digest.sha256) == (entry.size, entry.sha256)
    fd = open_regular(path, root)
    try:
        before = os.fstat(fd)
        if before.st_size != entry.size:
            return False
        sums = of_fd(fd, entry.size, entry.part_size)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if seen(before) != seen(after):
        raise FileChanged(str(path))
    return sums.crc64nvme == tuple(entry.crc64nvme)
