"""One-shot upload of a local run dir: scan → plan → transfer (hashed as it goes) → commit → (clean).

This is `runsync sync`. The sidecar runs the same plan, transfer and manifest steps on events.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import os
import socket
import tempfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from . import config, durable as durable_index, globs, hashing, keys, lease, manifest, plan, runmeta, transfer, \
    versions, watch
from .errors import StoreError
from .logs import log


@dataclasses.dataclass
class SyncReport:
    uploaded: list[manifest.FileEntry] = dataclasses.field(default_factory=list)
    unchanged: int = 0
    ignored: int = 0
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(path, why) of files not uploaded: symlinks, collisions, names S3 cannot hold, files
    still being written."""
    failed: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    """(path, error) of uploads that failed; the rest was still committed."""
    committed: manifest.Manifest | None = None
    cleaned: list[str] = dataclasses.field(default_factory=list)

    @property
    def uploaded_bytes(self) -> int:
        return sum(e.size for e in self.uploaded)


def sync(
    run_dir: str | Path,
    store: keys.StoreURL,
    run: keys.RunPath,
    replica: str = "0",
    rules: tuple[config.SaveRule, ...] = (),
    ignore: tuple[globs.Glob, ...] = (),
    clean: bool = False,
    settings: transfer.Settings = transfer.Settings(),
    hooks: transfer.Hooks = transfer.Hooks(),
) -> SyncReport:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise StoreError(f"run dir {str(run_dir)!r} is not a directory; fix: pass an existing directory")
    s3 = transfer.shared(settings)  # the CLI calls this once, the SDK and scripts again and again
    transfer.check_store(s3, store)
    transfer.check_encryption(s3, keys.Layout(store, run, replica))
    try:
        return _sync(s3, run_dir, keys.Layout(store, run, replica), rules, ignore, clean, settings, hooks)
    except (ClientError, BotoCoreError) as err:
        raise transfer.describe(err, store, s3) from None


def _sync(s3, run_dir, layout, rules, ignore, clean, settings, hooks) -> SyncReport:
    # The latest commit's entries go into a scratch sqlite index as they stream (durable.py, as the
    # sidecar holds them), not into a dict of every entry: a sync of a run of 1,000,000 files
    # looks each file up there, in memory bounded by a chunk (issue 18). The report's commit reads
    # the index after it returns: its connection outlives the deleted scratch dir.
    with tempfile.TemporaryDirectory(prefix="runsync-sync-") as scratch:
        index = durable_index.Index(scratch)
        durable = index.adopt(manifest.latest_listing(s3, layout))
        return _sync_onto(s3, run_dir, layout, rules, ignore, clean, settings, hooks, durable)


def _sync_onto(s3, run_dir, layout, rules, ignore, clean, settings, hooks, durable) -> SyncReport:
    report = SyncReport()

    # The run dir is walked, planned, looked at and sent as one stream: a file's records are let
    # go once it is sent, so memory does not grow with the files of the dir (issue 18).
    walk = watch.Walk(run_dir)
    collided: list[tuple[str, str]] = []
    kept: tuple[list, list] | None = ([], []) if clean else None
    """The plan's uploads and unchanged files, which `clean` walks again at the end."""
    hashed: list | None = [] if clean else None
    """(intent, digest, key) of the files read in this run as the object at key, which `clean` trusts."""

    def uploads():
        files = nbytes = 0
        for kind, a, b in plan.each_for_sync(rules, ignore, walk, durable):
            if kind == "upload":
                files, nbytes = files + 1, nbytes + a.file.size
                if files % PLAN_EVERY == 1:
                    hooks.on_plan(files, nbytes)
                if kept is not None:
                    kept[0].append(a)
                yield a
            elif kind == "unchanged":
                report.unchanged += 1
                if kept is not None:
                    kept[1].append((a, b))
            elif kind == "ignored":
                report.ignored += 1
            else:
                collided.append((b.file.relpath, f"same stored name {b.name!r} as {a.file.relpath!r}"))
        hooks.on_plan(files, nbytes)

    planned = uploads()
    first = next(planned, None)  # walked as far as the first file to send, or to the end
    report.committed = durable
    if first is not None or durable is None or not durable.final:  # else no lease is needed
        with _Writer(s3, layout) as writer:
            changes = _send(s3, layout, itertools.chain(() if first is None else (first,), planned), durable,
                            writer.objects, settings, hooks, report, hashed)
            if changes or durable is None or not durable.final:  # not when every upload failed
                report.committed = writer.commit(durable, changes)
    report.skipped[:0] = [*((p, "symlink, not followed") for p in sorted(walk.symlinks)),
                          *((p, "not valid UTF-8, cannot be an S3 key") for p in sorted(walk.unnamable)),
                          *collided]
    if clean:
        report.cleaned = _clean(kept, hashed, report.committed)
    return report


