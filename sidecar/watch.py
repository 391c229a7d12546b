"""The files of a run dir: what is there (`scan`), and what happens to them (`Watcher`).

This module knows no policies. `scan` walks the tree once (`runsync sync`, the sidecar's
safety-net rescan); the sidecar's event `Watcher` reports files as they are completed.
Symlinks are never followed: a link could lead out of the run dir. runsync's own state
directory is not part of the run.
"""

from __future__ import annotations

import array
import dataclasses
import itertools
import os
import stat
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import keys

STATE_DIR = keys.STATE_DIR  # runsync's own bookkeeping inside the run dir; never uploaded


@dataclasses.dataclass(frozen=True, slots=True)  # slots: a run dir may hold 100,000 of these
class LocalFile:
    relpath: str
    """`/`-separated, relative to the run dir."""
    path: str
    size: int
    mtime_ns: int


class Listed(Sequence[LocalFile]):
    """The files of a scan, sorted by path, held compactly: one string of paths and three arrays,
    a `LocalFile` made only for the file asked for. 100,000 `LocalFile`s are ~25 MiB of small
    objects, and the idle sidecar's heap kept their pages after the start-up rescan (issue 17:
    RSS < 80 MiB beside 100,000 files)."""

    __slots__ = ("_prefix", "_names", "_ends", "_sizes", "_mtimes")

    def __init__(self, root: str, relpaths: list[str], sizes: array.array, mtimes: array.array):
        """`relpaths`, `sizes`, `mtimes`: one item a file, in `relpath` order (as `Walk` finds
        them); `relpaths` is emptied as it is packed."""
        self._prefix = os.path.join(root, "")  # a path is prefix + relpath (os.path.join a file: 2x the step)
        self._sizes, self._mtimes = sizes, mtimes
        self._ends = array.array("q", itertools.accumulate(map(len, relpaths)))
        self._names = "".join(relpaths)  # no separator: `_ends` marks where each path ends
        relpaths.clear()

    def __len__(self) -> int:
        return len(self._ends)

    def _one(self, i: int) -> LocalFile:
        relpath = self._names[self._ends[i - 1] if i else 0:self._ends[i]]
        return LocalFile(relpath, self._prefix + relpath, self._sizes[i], self._mtimes[i])

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(self._one(j) for j in range(*i.indices(len(self))))
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._one(i)

    def __iter__(self) -> Iterator[LocalFile]:
        return (self._one(i) for i in range(len(self)))


@dataclasses.dataclass(frozen=True)
class Scan:
    files: Listed
    symlinks: tuple[str, ...]
    """Relative paths of symlinks, skipped."""
    unnamable: tuple[str, ...]
    """Paths that are not valid UTF-8 and so cannot become S3 keys, skipped."""
    taken: int = 0
    """Files passed over, on the word of `taken_as_checked` (not in `files`)."""


def scan(run_dir: str | Path, taken_as_checked: Iterator[str] | None = None) -> Scan:
    walk = Walk(run_dir, taken_as_checked)
    relpaths: list[str] = []
    sizes, mtimes = array.array("q"), array.array("q")
    for f in walk:  # packed as found: no LocalFile outlives its step (see Listed)
        relpaths.append(f.relpath)
        sizes.append(f.size)
        mtimes.append(f.mtime_ns)
    return Scan(Listed(walk.root, relpaths, sizes, mtimes), tuple(sorted(walk.symlinks)), tuple(sorted(walk.unnamable)),
                walk.taken)


