"""Committed manifests: which bytes make up a replica's files at one moment.

A manifest names each file's stored name, object key, size, modification time, content
checksums (part CRC64NVMEs; format 1 and older entries: the SHA-256) and policy. It is written
only after every file it names is durable, under the next sequence number and with
`If-None-Match: *`, so two writers can never both commit the same number (the loser gets
`CommitConflict` and must re-read). The latest manifest is the highest number; after each
commit `head.json` names it, so readers and the next writer need no LIST (head.py).

What a manifest and its entries are, and the checks a manifest read from the store must pass,
are in entries.py; this module reads and commits them.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Iterable, Iterator

from botocore.exceptions import ClientError

from . import errors, head, keys, lease
from .entries import CommitConflict, DEFAULT_MARKERS, FENCED, FileEntry, Manifest, settle
from .entries import entry_doc, entry_from_doc, whole_crc64nvme  # noqa: F401 - callers say manifest.*
from .errors import StoreError


def latest(client, layout: keys.Layout) -> Manifest | None:
    """The highest-numbered valid manifest of the replica, or None if it has none.

    Valid: written by the lease epoch that owned its number (lease.py), so a writer that was
    fenced off and kept committing is never read.
    """
    return next(history(client, layout), None)


def history(client, layout: keys.Layout) -> Iterator[Manifest]:
    """The replica's valid manifests, newest first (read one at a time, as the caller walks).

    `restore(name)` walks back through them: a file the trainer deleted, and whose deletion was
    committed, is still in the manifests before that one (W&B restores whatever was saved).
    """
    current, _ = lease.read(client, layout)
    top = head.latest_seq(client, layout)
    if top is None:  # no head: format 1
        return walk(client, layout, current, seqs(client, layout))
    return _walk_down(client, layout, current, top)


def latest_listing(client, layout: keys.Layout):
    """As `latest`, as a `listing.Listing`: the record (and delta chain) read, the entries left
    to stream (the sidecar fills its index from them only when it holds another commit)."""
    current, _ = lease.read(client, layout)
    top = head.latest_seq(client, layout)
    if top is None:
        return next(walk(client, layout, current, seqs(client, layout), open_listing), None)
    for seq in range(top, 0, -1):
        opened = open_listing(client, layout, seq, current)
        if opened is None:
            return next(walk(client, layout, current, [s for s in seqs(client, layout) if s < seq],
                             open_listing), None)
        if opened is not FENCED:
            return opened
    return None


def walk(client, layout: keys.Layout, current, numbers: Iterable[int], reader=None) -> Iterator[Manifest]:
    """`history` from a lease and manifest numbers already read (discovery reads them in parallel).
    `reader`: `read` (the default: whole manifests) or `open_listing` (streamed listings)."""
    reader = reader or read
    for seq in sorted(numbers, reverse=True):
        m = reader(client, layout, seq, current)
        if m is not None and m is not FENCED:
            yield m


def _walk_down(client, layout: keys.Layout, current, top: int) -> Iterator[Manifest]:
    """From the head down without a LIST; below a number `runsync gc` removed, the numbers
    left are listed once (gc leaves holes, and walking them one GET each would not end soon)."""
    for seq in range(top, 0, -1):
        m = read(client, layout, seq, current)
        if m is None:
            yield from walk(client, layout, current, [s for s in seqs(client, layout) if s < seq])
            return
        if isinstance(m, Manifest):
            yield m




def read(client, layout: keys.Layout, seq: int, current=None) -> Manifest | str | None:
    """Manifest `seq` (format 1 or 2), None if it is not there (dropped by `runsync gc`), or
    FENCED if `current` (the lease) says another epoch owned its number."""
    from . import records  # records builds on this module's types; a lazy import breaks the cycle

    return records.read(client, layout, seq, None if current is None else current.owner_of(seq))


def open_listing(client, layout: keys.Layout, seq: int, current=None):
    """Manifest `seq` as a `listing.Listing` (its entries streamed, not held), None or FENCED
    as `read` answers."""
    from . import records

    return records.open_listing(client, layout, seq, None if current is None else current.owner_of(seq))


def seqs(client, layout: keys.Layout) -> list[int]:
    found = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=layout.store.bucket, Prefix=layout.manifests_prefix):
        for obj in page.get("Contents", ()):
            seq = layout.manifest_seq(obj["Key"])
            if seq is not None:
                found.append(seq)
    return found


def known_seqs(client, layout: keys.Layout) -> Iterable[int]:
    """The replica's manifest numbers: from its head down (no LIST), or listed when it has none."""
    top = head.latest_seq(client, layout)
    return seqs(client, layout) if top is None else range(top, 0, -1)


