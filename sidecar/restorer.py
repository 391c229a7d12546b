"""Committed manifest → files in a directory: verified, placed atomically, never outside it.

(Not `restore.py`: `runsync.restore` is the SDK's function, as `wandb.restore` is.)

Used by restore-init (before the trainer starts) and by `runsync restore` (a laptop).

- Every file is downloaded to a temp name in its own directory, checked against its SHA-256,
  given its recorded mtime and renamed into place; a mismatch names the file and leaves
  nothing behind.
- A checkpoint directory is placed whole or not at all: all its files are downloaded and
  checked before any is renamed, the marker last.
- A file that exists locally with the same size and mtime is left alone; one that is newer
  locally is kept (a surviving PVC run dir wins) unless `replace`; identical content is never
  downloaded again.
- Names that would land outside the directory are refused by `manifest` and `keys`; here a
  path that would pass through a symlink is refused too, before anything is written.
- Free space is checked before the first byte; a full disk mid-way fails with a clear message
  and removes its temp files.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import itertools
import os
import queue
import secrets
import shutil
import stat
import time
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from . import config, discovery, globs, hashing, keys, listing, manifest, plan, transfer
from .errors import RunsyncError
from .logs import log


class RestoreError(RunsyncError):
    """A restore that could not be done; nothing torn was left behind."""


class NothingMatched(RestoreError):
    """A pattern that names no file the run ever committed (`runsync restore RUN no-such-name`)."""


@dataclasses.dataclass
class RestoreReport:
    written: list[str] = dataclasses.field(default_factory=list)
    up_to_date: list[str] = dataclasses.field(default_factory=list)
    kept_newer: list[str] = dataclasses.field(default_factory=list)
    files: int = 0
    """Files written (`len(written)` when the names are kept)."""
    files_up_to_date: int = 0
    keep_names: bool = True
    """False: `written` and `up_to_date` stay empty, only counted. restore-init needs the counts
    alone, and 1,000,000 names held to the end would be its largest cost in memory (issue 18)."""
    incomplete: tuple[str, ...] = ()
    manifests: dict[str, int] = dataclasses.field(default_factory=dict)
    looked_back: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    """pattern → {replica: manifest number}: patterns that named nothing in the latest manifests,
    restored from the newest older manifest that held them (a file deleted since)."""
    unmatched: tuple[str, ...] = ()
    """patterns that name no file of any committed manifest of the run."""
    bytes: int = 0
    seconds: float = 0.0

    @property
    def empty(self) -> bool:
        return not self.manifests


def latest_manifests(s3, store: keys.StoreURL, run: keys.RunPath, replica: str,
                     all_replicas: bool) -> dict[str, listing.Listing]:
    """The latest commit of the replica (or of every replica), its entries to be streamed."""
    return discovery.listings_by_replica(s3, store, run, None if all_replicas else replica)


WINDOW = 64
"""Units submitted and not yet finished: the restore holds these, never the whole listing."""


def restore(
    s3,
    store: keys.StoreURL,
    run: keys.RunPath,
    dest: str | Path,
    replica: str = "0",
    all_replicas: bool = False,
    patterns: tuple[globs.Glob, ...] = (),
    markers: tuple[globs.Glob, ...] | None = None,
    replace: bool = False,
    must_match: bool = False,
    settings: transfer.Settings = transfer.Settings(),
    hooks: transfer.Hooks = transfer.Hooks(),
    manifests: dict[str, listing.Listing] | None = None,
    keep_names: bool = True,
) -> RestoreReport:
    """Restore the latest commits of `run` (`manifests`, when the caller has read them already
    with `latest_manifests`: restore-init does, to choose the source) into `dest`.

    The listings are streamed (plan.RestoreStream): read once to survey, once to size the
    restore (the free-space check comes before the first byte), once to restore, a window of
    units at a time; memory grows with the checkpoint dirs, not with the files (and with the
    names restored, unless not `keep_names`: then the report only counts them)."""
    started = time.monotonic()
    if markers is None:  # the defaults of SPEC.md; an empty tuple would make no dir a checkpoint
        markers = config.RunConfig().complete_markers
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if manifests is None:
            manifests = latest_manifests(s3, store, run, replica, all_replicas)
        report = RestoreReport(manifests={r: m.seq for r, m in manifests.items()}, keep_names=keep_names)
        if not manifests:
            return report
        chosen = plan.restore_stream({r: m.entries for r, m in manifests.items()},
                                     {r: m.meta.checkpoints for r, m in manifests.items()}, markers, patterns,
                                     own=replica)
        older: list[plan.RestorePlan] = []
        for pattern in chosen.unmatched:
            held = _newest_holding(s3, store, run, manifests, pattern)
            if held:
                report.looked_back[str(pattern)] = {r: m.seq for r, m in held.items()}
                older.append(plan.for_restore(held, markers, (pattern,), own=replica))
            else:
                report.unmatched += (str(pattern),)
        if report.unmatched and must_match:  # before any download: all that was asked, or nothing
            raise NothingMatched(
                f"{', '.join(report.unmatched)} {'match' if len(report.unmatched) > 1 else 'matches'} no file committed to {run} (replica "
                f"{'s ' + ', '.join(sorted(manifests)) if all_replicas else replica}, in any manifest); "
                f"list the run's files with: runsync ls {run}")

        def units():
            yield from chosen.units()
            taken: set[str] = set()  # names the latest commits no longer hold: only older plans clash
            for more in older:
                grouped = {n for names in more.groups.values() for n in names}
                for d, names in more.groups.items():
                    if not taken & set(names):
                        taken.update(names)
                        yield d, [(n, *more.files[n]) for n in names]
                for n, v in sorted(more.files.items()):
                    if n not in grouped and n not in taken:
                        taken.add(n)
                        yield None, [(n, *v)]

        count, need = 0, 0
        # Sizes from lstat alone: a file the hash would find unchanged counts. Which files are
        # the same by size and mtime is kept (a bit each, in the order `units()` yields them),
        # so the restore looks at each of them once: a pod's PVC may hold 100,000.
        same = bytearray()
        for _, unit in units():
            for name, _, entry in unit:
                state = _local_state(_path(dest, name), entry, replace, hash_equal=False)
                same.append(state == "same")
                if state == "missing":
                    count, need = count + 1, need + entry.size
        _check_space(dest, need)
        hooks.on_plan(count, need)
        failures, total = _restore_units(s3, store, settings, dest, units(), replace, hooks, report, iter(same))
        report.incomplete = tuple(sorted(set(chosen.incomplete()) | {
            d for more in older for d in more.incomplete if d not in chosen.groups and d not in more.groups}))
    except (ClientError, BotoCoreError) as err:
        raise transfer.describe(err, store, s3) from None
    report.written.sort()
    report.seconds = time.monotonic() - started
    if failures:
        raise RestoreError(f"{len(failures)} of {total} restores failed; first: {failures[0]}")
    return report


def _restore_units(s3, store, settings, dest: Path, units, replace: bool, hooks: transfer.Hooks,
                   report: RestoreReport, same) -> tuple[list[str], int]:
    """Restore each unit's files that are missing or older here; (failures, units tried).
    `same`: a flag a file, in order, true where the survey found it the same by size and mtime."""
    failures: list[str] = []
    running: dict[concurrent.futures.Future, list] = {}
    finished: queue.SimpleQueue[concurrent.futures.Future] = queue.SimpleQueue()
    total = 0

    def settle(limit: int) -> None:
        """Take finished units, in the order they finish (one large file must not hold the
        window), until at most `limit` run. Each future reports itself to `finished`: waiting
        on all of the window's futures for every file cost more than restoring a small one."""
        while len(running) > limit:
            future = finished.get()
            unit = running.pop(future)
            err = future.result()
            if err is None:
                report.files += len(unit)
                if report.keep_names:
                    report.written.extend(n for n, _ in unit)
                report.bytes += sum(e.size for _, e in unit)
            else:
                failures.append(err)

    # A single file (most units) downloads on its unit's own thread: no second hand-off per file.
    # A checkpoint dir's files download on `files`, in parallel; a unit waits only on files,
    # never on another unit. 16 + 16 threads, plus fetch.WORKERS ranges: the client's connections.
    places = _Places(dest)
    # `pool` is left first (units stop before the file pool they submit to), and on an error its
    # queued units are cancelled: a restore that failed does not go on downloading.
    with transfer.Transfers(s3, store, settings) as transfers, \
            concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="restore-unit") as files, \
            _Units(16) as pool:
        for _, unit in units:
            todo = []
            for name, _, entry in unit:
                state = "same" if next(same, False) else _local_state(_path(dest, name), entry, replace)
                if state == "same":
                    report.files_up_to_date += 1
                    if report.keep_names:
                        report.up_to_date.append(name)
                elif state == "newer":
                    report.kept_newer.append(name)
                else:
                    todo.append((name, entry))
            if todo:
                total += 1
                future = pool.submit(_restore_unit, transfers, dest, todo, hooks,
                                     files if len(todo) > 1 else None, places)
                running[future] = todo
                future.add_done_callback(finished.put)
                settle(WINDOW)
        settle(0)
    return failures, total


