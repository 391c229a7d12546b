"""Reading the run dir's files for upload: a regular file, never through a symlink, inside the
run dir, hashed with the size, mtime and inode it had (so the upload sends that very file)."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import stat
from pathlib import Path

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


# The path of an open descriptor, which reopens its very file (Linux): what was checked and
# hashed is what the transfer managers read, whatever the name points to by then.
_FD_PATH = "/proc/self/fd/{}" if os.path.isdir("/proc/self/fd") else None
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


def open_regular(path: str | Path, root: str | Path | None = None) -> int:
    """A descriptor of the regular file at `path`, opened without following a symlink (a FIFO
    never blocks it); with `root`, only a file that really lies inside `root` (no symlinked
    directory on the way). `NotRegular` otherwise."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as err:
        if err.errno not in (errno.ELOOP, errno.EMLINK):  # O_NOFOLLOW's answer to a symlink
            raise  # missing, unreadable: the caller's to tell apart
        raise NotRegular(f"{path}: a symlink, never followed") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegular(f"{path}: not a regular file")
        if root is not None and _FD_PATH is not None:
            real, top = os.readlink(_FD_PATH.format(fd)), os.path.realpath(root)
            if not real.startswith(top.rstrip("/") + "/"):
                raise NotRegular(f"{path}: leads out of the run dir {top} (to {real})")
    except BaseException:
        os.close(fd)
        raise
    return fd


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
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns):
        raise FileChanged(str(path))
    return Digest(h.hexdigest(), after.st_size, after.st_mtime_ns, (after.st_dev, after.st_ino))
