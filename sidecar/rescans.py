"""The rescan of the run dir, in steps: the safety net for files changed without an event,
above all those changed while the sidecar was down (the rescan at start).

The run dir is listed at once (`watch.scan`: one lstat a file), then classified `STEP` files a
turn of the engine's loop, so beside 100,000 files the loop still answers the API and holds the
lease between steps. From its start until its last step the rescan is a pending flush key
(`messages.RESCAN`), and each file it finds is accepted as of that start: a flush made while it
runs waits for everything it finds. The final flush's rescan is not stepped (engine.py).
"""

from __future__ import annotations

from . import messages, watch
from .flushes import Flushes

STEP = 1_000
"""Files classified per turn of the loop: a few ms each, so a request waits at most that."""


class Rescans:
    def __init__(self, root: str, flushes: Flushes):
        self.root = root
        self.flushes = flushes
        self._files: tuple[watch.LocalFile, ...] = ()
        self._at = 0

    @property
    def busy(self) -> bool:
        return self._at < len(self._files)

    @property
    def left(self) -> int:
        """Files listed and not yet classified."""
        return len(self._files) - self._at

    @property
    def since(self) -> int | None:
        """The flush event the files found stand for (the rescan's start)."""
        return self.flushes.pending.get(messages.RESCAN)

    def start(self) -> None:
        """List the run dir again (a rescan under way starts over: what it has not classified
        yet may have changed); the flush key stays as of the first start."""
        self.flushes.accept(messages.RESCAN)
        self._files, self._at = watch.scan(self.root).files, 0
        if not self._files:
            self.stop()

    def next(self) -> tuple[watch.LocalFile, ...]:
        """The next step's files (empty when none is under way)."""
        step = self._files[self._at:self._at + STEP]
        self._at += len(step)
        return step

    def finished(self) -> None:
        """After the last step's files were handed on: the flush key goes."""
        if not self.busy:
            self.stop()

    def stop(self) -> None:
        """No rescan under way (done, or the final flush rescans it all at once)."""
        self._files, self._at = (), 0
        self.flushes.satisfy(messages.RESCAN, self.flushes.newest(messages.RESCAN))
