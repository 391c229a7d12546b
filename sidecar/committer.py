"""The committer: the replica's writer lease and its manifest commits, on one thread of its own.

It is the only owner of the lease (`held`) and of `fenced`: taking the lease and reading the
latest manifest at start (`load`), the heartbeat, each commit and the final one run here in
order, so a heartbeat never races a commit. Results go back to the engine's loop as messages
(`Loaded`, `Committed`); the loop owns what is staged and durable, and asks `due` each tick.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import threading
import time
from collections.abc import Callable

from . import keys, lease, ledger, manifest, messages, runmeta, statedir, transfer
from .errors import StoreError
from .logs import log
from .metrics import Metrics


class Committer:
    def __init__(self, s3, layout: keys.Layout, transfers: transfer.Transfers, state: statedir.StateDir,
                 metrics: Metrics, post: Callable[[object], None], holder: str | None, lease_wait: float,
                 interval: float = 1.0, backoff: transfer.Backoff = transfer.Backoff(),
                 meta: runmeta.Recorder | None = None):
        self.s3 = s3
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
        self._stopped = threading.Event()
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="commit")
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

    def due(self, now: float, books: ledger.Ledger, flush_waiting: bool) -> None:
        """Renew the lease when due; start the next commit when there is something to commit
        and it is time (at once while a flush waits)."""
        if self.committing or self._fenced:
            return
        self.heartbeat(now)
        if self.meta is not None and self.meta.images_due(now):
            self._thread.submit(self.meta.refresh_images)
        if not books.to_commit() or (now - self._last_commit < self.interval and not flush_waiting):
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

    def heartbeat(self, now: float) -> None:
        """Renew the lease every ttl/3, so a restarting pod waits for us rather than taking it."""
        if self._held is not None and now - self._last_heartbeat >= lease.DEFAULT_TTL / 3:
            self._last_heartbeat = now
            self._thread.submit(self._heartbeat)

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
                latest = manifest.latest(self.s3, self.layout)
                prior = latest is not None or self.transfers.any_stored(self.layout.replica_prefix + "files/")
                self.post(messages.Loaded(latest, "", prior))
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
            self.post(messages.Committed(result, "", names, removed, tokens))
            if self.meta is not None:  # after the post: a flush never waits on metadata
                self.meta.committed(result)
        except Exception as err:  # noqa: BLE001 - the loop retries
            self.post(messages.Committed(None, str(err) or type(err).__name__, names, removed, tokens))

    def _commit(self, durable, names, removed, final) -> manifest.Manifest:
        """Renew the lease (proof that we still hold it), then commit under its epoch."""
        started = time.monotonic()
        try:
            self._held = lease.renew(self.s3, self.layout, self._held)
            m = manifest.commit_next(self.s3, self.layout, durable, names.values(), final=final,
                                     writer=self.writer, epoch=self._held.lease.epoch, removed=removed,
                                     markers=self.markers)
        except lease.LeaseLost:
            self._fenced = True
            raise
        except StoreError:
            raise
        except Exception as err:  # noqa: BLE001 - botocore errors
            raise transfer.describe(err, self.layout.store, self.s3) from None
        self.slowest = max(self.slowest, time.monotonic() - started)
        self.state.cache_manifest(m)
        return m

    def _heartbeat(self) -> None:
        try:
            self._held = lease.renew(self.s3, self.layout, self._held)
        except lease.LeaseLost as err:
            self._fenced = True
            self.post(messages.Committed(None, str(err), {}, set(), []))
        except Exception as err:  # noqa: BLE001 - an outage: the next renewal tries again
            log.warning("lease heartbeat failed", extra={"fields": {"error": str(err)}})

    def _release(self) -> None:
        self._held = lease.renew(self.s3, self.layout, self._held, state="released")


