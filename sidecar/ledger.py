"""The books of what this replica has sent: the durable manifest, what is staged for the next
one (entries, and names to remove), the work each commit makes durable (tokens), and for each
local file the stored name and the (size, mtime) it was sent with. Owned by the engine's loop."""

from __future__ import annotations

import collections
from collections.abc import Mapping

from . import manifest, messages

Token = tuple[str, int, float]
"""(key, gen, ready_at) of a finished task whose files are staged."""


class Ledger:
    def __init__(self, durable: manifest.Manifest | None):
        self.durable = durable
        self.staged: dict[str, manifest.FileEntry] = {}
        self.removed: set[str] = set()
        self.tokens: list[Token] = []
        self.staged_upto: dict[str, int] = {}
        """key → the newest event its tokens stand for: what the next commit makes durable."""
        self.names: dict[str, str] = {}
        """relpath → stored name of what this sidecar sent (to map deletions)."""
        self.known: dict[str, tuple[int, int]] = {}
        """relpath → (size, mtime_ns) sent or found unchanged: a rescan skips it."""

    @property
    def seq(self) -> int | None:
        return self.durable.seq if self.durable else None

    def entry(self, name: str) -> manifest.FileEntry | None:
        return self.staged.get(name) or (self.durable.files.get(name) if self.durable else None)

    def has(self, name: str) -> bool:
        return self.entry(name) is not None

    def stat(self, name: str, durable: dict[str, tuple[int, int] | None] | None = None) -> tuple[int, int] | None:
        """`durable`: the durable stats of some names read at once (`durable_stats`)."""
        if durable is not None and name in durable and name not in self.staged:
            return durable[name]
        entry = self.entry(name)
        return (entry.size, entry.mtime_ns) if entry else None

    def durable_stats(self, names: list[str]) -> dict[str, tuple[int, int] | None]:
        """The durable (size, mtime_ns) of `names`, in one read when the durable files are an
        index (durable.Index); {} otherwise (`stat` then looks each up)."""
        files = self.durable.files if self.durable else None
        return files.stats(names) if hasattr(files, "stats") else {}

    def prev(self, key: str) -> Mapping[str, manifest.FileEntry]:
        """What a task compares its files with, so that unchanged content is not sent again."""
        if key.startswith(messages.DIR):  # a view, not a copy of the 100,000 durable entries
            return collections.ChainMap(dict(self.staged), self.durable.files if self.durable else {})
        entry = self.entry(key)
        return {key: entry} if entry else {}

    def record(self, entry: manifest.FileEntry, relpath: str, how: str) -> None:
        """A file of a finished task: staged, unless its content is already what is durable."""
        self.names[relpath] = entry.name
        self.known[relpath] = (entry.size, entry.mtime_ns)
        if how != "unchanged" or entry.name in self.staged:
            self.staged[entry.name] = entry
            self.removed.discard(entry.name)

    def finished(self, token: Token, entries: list[tuple[manifest.FileEntry, str, str]], unchanged: bool) -> bool:
        """The files of a finished task (`token`): True when the next commit makes it durable;
        False when its content is durable already and nothing staged waits for it."""
        waits = any(entry.name in self.staged for entry, _, _ in entries)
        for entry, relpath, how in entries:
            self.record(entry, relpath, how)
        if unchanged and not waits:
            return False
        self.tokens.append(token)
        self._stage(token)
        return True

    def _stage(self, token: Token) -> None:
        key, gen, _ = token
        self.staged_upto[key] = max(gen, self.staged_upto.get(key, gen))

    def gone(self, relpath: str, is_dir: bool) -> list[str]:
        """The trainer deleted a file (or a directory): the next manifest drops what was sent
        from there. Returns the relpaths concerned."""
        prefix = relpath + "/"
        victims = [p for p in self.names if p == relpath or (is_dir and p.startswith(prefix))]
        if not victims and not is_dir:
            victims = [relpath]
        for path in victims:
            name = self.names.pop(path, path)
            self.known.pop(path, None)
            if name in self.staged or (self.durable and name in self.durable.files):
                self.staged.pop(name, None)
                self.removed.add(name)
        return victims

    def loaded(self, remote: manifest.Manifest | None) -> bool:
        """The store's latest manifest, read at start: it is durable unless the cached one is
        newer; a cached one with none in the store is another store's or run's, not ours. True
        when `remote` became durable."""
        cached = self.durable
        if remote is not None and (cached is None or remote.seq >= cached.seq):
            self.durable = remote
            return True
        if cached is not None and remote is None:
            self.durable = None
        return False

    def to_commit(self) -> bool:
        return bool(self.staged or self.removed or self.tokens)

    def snapshot(self) -> tuple[dict[str, manifest.FileEntry], set[str], list[Token]]:
        return dict(self.staged), set(self.removed), list(self.tokens)

    def committed(self, m: manifest.Manifest, names: dict[str, manifest.FileEntry], removed: set[str],
                  tokens: list[Token]) -> None:
        """`m` holds `names` without `removed`: what was staged since stays staged."""
        self.durable = m
        for name, entry in names.items():
            if self.staged.get(name) is entry:
                del self.staged[name]
        self.removed -= removed
        done = set(tokens)
        self.tokens = [t for t in self.tokens if t not in done]
        self.staged_upto = {}
        for token in self.tokens:  # those that came while it was committed
            self._stage(token)
