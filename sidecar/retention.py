"""Retention: which objects of a run go, and why. Pure: the caller lists and reads (gc.py).

A writer uploads a file's object first and commits the manifest naming it later, and readers
(a restore, `restore(name)` walking back) read a manifest and then its objects. So, per replica:

- the newest `keep` valid manifests stay, and so does every object they name;
- a manifest superseded less than `min_age` ago stays (a restore may be reading it), and so
  does every object younger than `min_age` (it may be named by a commit on its way);
- a manifest numbered above the newest valid one stays (nothing reads it; a writer may be
  taking over from it); a replica with an unreadable manifest is left alone entirely (what it
  names is unknown), and said so;
- an object no manifest ever named stays while the replica's lease is held (its writer may
  commit it at any moment: a checkpoint dir waits for its marker);
- everything else under `objects/`, `files/` and `manifests/` goes; the lease and any other key stay.

A whole run goes (`expire_after`) only when none of its replicas' leases is held and its
newest object of any kind is older than that: "idle for N days", as S3's lifecycle expiry
counts days since the last write.

What a manifest names is the storage format's business: the caller hands `Version.names` in
(format 1: its files' keys), so a later format reuses this unchanged.
"""

from __future__ import annotations

import dataclasses
import re

from .errors import InputError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
DEFAULT_KEEP = 3
DEFAULT_MIN_AGE = "1h"


def parse_duration(text: str, what: str = "--min-age") -> float:
    """`90`, `30s`, `15m`, `1h`, `2d` → seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise InputError(f"{what}: {text!r} is not a duration; expected a number with an optional unit "
                         "s, m, h or d (e.g. 90s, 15m, 1h, 2d)")
    return float(match.group(1)) * _UNIT[match.group(2)]


@dataclasses.dataclass(frozen=True)
class Policy:
    keep: int = DEFAULT_KEEP
    """Valid manifests kept per replica, newest first (at least 1: the latest state)."""
    min_age: float = parse_duration(DEFAULT_MIN_AGE)
    """Seconds: nothing younger goes, and no manifest superseded more recently."""
    expire_after: float | None = None
    """Seconds: a run idle this long (no lease held, no write) goes whole; None: never."""

    def __post_init__(self) -> None:
        if self.keep < 1:
            raise InputError(f"--keep: {self.keep} keeps no manifest; expected 1 or more "
                             "(the latest manifest is the run's state)")
        if self.min_age < 0 or (self.expire_after is not None and self.expire_after <= 0):
            raise InputError("--min-age and --expire-days must be positive; fix: give a positive number")


@dataclasses.dataclass(frozen=True)
class Obj:
    key: str
    size: int
    modified: float
    """The store's LastModified, seconds since the epoch."""


@dataclasses.dataclass(frozen=True)
class Version:
    """A committed manifest, as far as retention cares."""

    seq: int
    key: str
    valid: bool
    """Written by the lease epoch that owned its number (lease.py); readers skip the others."""
    names: frozenset[str]
    """The object keys it names."""
    requires: frozenset[str] = frozenset()
    """Format 2: the keys under manifests/ it is read from (its base's record and chunks, the
    deltas between): kept while it is, so a kept commit's chain never breaks."""


@dataclasses.dataclass(frozen=True)
class Replica:
    name: str
    data_prefixes: tuple[str, ...]
    """Where its files' objects are: `objects/` (format 2) and `files/` (format 1)."""
    manifests_prefix: str
    objects: tuple[Obj, ...]
    """Every object under the replica's prefix."""
    versions: tuple[Version, ...]
    unreadable: tuple[str, ...] = ()
    """Problems (one line each) with manifests or the lease that could not be read."""
    held: bool = False
    """Its lease is held by a live writer."""
    head: int | None = None
    """The number its `head.json` names (format 2): readers probe upward from it, so no commit
    above it is dropped (a hole there would end their probe early)."""


@dataclasses.dataclass(frozen=True)
class Drop:
    key: str
    size: int
    why: str
    kind: str = "object"
    """manifest | object (named only by dropped manifests) | uncommitted (named by none) | run
    (anything of a run that goes whole)"""