class _Units(concurrent.futures.ThreadPoolExecutor):
    """The restore's unit threads; leaving on an error cancels the units not started."""

    def __init__(self, workers: int):
        super().__init__(workers, thread_name_prefix="restore")

    def __exit__(self, kind, *rest):
        self.shutdown(wait=True, cancel_futures=kind is not None)
        return False


def _newest_holding(s3, store: keys.StoreURL, run: keys.RunPath, latest: dict[str, listing.Listing],
                    pattern: globs.Glob) -> dict[str, manifest.Manifest]:
    """Per replica, the newest older manifest that names a file matching `pattern`."""
    found = {}
    try:
        for replica in latest:
            for m in manifest.history(s3, keys.Layout(store, run, replica)):
                if any(pattern.matches(n) for n in m.files):
                    found[replica] = m
                    break
    except (ClientError, BotoCoreError) as err:
        raise transfer.describe(err, store, s3) from None
    return found


class _Places:
    """Where one restore writes: temp names from a random tag and a counter (no `uuid4` per
    file; the tag keeps a leftover of an earlier restore of the same pid, 1 in every container,
    from colliding), and each parent dir made and checked once, not once per file."""

    def __init__(self, dest: Path):
        self.dest = dest
        self._tag = secrets.token_hex(4)
        self._serial = itertools.count()  # next() is atomic under the GIL
        self._checked: set[Path] = set()

    def temp(self, target: Path) -> Path:
        return target.with_name(f".{target.name[:100]}.runsync-{self._tag}{next(self._serial):x}")

    def parents(self, target: Path) -> None:
        if target.parent not in self._checked:
            _make_parents(self.dest, target)
            self._checked.add(target.parent)