PLAN_EVERY = 1000
"""`hooks.on_plan` is told the files and bytes found so far every this many (and at the end)."""
WINDOW_PER_REQUEST = 8
"""Files looked at or submitted ahead of the one awaited, per parallel request: enough to keep
every connection busy, few enough that 50,000 files cost no more memory than 50."""


def _send(s3, layout, intents: Iterator[plan.Intent], durable, objects: keys.ObjectKeys,
          settings, hooks, report: SyncReport, hashed: list | None) -> list[manifest.FileEntry]:
    """Look at each planned file, upload what changed, as a stream: a file's look, upload and
    entry are made one after another, a bounded window of them at once (memory flat in the
    number of files). The committed entries of this run: sent, or touched but unchanged."""
    window = WINDOW_PER_REQUEST * settings.max_concurrency
    changes: list[manifest.FileEntry] = []
    sending: dict[str, plan.Intent] = {}  # path → intent of the uploads in the window

    def to_send():
        for intent, seen, previous in _look_all(intents, durable, settings, report, window):
            if previous is not None:  # touched, not changed: record the new mtime, upload nothing
                changes.append(previous)
                report.unchanged += 1
                if hashed is not None:
                    hashed.append((intent, seen, previous.key))
                continue
            sending[intent.file.path] = intent
            yield transfer.Upload(intent.file.path, objects.next(), seen)

    with transfer.Transfers(s3, layout.store, settings) as transfers:
        for up, err in transfers.upload(to_send(), hooks.on_bytes, window=window):
            intent = sending.pop(up.path)
            if err is not None:
                if isinstance(err, transfer.FileChanged):
                    report.skipped.append((intent.file.relpath, "changed while reading; not complete"))
                    continue
                report.failed.append((intent.file.relpath, str(err)))
                log.warning("upload failed", extra={"fields": {"file": intent.file.relpath, "error": str(err)}})
                continue
            entry = versions.entry_of(intent.name, up, intent.policy.value)
            changes.append(entry)
            report.uploaded.append(entry)
            if hashed is not None:
                hashed.append((intent, up.digest, up.key))
    return changes


def _look_all(intents, durable, settings, report: SyncReport, window: int):
    """(intent, size/mtime/inode, the committed entry if the file still holds it) of each file, in
    order; files still being written or gone are skipped. A look is an open and an fstat, done
    here; only a touched small file, read for its part CRCs (native: no GIL), goes to a pool of
    readers, `window` ahead (a pool for every look cost 0.1 ms of CPU a file: bench/README.md)."""
    small = settings.multipart_threshold

    def decided(intent: plan.Intent, previous, seen):
        try:
            return intent, seen, versions.unchanged(previous, intent.file.path, seen, small)
        except transfer.FileChanged:
            report.skipped.append((intent.file.relpath, "changed while reading; not complete"))
        except FileNotFoundError:
            report.skipped.append((intent.file.relpath, "deleted before upload"))
        return None

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        ahead: collections.deque = collections.deque()  # answers, or futures of the reads
        for intent in intents:
            previous = durable.files.get(intent.name) if durable else None
            try:
                seen = transfer.look(intent.file.path)
            except transfer.FileChanged:
                report.skipped.append((intent.file.relpath, "changed while reading; not complete"))
                continue
            except FileNotFoundError:
                report.skipped.append((intent.file.relpath, "deleted before upload"))
                continue
            if versions.reads(previous, seen, small):
                ahead.append(pool.submit(decided, intent, previous, seen))
            else:
                ahead.append(decided(intent, previous, seen))
            while ahead and (len(ahead) >= window or not isinstance(ahead[0], Future)):
                looked = ahead.popleft()
                if (looked := looked.result() if isinstance(looked, Future) else looked) is not None:
                    yield looked
        while ahead:
            looked = ahead.popleft()
            if (looked := looked.result() if isinstance(looked, Future) else looked) is not None:
                yield looked


