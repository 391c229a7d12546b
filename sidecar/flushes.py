"""Flush accounting: which accepted events are not yet durable, and who waits for them.

Every accepted event gets a number (a generation). A key (a stored name, a checkpoint dir, a
file seen changing) is pending from its oldest uncommitted event; `flush` asks the watcher for
a fence and waits until no key is pending at or before the fence's generation. Owned by the
engine's loop; no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import itertools
from collections.abc import Callable, Mapping

from . import messages


@dataclasses.dataclass
class Waiter:
    fence: int
    deadline: float
    reply: concurrent.futures.Future
    gen: int | None = None
    """The generation the fence stands for, once the watcher delivered it."""


class Flushes:
    def __init__(self) -> None:
        self.gen = 0
        self.latest: dict[str, int] = {}
        """Per key: the newest accepted event."""
        self.pending: dict[str, int] = {}
        """Per key: the oldest accepted event not yet committed (or a newer one no fence tells
        apart from it); a flush waits on these."""
        self._later: dict[str, list[int]] = {}
        """Per key with more than one: its other events not yet committed, oldest first, one
        between two fences (the newest stands for them: no flush tells them apart). A commit of
        a version clears the events up to it, and the key is pending from the next one: a log
        rewritten after a flush's fence is not waited for by that flush."""
        self.fences: dict[int, int] = {}
        """Fences delivered and not yet answered durable: fence → the event it stands for."""
        self._last_fence = 0
        """The event the newest delivered fence stands for."""
        self.waiters: list[Waiter] = []
        self._blocker: str | None = None
        """The key `answerable` found in the way last."""

    def accept(self, key: str, since: int | None = None) -> int:
        """A new event for `key`; `since` is an older event it stands for (a sighting that
        turned out complete)."""
        self.gen += 1
        self.latest[key] = self.gen
        if since is not None and since > self._last_fence:
            since = None  # no fence between it and this event: no flush tells them apart
        oldest = self.pending.get(key)
        if oldest is None and since is None:
            self.pending[key] = self.gen  # the common case: nothing of the key is waited for yet
            return self.gen
        later = self._later.get(key) or []
        if oldest is None:
            oldest = since
        elif since is not None and since < oldest:
            later.insert(0, oldest)
            oldest = since
        elif since is not None and since > oldest and since not in later:
            bisect.insort(later, since)
        self.pending[key] = oldest
        if later and later[-1] > self._last_fence:
            later[-1] = self.gen  # no fence between the two: no flush tells them apart
        else:
            later.append(self.gen)
        self._later[key] = later
        return self.gen

    def satisfy(self, key: str, gen: int) -> None:
        """Everything for `key` up to event `gen` is committed (or needs no upload)."""
        if self.latest.get(key, 0) <= gen:
            self.latest.pop(key, None)
            self.pending.pop(key, None)
            self._later.pop(key, None)
        elif self.pending.get(key, gen + 1) <= gen:
            later = self._later.pop(key, [])
            rest = later[bisect.bisect_right(later, gen):]  # never empty: `latest` is in it
            self.pending[key] = rest[0]
            if len(rest) > 1:
                self._later[key] = rest[1:]

    def _last_upto(self, key: str, fence: int) -> int:
        """The newest event of `key` not yet committed at or before `fence` (its pending one is)."""
        later = self._later.get(key)
        i = bisect.bisect_right(later, fence) if later else 0
        return later[i - 1] if i else self.pending[key]

    def committed(self, tokens: list[tuple[str, int, float]]) -> None:
        """A manifest made these (key, gen, ready_at) durable."""
        for key, gen, _ in tokens:
            self.satisfy(key, gen)

    def newest(self, key: str) -> int:
        """The newest event of `key` (a retry or the next version reads the file as it is now)."""
        return self.latest.get(key, self.gen)

    def fenced(self, n: int) -> None:
        """The watcher delivered fence `n`: every event before it has been accepted."""
        self.fences[n] = self._last_fence = self.gen

    def wait(self, fence: int, deadline: float, reply: concurrent.futures.Future) -> None:
        self.waiters.append(Waiter(fence, deadline, reply))

    def answer(self, now: float, loaded: bool, seq: int | None,
               unreadable: Callable[[], list[str]] = list) -> None:
        """Reply to every waiter whose events are durable (`seq` is the manifest holding them)
        or whose time is up (with what is still pending)."""
        still = []
        for w in self.waiters:
            if w.gen is None and w.fence in self.fences:
                w.gen = self.fences[w.fence]
            if w.gen is not None and loaded and not any(g <= w.gen for g in self.pending.values()):
                # Forgotten once answered (one entry a flush, for good, before); kept after a
                # timeout: the SDK's embedded mode waits on one fence again (embedded.py).
                self.fences.pop(w.fence, None)
                w.reply.set_result({"durable": True, "manifest": seq,
                                    **({"unreadable": names} if (names := unreadable()) else {})})
            elif now >= w.deadline:
                pending = sorted(messages.shown(k) for k, g in self.pending.items() if w.gen is None or g <= w.gen)
                w.reply.set_result({"durable": False, "pending": pending})
            else:
                still.append(w)
        self.waiters = still

    def answerable(self, staged_upto: Mapping[str, int]) -> bool:
        """Whether the next commit would answer a waiter: every key pending at or before its
        fence is staged far enough (`staged_upto`: key → the newest event its staged work stands
        for) that the commit clears it, as `committed` will: up to its last event at or before
        the fence (a log rewritten all the time has its next version on the way). Until then a
        commit (a manifest, a lease renewal, head.json, each a request) would answer no one:
        the interval's commits serve. The key that blocked last is asked first: in a burst it
        blocks turn after turn."""
        fences = [w.gen if w.gen is not None else self.fences.get(w.fence) for w in self.waiters]
        fence = min((f for f in fences if f is not None), default=None)
        if fence is None:
            return False

        def blocks(key: str) -> bool:
            return self.pending.get(key, fence + 1) <= fence and staged_upto.get(key, -1) < self._last_upto(key, fence)

        if self._blocker is not None and blocks(self._blocker):
            return False
        self._blocker = next((key for key in self.pending if blocks(key)), None)
        return self._blocker is None

    def first(self, limit: int) -> list[str]:
        """Up to `limit` pending keys, as people read them (for status)."""
        return sorted(messages.shown(k) for k in itertools.islice(self.pending, limit))
