"""What a manifest is, apart from where it is stored: its entries, their checks and the pure
rules of the next commit.

A manifest names each file's stored name, object key, size, modification time, content
checksums (part CRC64NVMEs; format 1 and older entries: the SHA-256) and policy. One read from
the store is untrusted input: names that escape the run dir and keys outside the replica's own
`objects/` (or format 1's `files/`) are refused here. manifest.py reads and commits manifests,
records.py and listing.py hold format 2's commit records and streamed listings: all three
build on these types, so none of them needs another to name a file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Iterator, Mapping, MutableMapping

from . import checksums, config, keys
from .errors import StoreError

_SHA256 = re.compile(r"[0-9a-f]{64}")
_CRC64 = re.compile(r"[A-Za-z0-9+/]{11}=")
"""Base64 of 8 bytes: a CRC64NVME as `checksums.decode` reads it."""
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
    summary: int = 0
    """Format 2: the delta of its chain that folded every change since the base (records.py),
    0 if none: readers need no record between the base and it."""
    requires: tuple[str, ...] = ()
    """Format 2: the other keys it is read from (its base's record and chunks, the deltas
    between): what `runsync gc` keeps with it."""

    @property
    def size(self) -> int:
        total = getattr(self.files, "total_size", None)  # durable.Index: summed in sqlite, no entry built
        return total() if total is not None else sum(f.size for f in self.files.values())

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
    """The stored form of an entry, its keys in field order (built by hand: `dataclasses.asdict`
    deep-copies every field, a tenth of a first commit's CPU at 20,000 files)."""
    doc = {"name": f.name, "key": f.key, "size": f.size, "mtime_ns": f.mtime_ns}
    if f.sha256 or not f.part_size:  # with part CRCs and no SHA-256, they are its identity: docs/format-2.md
        doc["sha256"] = f.sha256
    doc["policy"] = f.policy
    if f.part_size:  # format 1 entries stay as they were
        doc["part_size"], doc["crc64nvme"] = f.part_size, list(f.crc64nvme)
    return doc


def _check_parts(entry: FileEntry) -> None:
    if not entry.part_size and not entry.crc64nvme:
        return
    if entry.part_size <= 0 or len(entry.crc64nvme) != checksums.part_count(entry.size, entry.part_size):
        raise ValueError(f"file {entry.name!r} has {len(entry.crc64nvme)} part checksums for "
                         f"{entry.size} bytes in parts of {entry.part_size}")
    for crc in entry.crc64nvme:
        if not _CRC64.fullmatch(crc):  # what `checksums.decode` takes, without decoding 1 a file
            checksums.decode(crc)  # raises, saying why


class Overlay(MutableMapping[str, FileEntry]):
    """The next commit's files as `base` (the durable files, not copied: 100,000 of them) with
    its changes on top; what changed is known without comparing the whole (records.prepare).
    `base` may offer `under(prefix)` (durable.Index: a range read instead of a full walk)."""

    def __init__(self, base: Mapping[str, FileEntry], base_seq: int | None = None):
        self.base = base
        self.base_seq = base_seq
        """The commit `base` holds (durable.Index checks it is still the one it holds)."""
        self.changed: dict[str, FileEntry] = {}
        self.removed: set[str] = set()
        """Names of `base` that leave."""
        self._len = len(base)

    def __getitem__(self, name: str) -> FileEntry:
        if name in self.changed:
            return self.changed[name]
        if name in self.removed:
            raise KeyError(name)
        return self.base[name]

    def __setitem__(self, name: str, entry: FileEntry) -> None:
        if name not in self:
            self._len += 1
        self.changed[name] = entry
        self.removed.discard(name)

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._len -= 1
        self.changed.pop(name, None)
        if name in self.base:
            self.removed.add(name)

    def __contains__(self, name) -> bool:
        return name in self.changed or (name not in self.removed and name in self.base)

    def __iter__(self) -> Iterator[str]:
        yield from (n for n in self.base if n not in self.removed and n not in self.changed)
        yield from self.changed

    def __len__(self) -> int:
        return self._len

    def total_size(self) -> int:
        """The bytes of all entries (`Manifest.size`): the base's own total where it keeps one
        (durable.Index sums in sqlite), less what left or was replaced, plus the changes; a
        commit of one file beside 1,000,000 asks about that one, not about every name."""
        base_total = getattr(self.base, "total_size", None)
        if base_total is None:
            return sum(e.size for e in self.values())
        total = base_total()
        for name in self.removed | self.changed.keys():
            try:
                total -= self.base[name].size
            except KeyError:  # a new name: nothing of the base's to take away
                pass
        return total + sum(e.size for e in self.changed.values())

    def under(self, prefix: str) -> list[str]:
        """The names starting with `prefix`."""
        if hasattr(self.base, "under"):
            names = [n for n in self.base.under(prefix) if n not in self.removed and n not in self.changed]
        else:
            names = [n for n in self if n.startswith(prefix) and n not in self.changed]
        return names + [n for n in self.changed if n.startswith(prefix)]


def _under(files: Mapping[str, FileEntry], d: str) -> list[str]:
    return files.under(d + "/") if hasattr(files, "under") else [n for n in files if n.startswith(d + "/")]


def settle(previous: Manifest | None, changes: list[FileEntry], removed: set[str],
           markers: tuple) -> tuple[dict[str, FileEntry], dict[str, tuple[str, ...]]]:
    """The next manifest's files and checkpoint units; pure.

    A checkpoint dir is one unit on deletion too. A rotation (`shutil.rmtree`) cut short leaves
    part of a committed dir: while its marker is still there locally, none of its deletions is
    applied (the dir stays as last committed, whole); once the marker is deleted, every name
    under the dir leaves. A dir whose marker is among `changes` was committed anew: its unit is
    the names under it now.
    """
    # Durable files kept in an index (durable.Index) are overlaid, not copied: a commit costs
    # its changes. A plain dict is copied, as before (a chain of overlays would deepen).
    files: MutableMapping[str, FileEntry]
    if previous is not None and hasattr(previous.files, "under"):
        files = Overlay(previous.files, previous.seq)
    else:
        files = dict(previous.files) if previous else {}
    units = dict(previous.checkpoints) if previous else {}
    # Manifests written before units were recorded (format 1 only: format-2 records always carry
    # them), found by a walk over every name: not on each commit over an index.
    legacy = not (isinstance(files, Overlay) and previous.base)
    for d in _marked(files, markers) if legacy else ():
        units.setdefault(d, tuple(sorted(_under(files, d))))
    for d, names in list(units.items()):
        gone = removed & set(names)
        if not gone:
            continue
        if any(_is_marker(n, d, markers) for n in gone):
            for n in _under(files, d):
                del files[n]
            del units[d]
        removed = removed - gone  # the marker stays: so do its shards
    for name in removed:
        files.pop(name, None)
    for entry in changes:
        files[entry.name] = entry
    for d in _marked([e.name for e in changes], markers):
        units[d] = tuple(sorted(_under(files, d)))
    return files, {d: names for d, names in units.items() if any(n in files for n in names)}


def _marked(names: Iterable[str], markers: tuple) -> set[str]:
    return {n.rpartition("/")[0] for n in names if "/" in n and any(m.matches(n.rpartition("/")[2]) for m in markers)}


def _is_marker(name: str, d: str, markers: tuple) -> bool:
    parent, _, base = name.rpartition("/")
    return parent == d and any(m.matches(base) for m in markers)


FENCED = "fenced"
"""`read`'s answer for a manifest a fenced-off writer committed: skipped unread."""
