"""The upload workers' one path: a Task (a file, or a checkpoint directory) → look (size, mtime,
inode) → upload, hashed as it goes → entry → `Done`. A single file is a directory of one; a directory's markers go last, after
every other file of it is durable, so no reader sees the marker before the data.

`Worker.run` runs on the workers' threads and touches no engine state: what it needs comes in
the Task. `Retries` (the loop's) holds tasks to try again: every retry of a task is decided there.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable

from . import keys, manifest, plan, transfer, unreadable, versions, watch
from .logs import log
from .messages import Done, Task


class Worker:
    """Runs tasks on a pool of threads and posts each `Done` back to the loop."""

    def __init__(self, root: str, layout: keys.Layout, transfers: transfer.Transfers, threads: int,
                 post: Callable[[object], None], skipped: unreadable.Unreadable):
        self.root = root
        self.skipped = skipped
        self.layout = layout
        self.transfers = transfers
        self.post = post
        self.pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="upload")
        self.objects = keys.ObjectKeys(layout, 0)
        """Keys of this writer's uploads; `loaded` puts its lease's epoch in them."""

    def loaded(self, epoch: int) -> None:
        """The lease is held: its epoch goes into every later key (a task started before the
        lease was read uses epoch 0; the process part keeps those keys unique too)."""
        self.objects = keys.ObjectKeys(self.layout, epoch)

    def start(self, task: Task) -> None:
        self.pool.submit(self._run_and_post, task)

    def call(self, fn: Callable, *args) -> None:
        """Other blocking work of the loop's (the API's code and restore requests)."""
        self.pool.submit(fn, *args)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run_and_post(self, task: Task) -> None:
        try:
            self.post(self.run(task))
        except PermissionError as err:  # permanent: skipped and named, never retried
            self.skipped.report(err.filename or task.relpath, False, err)
            self.post(Done(task, "unreadable", error=str(err)))
        except Exception as err:  # noqa: BLE001 - a bug must not stall the engine
            log.exception("worker failed", extra={"fields": {"work": repr(task)[:200]}})
            self.post(Done(task, "failed", error=f"{type(err).__name__}: {err}"))

    def run(self, task: Task) -> Done:
        batches = self._batches(task)
        if batches is None:
            return Done(task, "incomplete" if task.is_dir else "gone")
        missing = "changed" if task.is_dir else "gone"  # a directory's file went: it is being rewritten
        entries: list[tuple[manifest.FileEntry, str, str]] = []
        for batch in batches:
            uploads: dict[str, tuple[transfer.Upload, str, str]] = {}
            for relpath, name in batch:
                path = os.path.join(self.root, relpath)
                try:
                    seen = transfer.look(path, self.root)  # O_NOFOLLOW, in the run dir, else gone
                    prev = versions.unchanged(task.prev.get(name), path, seen,
                                     self.transfers.settings.multipart_threshold, self.root)
                except FileNotFoundError:
                    return Done(task, missing)
                except transfer.FileChanged:
                    return Done(task, "changed")
                if prev is not None:
                    entries.append((prev, relpath, "unchanged"))
                    continue
                up = transfer.Upload(path, self.objects.next(), seen)
                uploads[up.key] = (up, name, relpath)
            for up, err in self.transfers.upload([u for u, _, _ in uploads.values()]):
                if isinstance(err, transfer.FileChanged):
                    return Done(task, "changed")
                if isinstance(err, FileNotFoundError):
                    return Done(task, missing)
                if err is not None:
                    return Done(task, "failed", error=str(err) or type(err).__name__)
                _, name, relpath = uploads[up.key]
                entries.append((versions.entry_of(name, up, task.policy.value), relpath, "uploaded"))
        same = all(how == "unchanged" for _, _, how in entries)
        return Done(task, "unchanged" if same else "uploaded", entries)

    def _batches(self, task: Task) -> list[list[tuple[str, str]]] | None:
        """[(relpath, stored name)] to upload in order; None when there is nothing to upload:
        the file is gone, or the directory has no marker (yet)."""
        if not task.is_dir:  # gone, a link or not a regular file: `run`'s look says so (NotRegular)
            return [[(task.relpath, task.key)]]
        members, markers = [], []
        for f in watch.scan(os.path.join(self.root, task.relpath)).files:
            relpath = f"{task.relpath}/{f.relpath}"
            d = plan.decide(task.cfg, task.extra, relpath, {task.relpath})
            if d.name is not None:
                (markers if d.is_marker else members).append((relpath, d.name))
        if not markers and (task.require_marker or not members):
            return None
        return [members, markers]


class Retries:
    """Tasks to try again: a failed one after a backoff (`transfer.Backoff`), one whose file was
    still changing after `recheck` seconds, in case no event of its close comes. Owned by the loop."""

    def __init__(self, backoff: transfer.Backoff, recheck: float):
        self.backoff = backoff
        self.recheck = recheck
        self._waiting: list[tuple[float, Task]] = []
        self._failed: set[str] = set()
        """Keys of failed tasks: a new version of one joins its retry instead of going at once."""

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, key: str) -> bool:
        return key in self._failed

    def keys(self) -> list[str]:
        return [task.key for _, task in self._waiting]

    def failed(self, task: Task, now: float) -> float:
        """Schedule a failed task; returns the delay."""
        task.attempt += 1
        delay = self.backoff.delay(task.attempt)
        self._waiting.append((now + delay, task))
        self._failed.add(task.key)
        return delay

    def changed(self, task: Task, now: float) -> None:
        self._waiting.append((now + self.recheck, task))

    def due(self, now: float) -> list[Task]:
        ready = [task for t, task in self._waiting if t <= now]
        self._waiting = [(t, task) for t, task in self._waiting if t > now]
        for task in ready:
            self._failed.discard(task.key)
        return ready