class _Writer:
    """`sync` as a short-lived writer: take the replica's lease before the first byte goes (a
    live sidecar keeps it, and then this fails clearly, having sent nothing), keep it beating
    while uploading (gc leaves a held replica's unnamed objects alone), commit, release."""

    def __init__(self, s3, layout: keys.Layout):
        self._s3, self._layout = s3, layout
        self.holder = f"sync@{socket.gethostname()}:{os.getpid()}"
        self._committed = False
        self._held: lease.Held | None = None
        """The lease as last renewed here, once the beat has stopped."""

    def __enter__(self) -> "_Writer":
        held = lease.acquire(self._s3, self._layout, self.holder, wait=0,
                             max_seq=lambda: manifest.max_seq(self._s3, self._layout), take_live=False)
        self.objects = keys.ObjectKeys(self._layout, held.lease.epoch)  # our epoch names our keys
        self._beating = lease.Beating(self._s3, self._layout, held)
        self._beating.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._committed:
            return
        try:
            held = self._held or self._beating.stop()
        except lease.LeaseLost:
            return
        try:  # nothing committed (an error, or every upload failed): let a successor in at once
            lease.renew(self._s3, self._layout, held, state="released")
        except (StoreError, ClientError, BotoCoreError):
            pass  # the first error is the one to report; the lease ages out in its ttl

    def commit(self, durable, changes) -> manifest.Manifest:
        s3, layout = self._s3, self._layout
        self._held = held = lease.renew(s3, layout, self._beating.stop())  # LeaseLost: taken while uploading
        after = held.lease.took_over_from()
        if after is not None and after > (durable.seq if durable is not None else 0):
            # Someone committed between our read and our lease (a sidecar's final flush): build on
            # that, not on what we read, or its last changes would vanish from the latest commit.
            durable = manifest.latest(s3, layout)
        committed = manifest.commit_next(s3, layout, durable, changes, final=True, writer=self.holder,
                                         epoch=held.lease.epoch, after=after)
        runmeta.Recorder(s3, layout, runmeta.Facts(writer=self.holder)).once(committed)  # under the lease
        self._committed = True  # whatever the release does: the commit holds
        try:
            lease.renew(s3, layout, held, state="released")
        except (StoreError, ClientError, BotoCoreError) as err:
            log.warning("lease not released; it ages out", extra={"fields": {
                "key": layout.lease_key, "ttl_s": held.lease.ttl, "error": str(err)}})
        return committed


def _clean(planned: tuple[list, list], digests, committed: manifest.Manifest) -> list[str]:
    """Delete the local files whose exact content is in the committed manifest, and only those.

    Every file is hashed again right before it is deleted unless it was hashed in this run
    and has not changed since: a size-and-mtime match is good enough to skip an upload, not
    to delete someone's data. `planned`: the plan's uploads, and its unchanged (intent, entry).
    """
    hashed = {intent.file.path: (d, key) for intent, d, key in digests}
    candidates = planned[0] + [i for i, _ in planned[1]]
    cleaned = []
    for intent in candidates:
        entry = committed.files.get(intent.name)
        if entry is None:
            continue
        try:
            digest, key = hashed.get(intent.file.path, (None, ""))
            st = os.stat(intent.file.path)
            same = digest is not None and key == entry.key and \
                hashing.seen(st) == digest.seen
            same = same or hashing.holds(intent.file.path, entry)
        except (FileNotFoundError, transfer.FileChanged):
            continue
        if same:
            os.unlink(intent.file.path)
            cleaned.append(intent.file.relpath)
    return sorted(cleaned)
