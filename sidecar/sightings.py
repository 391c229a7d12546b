"""What is complete once quiet. Files seen changing without a completion event (found by a
rescan, or already in a directory that appeared while it was being filled): each is looked at
again after `settle` seconds and counts as complete once it has not changed for that long. And
checkpoint directories whose marker another replica writes: this replica's part goes once no
file of it has closed for `settle` seconds. A flush waits for both.
"""

from __future__ import annotations

from collections.abc import Callable

from . import config, messages, watch
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
        self._quiet: dict[str, tuple[float, config.Policy, float]] = {}
        """checkpoint dir → (when it is quiet enough, policy, when its last file closed)."""

    def __contains__(self, relpath: str) -> bool:
        return relpath in self._seen

    def __len__(self) -> int:
        """Files and checkpoint dirs seen changing and not yet complete (the sidecar is busy)."""
        return len(self._seen) + len(self._quiet)

    def add(self, relpath: str, stat: Stat | None = None, since: int | None = None) -> None:
        """`since`: an older flush event the sighting stands for (the rescan that found it)."""
        if stat is None:
            stat = watch.file_stat(self.root, relpath)
            if stat is None:
                return
        if relpath not in self._seen:
            self.flushes.accept(messages.SEEN + relpath, since)
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
            current = watch.file_stat(self.root, relpath)
            if current is None:
                self.drop(relpath)
            elif current == stat and now - current[1] / 1e9 >= self.settle:
                done.append(relpath)
            else:
                self._seen[relpath] = (current, now + self.settle)
        return done

    def quiet_dir(self, ckpt_dir: str, policy: config.Policy, when: float, since: int | None) -> None:
        """A file of `ckpt_dir` closed: its quiet time starts again."""
        if ckpt_dir not in self._quiet:
            self.flushes.accept(messages.dir_key(ckpt_dir), since)
        self._quiet[ckpt_dir] = (self.clock() + self.settle, policy, when)

    def forget_dir(self, ckpt_dir: str) -> None:
        self._quiet.pop(ckpt_dir, None)

    def quiet_dirs(self, now: float) -> list[tuple[str, config.Policy, float]]:
        """The directories quiet for `settle` seconds: (dir, policy, when), forgotten here."""
        due = [(d, policy, when) for d, (at, policy, when) in self._quiet.items() if at <= now]
        for d, _, _ in due:
            del self._quiet[d]
        return due

