"""The uploads the loop hands out, and what waits on them: tasks in flight on the workers, a
newer version of a key in flight (it goes once that one is done, so one key never uploads twice
at once), and tasks waiting to be tried again (`tasks.Retries`). Owned by the loop; it reads the
books, the flushes and the rules only to fill in a task."""

from __future__ import annotations

from collections.abc import Callable

from . import config, tasks, transfer, watch
from .flushes import Flushes
from .ledger import Ledger
from .logs import log
from .messages import Done, Task, shown
from .metrics import Metrics
from .rules import Rules

Newer = tuple[str, config.Policy, float, bool]
"""A newer version of what is in flight: (relpath, policy, when, require_marker)."""


class Uploads:
    def __init__(self, worker: tasks.Worker, retries: tasks.Retries, flushes: Flushes, books: Ledger,
                 rules: Rules, metrics: Metrics, clock: Callable[[], float]):
        self.worker = worker
        self.retries = retries
        self.flushes = flushes
        self.books = books
        self.rules = rules
        self.metrics = metrics
        self.clock = clock
        self.inflight: dict[str, Task] = {}
        self.inflight_bytes = 0
        """The files' in flight, as each was when handed out (a directory's are not counted)."""
        self.dirty: dict[str, Newer] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.inflight

    def start(self, key: str, relpath: str, policy: config.Policy, when: float, require_marker: bool) -> None:
        """`key` goes now, as of its newest event, compared with what is durable or staged under
        its names (so unchanged content is not sent again), by the rules of this moment."""
        self._start(Task(key, relpath, policy, self.flushes.newest(key), when, self.books.prev(key),
                         self.rules.cfg, self.rules.extra, require_marker))

    def retry_due(self, now: float) -> None:
        """Retries whose time has come go again, unless their key is in flight meanwhile."""
        for task in self.retries.due(now):
            if task.key in self.inflight:
                continue
            task.gen = self.flushes.newest(task.key)  # it reads the newest version anyway
            task.prev = self.books.prev(task.key)
            self._start(task)

    def finished(self, done: Done) -> None:
        """A task came back: no longer in flight; each file it sent is counted (and logged)."""
        task = self.inflight.pop(done.task.key, None)
        if task is not None:
            self.inflight_bytes -= _size(task)
        if done.outcome in ("uploaded", "unchanged"):
            for entry, relpath, how in done.entries:
                self.metrics.record(how, entry.policy, entry.size)
                if how == "uploaded":
                    log.info("uploaded", extra={"fields": {"file": relpath, "name": entry.name,
                                                           "bytes": entry.size, "policy": entry.policy}})

    def changed(self, task: Task) -> None:
        """Still being written: tried again after a while, in case no event of its close comes."""
        self.retries.changed(task, self.clock())

    def failed(self, task: Task, error: str) -> None:
        self.metrics.failures.labels(transfer.failure_kind(error)).inc()
        delay = self.retries.failed(task, self.clock())
        log.warning("upload failed; will retry", extra={"fields": {
            "what": shown(task.key), "attempt": task.attempt, "retry_in_s": round(delay, 2), "error": error}})

    def next(self, key: str) -> None:
        """The one in flight is done: the newest version of `key`, if one came meanwhile, goes."""
        if key in self.dirty and key not in self.inflight:
            self.start(key, *self.dirty.pop(key))

    def unsent(self) -> tuple[str, ...]:
        """Every key in flight or waiting (what the end names when it runs out of time)."""
        return (*self.inflight, *self.dirty, *self.retries.keys())

    def waiting(self) -> int:
        return len(self.dirty) + len(self.retries)

    def _start(self, task: Task) -> None:
        task.looked = None if task.is_dir else watch.file_stat(self.worker.root, task.relpath)
        self.inflight[task.key] = task
        self.inflight_bytes += _size(task)
        self.worker.start(task)

    def looked(self) -> dict[str, tuple[int, int]]:
        """relpath → (size, mtime_ns) of each file in flight, as it was when handed out."""
        return {t.relpath: t.looked for t in self.inflight.values() if t.looked is not None}


def _size(task: Task) -> int:
    return task.looked[0] if task.looked is not None else 0
