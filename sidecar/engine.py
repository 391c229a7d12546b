"""The sidecar's engine: file events in; uploads, manifest commits and flush answers out.

One thread (`loop`) owns all state. Workers only hash and upload, and the committer only
writes manifests; each posts its result back to the inbox as a message. So the state needs no
lock, and every decision about a file is made in one place, in order:

    FileEvent → decide (plan.decide) → Job or Group → worker → JobDone → staged → commit

- `live` files are uploaded on every complete version; a version that arrives while the last
  one uploads waits (`dirty`) and only the newest goes next: bursts coalesce.
- `now` files are uploaded once; `end` files and files no rule names are owed until the end.
- Files of a checkpoint directory wait for its marker; then the directory goes as one Group,
  marker last, and enters a manifest whole or not at all.
- Every accepted event gets a generation number; `flush` waits until every generation up to
  the watcher's fence is committed (or dropped as unchanged).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import json
import os
import queue
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path

from . import config, keys, lease, manifest, plan, transfer, unreadable, watch
from .errors import ConfigError, StoreError
from .logs import log
from .metrics import Metrics

Policy = config.Policy


@dataclasses.dataclass(frozen=True)
class Settings:
    """The sidecar's timing knobs (seconds)."""

    grace: float = 30.0
    """The pod's termination grace period: the final flush must end within it."""
    final_margin: float = 3.0
    """Kept free at the end of the grace period for the final manifest commit."""
    settle: float = 5.0
    """A file seen by a rescan (not by an event) counts as complete once it has been unchanged
    this long: events are the rule, the rescan only a safety net."""
    rescan: float = 300.0
    """Seconds between safety-net rescans of the whole run dir. Events are the rule (an inotify
    overflow rescans at once); a rescan of 100,000 files costs about 1.5 CPU-seconds."""
    commit_interval: float = 1.0
    """Durable files are batched into one manifest at most this often (unless a flush waits)."""
    reload: float = 2.0
    """How often the annotations file is checked for changes."""
    workers: int = 16
    """Files hashed and uploaded at once (each upload also runs parts in parallel); small files
    are decided by round trips, so many at once."""
    retry_base: float = 1.0
    retry_cap: float = 30.0


STATUS_LIST = 100
"""Names per list in `status()`; counts are always whole."""


# ------------------------------------------------------------------------------ messages

@dataclasses.dataclass
class Job:
    name: str
    relpath: str
    policy: Policy
    gen: int
    ready_at: float
    prev_sha: str | None
    attempt: int = 0


@dataclasses.dataclass
class Group:
    dir: str
    policy: Policy
    gen: int
    ready_at: float
    cfg: config.RunConfig
    extra: tuple[config.SaveRule, ...]
    prev: dict[str, manifest.FileEntry]
    attempt: int = 0
    require_marker: bool = True

    @property
    def token(self) -> str:
        return "\0dir:" + self.dir


@dataclasses.dataclass
class Done:
    """A worker's result for a Job or a Group."""

    work: Job | Group
    outcome: str
    """uploaded | unchanged | stored | gone | changed | failed | incomplete | unreadable"""
    entries: list[tuple[manifest.FileEntry, str, str]] = dataclasses.field(default_factory=list)
    """(entry, relpath, how): how is uploaded, stored or unchanged."""
    error: str = ""


@dataclasses.dataclass
class Committed:
    manifest: manifest.Manifest | None
    error: str
    names: dict[str, manifest.FileEntry]
    removed: set[str]
    tokens: list[tuple[str, int, float]]


@dataclasses.dataclass
class Loaded:
    manifest: manifest.Manifest | None
    error: str
    prior_writer: bool = True
    """Did any sidecar write this replica before (a manifest, or any file object)?"""


@dataclasses.dataclass
class Request:
    """From the API or a signal: `kind` is save, flush, status, prestop or terminate."""

    kind: str
    payload: dict
    reply: concurrent.futures.Future | None = None


@dataclasses.dataclass
class _Waiter:
    fence: int
    deadline: float
    reply: concurrent.futures.Future
    gen: int | None = None


