"""The end of a run, in the order Kubernetes ends a pod: running → ending (preStop: what the
`end` rules held back goes now, newest first) → final (SIGTERM: a last rescan, then the last
commit before the grace period runs out). The loop does the uploads and the commit; this room
keeps the mode, the deadline and what `end` owes, and decides when waiting no longer pays.
Owned by the engine's loop; no clock (times are passed in)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from . import plan
from .logs import log
from .messages import shown
from .metrics import Metrics

DOUBT = 2.0
"""Uploads are given up before the deadline only when they need more than this many times the
time left: under load the measured rate swings by 2x (a 150 MB upload estimated at 16.0 s with
15.9 s left was cancelled, and its file lost, on a node at load 7-11). Cancelling one that would
have made it loses a file; one that will not is still cancelled at the deadline."""


class Ending:
    def __init__(self, grace: float, final_margin: float, metrics: Metrics):
        self.grace = grace
        self.final_margin = final_margin
        self.metrics = metrics
        self.mode = "running"
        """running → ending (preStop: `end` files go) → final (SIGTERM: last rescan, last commit)."""
        self.deadline: float | None = None
        self.owed: dict[str, float] = {}
        """What `end` owes: relpath (or `dir_key`) → when it was complete."""

    def begin(self, now: float) -> list[tuple[str, float]]:
        """preStop (or SIGTERM first): the deadline starts. Returns what `end` owes, to go now in
        `plan.final_order` (newest first); nothing when the end had already begun."""
        if self.deadline is None:
            self.deadline = now + self.grace
        if self.mode != "running":
            return []
        self.mode = "ending"
        owed = dict(self.owed)
        return [(key, owed[key]) for key in plan.final_order(owed)]

    def final(self, now: float) -> None:
        """SIGTERM: from now on each tick asks `due`."""
        self.mode = "final"
        log.info("final flush", extra={"fields": {"deadline_in_s": round(self.deadline - now, 2)}})

    def due(self, now: float, unsent: Collection[str], committing: bool, slowest: float,
            seconds_left: Callable[[], float | None], cancel: Callable[[], None]) -> bool:
        """The final mode, each tick: is it time for the last commit? At once when nothing is
        unsent (in flight or waiting) nor being committed. Else when the time kept free for the
        commit has come, or the uploads in flight (`seconds_left`, from the transfer meter)
        clearly cannot finish before it (DOUBT): then what is still busy is given up. Kept free: the margin, or
        twice the slowest commit seen (a busy node or store makes commits slow exactly when the
        grace period runs out)."""
        if not (unsent or committing):
            return True
        margin = max(self.final_margin, 2 * slowest)
        if now < self.deadline - margin:
            needs = seconds_left()
            if needs is None or needs <= DOUBT * (self.deadline - margin - now):
                return False
            log.warning("the uploads in flight cannot finish in the grace period; cancelling them now",
                        extra={"fields": {"needs_s": round(needs, 1), "left_s": round(self.deadline - margin - now, 1)}})
        self.give_up(unsent, cancel)
        return True

    def incomplete(self, dirs: Iterable[str], markers: Iterable[object]) -> None:
        """Checkpoint dirs that go at the end without their marker: named and counted (restore
        skips them unless asked for them by name)."""
        for ckpt_dir in dirs:
            self.metrics.incomplete_checkpoints.inc()
            log.warning("checkpoint dir without its marker: uploaded as incomplete", extra={"fields": {
                "dir": ckpt_dir, "markers": [str(m) for m in markers]}})

    def give_up(self, keys: Iterable[str], cancel: Callable[[], None]) -> None:
        """Out of time: name and count what will not be durable; cancel the transfers."""
        owed = sorted({shown(k) for k in keys})
        for name in owed:
            log.error("not uploaded before the deadline", extra={"fields": {"file": name}})
        self.metrics.unsynced.inc(len(owed))
        cancel()
