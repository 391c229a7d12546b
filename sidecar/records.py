"""Format-2 commit records: the storage under `Manifest` (docs/format-2.md).

A commit is still ONE key, `manifests/<seq:012d>.json`, PUT with If-None-Match (two writers can
never commit one number, whatever they write) and its writer's epoch (fencing, lease.py). Its
body is `{"format": 2, "kind": "base" | "delta", ...}`:

- a base names its whole listing in chunks (chunks.py), written before the record (a listing
  of at most `SMALL` entries is written in the record itself);
- a delta names the entries changed and the names removed since `prev` (the writer's previous
  commit, usually seq - 1) and the `base` the chain starts from.

So a commit after one changed file PUTs a record of O(changed) bytes. When the chain reaches
`BASE_EVERY` deltas, or the entries its deltas carry outgrow a quarter of the base (and
`DELTA_FLOOR`), the writer folds the chain into one *summary* delta (its `prev` the base itself:
every change since the base, once), unless even that outgrows the quarter: then a new base, as on
the first commit after a format-1 manifest. A reader fetches at most the base's chunks and
`BASE_EVERY` small records, those in parallel; a base is rewritten only when a quarter of it
changed, never because many small commits went by (beside 1,000,000 files, a base is ~270 MB).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import secrets
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from botocore.exceptions import BotoCoreError, ClientError

from . import chunks, keys, listing
from .entries import FENCED, FileEntry, Manifest, Overlay, checkpoints_from_doc, entry_doc, entry_from_doc, unreadable
from .logs import log

FORMAT = 2
BASE_EVERY = 64
DELTA_FLOOR = 1000
"""Deltas carrying fewer entries than this never force a base: a small run would otherwise
write a base (a record and a chunk) on every commit."""
SMALL = 100
"""A listing of at most this many entries is written whole in the record, as format 1 did (one
PUT of at most ~25 KB): a delta would save nothing, and every commit stays self-contained (a
reader needs one GET; gc keeps no chain for it)."""
_READERS = 8


def prepare(client, layout: keys.Layout, previous: Manifest | None, m: Manifest) -> tuple[Manifest, bytes]:
    """The record body committing `m` (its files settled) on top of `previous`; a base's chunks
    are written here, before the record that names them."""
    common = {"format": FORMAT, "run": m.run, "replica": m.replica, "seq": m.seq, "created": m.created,
              "final": m.final, "writer": m.writer, "epoch": m.epoch}
    if previous is not None and previous.base and len(m.files) > SMALL:
        if isinstance(m.files, Overlay) and m.files.base is previous.files:  # its changes are known
            changed = [e for name, e in m.files.changed.items() if previous.files.get(name) != e]
            removed = list(m.files.removed)
        else:
            changed = [e for name, e in m.files.items() if previous.files.get(name) != e]
            removed = [name for name in previous.files if name not in m.files]
        carried = previous.chain_entries + len(changed) + len(removed)
        limit = max(previous.base_count // 4, DELTA_FLOOR)
        if previous.chain < BASE_EVERY and carried <= limit:
            m = dataclasses.replace(m, base=previous.base, chain=previous.chain + 1, chain_entries=carried,
                                    base_count=previous.base_count, summary=previous.summary)
            return m, _dump(_delta_doc(common, m, previous.seq, changed, removed, previous.checkpoints))
        # Fold the chain into one summary of every change since the base, if that is at most
        # half the limit: a summary near the limit would be written again on the next commits.
        if previous.chain and len(changed) + len(removed) <= limit // 2:
            folded = _since_base(client, layout, previous, changed, removed, limit // 2)
            if folded is not None:
                since, base_checkpoints = folded
                m = dataclasses.replace(m, base=previous.base, chain=1, chain_entries=len(since),
                                        base_count=previous.base_count, summary=m.seq)
                changed = [e for e in since.values() if e is not None]
                removed = [n for n, e in since.items() if e is None]
                return m, _dump(_delta_doc(common, m, previous.base, changed, removed, base_checkpoints))
    docs = (entry_doc(e) for e in _sorted_entries(m.files))
    inline = len(m.files) <= SMALL
    written = [] if inline else chunks.write(client, layout.store.bucket, f"{layout.manifests_prefix}{m.seq:012d}.base/",
                                             secrets.token_hex(4), docs)
    m = dataclasses.replace(m, base=m.seq, chain=0, chain_entries=0, base_count=len(m.files), summary=0,
                            requires=tuple(k for k, _ in written))
    doc = {**common, "kind": "base", "count": len(m.files), "chunks": written,
           "checkpoints": {d: list(n) for d, n in sorted(m.checkpoints.items())}}
    if inline:
        doc["files"] = list(docs)
    return m, _dump(doc)


def _sorted_entries(files) -> Iterator[FileEntry]:
    """`files` in name order. Over the durable index (the sidecar's, sync's), its own sorted pages
    merged with the changes: a base of 1,000,000 entries without a list of every name in memory
    and a query per name."""
    if isinstance(files, Overlay) and hasattr(files.base, "entries"):
        overlay: dict[str, FileEntry | None] = dict.fromkeys(files.removed)
        overlay.update(files.changed)
        return listing.merged(files.base.entries(), overlay)
    return (files[n] for n in sorted(files))


def _delta_doc(common: dict, m: Manifest, prev: int, changed: list[FileEntry], removed: list[str],
               checkpoints_before) -> dict:
    """The record of delta `m` on top of commit `prev`, whose checkpoint units were `checkpoints_before`."""
    doc = {**common, "kind": "delta", "base": m.base, "prev": prev, "chain": m.chain,
           "chain_entries": m.chain_entries, "base_count": m.base_count,
           "files": [entry_doc(e) for e in sorted(changed, key=lambda e: e.name)],
           "removed": sorted(removed),
           "checkpoints": {d: list(n) for d, n in sorted(m.checkpoints.items()) if checkpoints_before.get(d) != n},
           "checkpoints_removed": sorted(d for d in checkpoints_before if d not in m.checkpoints)}
    if m.summary:
        doc["summary"] = m.summary  # readers fetch the base and the records from here on, no more
    return doc


def _since_base(client, layout: keys.Layout, previous: Manifest, changed: list[FileEntry], removed: list[str],
                limit: int) -> tuple[dict[str, FileEntry | None], dict] | None:
    """Every change since `previous`'s base, this commit's included (name → entry, or None:
    removed), and the base's checkpoint units; None when that is more than `limit` entries, or the
    chain cannot be read (then a new base). Reads `previous`'s chain as a reader does: at most
    `BASE_EVERY` small records, in parallel, once per chain."""
    try:
        body = _get(client, layout, previous.seq)
        base_doc, chain = _chain(lambda seqs: _fetch(client, layout, seqs), json.loads(body or b"null"))
        since = _fold(chain, layout)
    except (ValueError, KeyError, TypeError, AttributeError, ClientError, BotoCoreError) as err:
        # A damaged or missing record of the chain: a base needs nothing read, and the writer holds
        # the whole listing. (Failing the commit would fail every commit after it.)
        log.warning("delta chain unreadable; writing a new base", extra={"fields": {
            "seq": previous.seq, "base": previous.base, "error": str(err)}})
        return None
    for name in removed:
        since[name] = None
    since.update((e.name, e) for e in changed)
    if len(since) > limit:
        return None
    return since, checkpoints_from_doc(base_doc["checkpoints"])


def read(client, layout: keys.Layout, seq: int, owner: int | None = None) -> Manifest | str | None:
    """Commit `seq` of either format, resolved to its whole listing; None if it is not there;
    FENCED, unresolved, if `owner` is given and another epoch wrote it."""
    opened = open_listing(client, layout, seq, owner)
    return opened.manifest() if isinstance(opened, listing.Listing) else opened


def open_listing(client, layout: keys.Layout, seq: int, owner: int | None = None) -> listing.Listing | str | None:
    """Commit `seq` as a `Listing`: its record and delta chain read, its base's chunks left for
    `entries()` to stream; None if it is not there; FENCED if `owner` is given and another epoch
    wrote it. A format-1 manifest is read whole (one JSON document)."""
    body = _get(client, layout, seq)
    return None if body is None else _read(client, layout, seq, body, owner)


def _read(client, layout: keys.Layout, seq: int, body: bytes, owner: int | None, fetch=None,
          base_entries=None) -> listing.Listing | str:
    source = f"s3://{layout.store.bucket}/{layout.manifest_key(seq)}"
    try:
        doc = json.loads(body)
    except ValueError as err:
        raise unreadable(source, err) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        m = Manifest.from_json(body, layout, source)
        return FENCED if owner is not None and m.epoch != owner else listing.whole(m)
    if owner is not None and doc.get("epoch") != owner:
        return FENCED  # its chain is never fetched
    try:
        return _open(client, layout, seq, doc, lambda err: unreadable(source, err), fetch, base_entries)
    except (ValueError, KeyError, TypeError) as err:
        raise unreadable(source, err) from None


class Replica:
    """Every commit of a replica read at once, for `runsync gc`, which judges them all: each
    record fetched once (in parallel), then any commit opened from what was fetched, on demand
    (opening each with `open_listing` re-reads its chain and base: O(commits x files) GETs). Only
    the last few chunked bases are kept in memory (gc reads in number order, and each base is the
    size of the run). One thread at a time."""

    _BASES = 2

    def __init__(self, client, layout: keys.Layout, seqs):
        self._client, self._layout = client, layout
        self._bodies: dict[int, bytes | None] = dict(_fetch_bodies(client, layout, list(seqs)))
        self._docs: dict[int, dict | None] = {}
        self._bases: collections.OrderedDict[int, list[FileEntry]] = collections.OrderedDict()

    def read(self, seq: int, owner: int | None = None) -> listing.Listing | str | None:
        """As `open_listing`, from what was fetched (None: gone when it was fetched)."""
        body = self._bodies.get(seq)
        if body is None:
            return None
        return _read(self._client, self._layout, seq, body, owner, self._fetched, self._base_entries)

    def forget(self, seq: int) -> None:
        """Drop what was fetched of `seq` (its caller keeps what it needs; a chain that needs
        it after all fetches it again)."""
        self._bodies.pop(seq, None)
        self._docs.pop(seq, None)

    def _fetched(self, seqs: range) -> dict[int, dict]:
        missing = [seq for seq in seqs if seq not in self._bodies]  # not listed (a hole), or forgotten
        self._bodies.update(_fetch_bodies(self._client, self._layout, missing) if missing else ())
        found = {}
        for seq in seqs:
            if seq not in self._docs and self._bodies.get(seq) is not None:
                try:
                    doc = json.loads(self._bodies[seq])
                except ValueError:
                    doc = None  # the chain that needs it says it is broken
                self._docs[seq] = doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None
            if self._docs.get(seq) is not None:
                found[seq] = self._docs[seq]
        return found

    def _base_entries(self, doc: dict) -> Iterable[FileEntry]:
        if not doc["chunks"]:
            return _base_entries(self._client, self._layout, doc)  # in its record: nothing to fetch
        seq = int(doc["seq"])
        if seq not in self._bases:
            self._bases[seq] = list(_base_entries(self._client, self._layout, doc))
            while len(self._bases) > self._BASES:
                self._bases.popitem(last=False)
        self._bases.move_to_end(seq)
        return self._bases[seq]


def _open(client, layout: keys.Layout, seq: int, doc: dict, damaged, fetch=None,
          base_entries=None) -> listing.Listing:
    fetch = fetch or (lambda seqs: _fetch(client, layout, seqs))
    base_entries = base_entries or (lambda d: _base_entries(client, layout, d))
    if int(doc["seq"]) != seq:
        raise ValueError(f"record says seq {doc['seq']}")
    if doc["kind"] == "base":
        meta = _manifest(doc, checkpoints_from_doc(doc["checkpoints"]), seq, _chunk_keys(doc))
        return listing.Listing(meta, lambda: base_entries(doc), {}, damaged)
    if doc["kind"] != "delta":
        raise ValueError(f"kind {doc['kind']!r} is neither base nor delta")
    base = int(doc["base"])
    base_doc, chain = _chain(fetch, doc)
    checkpoints = checkpoints_from_doc(base_doc["checkpoints"])
    for delta in reversed(chain):
        for d in delta["checkpoints_removed"]:
            checkpoints.pop(str(d), None)
        checkpoints.update(checkpoints_from_doc(delta["checkpoints"]))
    requires = (_chunk_keys(base_doc) + [layout.manifest_key(int(d["seq"])) for d in chain[1:]]
                + [layout.manifest_key(base)])
    return listing.Listing(_manifest(doc, checkpoints, base, requires),
                           lambda: base_entries(base_doc), _fold(chain, layout), damaged)


def _chain(fetch, doc: dict) -> tuple[dict, list[dict]]:
    """(the base's record, the deltas from `doc` back to it, newest first) of delta `doc`. The
    records fetched are the base's and those from the chain's summary on (older deltas were folded
    into it: gc may have taken them); a record without a summary needs every number since the base."""
    base, seq = int(doc["base"]), int(doc["seq"])
    since = max(base + 1, int(doc.get("summary") or 0))
    fetched = fetch([base, *range(since, seq)])
    chain, current = [doc], doc
    while int(current["prev"]) != base:  # back along prev, which skips fenced-off numbers
        prev = int(current["prev"])
        current = fetched.get(prev) if base < prev < int(current["seq"]) else None
        if current is None or current.get("kind") != "delta" or int(current["base"]) != base:
            raise ValueError(f"delta chain to base {base} is broken at {prev} (gc removed it, or it is damaged)")
        chain.append(current)
    base_doc = fetched.get(base)
    if base_doc is None or base_doc.get("kind") != "base":
        raise ValueError(f"its base {base} is missing")
    return base_doc, chain


def _fold(chain: list[dict], layout: keys.Layout) -> dict[str, FileEntry | None]:
    """The deltas of `chain` (newest first) folded oldest first into one overlay: name → entry,
    or None (removed); the last word on each name wins."""
    overlay: dict[str, FileEntry | None] = {}
    for delta in reversed(chain):
        for name in delta["removed"]:
            overlay[str(name)] = None
        overlay.update((e.name, e) for e in (entry_from_doc(raw, layout) for raw in delta["files"]))
    return overlay


def _manifest(doc: dict, checkpoints, base: int, requires: list[str]) -> Manifest:
    delta = doc["kind"] == "delta"
    return Manifest(
        run=str(doc["run"]), replica=str(doc["replica"]), seq=int(doc["seq"]), created=float(doc["created"]),
        files={}, final=bool(doc.get("final", False)), writer=str(doc.get("writer", "")),
        epoch=int(doc.get("epoch", 0)), checkpoints=checkpoints, base=base,
        chain=int(doc["chain"]) if delta else 0, chain_entries=int(doc["chain_entries"]) if delta else 0,
        summary=int(doc.get("summary") or 0) if delta else 0,
        base_count=int(doc["base_count"]) if delta else int(doc["count"]), requires=tuple(requires))


def _chunk_keys(doc: dict) -> list[str]:
    return [str(k) for k, _ in doc["chunks"]]


def _base_entries(client, layout: keys.Layout, doc: dict) -> Iterator[FileEntry]:
    """The base's entries in stored order, one chunk in memory at a time (a small base's are in
    its record); ValueError if a chunk is damaged or the count is not the record's."""
    prefix = f"{layout.manifests_prefix}{int(doc['seq']):012d}.base/"
    count = 0
    for raw in doc.get("files", ()):
        count += 1
        yield entry_from_doc(raw, layout)
    for key, sha in doc["chunks"]:
        if not str(key).startswith(prefix):
            raise ValueError(f"chunk {key!r} is outside its base")
        for raw in chunks.read(client, layout.store.bucket, str(key), str(sha)):
            count += 1
            yield entry_from_doc(raw, layout)
    if count != int(doc["count"]):
        raise ValueError(f"base has {count} entries, its record says {doc['count']}")


def _fetch(client, layout: keys.Layout, seqs) -> dict[int, dict]:
    """The records numbered `seqs` that are there, read in parallel (format 2 only)."""
    found = {}
    for seq, body in _fetch_bodies(client, layout, seqs):
        doc = json.loads(body) if body is not None else None
        if isinstance(doc, dict) and doc.get("format") == FORMAT:
            found[seq] = doc
    return found


def _fetch_bodies(client, layout: keys.Layout, seqs) -> list[tuple[int, bytes | None]]:
    """(seq, the record's bytes or None if it is not there), read in parallel."""
    with ThreadPoolExecutor(max(1, min(_READERS, len(seqs))), thread_name_prefix="records") as pool:
        return list(pool.map(lambda seq: (seq, _get(client, layout, seq)), seqs))


def _get(client, layout: keys.Layout, seq: int) -> bytes | None:
    try:
        # ChecksumMode: botocore checks the body against the SHA-256 stored with it (the client
        # leaves data bodies to runsync's own checks: transfer.client).
        return client.get_object(Bucket=layout.store.bucket, Key=layout.manifest_key(seq),
                                 ChecksumMode="ENABLED")["Body"].read()
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None  # dropped by `runsync gc`, or never written
        raise


def _dump(doc: dict) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