class Engine:
    def __init__(
        self,
        run_dir: str | Path,
        layout: keys.Layout,
        s3,
        transfers: transfer.Transfers,
        metrics: Metrics,
        settings: Settings = Settings(),
        annotations_file: str | None = None,
        clock: Callable[[], float] = time.time,
        holder: str | None = None,
        skipped: unreadable.Unreadable | None = None,
    ):
        self.root = os.path.abspath(run_dir)
        self.skipped = skipped or unreadable.Unreadable(self.root, metrics)
        self.layout = layout
        self.s3 = s3
        self.transfers = transfers
        self.metrics = metrics
        self.settings = settings
        self.annotations_file = annotations_file
        self.clock = clock
        self.inbox: queue.Queue = queue.Queue()
        self.writer = f"sidecar@{socket.gethostname()}:{os.getpid()}"
        self.state_dir = Path(self.root) / watch.STATE_DIR
        self.state_dir.mkdir(parents=True, exist_ok=True)

        self.cfg = config.RunConfig()
        self._annotations_text: str | None = None
        self.extra_rules: tuple[config.SaveRule, ...] = self._load_extra_rules()
        self.durable: manifest.Manifest | None = self._load_cached_manifest()
        self.loaded = False
        self.holder = holder or socket.gethostname()
        self.held: lease.Held | None = None
        self.fenced = False
        self.last_heartbeat = 0.0
        self.gen = 0
        self.latest_gen: dict[str, int] = {}
        """Per stored name (or checkpoint dir, or seen file): the newest accepted event."""
        self.pending_since: dict[str, int] = {}
        """Per key: the oldest accepted event not yet committed; a flush waits on these."""
        self.retrying: set[str] = set()
        self.inflight: dict[str, Job] = {}
        self.dirty: dict[str, tuple[str, Policy, float]] = {}
        self.groups: dict[str, Group] = {}
        self.groups_dirty: dict[str, float] = {}
        self.quiet: dict[str, tuple[float, Policy, float]] = {}
        """Checkpoint dirs of a replica that sees no marker: (when quiet enough, policy, ready)."""
        self.owed: dict[str, float] = {}
        self.staged: dict[str, manifest.FileEntry] = {}
        self.staged_removed: set[str] = set()
        self.tokens: list[tuple[str, int, float]] = []
        self.retries: list[tuple[float, Job | Group]] = []
        self.known: dict[str, tuple[int, int]] = {}
        self.names: dict[str, str] = {}
        """relpath → stored name of what this sidecar uploaded (to map deletions)."""
        self.candidates: dict[str, tuple[tuple[int, int], float]] = {}
        """Files seen without a completion event: (size, mtime) when seen, when to look again."""
        self.checkpoint_dirs: set[str] = set()
        self.waiters: list[_Waiter] = []
        self.fences_seen: dict[int, int] = {}
        self.mode = "running"
        self.deadline: float | None = None
        self.committing = False
        self.last_commit = 0.0
        self.last_reload = 0.0
        self.last_rescan = 0.0
        self.finished = False
        self.stop_requested = False
        """Set by a signal handler: a plain flag, because a handler that took the inbox's lock
        could deadlock with the loop it interrupted (which may hold that lock in `get`)."""
        self.last_tick = time.monotonic()
        self.pool = concurrent.futures.ThreadPoolExecutor(settings.workers, thread_name_prefix="upload")
        self.started_ns = time.time_ns()  # files changed before this are ones a previous sidecar may have sent
        self.prior_writer = True  # until the load says no sidecar ever wrote this replica
        self.committer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="commit")
        if self.durable:
            self.checkpoint_dirs |= plan.marked_dirs(self.durable.files, self.cfg.complete_markers)

    # ------------------------------------------------------------------ the loop

    def post(self, message) -> None:
        """Thread-safe: the watcher, workers, the API and signal handlers call this."""
        self.inbox.put(message)

    def loop(self) -> int:
        self._reload_annotations(force=True)
        self._start_load()  # the first rescan waits for the durable manifest (see _loaded)
        while not self.finished:
            try:
                message = self.inbox.get(timeout=0.1)
            except queue.Empty:
                message = None
            while message is not None:
                self._handle(message)
                try:
                    message = self.inbox.get_nowait()
                except queue.Empty:
                    message = None
            if self.stop_requested and self.mode != "final":
                self._request(Request("terminate", {}))
            self._tick()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.committer.shutdown(wait=False)
        return 0

    def _handle(self, message) -> None:
        if isinstance(message, watch.FileEvent):
            if message.ready:
                self._ready(message.relpath, message.when)
            else:
                self._candidate(message.relpath)
        elif isinstance(message, watch.FileGone):
            self._gone(message.relpath, message.is_dir)
        elif isinstance(message, watch.Fence):
            self.fences_seen[message.n] = self.gen
        elif isinstance(message, watch.Overflow):
            log.warning("inotify queue overflowed; rescanning the run dir")
            self._rescan()
        elif isinstance(message, Done):
            self._done(message)
        elif isinstance(message, Committed):
            self._committed(message)
        elif isinstance(message, Loaded):
            self._loaded(message)
        elif isinstance(message, Request):
            self._request(message)

    def _tick(self) -> None:
        self.last_tick = time.monotonic()
        now = self.clock()
        due = [w for t, w in self.retries if t <= now]
        self.retries = [(t, w) for t, w in self.retries if t > now]
        for work in due:
            self._resubmit(work)
        if self.annotations_file and now - self.last_reload >= self.settings.reload:
            self._reload_annotations()
        if self.mode == "running" and self.loaded and now - self.last_rescan >= self.settings.rescan:
            self._rescan()
        self._check_candidates(now)
        for ckpt_dir, (due, policy, when) in list(self.quiet.items()):
            if due <= now:
                self._group_ready(ckpt_dir, policy, when, require_marker=False)
        self._maybe_commit(now)
        self._answer_waiters(now)
        self._update_queue_gauges()
        if self.mode == "final":
            self._final_step(now)

    # ------------------------------------------------------------------ file events

    def _ready(self, relpath: str, when: float, final: bool = False) -> None:
        if relpath.startswith(watch.STATE_DIR + "/") or relpath == watch.STATE_DIR:
            return
        since = self._drop_candidate(relpath)  # a flush waiting on the sighting waits on the upload
        d = plan.decide(self.cfg, self.extra_rules, relpath, self.checkpoint_dirs)
        if d.name is None:
            return
        try:
            keys.check_stored_name(d.name)
        except keys.RunPathError as err:
            log.warning("file cannot be stored", extra={"fields": {"file": relpath, "error": str(err)}})
            return
        if d.checkpoint_dir is not None:
            if d.is_marker:
                self.checkpoint_dirs.add(d.checkpoint_dir)
                self._group_ready(d.checkpoint_dir, d.policy, when, since)
            elif self._markerless(d.checkpoint_dir):
                # This replica may never see the marker (another rank writes it): its part
                # goes up whole once the directory has been quiet for `settle` seconds.
                token = "\0dir:" + d.checkpoint_dir
                if d.checkpoint_dir not in self.quiet:
                    self._accept(token, since)
                self.quiet[d.checkpoint_dir] = (self.clock() + self.settings.settle, d.policy, when)
            return  # a checkpoint directory's files wait for its marker
        if d.policy in (Policy.END,) and self.mode == "running":
            self.owed[relpath] = when
            return
        if d.policy is Policy.NOW and self._has(d.name):
            return
        self.owed.pop(relpath, None)
        self._accept(d.name, since)
        if d.name in self.inflight:
            self.dirty[d.name] = (relpath, d.policy, when)
            return
        if d.name in self.retrying:
            return  # the retry reads the file afresh
        self._submit(Job(d.name, relpath, d.policy, self.gen, when, self._prev_sha(d.name)))

    def _group_ready(self, ckpt_dir: str, policy: Policy, when: float, since: int | None = None,
                     require_marker: bool = True) -> None:
        self.quiet.pop(ckpt_dir, None)
        if policy is Policy.END and self.mode == "running":
            self.owed["\0dir:" + ckpt_dir] = when
            return
        self.owed.pop("\0dir:" + ckpt_dir, None)
        token = "\0dir:" + ckpt_dir
        self._accept(token, since)
        if ckpt_dir in self.groups:
            self.groups_dirty[ckpt_dir] = when
            return
        if token in self.retrying:
            return
        self._submit(Group(ckpt_dir, policy, self.gen, when, self.cfg, self.extra_rules,
                           self._all_files(), require_marker=require_marker))

    def _gone(self, relpath: str, is_dir: bool) -> None:
        """The trainer deleted a file (or a directory): the next manifest drops it."""
        prefix = relpath + "/"
        victims = [p for p in self.names if p == relpath or (is_dir and p.startswith(prefix))]
        if not victims and not is_dir:
            victims = [relpath]
        for path in victims:
            name = self.names.pop(path, path)
            self.known.pop(path, None)
            self.owed.pop(path, None)
            self._drop_candidate(path)
            if name in self.staged or (self.durable and name in self.durable.files):
                self.staged.pop(name, None)
                self.staged_removed.add(name)
        if is_dir:
            self.owed.pop("\0dir:" + relpath, None)
            self.checkpoint_dirs.discard(relpath)

    def _rescan(self, everything: bool = False) -> None:
        """The safety net: files changed without an event (or before the sidecar started)
        count once unchanged for `settle` seconds; at the end (`everything`) all do."""
        now = self.clock()
        self.last_rescan = now
        found = watch.scan(self.root)
        markerless: dict[str, tuple[Policy, float]] = {}
        # Newest first: when the grace period is short, the latest checkpoint is what matters.
        for f in sorted(found.files, key=lambda f: -f.mtime_ns) if everything else found.files:
            d = plan.decide(self.cfg, self.extra_rules, f.relpath, self.checkpoint_dirs)
            if d.name is None:
                continue
            stat = (f.size, f.mtime_ns)
            member = d.checkpoint_dir is not None and not d.is_marker
            if member and not self._markerless(d.checkpoint_dir) and not (
                    everything and plan.incomplete_at_end(d.checkpoint_dir, self.checkpoint_dirs)):
                continue  # goes with its marker
            if self.known.get(f.relpath) == stat or self._durable_stat(d.name) == stat:
                self.known[f.relpath] = stat
                continue
            if member and everything:
                markerless.setdefault(d.checkpoint_dir, (d.policy, f.mtime_ns / 1e9))
                continue
            if everything or now - f.mtime_ns / 1e9 >= self.settings.settle:
                self._ready(f.relpath, f.mtime_ns / 1e9)
            elif f.relpath not in self.candidates:
                self._candidate(f.relpath, stat)
        for ckpt_dir, (policy, when) in markerless.items():  # the end: a replica's part goes as it is
            if not self._markerless(ckpt_dir) and ckpt_dir not in plan.marked_dirs(
                    (f.relpath for f in found.files), self.cfg.complete_markers):
                self.metrics.incomplete_checkpoints.inc()
                log.warning("checkpoint dir without its marker: uploaded as incomplete", extra={"fields": {
                    "dir": ckpt_dir, "markers": [str(m) for m in self.cfg.complete_markers]}})
            self._group_ready(ckpt_dir, policy, when, require_marker=False)

    def _candidate(self, relpath: str, stat: tuple[int, int] | None = None) -> None:
        """A file that changed without an event: looked at again after `settle` seconds, and
        taken as complete once it has not changed for that long. A flush waits for it."""
        if stat is None:
            try:
                st = os.lstat(os.path.join(self.root, relpath))
            except OSError:
                return
            stat = (st.st_size, st.st_mtime_ns)
        if relpath not in self.candidates:
            self._accept("\0seen:" + relpath)
        self.candidates[relpath] = (stat, self.clock() + self.settings.settle)

    def _drop_candidate(self, relpath: str) -> int | None:
        """Forget a sighting; returns the event number a flush may be waiting on."""
        if self.candidates.pop(relpath, None) is None:
            return None
        since = self.pending_since.get("\0seen:" + relpath)
        self._satisfy("\0seen:" + relpath, self.gen)
        return since

    def _check_candidates(self, now: float) -> None:
        for relpath, (stat, due) in list(self.candidates.items()):
            if due > now:
                continue
            try:
                st = os.lstat(os.path.join(self.root, relpath))
            except OSError:
                self._drop_candidate(relpath)
                continue
            current = (st.st_size, st.st_mtime_ns)
            if current == stat and now - st.st_mtime_ns / 1e9 >= self.settings.settle:
                self._ready(relpath, now)
            else:
                self.candidates[relpath] = (current, now + self.settings.settle)

    # ------------------------------------------------------------------ work

    def _submit(self, work: Job | Group) -> None:
        if isinstance(work, Job):
            self.inflight[work.name] = work
            self.pool.submit(self._run, self._work_file, work)
        else:
            self.groups[work.dir] = work
            self.pool.submit(self._run, self._work_group, work)

    def _resubmit(self, work: Job | Group) -> None:
        key = work.name if isinstance(work, Job) else work.token
        self.retrying.discard(key)
        work.gen = self.latest_gen.get(key, work.gen)  # it reads the newest version anyway
        if isinstance(work, Job):
            if work.name in self.inflight:
                return
            work.prev_sha = self._prev_sha(work.name)
        elif work.dir in self.groups:
            return
        self._submit(work)

    def _run(self, fn, work) -> None:
        try:
            self.post(fn(work))
        except PermissionError as err:  # permanent: skipped and named, never retried
            self.skipped.report(err.filename or getattr(work, "relpath", None) or work.dir, False, err)
            self.post(Done(work, "unreadable", error=str(err)))
        except Exception as err:  # noqa: BLE001 - a bug must not stall the engine
            log.exception("worker failed", extra={"fields": {"work": repr(work)[:200]}})
            self.post(Done(work, "failed", error=f"{type(err).__name__}: {err}"))

    def _work_file(self, job: Job) -> Done:
        path = os.path.join(self.root, job.relpath)
        try:
            digest = transfer.hash_file(path, self.root)  # O_NOFOLLOW, in the run dir, else "gone"
        except FileNotFoundError:
            return Done(job, "gone")
        except transfer.FileChanged:
            return Done(job, "changed")
        entry = manifest.FileEntry(job.name, self.layout.file_key(job.name, digest.sha256), digest.size,
                                   digest.mtime_ns, digest.sha256, job.policy.value)
        if job.prev_sha == digest.sha256:
            return Done(job, "unchanged", [(entry, job.relpath, "unchanged")])
        try:
            if self._already_stored(entry):
                return Done(job, "stored", [(entry, job.relpath, "stored")])
            self.transfers.upload_one(transfer.Upload(path, entry.key, digest))
        except transfer.FileChanged:
            return Done(job, "changed")
        except FileNotFoundError:
            return Done(job, "gone")
        except (StoreError, concurrent.futures.CancelledError) as err:
            return Done(job, "failed", error=str(err) or type(err).__name__)
        return Done(job, "uploaded", [(entry, job.relpath, "uploaded")])

    def _work_group(self, group: Group) -> Done:
        """Upload a checkpoint directory: every file but the markers, then the markers."""
        top = os.path.join(self.root, group.dir)
        found = watch.scan(top).files
        members, markers = [], []
        for f in found:
            relpath = f"{group.dir}/{f.relpath}"
            d = plan.decide(group.cfg, group.extra, relpath, {group.dir})
            if d.name is None:
                continue
            (markers if d.is_marker else members).append((relpath, d.name))
        if not markers and (group.require_marker or not members):
            return Done(group, "incomplete")
        entries: list[tuple[manifest.FileEntry, str, str]] = []
        for batch in (members, markers):
            uploads = []
            for relpath, name in batch:
                path = os.path.join(self.root, relpath)
                try:
                    digest = transfer.hash_file(path, self.root)
                except FileNotFoundError:
                    return Done(group, "changed")
                except transfer.FileChanged:
                    return Done(group, "changed")
                entry = manifest.FileEntry(name, self.layout.file_key(name, digest.sha256), digest.size,
                                           digest.mtime_ns, digest.sha256, group.policy.value)
                prev = group.prev.get(name)
                if prev is not None and prev.sha256 == digest.sha256:
                    entries.append((dataclasses.replace(prev, mtime_ns=digest.mtime_ns), relpath, "unchanged"))
                    continue
                try:
                    if self._already_stored(entry):
                        entries.append((entry, relpath, "stored"))
                        continue
                except StoreError as err:
                    return Done(group, "failed", error=str(err))
                uploads.append((transfer.Upload(path, entry.key, digest), entry, relpath))
            by_key = {u.key: (entry, relpath) for u, entry, relpath in uploads}
            for up, err in self.transfers.upload([u for u, _, _ in uploads]):
                if isinstance(err, transfer.FileChanged):
                    return Done(group, "changed")
                if err is not None:
                    return Done(group, "failed", error=str(err) or type(err).__name__)
                entry, relpath = by_key[up.key]
                entries.append((entry, relpath, "uploaded"))
        return Done(group, "uploaded", entries)

    def _done(self, done: Done) -> None:
        work = done.work
        if isinstance(work, Job):
            self.inflight.pop(work.name, None)
            key = work.name
        else:
            self.groups.pop(work.dir, None)
            key = work.token
        if done.outcome in ("uploaded", "stored", "unchanged"):
            for entry, relpath, how in done.entries:
                self._account(entry, relpath, how)
                self.names[relpath] = entry.name
                self.known[relpath] = (entry.size, entry.mtime_ns)
                if how != "unchanged" or entry.name in self.staged:
                    self.staged[entry.name] = entry
                    self.staged_removed.discard(entry.name)
            if done.outcome == "unchanged":
                self._satisfy(key, work.gen)  # nothing new to commit for it
            else:
                self.tokens.append((key, work.gen, work.ready_at))
        elif done.outcome == "changed":
            # Still being written: its close brings a new event; retry soon in case none comes.
            self.retries.append((self.clock() + max(self.settings.settle / 2, 0.5), work))
        elif done.outcome == "failed":
            work.attempt += 1
            self.metrics.failures.labels(_kind(done.error)).inc()
            delay = min(self.settings.retry_cap, self.settings.retry_base * 2 ** min(work.attempt, 10))
            delay *= random.uniform(0.5, 1.0)  # jitter: replicas do not retry in lockstep
            log.warning("upload failed; will retry", extra={"fields": {
                "what": key.lstrip("\0"), "attempt": work.attempt, "retry_in_s": round(delay, 2),
                "error": done.error}})
            self.retries.append((self.clock() + delay, work))
            self.retrying.add(key)
        else:  # gone, incomplete, unreadable
            self._satisfy(key, work.gen)
        # The newest version that arrived meanwhile goes next.
        if isinstance(work, Job) and work.name in self.dirty and work.name not in self.inflight:
            relpath, policy, when = self.dirty.pop(work.name)
            self._submit(Job(work.name, relpath, policy, self.latest_gen.get(work.name, self.gen), when,
                             self._prev_sha(work.name)))
        if isinstance(work, Group) and work.dir in self.groups_dirty and work.dir not in self.groups:
            when = self.groups_dirty.pop(work.dir)
            self._submit(Group(work.dir, work.policy, self.latest_gen.get(work.token, self.gen), when,
                               self.cfg, self.extra_rules, self._all_files(),
                               require_marker=work.require_marker))

    def _account(self, entry: manifest.FileEntry, relpath: str, how: str) -> None:
        if how == "uploaded":
            self.metrics.uploaded_files.labels(entry.policy).inc()
            self.metrics.uploaded_bytes.labels(entry.policy).inc(entry.size)
            log.info("uploaded", extra={"fields": {"file": relpath, "name": entry.name,
                                                   "bytes": entry.size, "policy": entry.policy}})
        else:
            self.metrics.skipped_bytes.labels("unchanged" if how == "unchanged" else "already_stored").inc(entry.size)

    # ------------------------------------------------------------------ manifests

    def _maybe_commit(self, now: float) -> None:
        if self.committing or not self.loaded or self.mode == "final" or self.fenced:
            return
        if now - self.last_heartbeat >= lease.DEFAULT_TTL / 3 and self.held is not None:
            self.last_heartbeat = now
            self.committer.submit(self._heartbeat)
        if not (self.staged or self.staged_removed or self.tokens):
            return
        if now - self.last_commit < self.settings.commit_interval and not self.waiters:
            return
        self.committing = True
        names, removed, tokens = dict(self.staged), set(self.staged_removed), list(self.tokens)
        durable = self.durable
        self.committer.submit(self._commit_work, durable, names, removed, tokens, False)

    def _commit_work(self, durable, names, removed, tokens, final) -> None:
        try:
            result = self._commit(durable, names, removed, final)
            self.post(Committed(result, "", names, removed, tokens))
        except Exception as err:  # noqa: BLE001
            self.post(Committed(None, str(err) or type(err).__name__, names, removed, tokens))

    def _commit(self, durable, names, removed, final) -> manifest.Manifest:
        """Renew the lease (proof that we still hold it), then commit under its epoch."""
        try:
            self.held = lease.renew(self.s3, self.layout, self.held)
            m = manifest.commit_next(self.s3, self.layout, durable, names.values(), final=final,
                                     writer=self.writer, epoch=self.held.lease.epoch, removed=removed,
                                     markers=self.cfg.complete_markers)
        except lease.LeaseLost:
            self.fenced = True
            raise
        except StoreError:
            raise
        except Exception as err:  # noqa: BLE001 - botocore errors
            raise transfer.describe(err, self.layout.store, self.s3) from None
        self._cache_manifest(m)
        return m

    def _heartbeat(self) -> None:
        try:
            self.held = lease.renew(self.s3, self.layout, self.held)
        except lease.LeaseLost as err:
            self.fenced = True
            self.post(Committed(None, str(err), {}, set(), []))
        except Exception as err:  # noqa: BLE001 - an outage: the next renewal tries again
            log.warning("lease heartbeat failed", extra={"fields": {"error": str(err)}})

    def _committed(self, c: Committed) -> None:
        self.committing = False
        now = self.clock()
        self.last_commit = now
        if c.manifest is None:
            self.metrics.failures.labels("fenced" if self.fenced else _kind(c.error)).inc()
            if self.fenced:
                log.error("fenced off: another pod holds this replica's lease; no more commits",
                          extra={"fields": {"error": c.error}})
                return
            log.warning("manifest commit failed; will retry", extra={"fields": {"error": c.error}})
            self.last_commit = now + min(self.settings.retry_cap, 2.0)  # back off
            return
        self._apply_commit(c.manifest, c.names, c.removed, c.tokens, now)

    def _apply_commit(self, m, names, removed, tokens, now) -> None:
        self.durable = m
        for name, entry in names.items():
            if self.staged.get(name) is entry:
                del self.staged[name]
        self.staged_removed -= removed
        committed_tokens = set(map(tuple, tokens))
        self.tokens = [t for t in self.tokens if tuple(t) not in committed_tokens]
        for key, gen, ready_at in tokens:
            self._satisfy(key, gen)
            self.metrics.latency.observe(max(0.0, now - ready_at))
        self.metrics.manifests.inc()
        self.metrics.last_sync.set(now)
        log.info("manifest committed", extra={"fields": {"seq": m.seq, "files": len(m.files),
                                                         "final": m.final}})

    def _start_load(self) -> None:
        def load():
            delay = 1.0
            while not self.finished:
                try:
                    self.held = lease.acquire(
                        self.s3, self.layout, self.holder, wait=self.settings.grace + lease.DEFAULT_TTL,
                        max_seq=lambda: manifest.max_seq(self.s3, self.layout),
                        on_wait=lambda l: log.info("waiting for the previous writer to finish", extra={
                            "fields": {"holder": l.holder, "epoch": l.epoch}}))
                    latest = manifest.latest(self.s3, self.layout)
                    prior = latest is not None or self.transfers.any_stored(self.layout.replica_prefix + "files/")
                    self.post(Loaded(latest, "", prior))
                    return
                except Exception as err:  # noqa: BLE001
                    msg = str(transfer.describe(err, self.layout.store, self.s3)) \
                        if not isinstance(err, StoreError) else str(err)
                    self.metrics.failures.labels(_kind(msg)).inc()
                    log.warning("cannot read the latest manifest yet; retrying",
                                extra={"fields": {"error": msg, "retry_in_s": delay}})
                    time.sleep(delay)
                    delay = min(delay * 2, self.settings.retry_cap)
        self.committer.submit(load)

    def _loaded(self, loaded: Loaded) -> None:
        remote = loaded.manifest
        if remote is not None and (self.durable is None or remote.seq >= self.durable.seq):
            self.durable = remote
            self.checkpoint_dirs |= plan.marked_dirs(remote.files, self.cfg.complete_markers)
        elif self.durable is not None and remote is None:
            self.durable = None  # a cached manifest of another store or run: not ours
        first = not self.loaded
        self.loaded = True
        self.prior_writer = loaded.prior_writer
        if first:
            # What is on disk before start is compared with what is durable, not re-hashed
            # and re-checked against the store file by file.
            self._rescan()

    # ------------------------------------------------------------------ requests

    def _request(self, r: Request) -> None:
        if r.kind == "save":
            self._api_save(r)
        elif r.kind == "flush":
            self.waiters.append(_Waiter(r.payload["fence"], self.clock() + r.payload["timeout"], r.reply))
        elif r.kind == "status":
            r.reply.set_result(self.status())
        elif r.kind == "prestop":
            self._begin_end(self.clock())
            r.reply and r.reply.set_result({"ending": True, "deadline": self.deadline})
        elif r.kind == "code":
            self.committer.submit(self._serve_code, r)
        elif r.kind == "restore":
            self.pool.submit(self._serve_restore, r)
        elif r.kind == "terminate":
            self._begin_end(self.clock())
            self.mode = "final"
            log.info("final flush", extra={"fields": {"deadline_in_s": round(self.deadline - self.clock(), 2)}})
            self._rescan(everything=True)
            r.reply and r.reply.set_result(True)

    def _serve_code(self, r: Request) -> None:
        """Store the run's code state (the SDK captured it; the trainer holds no credentials)."""
        try:
            info = json.dumps(r.payload["git"], indent=1).encode()
            for name, body in (("git.json", info), ("diff.patch", str(r.payload.get("diff", "")).encode())):
                self.s3.put_object(Bucket=self.layout.store.bucket, Key=self.layout.code_key(name), Body=body)
            r.reply.set_result({"stored": True})
        except Exception as err:  # noqa: BLE001
            r.reply.set_exception(transfer.describe(err, self.layout.store, self.s3))

    def _serve_restore(self, r: Request) -> None:
        """One file (or directory) of this run, or of another run of the namespace, into the run dir."""
        from . import globs, restorer

        try:
            p = r.payload
            run = self.layout.run
            if p.get("run_path"):
                project, _, name = str(p["run_path"]).rpartition("/")
                run = keys.RunPath.parse(f"{run.namespace}/{project}/{name}")
            pattern = globs.Glob(str(p["name"]))
            report = restorer.restore(self.s3, self.layout.store, run, self.root, replica=self.layout.replica,
                                     patterns=(pattern,), markers=self.cfg.complete_markers,
                                     replace=bool(p.get("replace")))
            found = report.written + report.up_to_date + report.kept_newer
            r.reply.set_result({"run": str(run), "files": found,
                                "paths": [os.path.join(self.root, n) for n in found],
                                "looked_back": restorer.describe_looked_back(report)})
        except Exception as err:  # noqa: BLE001 - the caller gets the message
            r.reply.set_exception(err)

    def _api_save(self, r: Request) -> None:
        p = r.payload
        try:
            item = {"glob": p.get("glob"), "policy": p.get("policy") or "live"}
            if p.get("base_path"):
                item["base_path"] = p["base_path"]
            (rule,) = config.parse_save("- " + json.dumps(item), "save")  # JSON is YAML
        except ConfigError as err:
            r.reply.set_exception(err)
            return
        if rule not in self.extra_rules:
            self.extra_rules += (rule,)
            self._store_extra_rules()
        r.reply.set_result({"rules": [_rule_doc(x) for x in self.cfg.save + self.extra_rules]})
        self._rescan()

    def _begin_end(self, now: float) -> None:
        """preStop (or SIGTERM first): what `end` owes goes now; the deadline starts."""
        if self.deadline is None:
            self.deadline = now + self.settings.grace
        if self.mode == "running":
            self.mode = "ending"
            for relpath, when in sorted(self.owed.items(), key=lambda kv: -kv[1]):  # newest first
                if relpath.startswith("\0dir:"):
                    self._group_ready(relpath[5:], Policy.END, when)
                else:
                    self._ready(relpath, when)

    def _final_step(self, now: float) -> None:
        busy = self.inflight or self.groups or self.committing or self.dirty or self.groups_dirty or \
            self.retries
        out_of_time = now >= self.deadline - self.settings.final_margin
        if busy and not out_of_time:
            return
        if out_of_time and busy:
            owed = sorted(set(self.inflight) | set(self.dirty) | {w.name if isinstance(w, Job) else w.dir
                                                                    for _, w in self.retries}
                          | {d + "/" for d in self.groups} | {d + "/" for d in self.groups_dirty})
            for name in owed:
                log.error("not uploaded before the deadline", extra={"fields": {"file": name}})
            self.metrics.unsynced.inc(len(owed))
            self.transfers.cancel()
        names, removed = dict(self.staged), set(self.staged_removed)
        try:
            if self.fenced:
                log.error("fenced off: the final manifest is not committed (another pod holds the lease)",
                          extra={"fields": {"files_not_committed": len(names)}})
            elif self.loaded and self.held is not None:
                # Through the committer: it serializes with a heartbeat that may be running.
                left = max(1.0, self.deadline - self.clock())
                m = self.committer.submit(self._commit, self.durable, names, removed, True).result(timeout=left)
                self._apply_commit(m, names, removed, list(self.tokens), now)
                self.held = lease.renew(self.s3, self.layout, self.held, state="released")
            else:
                log.error("the store could not be read since start-up; nothing committed",
                          extra={"fields": {"files_not_committed": len(names)}})
        except (StoreError, concurrent.futures.TimeoutError) as err:
            self.metrics.failures.labels(_kind(str(err))).inc()
            log.error("final manifest not committed", extra={"fields": {"error": str(err),
                                                                         "files_lost": len(names)}})
        self.finished = True

    def _answer_waiters(self, now: float) -> None:
        still = []
        for w in self.waiters:
            if w.gen is None and w.fence in self.fences_seen:
                w.gen = self.fences_seen[w.fence]
            if w.gen is not None and self.loaded and not any(g <= w.gen for g in self.pending_since.values()):
                w.reply.set_result({"durable": True, "manifest": self.durable.seq if self.durable else None,
                                    **({"unreadable": names} if (names := self.skipped.names()) else {})})
            elif now >= w.deadline:
                pending = sorted(k.lstrip("\0") for k, g in self.pending_since.items()
                                 if w.gen is None or g <= w.gen)
                w.reply.set_result({"durable": False, "pending": pending})
            else:
                still.append(w)
        self.waiters = still

    def status(self) -> dict:
        """What the SDK and `kubectl exec ... curl` see. Lists stop at `STATUS_LIST` names (with
        the full count beside them): a run dir of 100,000 new files must not make a reply of
        megabytes, nor hold the engine's thread while it is built."""
        def first(keys) -> list[str]:
            return sorted(k.lstrip("\0") for k in itertools.islice(keys, STATUS_LIST))

        return {
            "run": str(self.layout.run), "replica": self.layout.replica, "mode": self.mode,
            "manifest": self.durable.seq if self.durable else None,
            "durable_files": len(self.durable.files) if self.durable else 0,
            "uploading": first(self.inflight), "uploading_count": len(self.inflight),
            "pending": first(self.pending_since), "pending_count": len(self.pending_since),
            "owed_at_end": first(self.owed), "owed_at_end_count": len(self.owed),
            "rules": [_rule_doc(x) for x in self.cfg.save + self.extra_rules],
            "loaded": self.loaded,
        }

    # ------------------------------------------------------------------ helpers

    def _accept(self, key: str, since: int | None = None) -> int:
        """A new event for `key` (a stored name, a checkpoint dir, a seen file); `since` is an
        older event it stands for (a sighting that turned out complete)."""
        self.gen += 1
        self.latest_gen[key] = self.gen
        oldest = min(g for g in (self.pending_since.get(key), since, self.gen) if g is not None)
        self.pending_since[key] = oldest
        return self.gen

    def _satisfy(self, key: str, gen: int) -> None:
        """Everything for `key` up to event `gen` is committed (or needs no upload)."""
        if self.latest_gen.get(key, 0) <= gen:
            self.latest_gen.pop(key, None)
            self.pending_since.pop(key, None)
        elif key in self.pending_since:
            self.pending_since[key] = max(self.pending_since[key], gen + 1)

    def _markerless(self, ckpt_dir: str) -> bool:
        """Does this replica upload its part of `ckpt_dir` without a marker? Only in a run whose
        replicas' parts make one checkpoint (`restore-replicas: all`), and only while it has
        never seen a marker of that shape itself."""
        return self.cfg.restore_replicas == "all" and not plan.expects_marker(ckpt_dir, self.checkpoint_dirs)

    def _already_stored(self, entry: manifest.FileEntry) -> bool:
        """Is this content already in the store (uploaded, not yet committed, before a restart)?
        Asked only where an answer can be yes and saves more than the question costs: for a
        file older than this process when a sidecar wrote this replica before (it may have sent
        the file without committing), or a large one."""
        maybe_sent_before = self.prior_writer and entry.mtime_ns < self.started_ns
        if not maybe_sent_before and not self.transfers.worth_asking(entry.size):
            return False
        return self.transfers.stored(entry.key, entry.size)

    def _has(self, name: str) -> bool:
        return name in self.staged or name in self.inflight or bool(self.durable and name in self.durable.files)

    def _prev_sha(self, name: str) -> str | None:
        entry = self.staged.get(name) or (self.durable.files.get(name) if self.durable else None)
        return entry.sha256 if entry else None

    def _durable_stat(self, name: str) -> tuple[int, int] | None:
        entry = self.staged.get(name) or (self.durable.files.get(name) if self.durable else None)
        return (entry.size, entry.mtime_ns) if entry else None

    def _all_files(self) -> dict[str, manifest.FileEntry]:
        files = dict(self.durable.files) if self.durable else {}
        files.update(self.staged)
        return files

    def _update_queue_gauges(self) -> None:
        self.metrics.queue_files.set(len(self.inflight) + len(self.dirty) + len(self.groups) + len(self.retries))
        total = 0
        for job in self.inflight.values():
            try:
                total += os.stat(os.path.join(self.root, job.relpath)).st_size
            except OSError:
                pass
        self.metrics.queue_bytes.set(total)

    def _reload_annotations(self, force: bool = False) -> None:
        self.last_reload = self.clock()
        if not self.annotations_file:
            return
        try:
            text = Path(self.annotations_file).read_text(encoding="utf-8", errors="surrogateescape")
        except OSError as err:
            if force:
                log.warning("annotations file unreadable", extra={"fields": {"path": self.annotations_file,
                                                                             "error": str(err)}})
            return
        if text == self._annotations_text:
            return
        self._annotations_text = text
        try:
            cfg = config.parse(config.parse_annotations_file(text))
        except ConfigError as err:
            log.error("bad annotations; keeping the last good configuration",
                      extra={"fields": {"error": str(err)}})
            return
        changed = cfg != self.cfg
        self.cfg = cfg
        if self.durable:
            self.checkpoint_dirs |= plan.marked_dirs(self.durable.files, cfg.complete_markers)
        if changed and not force:
            log.info("annotations reloaded", extra={"fields": {"rules": [_rule_doc(x) for x in cfg.save]}})
            self._rescan()

    def _load_extra_rules(self) -> tuple[config.SaveRule, ...]:
        path = self.state_dir / "rules.json"
        try:
            return config.parse_save(path.read_text(), "save") if path.exists() else ()
        except (OSError, ConfigError) as err:
            log.warning("ignoring saved API rules", extra={"fields": {"error": str(err)}})
            return ()

    def _store_extra_rules(self) -> None:
        text = "".join(f"- {json.dumps(_rule_doc(r))}\n" for r in self.extra_rules)
        _write_atomic(self.state_dir / "rules.json", text.encode())

    def _load_cached_manifest(self) -> manifest.Manifest | None:
        path = self.state_dir / "manifest.json"
        try:
            return manifest.Manifest.from_json(path.read_bytes(), self.layout, str(path))
        except (OSError, StoreError):
            return None

    def _cache_manifest(self, m: manifest.Manifest) -> None:
        try:
            _write_atomic(self.state_dir / "manifest.json", m.to_json())
        except OSError as err:  # a full disk must not stop uploads
            log.warning("cannot cache the manifest", extra={"fields": {"error": str(err)}})


def _rule_doc(rule: config.SaveRule) -> dict:
    doc = {"glob": rule.glob.pattern, "policy": rule.policy.value}
    if rule.base_path:
        doc["base_path"] = rule.base_path
    return doc


def _kind(error: str) -> str:
    """A short label for a failure, for the failures metric."""
    for marker, kind in (("cannot reach", "unreachable"), ("SignatureDoesNotMatch", "credentials"),
                         ("InvalidAccessKeyId", "credentials"), ("NoSuchBucket", "no_bucket"),
                         ("AccessDenied", "access_denied"), ("Cancelled", "cancelled"),
                         ("checksum", "checksum")):
        if marker in error:
            return kind
    return "s3_error" if "S3" in error else "other"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
