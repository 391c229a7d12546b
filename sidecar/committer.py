"""The committer: the replica's writer lease and its manifest commits, on one thread of its own.

It is the only owner of the lease (`held`) and of `fenced`: taking the lease and reading the
latest manifest at start (`load`), the heartbeat, each commit and the final one run here in
order, so a heartbeat never races a commit. The heartbeat follows the work (`pace`): `active`
every ttl/3 while busy, `idle` (long ttl) once quiet for IDLE_AFTER, and `active` again as soon
as work comes (queued ahead of its commit), so an idle replica costs two lease PUTs an hour.
Results go back to the engine's loop as messages (`Loaded`, `Committed`); the loop owns what is
staged and durable, and asks `due` each tick.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import threading
import time
from collections.abc import Callable

from . import durable, head, keys, lease, ledger, manifest, messages, runmeta, statedir, transfer
from .errors import StoreError
from .logs import log
from .metrics import Metrics

IDLE_AFTER = lease.DEFAULT_TTL / 3
"""Quiet this long before the lease says idle: a file saved every few seconds keeps the lease
active instead of an idle/active pair of PUTs per save. Not renewed meanwhile: the heartbeat
was at most ttl/3 old when quiet began, so it stays fresh until the idle mark."""


class Committer:
    def __init__(self, s3, layout: keys.Layout, transfers: transfer.Transfers, state: statedir.StateDir,
                 metrics: Metrics, post: Callable[[object], None], holder: str | None, lease_wait: float,
                 interval: float = 1.0, backoff: transfer.Backoff = transfer.Backoff(),
                 meta: runmeta.Recorder | None = None, index: durable.Index | None = None):
        self.s3 = s3
        self.index = index if index is not None else durable.Index(None)
        """The durable entries (durable.py): adopted at `load`, advanced by each commit, here only."""
        self.layout = layout
        self.transfers = transfers
        self.state = state
        self.metrics = metrics
        self.post = post
        self.holder = holder or socket.gethostname()  # in a pod, the pod's name
        self.lease_wait = lease_wait
        """Seconds to wait for a previous writer (its final flush) before taking the lease."""
        self.interval = interval
        """Staged files are batched into one manifest at most this often (unless a flush waits)."""
        self.backoff = backoff
        self.meta = meta
        """The replica's metadata (replica.json, run.json), written here: under the lease."""
        self.committing = False
        self._last_commit = 0.0
        self.writer = f"sidecar@{socket.gethostname()}:{os.getpid()}"
        self._held: lease.Held | None = None
        self._fenced = False
        self._last_heartbeat = 0.0
        self._idle = False
        """What the lease says (or will, once the queued renewal runs): idle or active."""
        self._quiet_since: float | None = None
        self._beat_failed = False
        """The last renewal met an outage: the next comes after ttl/3, even when idle."""
        self._stopped = threading.Event()
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._beside = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="commit-record")
        """A commit's record PUT, beside its lease renewal on `_thread` (`_commit`)."""
        self.slowest = 0.0
        """Seconds the slowest commit took (the final flush keeps time for one)."""
        self.markers: tuple = ()
        """The run's completion markers (set by the loop on each reload): a commit keeps a
        checkpoint dir whole while its marker is there (manifest.settle)."""

    @property
    def fenced(self) -> bool:
        """Another pod took the lease: this sidecar must never commit again."""
        return self._fenced

    @property
    def holding(self) -> bool:
        return self._held is not None

    @property
    def epoch(self) -> int:
        """The epoch of the lease held (0 before): the upload keys carry it."""
        return self._held.lease.epoch if self._held is not None else 0

    # ------------------------------------------------------------------ on the loop's thread

    def due(self, now: float, books: ledger.Ledger, flush_waiting: bool,
            answers_flush: Callable[[], bool] = lambda: False, busy: bool = True) -> None:
        """Renew the lease when due (`busy`: uploads in flight or waiting, files seen changing);
        start the next commit when there is something to commit and it is time: every
        `interval`, and at once when it may answer a waiting flush (`answers_flush()`, asked
        only then)."""
        if self.committing or self._fenced:
            return
        self.pace(now, busy or flush_waiting or bool(books.to_commit()))
        if self.meta is not None and self.meta.images_due(now):
            self._thread.submit(self.meta.refresh_images)
        if not books.to_commit() or (now - self._last_commit < self.interval
                                     and not (flush_waiting and answers_flush())):
            return
        self.committing = True
        self.commit(books.durable, *books.snapshot())

    def answered(self, c: messages.Committed, now: float) -> bool:
        """A commit's answer came back: True when it committed (the loop applies it)."""
        self.committing = False
        self._last_commit = now
        if c.manifest is not None:
            return True
        self.metrics.failures.labels("fenced" if self._fenced else transfer.failure_kind(c.error)).inc()
        if self._fenced:
            log.error("fenced off: another pod holds this replica's lease; no more commits",
                      extra={"fields": {"error": c.error}})
        else:
            log.warning("manifest commit failed; will retry", extra={"fields": {"error": c.error}})
            self._last_commit = now + min(self.backoff.cap, 2.0)  # back off
        return False

    def load(self) -> None:
        """Take the lease (waiting for a previous writer), then read the latest manifest;
        retried until it works. Posts `Loaded`."""
        self._thread.submit(self._load)

    def pace(self, now: float, busy: bool) -> None:
        """The heartbeat, by the work: while busy `active` every ttl/3 (a successor waits for
        what we owe); quiet for IDLE_AFTER, `idle` (a successor takes over at once), renewed
        every IDLE_TTL/2; busy again, `active` at once, ahead of the commit it leads to."""
        if self._held is None or self._fenced:
            return
        if busy:
            self._quiet_since = None
            state, every = "active", (0.0 if self._idle else lease.DEFAULT_TTL / 3)
        else:
            self._quiet_since = now if self._quiet_since is None else self._quiet_since
            if not self._idle and now - self._quiet_since < IDLE_AFTER:
                return  # the last heartbeat (<= ttl/3 old when quiet began) outlives IDLE_AFTER
            state, every = "idle", (lease.IDLE_TTL / 2 if self._idle else 0.0)
        if self._beat_failed:
            every = min(every, lease.DEFAULT_TTL / 3)
        if now - self._last_heartbeat < every:
            return
        self._beat_failed = False
        self._idle = state == "idle"
        self._last_heartbeat = now
        self._thread.submit(self._heartbeat, state)

    def commit(self, durable: manifest.Manifest | None, names: dict[str, manifest.FileEntry],
               removed: set[str], tokens: list[tuple[str, int, float]]) -> None:
        """Commit the next manifest in the background; posts `Committed`."""
        self._thread.submit(self._commit_and_post, durable, names, removed, tokens)

    def final(self, durable: manifest.Manifest | None, names: dict[str, manifest.FileEntry], removed: set[str],
              loaded: bool, timeout: float) -> manifest.Manifest | None:
        """The final manifest, waited for; None (and logged) when it cannot be committed."""
        end = time.monotonic() + timeout
        try:
            if self._fenced:
                log.error("fenced off: the final manifest is not committed (another pod holds the lease)",
                          extra={"fields": {"files_not_committed": len(names)}})
            elif not (loaded and self.holding):
                log.error("the store could not be read since start-up; nothing committed",
                          extra={"fields": {"files_not_committed": len(names)}})
            else:
                return self.commit_final(durable, names, removed, timeout)
        except concurrent.futures.TimeoutError as err:
            # Still running, and it may yet commit: run.json must not say `failed` after it did.
            self.metrics.failures.labels(transfer.failure_kind(str(err))).inc()
            log.error("final manifest not committed", extra={"fields": {
                "error": f"no answer within {timeout:.1f} s", "files_lost": len(names)}})
        except StoreError as err:
            self.metrics.failures.labels(transfer.failure_kind(str(err))).inc()
            log.error("final manifest not committed", extra={"fields": {"error": str(err), "files_lost": len(names)}})
            left = end - time.monotonic()
            if self.meta is not None and not self._fenced and left > 1:  # said in the metadata too, if time allows
                self._wait(self._thread.submit(self.meta.ended, None, f"final manifest not committed: {err}",
                                               time.monotonic() + left / 2), left / 2)
        return None

    def commit_final(self, durable: manifest.Manifest | None, names: dict[str, manifest.FileEntry],
                     removed: set[str], timeout: float) -> manifest.Manifest:
        """The final manifest, waited for (through the committer's thread: a heartbeat may be
        running); then the lease is released, so the next pod need not wait for it to expire."""
        started = time.monotonic()
        m = self._thread.submit(self._commit, durable, names, removed, True).result(timeout=timeout)
        left = timeout - (time.monotonic() - started)
        if self.meta is not None and left > 2:  # under the lease: a next pod's metadata is never overwritten
            budget = min(left / 2, 5)  # run.json's retries stop then, so the release queued behind never waits
            self._wait(self._thread.submit(self.meta.ended, m, None, time.monotonic() + budget), budget)
        try:
            self._thread.submit(self._release).result(timeout=max(0.1, timeout - (time.monotonic() - started)))
        except Exception as err:  # noqa: BLE001 - committed already; only the next pod's wait is longer
            log.warning("lease not released; the next pod waits for it to expire", extra={"fields": {
                "error": str(err)}})
        return m

    @staticmethod
    def _wait(future: concurrent.futures.Future, timeout: float) -> None:
        try:
            future.result(timeout=timeout)
        except Exception as err:  # noqa: BLE001 - metadata never holds up the end
            log.warning("run metadata not written at the end", extra={"fields": {"error": str(err)}})

    def shutdown(self) -> None:
        self._stopped.set()
        self._thread.shutdown(wait=False)
        self._beside.shutdown(wait=False)

    # ------------------------------------------------------------------ on the committer's thread

    def _load(self) -> None:
        attempt = 0
        while not self._stopped.is_set():
            try:
                self._held = lease.acquire(
                    self.s3, self.layout, self.holder, wait=self.lease_wait,
                    max_seq=lambda: manifest.max_seq(self.s3, self.layout),
                    on_wait=lambda l: log.info("waiting for the previous writer to finish", extra={
                        "fields": {"holder": l.holder, "epoch": l.epoch}}))
                latest = self.index.adopt(manifest.latest_listing(self.s3, self.layout))
                self.post(messages.Loaded(latest, ""))
                if self.meta is not None:
                    self.meta.started(latest)
                return
            except Exception as err:  # noqa: BLE001 - an outage: retried with backoff
                msg = str(err) if isinstance(err, StoreError) else str(transfer.describe(err, self.layout.store, self.s3))
                attempt += 1
                delay = self.backoff.delay(attempt)
                self.metrics.failures.labels(transfer.failure_kind(msg)).inc()
                log.warning("cannot read the latest manifest yet; retrying",
                            extra={"fields": {"error": msg, "retry_in_s": round(delay, 2)}})
                self._stopped.wait(delay)

    def _commit_and_post(self, durable, names, removed, tokens) -> None:
        try:
            result = self._commit(durable, names, removed, False)
        except Exception as err:  # noqa: BLE001 - the loop retries
            self.post(messages.Committed(None, str(err) or type(err).__name__, names, removed, tokens))
            return
        self.post(messages.Committed(result, "", names, removed, tokens))
        # After the post, so a flush never waits on them, and before the next commit (this
        # thread): head.json (a hint: readers probe past a stale one) and the metadata.
        head.write(self.s3, self.layout, result.seq, result.epoch)
        if self.meta is not None:
            self.meta.committed(result)

    def _commit(self, durable, names, removed, final) -> manifest.Manifest:
        """Commit under the lease's epoch while renewing the lease (the proof that we still hold
        it): both requests at once, one round trip instead of two. The commit counts only if the
        renewal succeeds; a record written while a successor took over is skipped by readers
        (its epoch no longer owns that number), as with a renewal first."""
        started = time.monotonic()
        try:
            record = self._beside.submit(
                manifest.commit_next, self.s3, self.layout, durable, names.values(), final=final,
                writer=self.writer, epoch=self._held.lease.epoch, removed=removed, markers=self.markers,
                after=self._held.lease.took_over_from(), write_head=final)
            try:
                self._held = lease.renew(self.s3, self.layout, self._held)
            finally:
                concurrent.futures.wait([record])  # no record PUT left running behind this commit
            m = record.result()
        except lease.LeaseLost:
            self._fenced = True
            raise
        except StoreError:
            raise
        except Exception as err:  # noqa: BLE001 - botocore errors
            raise transfer.describe(err, self.layout.store, self.s3) from None
        self.slowest = max(self.slowest, time.monotonic() - started)
        return self.index.committed(m)  # its changes only; `m` then reads its files there

    def _heartbeat(self, state: str = "active") -> None:
        if self._held is None or self._held.lease.state == "released":
            return  # released at the end: a late heartbeat must not take it back
        try:
            self._held = lease.renew(self.s3, self.layout, self._held, state=state)
            if state == "idle":
                log.info("idle: the lease says so (a successor takes over at once)", extra={"fields": {
                    "epoch": self._held.lease.epoch, "renewed_every_s": lease.IDLE_TTL / 2}})
        except lease.LeaseLost as err:
            self._fenced = True
            self.post(messages.Committed(None, str(err), {}, set(), []))
        except Exception as err:  # noqa: BLE001 - an outage: the next renewal tries again
            self._beat_failed = True
            log.warning("lease heartbeat failed", extra={"fields": {"error": str(err)}})

    def _release(self) -> None:
        self._held = lease.renew(self.s3, self.layout, self._held, state="released")