def max_seq(client, layout: keys.Layout) -> int:
    """The highest manifest number written, valid or not (0 if none)."""
    top = head.latest_seq(client, layout)
    return max(seqs(client, layout), default=0) if top is None else top


def commit(
    client,
    layout: keys.Layout,
    previous: Manifest | None,
    changes: Iterable[FileEntry],
    final: bool,
    writer: str,
    now: float | None = None,
    removed: Iterable[str] = (),
    epoch: int = 0,
    seq: int | None = None,
    markers: tuple = DEFAULT_MARKERS,
    write_head: bool = True,
) -> Manifest:
    """Commit `previous`'s files, less `removed`, updated by `changes` (all durable), as the
    next manifest; checkpoint dirs (a file matching `markers` in them) stay whole (`settle`).
    `write_head=False`: the caller writes head.json itself (the sidecar: after the commit's answer)."""
    files, checkpoints = settle(previous, list(changes), set(removed), markers)
    manifest = Manifest(
        run=str(layout.run), replica=layout.replica,
        seq=seq if seq is not None else (previous.seq + 1) if previous else 1,
        created=time.time() if now is None else now, files=files, final=final, writer=writer, epoch=epoch,
        checkpoints=checkpoints,
    )
    from . import records

    manifest, body = records.prepare(client, layout, previous, manifest)
    key = layout.manifest_key(manifest.seq)
    try:
        client.put_object(
            Bucket=layout.store.bucket, Key=key, Body=body, IfNoneMatch="*",
            ContentType="application/json",
            ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
        )
    except ClientError as err:
        if errors.precondition_failed(err):
            raise CommitConflict(f"manifest {manifest.seq} of {layout.run} replica "
                                 f"{layout.replica} was committed by another writer") from None
        raise
    if write_head:
        head.write(client, layout, manifest.seq, epoch)
    return manifest


def replicas(client, store: keys.StoreURL, run: keys.RunPath) -> list[str]:
    """The replicas of a run that have stored anything."""
    prefix = keys.Layout(store, run, "0").run_prefix
    return [p[len(prefix):-1] for p in list_prefixes(client, store.bucket, prefix)]


def list_prefixes(client, bucket: str, prefix: str) -> list[str]:
    """The `/`-delimited child prefixes under `prefix` (one level of the layout)."""
    found: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        found.extend(p["Prefix"] for p in page.get("CommonPrefixes", ()))
    return found


def commit_next(
    client,
    layout: keys.Layout,
    durable: Manifest | None,
    changes: Iterable[FileEntry],
    final: bool,
    writer: str,
    epoch: int = 0,
    removed: Iterable[str] = (),
    attempts: int = 5,
    markers: tuple = DEFAULT_MARKERS,
    after: int | None = None,
    write_head: bool = True,
) -> Manifest:
    """Commit on top of `durable` under the next free number; on a conflict, merge onto the
    latest valid manifest and try the next number. `after`: the highest number written when the
    writer's lease was taken (`Lease.took_over_from`)."""
    changes, removed = list(changes), list(removed)
    # The writer knows the number it committed last (or the one its lease took over from): the
    # next one is tried without asking the store (the conditional PUT refuses a taken number);
    # after a conflict the store is asked.
    known = [n for n in (durable.seq if durable is not None else None, after) if n is not None]
    seq = max(known) + 1 if known else None
    for _ in range(attempts):
        try:
            return commit(client, layout, durable, changes, final, writer, removed=removed, epoch=epoch,
                          seq=seq or max_seq(client, layout) + 1, markers=markers, write_head=write_head)
        except CommitConflict:
            durable, seq = latest(client, layout), None
    raise StoreError(f"could not commit a manifest for {layout.run} replica {layout.replica}: another "
                     "writer keeps committing; fix: stop the other writer and retry")
