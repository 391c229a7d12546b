"""The sidecar's engine: a loop that receives messages, asks `plan` what they mean, hands work
to the upload workers and the committer, and records what comes back.

    FileEvent ─▶ plan.unit_of / plan.step ─▶ Task (uploads.py) ─▶ worker (tasks.py) ─▶ Done ─▶ staged
    staged ─▶ committer (committer.py) ─▶ Committed ─▶ durable ─▶ flushes answered (flushes.py)

The loop's thread owns the engine's state (what is in flight, staged and durable), so it needs
no lock. The committer's thread owns the writer lease; workers get all they need in the Task and
return a Done; the API and the watcher only post messages. What each policy means, and in
which order the end goes, is `plan`'s; the books are `ledger`'s and `flushes`'; what is handed
out is `uploads`'; the mode and deadline of the end are `ending`'s; this file is the loop and
the hand-offs.
"""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Callable
from pathlib import Path

from . import config, durable, heap, keys, lease, manifest, plan, rescans, runmeta, services, statedir, status, tasks, transfer, unreadable, watch
from .committer import Committer
from .ending import Ending
from .errors import InputError
from .flushes import Flushes
from .ledger import Ledger
from .logs import log
from .messages import DIR, Committed, Done, Loaded, Request, dir_key
from .metrics import Metrics
from .rules import Rules
from .settings import Settings
from .sightings import Sightings
from .uploads import Uploads

Policy = config.Policy