class Walk:
    """The regular files under a run dir as `LocalFile`s, in `relpath` order, found as they are
    read: one directory's names are held at a time, not the whole tree (`runsync sync` of
    100,000 files). The symlinks (never followed) and the paths that are not UTF-8 met on the
    way are in `symlinks` and `unnamable` once the walk has passed them.

    `taken_as_checked`: relpaths in `relpath` order whose files are passed over unlooked-at
    (restore-init's word, statedir.Checked): read as the walk goes, a merge, not a set."""

    def __init__(self, run_dir: str | Path, taken_as_checked: Iterator[str] | None = None):
        self.root = os.path.abspath(run_dir)
        self.symlinks: list[str] = []
        self.unnamable: list[str] = []
        self.taken = 0
        self._checked = taken_as_checked
        self._next_checked = next(taken_as_checked, None) if taken_as_checked is not None else None

    def _taken(self, relpath: str) -> bool:
        while self._next_checked is not None and self._next_checked < relpath:
            self._next_checked = next(self._checked, None)
        if self._next_checked == relpath:
            self.taken += 1
            return True
        return False

    def __iter__(self) -> Iterator[LocalFile]:
        return self._under(self.root, "")

    def _under(self, dirpath: str, rel_dir: str) -> Iterator[LocalFile]:
        try:
            with os.scandir(dirpath) as listing:
                entries = list(listing)
        except OSError:
            return  # gone or unreadable meanwhile: os.walk's choice too
        # A directory sorts as its name and a "/": its files come where their relpaths sort.
        order = []
        for entry in entries:
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                is_dir = False
            if not rel_dir and entry.name == STATE_DIR and (is_dir or _is_dir(entry.path)):
                continue  # runsync's own, a directory (or a link to one) at the top: not part of the run
            order.append((entry.name + "/" if is_dir else entry.name, entry))
        order.sort(key=lambda pair: pair[0])
        del entries
        for key, entry in order:
            relpath = rel_dir + entry.name
            if key[-1] == "/":
                yield from self._under(entry.path, relpath + "/")
                continue
            if self._next_checked is not None and self._taken(relpath):
                continue
            if entry.is_symlink() and _is_dir(entry.path):  # a symlinked directory: reported, not entered
                self.symlinks.append(relpath)
                continue
            try:
                relpath.encode("utf-8")
            except UnicodeEncodeError:
                self.unnamable.append(relpath.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue  # deleted while walking
            if stat.S_ISLNK(st.st_mode):  # from the one lstat: 100,000 files, 100,000 calls
                self.symlinks.append(relpath)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # sockets, fifos, devices
            yield LocalFile(relpath, entry.path, st.st_size, st.st_mtime_ns)


def file_stat(root: str, relpath: str) -> tuple[int, int] | None:
    """(size, mtime_ns) of the file at `relpath` (not followed if a link); None if it is gone."""
    try:
        st = os.lstat(os.path.join(root, relpath))
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except OSError:
        return False


# ------------------------------------------------------------------ the event watcher

@dataclasses.dataclass(frozen=True)
class FileEvent:
    """A file of the run dir at `relpath` was closed after writing or renamed into place
    (`ready`), or was found in a new directory and may still be written (`ready=False`)."""

    relpath: str
    ready: bool
    when: float


@dataclasses.dataclass(frozen=True)
class FileGone:
    """The file (or, with `is_dir`, the directory) at `relpath` was deleted or renamed away."""

    relpath: str
    is_dir: bool = False


@dataclasses.dataclass(frozen=True)
class Fence:
    """Every file event that happened before `fence(n)` was called has been delivered."""

    n: int


@dataclasses.dataclass(frozen=True)
class Overflow:
    """The kernel dropped events: the consumer must rescan."""


class Watcher:
    """inotify on every directory of the run dir: close-after-write and rename-into-place.

    inotify_simple, not watchdog: a rename into the tree from outside must count as complete,
    and only the raw IN_MOVED_TO flag tells it apart from a new file that is still being written
    (watchdog reports both as "created"). A read-only open (IN_CLOSE_NOWRITE) is not watched.
    Symlinked directories are never entered, so nothing outside the run dir is watched.
    A directory it may not read (a trainer's umask 077 under another UID) or cannot watch is
    passed to `on_unwatchable(path, is_dir, error)` and skipped: the watcher goes on.
    """

    def __init__(self, run_dir: str | Path, emit, clock=time.time, on_unwatchable=None):
        import inotify_simple  # Linux only; imported here so the pure modules stay portable

        self._flags = inotify_simple.flags
        self._inotify = inotify_simple.INotify()
        self._root = os.path.abspath(run_dir)
        self._emit = emit
        self._clock = clock
        self._on_unwatchable = on_unwatchable or (lambda path, is_dir, error: None)
        self._dirs: dict[int, str] = {}
        self._fences = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        state = os.path.join(self._root, STATE_DIR)
        os.makedirs(state, exist_ok=True)
        self._add_tree("", listed=False)

    def fence(self) -> int:
        """Write a fence file; `Fence(n)` is emitted after every event that came before it."""
        with self._lock:
            self._fences += 1
            n = self._fences
        with open(os.path.join(self._root, STATE_DIR, f"fence-{n}"), "w"):
            pass
        return n

    def stop(self) -> None:
        self._stopped.set()
        self._inotify.close()

    def run(self, read_timeout_ms: int = 500) -> None:
        """The watcher thread's loop: read events until `stop()`."""
        f = self._flags
        while not self._stopped.is_set():
            try:
                events = self._inotify.read(timeout=read_timeout_ms)
            except (OSError, ValueError):
                if self._stopped.is_set():
                    return
                raise
            for ev in events:
                if ev.mask & f.Q_OVERFLOW:
                    self._emit(Overflow())
                    continue
                if ev.mask & f.IGNORED:
                    self._dirs.pop(ev.wd, None)
                    continue
                parent = self._dirs.get(ev.wd)
                if parent is None or not ev.name:
                    continue
                relpath = parent + ev.name
                if relpath.startswith(STATE_DIR + "/"):
                    if ev.mask & f.CLOSE_WRITE:
                        self._state_event(relpath)
                    continue
                if ev.mask & (f.DELETE | f.MOVED_FROM):
                    self._emit(FileGone(relpath, bool(ev.mask & f.ISDIR)))
                    continue
                if ev.mask & f.ISDIR:
                    if ev.mask & (f.CREATE | f.MOVED_TO):
                        # A directory renamed into place arrives complete; a new one may still
                        # be filling, and files written before its watch existed are only seen.
                        moved = bool(ev.mask & f.MOVED_TO)
                        for found in self._add_tree(relpath):
                            self._emit(FileEvent(found, moved, self._clock()))
                    continue
                if ev.mask & (f.CLOSE_WRITE | f.MOVED_TO):
                    self._emit(FileEvent(relpath, True, self._clock()))

    def _state_event(self, relpath: str) -> None:
        name = relpath[len(STATE_DIR) + 1:]
        if name.startswith("fence-") and name[6:].isdigit():
            try:
                os.unlink(os.path.join(self._root, relpath))
            except FileNotFoundError:
                pass
            self._emit(Fence(int(name[6:])))

    def _add_tree(self, reldir: str, listed: bool = True) -> list[str]:
        """Watch `reldir` and every directory below it; return the files already there (none
        with `listed=False`: the run dir at start, whose files are the engine's rescan's).

        Each directory is watched before it is listed, so a file created in between is
        either listed or reported by an event, never missed.
        """
        f = self._flags
        mask = (f.CLOSE_WRITE | f.MOVED_TO | f.MOVED_FROM | f.CREATE | f.DELETE
                | f.DONT_FOLLOW | f.ONLYDIR | f.EXCL_UNLINK)
        files: list[str] = []
        pending = [reldir]
        while pending:
            rel = pending.pop()
            prefix = rel + "/" if rel else ""
            path = os.path.join(self._root, rel) if rel else self._root
            try:
                wd = self._inotify.add_watch(path, mask)
                entries = list(os.scandir(path))
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone, or a symlink (ONLYDIR | DONT_FOLLOW)
            except OSError as err:  # EACCES; ENAMETOOLONG; ENOSPC (out of inotify watches)
                self._on_unwatchable(rel or ".", True, err)
                continue
            self._dirs[wd] = prefix
            for entry in entries:
                if entry.is_symlink():
                    continue
                if entry.is_dir(follow_symlinks=False):
                    pending.append(prefix + entry.name)
                elif listed and not prefix.startswith(STATE_DIR + "/") and entry.is_file(follow_symlinks=False):
                    files.append(prefix + entry.name)
        return files
