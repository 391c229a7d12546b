"""The sidecar's engine: a loop that receives messages, asks `plan` what they mean, hands work
to the upload workers and the committer, and records what comes back.

    FileEvent ─▶ plan.unit_of / plan.step ─▶ Task ─▶ worker (tasks.py) ─▶ Done ─▶ staged
    staged ─▶ committer (committer.py) ─▶ Committed ─▶ durable ─▶ flushes answered (flushes.py)

The loop's thread owns the engine's state (what is in flight, staged and durable), so it needs
no lock. The committer's thread owns the writer lease; workers get all they need in the Task and
return a Done; the API and the watcher only post messages. What each policy means, and in
which order the end goes, is `plan`'s; the books are `ledger`'s and `flushes`'; this file is
the loop and the hand-offs.
"""

from __future__ import annotations

import itertools
import os
import queue
import time
from collections.abc import Callable
from pathlib import Path

from . import config, keys, lease, manifest, plan, services, statedir, tasks, transfer, unreadable, watch
from .committer import Committer
from .errors import ConfigError
from .flushes import Flushes
from .ledger import Ledger
from .logs import log
from .messages import DIR, Committed, Done, Loaded, Request, Task, dir_key, shown
from .metrics import Metrics
from .rules import Rules
from .settings import Settings
from .sightings import Sightings

Policy = config.Policy


STATUS_LIST = 100
"""Names per list in `status()`; counts are always whole."""


