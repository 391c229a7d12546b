"""The rescan of the run dir, in steps: the safety net for files changed without an event,
above all those changed while the sidecar was down (the rescan at start).

The run dir is listed on a thread of its own (`watch.scan`: one lstat a file), then classified
`STEP` files a turn of the engine's loop, so beside 100,000 files the loop still answers the API
and holds the lease meanwhile. From its start until its last step the rescan is a pending flush key
(`messages.RESCAN`), and each file it finds is accepted as of that start: a flush made while it
runs waits for everything it finds. The final flush's rescan is not stepped (engine.py).
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Callable, Iterator

from . import messages, watch
from .flushes import Flushes
from .logs import log

STEP = 1_000
"""Files classified per turn of the loop: a few ms each, so a request waits at most that."""


class Rescans:
    def __init__(self, root: str, flushes: Flushes):
        self.root = root
        self.flushes = flushes
        self._files: "watch.Listed | tuple[()]" = ()  # compact until each step makes its `LocalFile`s
        self._at = 0
        self._listing: concurrent.futures.Future | None = None
        self._lister = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rescan")
        self._began: float | None = None  # the sidecar's first listing
        self._logged = False  # that listing's line is written once
        self._still: Callable[[], bool] | None = None

    @property
    def busy(self) -> bool:
        return self._listing is not None or self._at < len(self._files)

    @property
    def wait(self) -> float:
        """How long the loop may wait for a message: not at all while listed files wait to be
        classified; else its usual tick (a loop polling the listing would take the GIL from it)."""
        return 0.0 if self._at < len(self._files) else 0.1

    @property
    def since(self) -> int | None:
        """The flush event the files found stand for (the rescan's start)."""
        return self.flushes.pending.get(messages.RESCAN)

    def start(self, checked: Callable[[], Iterator[str]] | None = None, still: Callable[[], bool] | None = None) -> None:
        """List the run dir again (a rescan under way starts over: what it has not classified
        yet may have changed); the flush key stays as of the first start.

        At the sidecar's start, `checked()` may name files not to look at (restore-init's word,
        engine.py): the listing passes them over if `still()` holds once it is done, else the
        run dir is listed again, whole."""
        self.flushes.accept(messages.RESCAN)
        self._files, self._at, self._still = (), 0, still
        if self._began is None:
            self._began = time.monotonic()
        # a listing under way: its answer is dropped
        self._listing = self._lister.submit(watch.scan, self.root, checked() if checked else None)

    def next(self) -> tuple[watch.LocalFile, ...]:
        """The next step's files (empty while the run dir is being listed, or none is under way)."""
        if self._listing is not None:
            if not self._listing.done():
                return ()
            listed, self._listing = self._listing.result(), None
            if listed.taken and not self._still():  # the commit it vouched for was replaced meanwhile
                self.start()
                return ()
            self._files, self._at = listed.files, 0
            if not self._logged:
                self._logged = True
                log.info("run dir listed at start", extra={"fields": {
                    "files": len(listed.files), "taken_as_restored": listed.taken,
                    "seconds": round(time.monotonic() - self._began, 3)}})
        step = self._files[self._at:self._at + STEP]
        self._at += len(step)
        return step

    def finished(self) -> bool:
        """After each step's files were handed on: True after the last (the flush key goes)."""
        if not self.busy:
            self.stop()
            return True
        return False

    def shutdown(self) -> None:
        self._lister.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """No rescan under way (done, or the final flush rescans it all at once)."""
        self._files, self._at, self._listing = (), 0, None
        self.flushes.satisfy(messages.RESCAN, self.flushes.newest(messages.RESCAN))
