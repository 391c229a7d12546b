"""Committed manifests: which bytes make up a replica's files at one moment.

A manifest names each file's stored name, object key, size, modification time, content
checksums (part CRC64NVMEs; format 1 and older entries: the SHA-256) and policy. It is written
only after every file it names is durable, under the next sequence number and with
`If-None-Match: *`, so two writers can never both commit the same number (the loser gets
`CommitConflict` and must re-read). The latest manifest is the highest number; after each
commit `head.json` names it, so readers and the next writer need no LIST (head.py).

A manifest read from the store is untrusted input: names that escape the run dir and keys
outside the replica's own `objects/` (or format 1's `files/`) are refused.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Iterable, Iterator, Mapping

from botocore.exceptions import ClientError

from . import checksums, config, head, keys, lease
from .errors import StoreError

_SHA256 = re.compile(r"[0-9a-f]{64}")
DEFAULT_MARKERS = config.RunConfig().complete_markers


class CommitConflict(StoreError):
    """Another writer committed this sequence number first."""


@dataclasses.dataclass(frozen=True, slots=True)  # slots: a manifest may name 100,000 of these
class FileEntry:
    name: str
    key: str
    size: int
    mtime_ns: int
    sha256: str
    """Format 1 and format-2 entries written before their content was identified by part CRCs:
    the whole file's SHA-256; "" (absent in the stored entry) once `crc64nvme` is the identity."""
    policy: str = "end"
    part_size: int = 0
    """Format 2: the size of each part `crc64nvme` checks (checksums.py); 0 in format 1."""
    crc64nvme: tuple[str, ...] = ()
    """Format 2: one CRC64NVME per part, so a download checks each part as it lands."""


@dataclasses.dataclass(frozen=True)
class Manifest:
    run: str
    replica: str
    seq: int
    created: float
    files: Mapping[str, FileEntry]
    final: bool = False
    """True when the run ended (a final flush, or a one-shot `runsync sync`)."""
    writer: str = ""
    epoch: int = 0
    """The writer's lease epoch (lease.py); readers ignore manifests of a fenced-off epoch."""
    checkpoints: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """Checkpoint dir → the names committed with its marker: a restore places the dir only
    when the manifest holds exactly these (absent in manifests written before: not checked)."""
    base: int = 0
    """Format 2 (records.py): the number of the base it is read from (its own, for a base); 0:
    format 1, a whole manifest per commit."""
    chain: int = 0
    """Format 2: deltas since the base, this one included (0 for a base)."""
    chain_entries: int = 0
    """Format 2: entries and removals those deltas carry."""
    base_count: int = 0
    """Format 2: entries in the base."""
    requires: tuple[str, ...] = ()
    """Format 2: the other keys it is read from (its base's record and chunks, the deltas
    between): what `runsync gc` keeps with it."""

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files.values())

    def to_json(self) -> bytes:
        doc = {
            "format": keys.FORMAT,
            "run": self.run,
            "replica": self.replica,
            "seq": self.seq,
            "created": self.created,
            "final": self.final,
            "writer": self.writer,
            "epoch": self.epoch,
            "files": [entry_doc(f) for f in sorted(self.files.values(), key=lambda f: f.name)],
            "checkpoints": {d: list(names) for d, names in sorted(self.checkpoints.items())},
        }
        return json.dumps(doc, indent=1, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes, layout: keys.Layout, source: str) -> "Manifest":
        """Parse and check a stored manifest; `StoreError` naming `source` if it is unusable."""
        try:
            doc = json.loads(data)
            if doc.get("format") != keys.FORMAT:
                raise ValueError(f"format {doc.get('format')!r} is not {keys.FORMAT}")
            files = {e.name: e for e in (entry_from_doc(raw, layout) for raw in doc["files"])}
            checkpoints = checkpoints_from_doc(doc.get("checkpoints"))
            return cls(
                run=str(doc["run"]), replica=str(doc["replica"]), seq=int(doc["seq"]),
                created=float(doc["created"]), files=files, final=bool(doc.get("final", False)),
                writer=str(doc.get("writer", "")), epoch=int(doc.get("epoch", 0)), checkpoints=checkpoints,
            )
        except (ValueError, KeyError, TypeError) as err:
            raise unreadable(source, err) from None


def unreadable(source: str, err: Exception) -> StoreError:
    # Never guessed around: restoring an older manifest in silence would hide the damage.
    return StoreError(f"manifest {source} is unreadable ({err}); it was not written by runsync "
                      "format 1 or 2 or is damaged; fix: move that object aside (the run then restores "
                      "from the manifest before it), or restore it from the bucket's versioning")