class Engine:
    def __init__(self, run_dir: str | Path, layout: keys.Layout, s3, transfers: transfer.Transfers,
                 metrics: Metrics, settings: Settings = Settings(), annotations_file: str | None = None,
                 clock: Callable[[], float] = time.time, holder: str | None = None,
                 skipped: unreadable.Unreadable | None = None):
        self.root = os.path.abspath(run_dir)
        self.skipped = skipped or unreadable.Unreadable(self.root, metrics)
        """Files and dirs the sidecar may not read: named once, counted, never retried."""
        self.layout = layout
        self.s3 = s3
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.inbox: queue.Queue = queue.Queue()
        self.state = statedir.StateDir(self.root)
        self.rules = Rules(annotations_file, self.state)
        self.flushes = Flushes()
        self.sightings = Sightings(self.root, settings.settle, clock, self.flushes)
        backoff = transfer.Backoff(settings.retry_base, settings.retry_cap)
        self.retries = tasks.Retries(backoff, recheck=max(settings.settle / 2, 0.5))
        self.worker = tasks.Worker(self.root, layout, transfers, settings.workers, self.post, self.skipped)
        self.transfers = transfers
        self.committer = Committer(s3, layout, transfers, self.state, metrics, self.post,
                                   holder, settings.grace + lease.DEFAULT_TTL, settings.commit_interval, backoff)

        self.books = Ledger(self.state.load_manifest(layout))
        self.loaded = False
        self.inflight: dict[str, Task] = {}
        self.dirty: dict[str, tuple[str, Policy, float, bool]] = {}
        """A newer version of what is in flight: (relpath, policy, when, require_marker)."""
        self.owed: dict[str, float] = {}
        """What `end` owes: relpath (or `dir_key`) → when it was complete."""
        self.checkpoint_dirs: set[str] = set()
        self._mark_dirs(self.books.durable)
        self.mode = "running"
        """running → ending (preStop: `end` files go) → final (SIGTERM: last rescan, last commit)."""
        self.deadline: float | None = None
        self.last_reload = self.last_rescan = 0.0
        self.finished = False
        self.stop_requested = False
        """Set by a signal handler: a plain flag, because a handler that took the inbox's lock
        could deadlock with the loop it interrupted (which may hold that lock in `get`)."""
        self.last_tick = time.monotonic()
        self.handlers = {
            watch.FileEvent: self._file_event, watch.FileGone: self._gone,
            watch.Fence: lambda m: self.flushes.fenced(m.n), watch.Overflow: self._overflow,
            Done: self._done, Committed: self._committed, Loaded: self._loaded, Request: self._request,
        }

    # ------------------------------------------------------------------ the loop

    def post(self, message) -> None:
        """Thread-safe: the watcher, workers, the committer, the API and signal handlers call this."""
        self.inbox.put(message)

    def loop(self) -> int:
        self._reload(first=True)
        self.committer.load()  # the first rescan waits for the durable manifest (see _loaded)
        while not self.finished:
            try:
                message = self.inbox.get(timeout=0.1)
            except queue.Empty:
                message = None
            while message is not None:
                self.handlers[type(message)](message)
                try:
                    message = self.inbox.get_nowait()
                except queue.Empty:
                    message = None
            if self.stop_requested and self.mode != "final":
                self._request(Request("terminate", {}))
            self._tick()
        self.worker.shutdown()
        self.committer.shutdown()
        return 0

    def _tick(self) -> None:
        self.last_tick = time.monotonic()
        now = self.clock()
        for task in self.retries.due(now):
            self._resubmit(task)
        if now - self.last_reload >= self.settings.reload:
            self._reload()
        if self.mode == "running" and self.loaded and now - self.last_rescan >= self.settings.rescan:
            self._rescan()
        for relpath in self.sightings.settled(now):
            self._ready(relpath, now)
        for ckpt_dir, policy, when in self.sightings.quiet_dirs(now):
            self._dir_ready(ckpt_dir, policy, when, require_marker=False)
        if self.loaded and self.mode != "final":
            self.committer.due(now, self.books, bool(self.flushes.waiters))
        self.flushes.answer(now, self.loaded, self.books.seq, self.skipped.names)
        self._update_queue_gauges()
        if self.mode == "final":
            self._final_step(now)

    # ------------------------------------------------------------------ file events

    def _file_event(self, ev: watch.FileEvent) -> None:
        if ev.ready:
            self._ready(ev.relpath, ev.when)
        else:
            self.sightings.add(ev.relpath)

    def _ready(self, relpath: str, when: float) -> None:
        """A complete file: plan says what it is part of."""
        if relpath == keys.STATE_DIR or relpath.startswith(keys.STATE_DIR + "/"):
            return
        since = self.sightings.drop(relpath)  # a flush waiting on the sighting waits on the upload
        d, unit = plan.classify(self.rules.cfg, self.rules.extra, relpath, self.checkpoint_dirs)
        if unit is plan.Unit.UNSTORABLE:
            log.warning("file cannot be stored", extra={"fields": {
                "file": relpath, "error": plan.unstorable(d.name)}})
        elif unit is plan.Unit.MARKER:
            self.checkpoint_dirs.add(d.checkpoint_dir)
            self._dir_ready(d.checkpoint_dir, d.policy, when, since)
        elif unit is plan.Unit.QUIET_MEMBER:
            self.sightings.quiet_dir(d.checkpoint_dir, d.policy, when, since)
        elif unit is plan.Unit.FILE:
            self._offer(d.name, relpath, d.policy, when, since)

    def _dir_ready(self, ckpt_dir: str, policy: Policy, when: float, since: int | None = None,
                   require_marker: bool = True) -> None:
        self.sightings.forget_dir(ckpt_dir)
        self._offer(dir_key(ckpt_dir), ckpt_dir, policy, when, since, require_marker)

    def _offer(self, key: str, relpath: str, policy: Policy, when: float, since: int | None = None,
               require_marker: bool = True) -> None:
        """A complete file or checkpoint dir: plan says when it goes."""
        is_dir = key.startswith(DIR)
        owed_as = key if is_dir else relpath
        sent_once = not is_dir and (key in self.inflight or self.books.has(key))
        step = plan.step(policy, ending=self.mode != "running", sent_once=sent_once,
                         uploading=key in self.inflight, retrying=key in self.retries)
        if step is plan.Step.HOLD:
            self.owed[owed_as] = when
            return
        if step is plan.Step.SKIP:
            return
        self.owed.pop(owed_as, None)
        self.flushes.accept(key, since)
        if step is plan.Step.COALESCE:
            self.dirty[key] = (relpath, policy, when, require_marker)
        elif step is plan.Step.UPLOAD:
            self._submit(self._task(key, relpath, policy, when, require_marker))

    def _gone(self, ev: watch.FileGone) -> None:
        """The trainer deleted a file (or a directory): the next manifest drops it."""
        for path in self.books.gone(ev.relpath, ev.is_dir):
            self.owed.pop(path, None)
            self.sightings.drop(path)
        if ev.is_dir:
            self.owed.pop(dir_key(ev.relpath), None)
            self.checkpoint_dirs.discard(ev.relpath)

    def _overflow(self, _: watch.Overflow) -> None:
        log.warning("inotify queue overflowed; rescanning the run dir")
        self._rescan()

    def _rescan(self, ending: bool = False) -> None:
        """The safety net: files changed without an event (or before the sidecar started)."""
        now = self.last_rescan = self.clock()
        found = plan.rescan(self.rules.cfg, self.rules.extra, self.checkpoint_dirs, watch.scan(self.root).files,
                            lambda relpath, name: (self.books.known.get(relpath), self.books.stat(name)),
                            now, self.settings.settle, ending)
        for f in found.known:
            self.books.known[f.relpath] = (f.size, f.mtime_ns)
        for relpath, when in found.ready:
            self._ready(relpath, when)
        for f in found.watch:
            if f.relpath not in self.sightings:
                self.sightings.add(f.relpath, (f.size, f.mtime_ns))
        for ckpt_dir in found.incomplete:
            self.metrics.incomplete_checkpoints.inc()
            log.warning("checkpoint dir without its marker: uploaded as incomplete", extra={"fields": {
                "dir": ckpt_dir, "markers": [str(m) for m in self.rules.cfg.complete_markers]}})
        for ckpt_dir, (policy, when) in found.dirs_at_end.items():  # a replica's part goes as it is
            self._dir_ready(ckpt_dir, policy, when, require_marker=False)

    # ------------------------------------------------------------------ work and results

    def _submit(self, task: Task) -> None:
        self.inflight[task.key] = task
        self.worker.start(task)

    def _resubmit(self, task: Task) -> None:
        if task.key in self.inflight:
            return
        task.gen = self.flushes.newest(task.key)  # it reads the newest version anyway
        task.prev = self.books.prev(task.key)
        self._submit(task)

    def _done(self, done: Done) -> None:
        task = done.task
        self.inflight.pop(task.key, None)
        if done.outcome in ("uploaded", "unchanged"):
            waits = any(entry.name in self.books.staged for entry, _, _ in done.entries)
            for entry, relpath, how in done.entries:
                self._record(entry, relpath, how)
            if done.outcome == "unchanged" and not waits:
                self.flushes.satisfy(task.key, task.gen)  # nothing new to commit for it
            else:
                self.books.tokens.append((task.key, task.gen, task.ready_at))
        elif done.outcome == "changed":  # still being written: its close brings a new event
            self.retries.changed(task, self.clock())
        elif done.outcome == "failed":
            self.metrics.failures.labels(transfer.failure_kind(done.error)).inc()
            delay = self.retries.failed(task, self.clock())
            log.warning("upload failed; will retry", extra={"fields": {
                "what": shown(task.key), "attempt": task.attempt, "retry_in_s": round(delay, 2),
                "error": done.error}})
        else:  # gone, incomplete, unreadable
            self.flushes.satisfy(task.key, task.gen)
        if task.key in self.dirty and task.key not in self.inflight:  # the newest version goes next
            relpath, policy, when, require_marker = self.dirty.pop(task.key)
            self._submit(self._task(task.key, relpath, policy, when, require_marker))

    def _record(self, entry: manifest.FileEntry, relpath: str, how: str) -> None:
        self.metrics.record(how, entry.policy, entry.size)
        if how == "uploaded":
            log.info("uploaded", extra={"fields": {"file": relpath, "name": entry.name,
                                                   "bytes": entry.size, "policy": entry.policy}})
        self.books.record(entry, relpath, how)

    # ------------------------------------------------------------------ manifests

    def _committed(self, c: Committed) -> None:
        now = self.clock()
        if self.committer.answered(c, now):
            self._apply_commit(c.manifest, c.names, c.removed, c.tokens, now)

    def _apply_commit(self, m: manifest.Manifest, names: dict[str, manifest.FileEntry], removed: set[str],
                      tokens: list[tuple[str, int, float]], now: float) -> None:
        self.books.committed(m, names, removed, tokens)
        for key, gen, ready_at in tokens:
            self.flushes.satisfy(key, gen)
            self.metrics.latency.observe(max(0.0, now - ready_at))
        self.metrics.manifests.inc()
        self.metrics.last_sync.set(now)
        log.info("manifest committed", extra={"fields": {"seq": m.seq, "files": len(m.files), "final": m.final}})

    def _loaded(self, loaded: Loaded) -> None:
        remote, cached = loaded.manifest, self.books.durable
        if remote is not None and (cached is None or remote.seq >= cached.seq):
            self.books.durable = remote
            self._mark_dirs(remote)
        elif cached is not None and remote is None:
            self.books.durable = None  # a cached manifest of another store or run: not ours
        first = not self.loaded
        self.loaded = True
        self.worker.prior_writer = loaded.prior_writer
        if first:
            # What is on disk before start is compared with what is durable, not re-hashed
            # and re-checked against the store file by file.
            self._rescan()

    # ------------------------------------------------------------------ requests and the end

    def _request(self, r: Request) -> None:
        now = self.clock()
        if r.kind == "save":
            try:
                self.rules.add(r.payload)
            except ConfigError as err:
                r.reply.set_exception(err)
                return
            r.reply.set_result({"rules": self.rules.docs()})
            self._rescan()
        elif r.kind == "flush":
            self.flushes.wait(r.payload["fence"], now + r.payload["timeout"], r.reply)
        elif r.kind == "status":
            r.reply.set_result(self.status())
        elif r.kind == "code":
            self.worker.call(services.answer, r.reply, lambda: services.store_code(self.s3, self.layout, r.payload))
        elif r.kind == "restore":
            self.worker.call(services.answer, r.reply, lambda: services.restore(
                self.s3, self.layout, self.root, self.rules.cfg.complete_markers, r.payload))
        elif r.kind == "prestop":
            self._begin_end(now)
            r.reply and r.reply.set_result({"ending": True, "deadline": self.deadline})
        elif r.kind == "terminate":
            self._begin_end(now)
            self.mode = "final"
            log.info("final flush", extra={"fields": {"deadline_in_s": round(self.deadline - now, 2)}})
            self._rescan(ending=True)
            r.reply and r.reply.set_result(True)

    def _begin_end(self, now: float) -> None:
        """preStop (or SIGTERM first): what `end` owes goes now; the deadline starts."""
        if self.deadline is None:
            self.deadline = now + self.settings.grace
        if self.mode == "running":
            self.mode = "ending"
            owed = dict(self.owed)
            for key in plan.final_order(owed):
                if key.startswith(DIR):
                    self._dir_ready(key[len(DIR):], Policy.END, owed[key])
                else:
                    self._ready(key, owed[key])

    def _final_step(self, now: float) -> None:
        busy = self.inflight or self.committer.committing or self.dirty or self.retries
        # Kept free for the final commit: the margin, or twice the slowest commit seen (a busy
        # node or store makes commits slow exactly when the grace period runs out).
        margin = max(self.settings.final_margin, 2 * self.committer.slowest)
        out_of_time = now >= self.deadline - margin
        if busy and not out_of_time:
            needs = self.transfers.meter.seconds_left()
            if needs is None or now + needs < self.deadline - margin:
                return
            log.warning("the uploads in flight cannot finish in the grace period; cancelling them now",
                        extra={"fields": {"needs_s": round(needs, 1),
                                          "left_s": round(self.deadline - margin - now, 1)}})
        if busy:
            owed = sorted({shown(k) for k in (*self.inflight, *self.dirty, *self.retries.keys())})
            for name in owed:
                log.error("not uploaded before the deadline", extra={"fields": {"file": name}})
            self.metrics.unsynced.inc(len(owed))
            self.transfers.cancel()
        names, removed, tokens = self.books.snapshot()
        m = self.committer.final(self.books.durable, names, removed, self.loaded,
                                 timeout=max(1.0, self.deadline - self.clock()))
        if m is not None:
            self._apply_commit(m, names, removed, tokens, now)
        self.finished = True

    def status(self) -> dict:
        """What the SDK and `kubectl exec ... curl` see. Lists stop at `STATUS_LIST` names (with
        the full count beside them): a run dir of 100,000 new files must not make a reply of
        megabytes, nor hold the engine's thread while it is built."""
        def first(keys) -> list[str]:
            return sorted(shown(k) for k in itertools.islice(keys, STATUS_LIST))

        return {
            "run": str(self.layout.run), "replica": self.layout.replica, "mode": self.mode,
            "manifest": self.books.seq,
            "durable_files": len(self.books.durable.files) if self.books.durable else 0,
            "uploading": first(self.inflight), "uploading_count": len(self.inflight),
            "pending": self.flushes.first(STATUS_LIST), "pending_count": len(self.flushes.pending),
            "owed_at_end": first(self.owed), "owed_at_end_count": len(self.owed),
            "rules": self.rules.docs(), "loaded": self.loaded,
        }

    # ------------------------------------------------------------------ lookups

    def _task(self, key: str, relpath: str, policy: Policy, when: float, require_marker: bool) -> Task:
        return Task(key, relpath, policy, self.flushes.newest(key), when, self.books.prev(key),
                    self.rules.cfg, self.rules.extra, require_marker)

    def _mark_dirs(self, m: manifest.Manifest | None) -> None:
        """Directories with a durable marker are checkpoint directories (plan.decide)."""
        if m is not None:
            self.checkpoint_dirs |= plan.marked_dirs(m.files, self.rules.cfg.complete_markers)

    def _update_queue_gauges(self) -> None:
        self.metrics.queue_files.set(len(self.inflight) + len(self.dirty) + len(self.retries))
        total = 0
        for task in self.inflight.values():
            if not task.is_dir:
                try:
                    total += os.stat(os.path.join(self.root, task.relpath)).st_size
                except OSError:
                    pass
        self.metrics.queue_bytes.set(total)

    def _reload(self, first: bool = False) -> None:
        self.last_reload = self.clock()
        if self.rules.reload(first):
            self.committer.markers = self.rules.cfg.complete_markers
            self._mark_dirs(self.books.durable)
            if not first:
                self._rescan()

