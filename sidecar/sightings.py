"""Files seen changing without a completion event: found by a rescan, or already in a directory
that appeared while it was being filled. Each is looked at again after `settle` seconds and
counts as complete once it has not changed for that long. A flush waits for them too.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from . import messages
from .flushes import Flushes

Stat = tuple[int, int]
"""(size, mtime_ns)"""


class Sightings:
    def __init__(self, root: str, settle: float, clock: Callable[[], float], flushes: Flushes):
        self.root = root
        self.settle = settle
        self.clock = clock
        self.flushes = flushes
        self._seen: dict[str, tuple[Stat, float]] = {}
        """relpath → (its stat when seen, when to look again)."""

    def __contains__(self, relpath: str) -> bool:
        return relpath in self._seen

    def add(self, relpath: str, stat: Stat | None = None) -> None:
        if stat is None:
            stat = self._stat(relpath)
            if stat is None:
                return
        if relpath not in self._seen:
            self.flushes.accept(messages.SEEN + relpath)
        self._seen[relpath] = (stat, self.clock() + self.settle)

    def drop(self, relpath: str) -> int | None:
        """Forget a sighting; returns the event number a flush may be waiting on, which the
        file's upload now stands for."""
        if self._seen.pop(relpath, None) is None:
            return None
        key = messages.SEEN + relpath
        since = self.flushes.pending.get(key)
        self.flushes.satisfy(key, self.flushes.gen)
        return since

    def settled(self, now: float) -> list[str]:
        """The files that have now been unchanged for `settle` seconds; gone ones are dropped."""
        done = []
        for relpath, (stat, due) in list(self._seen.items()):
            if due > now:
                continue
            current = self._stat(relpath)
            if current is None:
                self.drop(relpath)
            elif current == stat and now - current[1] / 1e9 >= self.settle:
                done.append(relpath)
            else:
                self._seen[relpath] = (current, now + self.settle)
        return done

    def _stat(self, relpath: str) -> Stat | None:
        try:
            st = os.lstat(os.path.join(self.root, relpath))
        except OSError:
            return None
        return st.st_size, st.st_mtime_ns