def _restore_unit(transfers: transfer.Transfers, dest: Path, unit: list[tuple[str, manifest.FileEntry]],
                  hooks: transfer.Hooks, files: concurrent.futures.Executor | None = None,
                  places: _Places | None = None) -> str | None:
    """Download every file of a unit to temp names; rename them into place only if all are good.
    The files download on `files`, in parallel, when given: a checkpoint dir (one shard per
    replica under restore-replicas: all) one after another would be a chain of R GETs."""
    places = places or _Places(dest)
    temps: list[tuple[Path, Path, manifest.FileEntry]] = []
    futures: list[concurrent.futures.Future] = []
    current, placed = unit[0][0], 0
    try:
        for name, entry in unit:
            target = _target(dest, name)
            places.parents(target)
            temps.append((places.temp(target), target, entry))

        def fetch(tmp: Path, entry: manifest.FileEntry) -> None:
            transfers.fetch(entry, tmp, hooks.on_bytes)  # verified into `tmp`: renamed once, below
            os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))

        if files is not None:
            for tmp, _, entry in temps:  # one by one: `finally` waits on each one submitted
                futures.append(files.submit(fetch, tmp, entry))
            for (current, _), future in zip(unit, futures):
                future.result()
        else:
            for (current, _), (tmp, _, entry) in zip(unit, temps):
                fetch(tmp, entry)
        for (current, _), (tmp, target, _) in zip(unit, temps):  # markers come last in a unit
            os.replace(tmp, target)
            placed += 1
        return None
    except OSError as err:
        if err.errno == errno.ENOSPC:
            return f"disk full while restoring into {dest}: {unit[0][0]!r} and the rest of its unit were not written; free space and retry"
        return f"{current!r}: {err}"
    except RunsyncError as err:
        return str(err)
    finally:
        concurrent.futures.wait(futures)  # a download still running would leave its temp file behind
        for tmp, _, _ in temps[placed:]:  # (the placed ones are renamed: no failing unlink per file)
            try:
                tmp.unlink()
            except FileNotFoundError:
                pass