class Engine:
    def __init__(self, run_dir: str | Path, layout: keys.Layout, s3, transfers: transfer.Transfers,
                 metrics: Metrics, settings: Settings = Settings(), annotations_file: str | None = None,
                 clock: Callable[[], float] = time.time, holder: str | None = None,
                 skipped: unreadable.Unreadable | None = None, base: config.RunConfig | None = None,
                 facts: runmeta.Facts | None = None):
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
        self.rules = Rules(annotations_file, self.state, base)
        self.flushes = Flushes()
        self.sightings = Sightings(self.root, settings.settle, clock, self.flushes)
        self.rescans = rescans.Rescans(self.root, self.flushes)
        self.index = durable.Index(self.state.path)
        # restore-init's word, taken (removed) now, before the pod's probes can pass and start
        # its other containers: a sidecar that restarts after them must not find it (_rescan).
        self.restore_init_word = self.state.take_checked()
        self.books = Ledger(self.index.manifest())  # until the store's latest is read (_loaded)
        backoff = transfer.Backoff(settings.retry_base, settings.retry_cap)
        self.worker = tasks.Worker(self.root, layout, transfers, settings.workers, self.post, self.skipped)
        self.uploads = Uploads(self.worker, tasks.Retries(backoff, recheck=max(settings.settle / 2, 0.5)),
                               self.flushes, self.books, self.rules, metrics, clock)
        self.transfers = transfers
        self.committer = Committer(s3, layout, transfers, self.state, metrics, self.post,
                                   holder, settings.grace + lease.DEFAULT_TTL, settings.commit_interval, backoff,
                                   meta=runmeta.Recorder(s3, layout, facts) if facts else None, index=self.index)

        self.loaded = False
        self.rules.mark(self.books.durable)
        self.end = Ending(settings.grace, settings.final_margin, metrics)
        """The mode (running → ending → final), the deadline, and what `end` owes."""
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

    @property
    def mode(self) -> str:
        return self.end.mode

    # ------------------------------------------------------------------ the loop

    def post(self, message) -> None:
        """Thread-safe: the watcher, workers, the committer, the API and signal handlers call this."""
        self.inbox.put(message)

    def loop(self) -> int:
        self._reload(first=True)
        self.committer.load()
        # The run dir is listed while the lease is taken and the latest commit read (a thread's
        # lstats); its files are compared with what is durable once that is known (_rescan_step).
        self._rescan(word=self.restore_init_word)
        self.restore_init_word = None
        while not self.finished:
            try:  # a rescan under way goes on at once when no message waits
                message = self.inbox.get(timeout=self.rescans.wait if self.loaded else 0.1)
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
        self.rescans.shutdown()
        self.committer.shutdown()
        return 0

    def _tick(self) -> None:
        self.last_tick = time.monotonic()
        now = self.clock()
        self.uploads.retry_due(now)
        if now - self.last_reload >= self.settings.reload:
            self._reload()
        if (self.mode == "running" and self.loaded and not self.rescans.busy
                and now - self.last_rescan >= self.settings.rescan):
            self._rescan()
        self._rescan_step(now)
        for relpath in self.sightings.settled(now):
            self._ready(relpath, now)
        for ckpt_dir, policy, when in self.sightings.quiet_dirs(now):
            self._dir_ready(ckpt_dir, policy, when, require_marker=False)
        if self.loaded and self.mode != "final":
            self.committer.due(now, self.books, bool(self.flushes.waiters),
                               lambda: self.flushes.answerable(self.books.staged_upto),
                               busy=self.mode != "running" or bool(
                                   self.uploads.inflight or self.uploads.waiting() or len(self.sightings)))
        elif self.loaded:
            self.committer.pace(now, busy=True)  # the final flush: a successor waits for it
        self.flushes.answer(now, self.loaded, self.books.seq, self.skipped.names)
        status.queue_gauges(self.metrics, len(self.uploads.inflight), self.uploads.inflight_bytes, self.uploads.waiting())
        if self.mode == "final":
            self._final_step(now)

    def _reload(self, first: bool = False) -> None:
        """Each `settings.reload` s: new annotations may name new checkpoint dirs and save more files."""
        self.last_reload = self.clock()
        if self.rules.reload(first):
            self.committer.markers = self.rules.cfg.complete_markers
            self.rules.mark(self.books.durable)
            if not first:
                self._rescan()

    # ------------------------------------------------------------------ file events

    def _file_event(self, ev: watch.FileEvent) -> None:
        if ev.ready:
            self._ready(ev.relpath, ev.when)
        else:
            self.sightings.add(ev.relpath)

    def _ready(self, relpath: str, when: float, forced: bool = False, found: int | None = None) -> None:
        """A complete file (`found`: by the rescan that is this flush event): plan says what it
        is part of."""
        if relpath == keys.STATE_DIR or relpath.startswith(keys.STATE_DIR + "/"):
            return
        since = self.sightings.drop(relpath)  # a flush waiting on the sighting waits on the upload
        since = min((event for event in (since, found) if event is not None), default=None)  # the older
        d, unit = plan.classify(self.rules.cfg, self.rules.extra, relpath, self.rules.checkpoint_dirs)
        if unit is plan.Unit.UNSTORABLE:
            log.warning("file cannot be stored", extra={"fields": {
                "file": relpath, "error": plan.unstorable(d.name)}})
        elif unit is plan.Unit.MARKER:
            self.rules.checkpoint_dirs.add(d.checkpoint_dir)
            self._dir_ready(d.checkpoint_dir, d.policy, when, since)
        elif unit is plan.Unit.QUIET_MEMBER:
            self.sightings.quiet_dir(d.checkpoint_dir, d.policy, when, since)
        elif unit is plan.Unit.FILE:
            self._offer(d.name, relpath, d.policy, when, since, forced=forced)

    def _dir_ready(self, ckpt_dir: str, policy: Policy, when: float, since: int | None = None,
                   require_marker: bool = True) -> None:
        self.sightings.forget_dir(ckpt_dir)
        self._offer(dir_key(ckpt_dir), ckpt_dir, policy, when, since, require_marker)

    def _offer(self, key: str, relpath: str, policy: Policy, when: float, since: int | None = None,
               require_marker: bool = True, forced: bool = False) -> None:
        """A complete file or checkpoint dir: plan says when it goes."""
        is_dir = key.startswith(DIR)
        owed_as = key if is_dir else relpath
        sent_once = not forced and not is_dir and (key in self.uploads or self.books.has(key))
        step = plan.step(policy, ending=self.mode != "running", sent_once=sent_once,
                         uploading=key in self.uploads, retrying=key in self.uploads.retries)
        if step is plan.Step.HOLD:
            self.end.owed[owed_as] = when
            return
        if step is plan.Step.SKIP:
            return
        self.end.owed.pop(owed_as, None)
        self.flushes.accept(key, since)
        if step is plan.Step.COALESCE:
            self.uploads.dirty[key] = (relpath, policy, when, require_marker)
        elif step is plan.Step.UPLOAD:
            self.uploads.start(key, relpath, policy, when, require_marker)

    def _gone(self, ev: watch.FileGone) -> None:
        """The trainer deleted a file (or a directory): the next manifest drops it."""
        for path in self.books.gone(ev.relpath, ev.is_dir):
            self.end.owed.pop(path, None)
            self.sightings.drop(path)
        if ev.is_dir:
            self.end.owed.pop(dir_key(ev.relpath), None)
            self.rules.checkpoint_dirs.discard(ev.relpath)

    def _overflow(self, _: watch.Overflow) -> None:
        log.warning("inotify queue overflowed; rescanning the run dir")
        self._rescan()

    def _rescan(self, ending: bool = False, word: statedir.Checked | None = None) -> None:
        """The safety net: files changed without an event (or before the sidecar started). In
        steps (rescans.py), but at the end: the final flush takes the whole run dir at once.

        `word`: restore-init's, at the pod's start (statedir.Checked). It ran just before this
        sidecar, which starts before any other container of the pod: the files it restored or
        found the same are as the commit in the index says, and a rescan would find them durable
        as they are and pass them over. So they are not looked at: beside 100,000 files, a third
        of the sidecar's start. Only while every file is stored under its own path (a base_path
        rule names it otherwise) and while the index holds that commit (not rebuilt since)."""
        self.last_rescan = self.clock()
        if not ending:
            if word is not None and self.index.holds(word.seq, word.epoch) and plan.stored_under_own_paths(
                    self.rules.cfg, self.rules.extra):
                rebuilds = self.index.rebuilds
                self.rescans.start(lambda: _checked_names(self.index, word),
                                   lambda: self.index.rebuilds == rebuilds)
            else:
                self.rescans.start()
            return
        self.rescans.stop()
        self._classify(watch.scan(self.root).files, self.clock(), ending=True)

    def _rescan_step(self, now: float) -> None:
        if self.rescans.busy and self.loaded and self.mode != "final":
            files = self.rescans.next()
            if files:
                self._classify(files, now, ending=False, since=self.rescans.since)
            if self.rescans.finished():
                heap.trim()  # the listing's pages (and at start the manifest read's) go back

    def _classify(self, files, now: float, ending: bool, since: int | None = None) -> None:
        """Files of a rescan, handed on as their events would be (`since`: the flush event the
        rescan stands for)."""
        durable = self.books.durable_stats([f.relpath for f in files])  # one read a step, not one a file
        uploading = {} if ending else self.uploads.looked()
        found = plan.rescan(self.rules.cfg, self.rules.extra, self.rules.checkpoint_dirs, files,
                            lambda relpath, name: (self.books.known.get(relpath), self.books.stat(name, durable)),
                            now, self.settings.settle, ending, uploading)
        self.books.known.update((f.relpath, (f.size, f.mtime_ns)) for f in found.known)
        for relpath, when in found.ready:
            self._ready(relpath, when, found=since)
        for f in found.watch:
            if f.relpath not in self.sightings:
                self.sightings.add(f.relpath, (f.size, f.mtime_ns), since)
        self.end.incomplete(found.incomplete, self.rules.cfg.complete_markers)
        for ckpt_dir, (policy, when) in found.dirs_at_end.items():  # a replica's part goes as it is
            self._dir_ready(ckpt_dir, policy, when, require_marker=False)

    # ------------------------------------------------------------------ work and results

    def _done(self, done: Done) -> None:
        task = done.task
        self.uploads.finished(done)  # counted and logged
        if done.outcome in ("uploaded", "unchanged"):
            if not self.books.finished((task.key, task.gen, task.ready_at), done.entries,
                                       unchanged=done.outcome == "unchanged"):
                self.flushes.satisfy(task.key, task.gen)  # nothing new to commit for it
        elif done.outcome == "changed":  # still being written: its close brings a new event
            self.uploads.changed(task)
        elif done.outcome == "failed":
            self.uploads.failed(task, done.error)
        else:  # gone, incomplete, unreadable
            self.flushes.satisfy(task.key, task.gen)
        self.uploads.next(task.key)  # a newer version that came meanwhile goes now

    # ------------------------------------------------------------------ manifests

    def _committed(self, c: Committed) -> None:
        now = self.clock()
        if self.committer.answered(c, now):
            self._apply_commit(c.manifest, c.names, c.removed, c.tokens, now)

    def _apply_commit(self, m: manifest.Manifest, names: dict[str, manifest.FileEntry], removed: set[str],
                      tokens: list[tuple[str, int, float]], now: float) -> None:
        self.books.committed(m, names, removed, tokens)
        self.flushes.committed(tokens)
        self.metrics.committed(now, [ready_at for _, _, ready_at in tokens])
        log.info("manifest committed", extra={"fields": {"seq": m.seq, "files": len(m.files), "final": m.final}})

    def _loaded(self, loaded: Loaded) -> None:
        if self.books.loaded(loaded.manifest):
            self.rules.mark(loaded.manifest)
        self.loaded = True
        self.worker.loaded(self.committer.epoch)  # the lease is held by now: our keys carry its epoch
        # The rescan begun at start (loop) now compares what is on disk with what is durable,
        # not re-hashed and re-checked against the store file by file.

    # ------------------------------------------------------------------ requests and the end

    def _request(self, r: Request) -> None:
        now = self.clock()
        if r.kind == "save":
            try:
                named = self.rules.add(r.payload, self.root, self.layout)
            except InputError as err:  # not a rule, or a name the store cannot hold
                r.reply.set_exception(err)
                return
            r.reply.set_result({"rules": self.rules.docs(), "names": sorted(name for _, name in named)})
            # No rescan: `named` is every file the new rule changes (a rescan would start each first).
            for relpath, _ in named:  # W&B forces what save() names: a `now` file sent before goes again
                self._ready(relpath, now, forced=True)
        elif r.kind == "flush":
            self.flushes.wait(r.payload["fence"], now + r.payload["timeout"], r.reply)
        elif r.kind == "status":
            r.reply.set_result(self.status())
        elif r.kind == "code":
            self.worker.call(services.answer, r.reply, lambda: services.store_code(
                self.s3, self.layout, self.state, r.payload))
        elif r.kind == "restore":
            self.worker.call(services.answer, r.reply, lambda: services.restore(
                self.s3, self.layout, self.root, self.rules.cfg.complete_markers, r.payload))
        elif r.kind in ("prestop", "terminate"):
            for key, when in self.end.begin(now):  # what `end` owes goes now, newest first
                if key.startswith(DIR):
                    self._dir_ready(key[len(DIR):], Policy.END, when)
                else:
                    self._ready(key, when)
            if r.kind == "prestop":
                r.reply and r.reply.set_result({"ending": True, "deadline": self.end.deadline})
            else:
                self.end.final(now)
                self._rescan(ending=True)
                r.reply and r.reply.set_result(True)

    def _final_step(self, now: float) -> None:
        """The final mode, each tick: the last commit, once `Ending.due` says it is time."""
        if not self.end.due(now, self.uploads.unsent(), self.committer.committing, self.committer.slowest,
                            lambda: self.transfers.meter.seconds_left(), self.transfers.cancel):
            return
        names, removed, tokens = self.books.snapshot()
        m = self.committer.final(self.books.durable, names, removed, self.loaded,
                                 timeout=max(1.0, self.end.deadline - self.clock()))
        if m is not None:
            self._apply_commit(m, names, removed, tokens, now)
        self.finished = True

    def status(self) -> dict:
        """What the SDK and `kubectl exec ... curl` see (see `status.report`)."""
        return status.report(self.layout, self.mode, self.books, self.uploads.inflight, self.flushes,
                             self.end.owed, self.rules.docs(), self.loaded, self.rescans.busy)


def _checked_names(index: durable.Index, word: statedir.Checked):
    """The names of the index's commit that `word` vouches for, in order."""
    kept, dirs = set(word.except_names), tuple(d.rstrip("/") + "/" for d in word.except_dirs)
    return (n for n in index.names() if n not in kept and not n.startswith(dirs))
