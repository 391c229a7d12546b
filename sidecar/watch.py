"""The files of a run dir, as the planner sees them: relative path, size and mtime.

This module knows no policies. `scan` walks the tree once (`runsync sync`, the sidecar's
safety-net rescan); the sidecar's event watcher will feed the same `LocalFile` records.
Symlinks are never followed: a link could lead out of the run dir. runsync's own state
directory is not part of the run.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

STATE_DIR = ".runsync"
"""runsync's own bookkeeping inside the run dir; never uploaded."""


@dataclasses.dataclass(frozen=True)
class LocalFile:
    relpath: str
    """`/`-separated, relative to the run dir."""
    path: str
    size: int
    mtime_ns: int


@dataclasses.dataclass(frozen=True)
class Scan:
    files: tuple[LocalFile, ...]
    symlinks: tuple[str, ...]
    """Relative paths of symlinks, skipped."""
    unnamable: tuple[str, ...]
    """Paths that are not valid UTF-8 and so cannot become S3 keys, skipped."""


def scan(run_dir: str | Path) -> Scan:
    root = os.path.abspath(run_dir)
    files: list[LocalFile] = []
    links: list[str] = []
    bad: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/") + "/"
        if not rel_dir:
            dirnames[:] = [d for d in dirnames if d != STATE_DIR]
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                links.append(rel_dir + d)
                dirnames.remove(d)
        for name in filenames:
            path = os.path.join(dirpath, name)
            relpath = rel_dir + name
            try:
                relpath.encode("utf-8")
            except UnicodeEncodeError:
                bad.append(relpath.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
                continue
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue  # deleted while walking
            if os.path.islink(path):
                links.append(relpath)
                continue
            if not os.path.isfile(path):
                continue  # sockets, fifos, devices
            files.append(LocalFile(relpath, path, st.st_size, st.st_mtime_ns))
    files.sort(key=lambda f: f.relpath)
    return Scan(tuple(files), tuple(sorted(links)), tuple(sorted(bad)))
