"""How long the uploads in flight still need: bytes left and the rate they go at.

The final flush asks this when the grace period is short: an upload that cannot finish before
the deadline is cancelled at once, so the final manifest (what did finish) is committed with
time to spare, instead of waiting for the deadline and racing the kubelet's SIGKILL with the
commit.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable

WINDOW = 5.0
"""Seconds of recent progress that make the rate."""
MIN_SPAN = 1.0
"""No estimate from less than this much progress: a transfer's first second is mostly set-up."""
MIN_BYTES = 16 * 1024 * 1024
"""Nor from fewer bytes: the CRT reports progress in bursts (whole parts, many in parallel), and
a guess from a trickle would cancel an upload that could have finished."""


class Meter:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._left: dict[object, int] = {}
        self._samples: collections.deque[tuple[float, int]] = collections.deque()

    def started(self, token: object, size: int) -> None:
        with self._lock:
            self._left[token] = size

    def sent(self, token: object, n: int) -> None:
        now = self._clock()
        with self._lock:
            if token in self._left:
                self._left[token] = max(0, self._left[token] - n)
            self._samples.append((now, n))
            self._trim(now)  # here too: a meter no one asks (`runsync sync`, a sidecar between
            # final flushes) would keep a sample of every file it ever sent

    def _trim(self, now: float) -> None:
        while self._samples and self._samples[0][0] < now - WINDOW:
            self._samples.popleft()

    def done(self, token: object) -> None:
        with self._lock:
            self._left.pop(token, None)

    def seconds_left(self) -> float | None:
        """Seconds the uploads in flight still need at the recent rate: 0 with none in flight,
        None when the recent progress cannot tell (too little of it, or none: a stalled store
        may come back, and only the deadline decides then)."""
        now = self._clock()
        with self._lock:
            self._trim(now)
            left = sum(self._left.values())
            if not left:
                return 0.0
            if not self._samples:
                return None
            span, moved = now - self._samples[0][0], sum(n for _, n in self._samples)
            if span < MIN_SPAN or moved < MIN_BYTES:
                return None
            return left / (moved / span)