def entry_from_doc(raw: dict, layout: keys.Layout) -> FileEntry:
    """One stored entry, checked (ValueError, KeyError or TypeError if unusable)."""
    entry = FileEntry(
        name=str(raw["name"]), key=str(raw["key"]), size=int(raw["size"]),
        mtime_ns=int(raw["mtime_ns"]), sha256=str(raw.get("sha256", "")),
        policy=str(raw.get("policy", "end")), part_size=int(raw.get("part_size", 0)),
        crc64nvme=tuple(str(c) for c in raw.get("crc64nvme", ())),
    )
    keys.check_stored_name(entry.name)
    if not layout.holds(entry.key):  # objects/ (format 2) or files/ (format 1), nothing else
        raise ValueError(f"file {entry.name!r} points outside the replica: {entry.key!r}")
    if not (_SHA256.fullmatch(entry.sha256) or (entry.part_size and not entry.sha256)) or entry.size < 0:
        raise ValueError(f"file {entry.name!r} has a bad checksum or size")  # parts: checked below
    _check_parts(entry)
    return entry


def whole_crc64nvme(entry: FileEntry) -> str:
    """A format-2 entry's whole-file CRC64NVME (base64, as S3's full-object checksum header and
    `head-object --checksum-mode ENABLED` spell it), from its part CRCs; "" in format 1."""
    if not entry.part_size:
        return ""
    return checksums.encode(checksums.whole(entry.crc64nvme, entry.size, entry.part_size))


def checkpoints_from_doc(raw) -> dict[str, tuple[str, ...]]:
    checkpoints = {}
    for d, names in dict(raw or {}).items():
        keys.check_stored_name(str(d))
        if not isinstance(names, list) or not all(isinstance(n, str) and n.startswith(f"{d}/") for n in names):
            raise ValueError(f"checkpoint {d!r} lists names outside it")
        checkpoints[str(d)] = tuple(names)
    return checkpoints


def entry_doc(f: FileEntry) -> dict:
    doc = dataclasses.asdict(f)
    if not f.part_size:  # format 1 entries stay as they were
        del doc["part_size"], doc["crc64nvme"]
    else:
        doc["crc64nvme"] = list(f.crc64nvme)
        if not f.sha256:  # the part CRCs are its identity: docs/format-2.md
            del doc["sha256"]
    return doc


def _check_parts(entry: FileEntry) -> None:
    if not entry.part_size and not entry.crc64nvme:
        return
    if entry.part_size <= 0 or len(entry.crc64nvme) != checksums.part_count(entry.size, entry.part_size):
        raise ValueError(f"file {entry.name!r} has {len(entry.crc64nvme)} part checksums for "
                         f"{entry.size} bytes in parts of {entry.part_size}")
    for crc in entry.crc64nvme:
        checksums.decode(crc)


def settle(previous: Manifest | None, changes: list[FileEntry], removed: set[str],
           markers: tuple) -> tuple[dict[str, FileEntry], dict[str, tuple[str, ...]]]:
    """The next manifest's files and checkpoint units; pure.

    A checkpoint dir is one unit on deletion too. A rotation (`shutil.rmtree`) cut short leaves
    part of a committed dir: while its marker is still there locally, none of its deletions is
    applied (the dir stays as last committed, whole); once the marker is deleted, every name
    under the dir leaves. A dir whose marker is among `changes` was committed anew: its unit is
    the names under it now.
    """
    files = dict(previous.files) if previous else {}
    units = dict(previous.checkpoints) if previous else {}
    for d in _marked(files, markers):  # manifests written before units were recorded
        units.setdefault(d, tuple(sorted(n for n in files if n.startswith(d + "/"))))
    for d, names in list(units.items()):
        gone = removed & set(names)
        if not gone:
            continue
        if any(_is_marker(n, d, markers) for n in gone):
            for n in [n for n in files if n.startswith(d + "/")]:
                del files[n]
            del units[d]
        removed = removed - gone  # the marker stays: so do its shards
    for name in removed:
        files.pop(name, None)
    files.update((entry.name, entry) for entry in changes)
    for d in _marked([e.name for e in changes], markers):
        units[d] = tuple(sorted(n for n in files if n.startswith(d + "/")))
    return files, {d: names for d, names in units.items() if any(n in files for n in names)}


def _marked(names: Iterable[str], markers: tuple) -> set[str]:
    return {n.rpartition("/")[0] for n in names if "/" in n and any(m.matches(n.rpartition("/")[2]) for m in markers)}


def _is_marker(name: str, d: str, markers: tuple) -> bool:
    parent, _, base = name.rpartition("/")
    return parent == d and any(m.matches(base) for m in markers)


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


FENCED = "fenced"
"""`read`'s answer for a manifest a fenced-off writer committed: skipped unread."""


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
        if lease.precondition_failed(err):
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