@dataclasses.dataclass
class Decision:
    drops: list[Drop] = dataclasses.field(default_factory=list)
    kept_manifests: int = 0
    kept_objects: int = 0
    kept_bytes: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(d.size for d in self.drops)


def replica(r: Replica, policy: Policy, now: float) -> Decision:
    """What goes of one replica, and why."""
    out = Decision()
    if r.unreadable:
        out.problems.extend(f"replica {r.name} left alone: {p}" for p in r.unreadable)
        return out
    modified = {o.key: o.modified for o in r.objects}
    sizes = {o.key: o.size for o in r.objects}
    young = lambda key: now - modified.get(key, now) < policy.min_age  # noqa: E731
    newest_first = sorted(r.versions, key=lambda v: v.seq, reverse=True)
    valid = [v for v in newest_first if v.valid]
    kept: list[Version] = []
    dropped: list[tuple[Version, str]] = []
    superseded_at = None  # when the next newer valid manifest was written
    for v in newest_first:
        if v.valid and v in valid[:policy.keep]:
            kept.append(v)
        elif not valid or v.seq > valid[0].seq:
            kept.append(v)  # above the latest valid one: not ours to judge
        elif r.head is not None and v.seq > r.head:
            kept.append(v)  # above a lagging head: readers walk through it
        elif v.valid and superseded_at is not None and now - superseded_at < policy.min_age:
            kept.append(v)  # superseded too recently: a restore may still be reading it
        elif young(v.key):
            kept.append(v)
        elif v.valid:
            dropped.append((v, f"manifest {v.seq}: older than the newest {policy.keep} kept"))
        else:
            dropped.append((v, f"manifest {v.seq}: written by a fenced-off writer, never read"))
        if v.valid:
            superseded_at = modified.get(v.key, now)
    required = frozenset().union(*(v.requires for v in kept))
    dropped = [(v, why) for v, why in dropped if v.key not in required]  # a kept delta's base or chain
    kept += [v for v in r.versions if v.key in required and v not in kept]
    named = frozenset().union(*(v.names for v in kept))
    only_in: dict[str, list[int]] = {}
    for v, _ in dropped:
        for key in v.names - named:
            only_in.setdefault(key, []).append(v.seq)
    out.drops.extend(Drop(v.key, sizes.get(v.key, 0), why, "manifest") for v, why in dropped)
    versions = {v.key for v in r.versions}
    for o in r.objects:  # a base's chunks go with the last commit read from them
        if o.key.startswith(r.manifests_prefix) and o.key not in versions and o.key not in required \
                and not young(o.key):  # also a base whose record never landed (a lost race, a failed PUT)
            why = ("a chunk of a dropped base" if any(o.key in v.requires for v, _ in dropped)
                   else "a chunk no commit names")
            out.drops.append(Drop(o.key, o.size, why, "manifest"))
    out.kept_manifests = len(kept)
    for o in r.objects:
        if not o.key.startswith(r.data_prefixes):
            continue
        if o.key in named or young(o.key):
            out.kept_objects += 1
            out.kept_bytes += o.size
        elif r.held:
            # A live writer may commit any of its objects at any moment: an upload not committed yet
            # (a dir waits for its marker), or an old version it finds stored again (same name, same
            # content: format 1 reuses it after a HEAD, so min-age cannot protect it). They go once
            # the writer is gone.
            out.kept_objects += 1
            out.kept_bytes += o.size
        elif o.key in only_in:
            seqs = ", ".join(str(s) for s in sorted(only_in[o.key]))
            out.drops.append(Drop(o.key, o.size, f"named only by dropped manifests {seqs}"))
        else:
            out.drops.append(Drop(o.key, o.size, "named by no manifest (an upload never committed)", "uncommitted"))
    return out


def expired(objects: list[Obj], held: bool, policy: Policy, now: float) -> str | None:
    """Why the whole run goes (idle longer than `expire_after`), or None when it stays."""
    if policy.expire_after is None or held or not objects:
        return None
    last = max(o.modified for o in objects)
    idle = now - last
    if idle < max(policy.expire_after, policy.min_age):
        return None
    return f"run idle for {idle / 86400:.1f} days (expires after {policy.expire_after / 86400:g})"