def _target(dest: Path, name: str) -> Path:
    return Path(_path(dest, name))


def _path(dest: Path, name: str) -> str:
    """Where the stored `name` goes under `dest` (a str: the survey makes one a file)."""
    keys.check_stored_name(name)  # no "..", no absolute, no empty part: it stays under dest
    return os.path.join(dest, name)


def _make_parents(dest: Path, target: Path) -> None:
    """Create the target's directories; refuse any that is a symlink (it could lead outside)."""
    current = dest
    for part in target.relative_to(dest).parts[:-1]:
        current = current / part
        try:
            os.mkdir(current)
            continue
        except FileExistsError:
            pass  # there already, or made just now by a parallel download: check what it is
        if os.path.islink(current) or not os.path.isdir(current):
            raise RestoreError(f"refusing to restore {target.relative_to(dest)}: {current} is a symlink "
                               "or not a directory, and could lead outside the run dir")


def _local_state(target: str, entry: manifest.FileEntry, replace: bool, hash_equal: bool = True) -> str:
    """same | newer | missing-or-older. Content equal by size and mtime, else by its part CRCs or
    format 1's SHA-256 (`hashing.holds`), unless not `hash_equal`: then a same-size file of
    another mtime is taken as different."""
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    if not stat.S_ISREG(st.st_mode):
        return "missing"  # a link, a directory: replaced by the rename, never followed
    if hashing.seen(st) == (entry.size, entry.mtime_ns):
        return "same"
    if st.st_size == entry.size and hash_equal:
        try:
            if hashing.holds(target, entry):
                os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns))
                return "same"
        except (OSError, transfer.FileChanged):
            pass
    if not replace and st.st_mtime_ns > entry.mtime_ns:
        return "newer"
    return "missing"


def _check_space(dest: Path, need: int) -> None:
    free = shutil.disk_usage(dest).free
    if need > free:
        raise RestoreError(f"not enough space in {dest}: the restore needs {need} bytes, {free} are free; "
                           "free space, or restore fewer files (runsync.dev/restore globs)")


def log_report(report: RestoreReport, what: str) -> None:
    log.info("restore done", extra={"fields": {
        "run": what, "manifests": report.manifests, "files": report.files, "bytes": report.bytes,
        "seconds": round(report.seconds, 3), "up_to_date": report.files_up_to_date,
        "kept_newer": report.kept_newer, "incomplete_checkpoints": list(report.incomplete),
        "looked_back": report.looked_back}})


def describe_looked_back(report: RestoreReport) -> list[str]:
    """One line per pattern restored from an older manifest than the latest."""
    return [f"{pattern} is not in the latest manifest (deleted since); restored from "
            + ", ".join(f"manifest {seq} of replica {r}" for r, seq in sorted(found.items()))
            for pattern, found in sorted(report.looked_back.items())]
