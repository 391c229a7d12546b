"""The durable entries (the replica's latest commit) in a sqlite file, `.runsync/durable.sqlite`,
instead of one Python object per file (issue 17: an idle sidecar beside 100,000 files held
them all; issue 18: each commit copied them all).

`Index` is a read-only `Mapping` name → `FileEntry`, so the books and `settle` read it as they
read a manifest's dict; the committer alone writes it: `adopt` at start (the store's latest
commit: kept if the file records exactly that commit, else rebuilt from its streamed listing)
and `committed` after each commit (only its changes, in one transaction). The store stays the
truth: a torn, stale or foreign file is rebuilt, never trusted. When the state dir cannot hold
the file (read-only, full), the index lives in memory and says so (a JSON warning).

One index, one state: a `Manifest` whose files are this index reads what the index holds now,
so only the latest durable commit is held that way (the books, the committer's next commit).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

from . import globs
from .entries import FileEntry, Manifest, Overlay
from .logs import log

FILE = "durable.sqlite"
_BATCH = 1_000
"""Rows per executemany while rebuilding: a bounded list, not the whole listing."""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (id INTEGER PRIMARY KEY CHECK (id = 1), doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (name TEXT PRIMARY KEY, key TEXT NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, sha256 TEXT NOT NULL, policy TEXT NOT NULL, part_size INTEGER NOT NULL,
    crc TEXT NOT NULL) WITHOUT ROWID;
"""
_COLUMNS = "name, key, size, mtime_ns, sha256, policy, part_size, crc"
_INSERT = f"INSERT OR REPLACE INTO entries ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)"
_META = ("run", "replica", "seq", "created", "final", "writer", "epoch", "base", "chain", "chain_entries",
         "base_count", "summary", "requires")


class Index(Mapping[str, FileEntry]):
    def __init__(self, state_dir: str | os.PathLike | None):
        self.path = Path(state_dir) / FILE if state_dir is not None else None
        self._lock = threading.RLock()  # the loop reads, the committer writes
        self._db = self._open(self.path)
        self._meta = self._read_meta()
        self._count = self._db.execute("SELECT count(*) FROM entries").fetchone()[0] if self._meta else 0
        if self._meta is None:
            self._clear(self._db)
        self.rebuilds = 0
        """Times the whole index was replaced (not a commit's changes): another commit's since."""

    # ------------------------------------------------------------------ what is durable

    def manifest(self) -> Manifest | None:
        """The commit the index records, its `files` this index; None when it records none."""
        if self._meta is None:
            return None
        doc = self._meta
        # (an index written before a field existed lacks it: the dataclass's default)
        return Manifest(**{k: doc[k] for k in _META if k != "requires" and k in doc}, requires=tuple(doc["requires"]),
                        checkpoints={d: tuple(n) for d, n in doc["checkpoints"].items()}, files=self)

    def holds(self, seq: int, epoch: int) -> bool:
        """True when the index records commit `seq` of lease `epoch` (this replica's, by its file)."""
        doc = self._meta
        return doc is not None and (doc["seq"], doc["epoch"]) == (seq, epoch)

    def records(self, m: Manifest) -> bool:
        """True when the index holds exactly commit `m` (same replica, number, epoch, time)."""
        doc = self._meta
        return doc is not None and all(doc[k] == getattr(m, k) for k in ("run", "replica", "seq", "epoch", "created"))

    def adopt(self, opened) -> Manifest | None:
        """The store's latest commit (a `listing.Listing`, or None: the replica has none): kept
        when the index records it, else the index is rebuilt from its entries (streamed)."""
        if opened is None:
            self.rebuild(None, tuple)
            return None
        if self.records(opened.meta):
            log.info("durable index kept", extra={"fields": {"seq": opened.meta.seq, "files": len(self),
                                                             "path": str(self.path or ":memory:")}})
            return self.manifest()
        held = self._meta["seq"] if self._meta else None
        started = time.monotonic()
        self.rebuild(opened.meta, opened.entries)
        log.info("durable index rebuilt from the store", extra={"fields": {
            "seq": opened.meta.seq, "was_seq": held, "files": len(self), "seconds": round(time.monotonic() - started, 2),
            "path": str(self.path or ":memory:")}})
        return self.manifest()

    def rebuild(self, meta: Manifest | None, entries: Callable[[], Iterable[FileEntry]]) -> None:
        """Replace the whole index with `entries()`: written beside, then swapped in (readers
        never see half); in memory when the state dir cannot take it (`entries()` read again)."""
        try:
            self._rebuild(meta, entries())
        except (sqlite3.Error, OSError) as err:  # read-only or full: in memory from here on
            if not self._on_disk:
                raise
            self._fall_back(err)
            self._rebuild(meta, entries())

    def _rebuild(self, meta: Manifest | None, entries: Iterable[FileEntry]) -> None:
        fresh_path = self.path.with_name(FILE + ".new") if self._on_disk else None
        if fresh_path is not None:
            fresh_path.unlink(missing_ok=True)
        fresh = self._open(fresh_path)
        count = 0
        # Rebuilt from the store if torn: no journal, no fsync while filling.
        fresh.execute("PRAGMA journal_mode=OFF")
        fresh.execute("PRAGMA synchronous=OFF")
        self._clear(fresh)
        batch: list[tuple] = []
        for entry in entries:
            batch.append(_row(entry))
            if len(batch) >= _BATCH:
                fresh.executemany(_INSERT, batch)
                count += len(batch)
                batch.clear()
        fresh.executemany(_INSERT, batch)
        count += len(batch)
        if meta is not None:
            fresh.execute("INSERT INTO meta (id, doc) VALUES (1, ?)", (json.dumps(_meta_doc(meta)),))
        fresh.commit()
        with self._lock:
            if fresh_path is not None and self.path is not None:
                fresh.execute("PRAGMA synchronous=FULL")
                fresh.close()
                self._db.close()
                os.replace(fresh_path, self.path)
                self._db = sqlite3.connect(self.path, check_same_thread=False)
            else:
                self._db.close()
                self._db = fresh
            self._meta = _meta_doc(meta) if meta is not None else None
            self._count = count if meta is not None else 0
            self.rebuilds += 1

    def committed(self, m: Manifest) -> Manifest:
        """Commit `m` made durable: its changes written in one transaction; `m` with this index
        as its files. A commit not settled on this index (merged onto a re-read manifest after
        a conflict) rebuilds it whole."""
        files = m.files
        if not (isinstance(files, Overlay) and files.base is self and self._meta is not None
                and self._meta["seq"] == files.base_seq):
            self.rebuild(m, lambda: (files[n] for n in sorted(files)))
            return dataclasses.replace(m, files=self)
        doc = _meta_doc(m)
        with self._lock:
            try:
                with self._db:
                    if files.removed:
                        self._db.executemany("DELETE FROM entries WHERE name = ?", [(n,) for n in files.removed])
                    self._db.executemany(_INSERT,
                                         [_row(e) for e in files.changed.values()])
                    self._db.execute("INSERT OR REPLACE INTO meta (id, doc) VALUES (1, ?)", (json.dumps(doc),))
            except sqlite3.Error as err:  # the disk filled since: memory from here on
                self._fall_back(err)
                self.rebuild(m, lambda: (files[n] for n in sorted(files)))
                return dataclasses.replace(m, files=self)
            self._meta = doc
            self._count = len(files)
        return dataclasses.replace(m, files=self)

    # ------------------------------------------------------------------ the Mapping

    def __getitem__(self, name: str) -> FileEntry:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM entries WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise KeyError(name)
        return _entry(row)

    def __contains__(self, name) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM entries WHERE name = ?", (name,)).fetchone() is not None

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            names = [r[0] for r in self._db.execute("SELECT name FROM entries ORDER BY name")]
        return iter(names)

    def __len__(self) -> int:
        return self._count

    def values(self):
        return list(self.entries())

    def items(self):
        return [(e.name, e) for e in self.entries()]

    def entries(self, batch: int = _BATCH) -> Iterator[FileEntry]:
        """All entries in name order, `batch` rows read at a time."""
        return map(_entry, self._rows(_COLUMNS, batch))

    def names(self, batch: int = 10_000) -> Iterator[str]:
        """All names in order (sqlite's BINARY order of UTF-8 is Python's order of str), `batch`
        rows read at a time; safe beside the committer, which may replace the file meanwhile
        (`rebuilds` tells afterwards whether it did)."""
        return (r[0] for r in self._rows("name", batch))

    def _rows(self, columns: str, batch: int) -> Iterator[tuple]:
        """`columns` (the name first) of every entry in name order, `batch` rows a read, the
        lock held only for each read."""
        last = ""
        while True:
            with self._lock:
                rows = self._db.execute(f"SELECT {columns} FROM entries WHERE name > ? ORDER BY name LIMIT ?",
                                        (last, batch)).fetchall()
            yield from rows
            if len(rows) < batch:
                return
            last = rows[-1][0]

    def stats(self, names: list[str], batch: int = 500) -> dict[str, tuple[int, int] | None]:
        """name → (size, mtime_ns) for each of `names` (None: not durable), `batch` names a query:
        a rescan step's thousand files in two reads, not a thousand."""
        found: dict[str, tuple[int, int] | None] = dict.fromkeys(names)
        with self._lock:
            for i in range(0, len(names), batch):
                part = names[i:i + batch]
                found.update((r[0], (r[1], r[2])) for r in self._db.execute(
                    f"SELECT name, size, mtime_ns FROM entries WHERE name IN ({','.join('?' * len(part))})", part))
        return found

    def total_size(self) -> int:
        """The bytes of all entries (run.json's size after each commit)."""
        with self._lock:
            return self._db.execute("SELECT coalesce(sum(size), 0) FROM entries").fetchone()[0]

    def named_like(self, bases: tuple[globs.Glob, ...]) -> list[str]:
        """The names in a directory whose last segment may match one of `bases` (a superset, for
        `plan.marked_dirs` to decide): one query in C, where iterating 100,000 names from Python
        takes a GIL hand-over a row (slow beside the start-up rescan's listing thread)."""
        if not bases:
            return []
        if not all(type(g) is globs.Glob for g in bases):  # a Literal's `[` is no class: every name
            return list(self)
        loose = ["*/" + globs.sqlite_superset(g.pattern) for g in bases]
        with self._lock:
            return [r[0] for r in self._db.execute(
                f"SELECT name FROM entries WHERE {' OR '.join(['name GLOB ?'] * len(loose))}", loose)]

    def under(self, prefix: str) -> list[str]:
        """The names starting with `prefix` (a checkpoint dir's, `prefix` ending in "/")."""
        with self._lock:
            return [r[0] for r in self._db.execute(
                "SELECT name FROM entries WHERE name >= ? AND name < ? ORDER BY name", (prefix, prefix + "\U0010ffff"))]

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ the file

    @property
    def _on_disk(self) -> bool:
        return self.path is not None

    def _open(self, path: Path | None) -> sqlite3.Connection:
        for attempt in (1, 2) if path is not None else ():
            try:
                db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
                db.executescript(_SCHEMA)
                db.isolation_level = ""  # transactions opened by `with db`
                return db
            except sqlite3.DatabaseError as err:
                if attempt == 1 and path.is_file():  # not a database (damaged): rebuilt from the store
                    with contextlib.suppress(OSError):
                        path.unlink()
                        continue
                self._fall_back(err)
                break
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.executescript(_SCHEMA)
        return db

    def _fall_back(self, err: Exception) -> None:
        log.warning("the durable index is kept in memory", extra={"fields": {
            "path": str(self.path), "error": str(err),
            "fix": f"make {self.path.parent if self.path else 'its directory'} writable and give it space "
                   "(the sidecar's: the run dir's .runsync/; `sync`'s: the temp dir, TMPDIR); it works "
                   "meanwhile, but holds the index in memory"}})
        self.path = None

    def _read_meta(self) -> dict | None:
        try:
            row = self._db.execute("SELECT doc FROM meta WHERE id = 1").fetchone()
            return json.loads(row[0]) if row else None
        except (sqlite3.Error, ValueError):  # damaged: rebuilt from the store
            return None

    @staticmethod
    def _clear(db: sqlite3.Connection) -> None:
        try:
            with db:
                db.execute("DELETE FROM entries")
                db.execute("DELETE FROM meta")
        except sqlite3.Error:  # a damaged file: replaced by the first rebuild
            pass


def _meta_doc(m: Manifest) -> dict:
    doc = {k: getattr(m, k) for k in _META}
    doc["requires"] = list(m.requires)
    doc["checkpoints"] = {d: list(n) for d, n in m.checkpoints.items()}
    return doc


def _row(e: FileEntry) -> tuple:
    return (e.name, e.key, e.size, e.mtime_ns, e.sha256, e.policy, e.part_size, ",".join(e.crc64nvme))


def _entry(row) -> FileEntry:
    return FileEntry(row[0], row[1], row[2], row[3], row[4], row[5], row[6], tuple(row[7].split(",")) if row[7] else ())
