"""(config, local files, what is durable) → what to upload. Pure: no I/O, no clock.

A file is named by the first `save` rule whose glob matches it (its stored name and policy);
a file that no rule names is uploaded at the end, under its own path, as W&B does. Ignore
globs win over everything. A file whose size and mtime equal its manifest entry is unchanged
and is not read again.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import re
from collections.abc import Callable, Iterable, Iterator, Mapping

from . import config, globs, keys
from .manifest import FileEntry, Manifest
from .watch import LocalFile


@dataclasses.dataclass(frozen=True, slots=True)  # slots: a sync may plan 100,000 of these
class Intent:
    """Upload `file` under `name` with `policy`."""

    file: LocalFile
    name: str
    policy: config.Policy


@dataclasses.dataclass(frozen=True)
class SyncPlan:
    uploads: tuple[Intent, ...]
    """Files new or changed (by size or mtime) since the manifest: to hash, then upload."""
    unchanged: tuple[tuple[Intent, FileEntry], ...]
    ignored: tuple[LocalFile, ...]
    collisions: tuple[tuple[Intent, Intent], ...]
    """Two files with one stored name (through `base_path`): the first wins, the second is
    reported and not uploaded."""


def is_temp(temp_names: tuple[globs.Glob, ...], relpath: str) -> bool:
    """True when the file's name, or a directory above it, is a temp name (`last.pt.tmp`,
    `ckpt/.metadata.tmp`, `tmp-checkpoint-5/model.bin`)."""
    return any(globs.matches_any(temp_names, part) for part in relpath.split("/"))


def names_temp(rules: Iterable[config.SaveRule], temp_names: tuple[globs.Glob, ...], relpath: str) -> bool:
    """True when a save rule names this temp file explicitly: it matches the file and one of its
    pattern's segments is itself a temp name (`last.pt.tmp`, `*.tmp`, `**/*.part`), so that
    `ckpt/**` or `**` never uploads a half-written file."""
    return any(rule.glob.matches(relpath) and is_temp(temp_names, rule.glob.pattern) for rule in rules)


def name_of(rules: Iterable[config.SaveRule], relpath: str) -> tuple[str, config.Policy]:
    """The stored name and policy of a file: the first matching rule, else its path at `end`."""
    for rule in rules:
        if rule.glob.matches(relpath):
            return rule.stored_name(relpath), rule.policy
    return relpath, config.Policy.END


def for_sync(
    rules: tuple[config.SaveRule, ...],
    ignore: tuple[globs.Glob, ...],
    files: Iterable[LocalFile],
    durable: Manifest | None,
    temp_names: tuple[globs.Glob, ...] = config.RunConfig().temp_names,
) -> SyncPlan:
    found: dict[str, list] = {"upload": [], "unchanged": [], "ignored": [], "collision": []}
    for kind, a, b in each_for_sync(rules, ignore, files, durable, temp_names):
        found[kind].append(a if kind in ("upload", "ignored") else (a, b))
    return SyncPlan(tuple(found["upload"]), tuple(found["unchanged"]), tuple(found["ignored"]),
                    tuple(found["collision"]))


def each_for_sync(
    rules: tuple[config.SaveRule, ...],
    ignore: tuple[globs.Glob, ...],
    files: Iterable[LocalFile],
    durable: Manifest | None,
    temp_names: tuple[globs.Glob, ...] = config.RunConfig().temp_names,
) -> Iterator[tuple[str, object, object]]:
    """`for_sync`, one file at a time, as `files` come: ("upload", intent, None), ("unchanged",
    intent, entry), ("ignored", file, None) or ("collision", the first intent, this one)."""
    claimed: dict[str, Intent] = {}
    known = durable.files if durable else {}
    for f in files:
        if globs.matches_any(ignore, f.relpath) or (
                is_temp(temp_names, f.relpath) and not names_temp(rules, temp_names, f.relpath)):
            yield "ignored", f, None
            continue
        name, policy = name_of(rules, f.relpath)
        intent = Intent(f, name, policy)
        if rules:  # else every name is a path of the scan, each once: nothing to claim (100,000 entries)
            if name in claimed:
                yield "collision", claimed[name], intent
                continue
            claimed[name] = intent
        entry = known.get(name)
        if entry is not None and (entry.size, entry.mtime_ns) == (f.size, f.mtime_ns):
            yield "unchanged", intent, entry
        else:
            yield "upload", intent, None


# ------------------------------------------------------------------------ the sidecar's view

# Conventions that name a checkpoint directory before its marker exists: PyTorch DCP's shard
# files, and Hugging Face Trainer's `checkpoint-N` directories.
SHARD_HINTS = (globs.Glob("*.distcp"),)
CHECKPOINT_DIR_HINTS = (globs.Glob("checkpoint-*"),)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the sidecar does with one file of the run dir."""

    name: str | None
    """Stored name; None when an ignore glob names the file."""
    policy: config.Policy
    checkpoint_dir: str | None = None
    """The checkpoint directory the file belongs to: it is uploaded whole, marker last."""
    is_marker: bool = False


def marked_dirs(names: Iterable[str], markers: tuple[globs.Glob, ...]) -> set[str]:
    """Directories (relative paths) that hold a completion marker among `names`."""
    found = set()
    for name in names:
        parent, _, base = name.rpartition("/")
        if parent and globs.matches_any(markers, base):
            found.add(parent)
    return found


def decide(
    cfg: config.RunConfig,
    extra_rules: tuple[config.SaveRule, ...],
    relpath: str,
    known_checkpoint_dirs: set[str],
) -> Decision:
    """Classify a file: ignored, or its stored name and policy, and its checkpoint directory.

    A directory is a checkpoint directory when it holds a marker now or held one before
    (`known_checkpoint_dirs`), when a sibling directory did (`ckpt/step-200` once
    `ckpt/step-100/.metadata` was seen), or when a convention names it (`*.distcp` shards,
    `checkpoint-*`). Its files wait for the marker, so no manifest names it half-written.
    """
    if globs.matches_any(cfg.ignore, relpath):
        return Decision(None, config.Policy.END)
    if is_temp(cfg.temp_names, relpath) and not names_temp(cfg.save + extra_rules, cfg.temp_names, relpath):
        return Decision(None, config.Policy.END)
    name, policy = name_of(cfg.save + extra_rules, relpath)
    parent, _, base = relpath.rpartition("/")
    ckpt = _checkpoint_dir(relpath, known_checkpoint_dirs)
    is_marker = ckpt is not None and parent == ckpt and globs.matches_any(cfg.complete_markers, base)
    if ckpt is None and parent and globs.matches_any(cfg.complete_markers, base):
        ckpt, is_marker = parent, True
    return Decision(name, policy, ckpt, is_marker)


def expects_marker(ckpt_dir: str, known: set[str]) -> bool:
    """True when this writer has seen a marker in `ckpt_dir` or a directory of its shape.

    A replica that never has (rank 1 of a DCP job writes shards; rank 0 writes `.metadata`)
    uploads its part of a checkpoint directory once the directory is quiet instead."""
    return ckpt_dir in known or _shape(ckpt_dir) in {_shape(d) for d in known}


def incomplete_at_end(ckpt_dir: str, known: set[str]) -> bool:
    """At the end of the run, does a checkpoint dir that has no marker go up as it is (as
    incomplete)? Yes unless a marker was ever seen in it: that dir is one a rotation is
    deleting, and its leftovers must not come back (manifest.settle)."""
    return ckpt_dir not in known


def asked_by_name(ckpt_dir: str, patterns: tuple[globs.Glob, ...]) -> bool:
    """A restore glob that names this dir itself (`checkpoint-5`, `checkpoint-5/**`) takes it
    even incomplete; `**` or `checkpoint-*` do not."""
    return any(p.pattern == ckpt_dir or p.pattern.startswith(ckpt_dir + "/") for p in patterns)


def _checkpoint_dir(relpath: str, known: set[str]) -> str | None:
    parts = relpath.split("/")[:-1]
    shapes = {_shape(d) for d in known}
    for depth in range(len(parts), 0, -1):  # nearest ancestor first
        d = "/".join(parts[:depth])
        if d in known or _shape(d) in shapes:
            return d
        if globs.matches_any(CHECKPOINT_DIR_HINTS, parts[depth - 1]):
            return d
    base = relpath.rpartition("/")[2]
    if parts and globs.matches_any(SHARD_HINTS, base):
        return "/".join(parts)
    return None


def _shape(path: str) -> str:
    """A sibling of the same shape: `ckpt/step-200` has the shape of `ckpt/step-100`."""
    parent, _, base = path.rpartition("/")
    return parent + "/" + re.sub(r"\d+", "#", base) if re.search(r"\d", base) else "\0" + path


def markerless(cfg: config.RunConfig, ckpt_dir: str, known: set[str]) -> bool:
    """Does this replica upload its part of `ckpt_dir` without a marker? Only in a run whose
    replicas' parts make one checkpoint (`restore-replicas: all`), and only while it has never
    seen a marker of that shape itself."""
    return cfg.restore_replicas == "all" and not expects_marker(ckpt_dir, known)


class Unit(enum.Enum):
    """What a file event is part of."""

    IGNORED = "ignored"
    """An ignore glob names it."""
    UNSTORABLE = "unstorable"
    """Its stored name would not stay inside the run dir on restore: warned about, never sent."""
    FILE = "file"
    """A file on its own, under its rule's policy."""
    MARKER = "marker"
    """A checkpoint directory's marker: the directory is complete and goes as one unit."""
    MEMBER = "member"
    """A checkpoint directory's file: it waits for the marker."""
    QUIET_MEMBER = "quiet_member"
    """A file of a directory whose marker another replica writes (`markerless`): this
    replica's part goes whole once the directory has been quiet for `settle` seconds."""


def unstorable(name: str) -> str | None:
    """Why `name` cannot be stored (it would leave the run dir on restore), or None."""
    try:
        keys.check_stored_name(name)
    except keys.RunPathError as err:
        return str(err)
    return None


def unit_of(d: Decision, markerless_dir: bool) -> Unit:
    if d.name is None:
        return Unit.IGNORED
    if unstorable(d.name) is not None:
        return Unit.UNSTORABLE
    if d.checkpoint_dir is None:
        return Unit.FILE
    if d.is_marker:
        return Unit.MARKER
    return Unit.QUIET_MEMBER if markerless_dir else Unit.MEMBER


class Step(enum.Enum):
    """What to do now with a complete file, or a complete checkpoint directory."""

    HOLD = "hold"
    """`end` (and files no rule names) while the run goes on: owed until the end."""
    SKIP = "skip"
    """`now` and sent once already."""
    COALESCE = "coalesce"
    """The previous version is still uploading: the newest goes right after it."""
    JOIN_RETRY = "join_retry"
    """A retry is scheduled: it reads the file as it is then."""
    UPLOAD = "upload"


def step(policy: config.Policy, *, ending: bool, sent_once: bool, uploading: bool, retrying: bool) -> Step:
    """The policies' meaning: `live` goes on every complete version (bursts coalesce), `now`
    once, `end` when the run ends (preStop or SIGTERM: `ending`)."""
    if policy is config.Policy.END and not ending:
        return Step.HOLD
    if policy is config.Policy.NOW and sent_once:
        return Step.SKIP
    if uploading:
        return Step.COALESCE
    return Step.JOIN_RETRY if retrying else Step.UPLOAD


class Seen(enum.Enum):
    """What a rescan does with a file it finds."""

    SKIP = "skip"
    """Ignored, or a checkpoint directory's file that goes with its marker."""
    KNOWN = "known"
    """Its size and mtime are those already sent or durable."""
    READY = "ready"
    """Complete: unchanged for `settle` seconds, or the run is ending."""
    DIR_AT_END = "dir_at_end"
    """A file of a marker-less directory at the end: the directory goes as it is."""
    WATCH = "watch"
    """Changed recently: looked at again after `settle` seconds."""


def classify(cfg: config.RunConfig, extra: tuple[config.SaveRule, ...], relpath: str,
             checkpoint_dirs: set[str]) -> tuple[Decision, Unit]:
    """`decide`, then what the file is part of (`unit_of`)."""
    d = decide(cfg, extra, relpath, checkpoint_dirs)
    quiet = d.checkpoint_dir is not None and markerless(cfg, d.checkpoint_dir, checkpoint_dirs)
    return d, unit_of(d, quiet)


def on_rescan(unit: Unit, *, known: bool, settled: bool, ending: bool) -> Seen:
    """A rescan is the safety net: events are the rule. `ending` is the final flush's rescan,
    which takes every file as it is."""
    if unit in (Unit.IGNORED, Unit.MEMBER):
        return Seen.SKIP
    if known:
        return Seen.KNOWN
    if unit is Unit.QUIET_MEMBER and ending:
        return Seen.DIR_AT_END
    return Seen.READY if ending or settled else Seen.WATCH


@dataclasses.dataclass
class Rescan:
    """What a rescan found, each list in the order to act on it."""

    ready: list[tuple[str, float]] = dataclasses.field(default_factory=list)
    """(relpath, when it was complete) of complete files."""
    watch: list[LocalFile] = dataclasses.field(default_factory=list)
    known: list[LocalFile] = dataclasses.field(default_factory=list)
    """Files classified and found as sent under their stored name (one sent or durable under
    its own path as it is now is not classified, nor listed)."""
    dirs_at_end: dict[str, tuple[config.Policy, float]] = dataclasses.field(default_factory=dict)
    """Marker-less checkpoint dirs that go as they are (the end): (policy, when)."""
    incomplete: list[str] = dataclasses.field(default_factory=list)
    """Of those, the dirs that lack a marker they should have (not another replica's to write):
    uploaded as incomplete, logged by name and counted."""


def stored_under_own_paths(cfg: config.RunConfig, extra: tuple[config.SaveRule, ...]) -> bool:
    """Whether every file is stored under its own path: no `base_path` rule names one otherwise."""
    return not any(rule.base_path for rule in cfg.save + extra)


def rescan(cfg: config.RunConfig, extra: tuple[config.SaveRule, ...], checkpoint_dirs: set[str],
           files: Iterable[LocalFile], sent: Callable[[str, str], tuple], now: float, settle: float,
           ending: bool, uploading: Mapping[str, tuple[int, int]] | None = None) -> Rescan:
    """Sort the files of a rescan (`sent(relpath, name)` gives the (size, mtime_ns) they were
    sent with). At the end newest first: when the grace period is short, the latest checkpoint
    is what matters. A marker found complete makes its directory a checkpoint directory for the
    files after it, as its event would.

    `uploading`: path → (size, mtime_ns) of the files whose upload is under way, as they were
    when it was handed out. A file listed as it was then is left to that upload, not handed on
    again (a marker still makes its directory a checkpoint directory): handed on, it would be
    checked a second time after it and a flush wait a commit more. One that changed since (a
    rename over it whose event was lost) is handed on, to go after it."""
    dirs = set(checkpoint_dirs)
    found = Rescan()
    files = list(files)
    uploading = uploading or {}
    # A file sent or durable under its own path with its size and mtime now is left as it is,
    # whatever it is part of (known, ignored or a member: `on_rescan` does nothing with any of
    # them), so it need not be classified: most of a big run dir, most of the time. Exact only
    # where every name is the path: a `base_path` rule stores a file under another name.
    as_is = stored_under_own_paths(cfg, extra)
    for f in sorted(files, key=lambda f: -f.mtime_ns) if ending else files:
        if as_is and (f.size, f.mtime_ns) in sent(f.relpath, f.relpath):
            continue
        d, unit = classify(cfg, extra, f.relpath, dirs)
        if ending and unit is Unit.MEMBER and incomplete_at_end(d.checkpoint_dir, checkpoint_dirs):
            unit = Unit.QUIET_MEMBER  # never had its marker: at the end it goes up as it is
        known = d.name is not None and (f.size, f.mtime_ns) in sent(f.relpath, d.name)
        seen = on_rescan(unit, known=known, settled=now - f.mtime_ns / 1e9 >= settle, ending=ending)
        in_flight = uploading.get(f.relpath) == (f.size, f.mtime_ns)  # left to the upload under way
        if seen is Seen.KNOWN:
            found.known.append(f)
        elif seen is Seen.DIR_AT_END:
            found.dirs_at_end.setdefault(d.checkpoint_dir, (d.policy, f.mtime_ns / 1e9))
        elif seen is Seen.READY:
            if not in_flight:
                found.ready.append((f.relpath, f.mtime_ns / 1e9))
            if unit is Unit.MARKER:
                dirs.add(d.checkpoint_dir)
        elif seen is Seen.WATCH and not in_flight:
            found.watch.append(f)
    if found.dirs_at_end:
        marked = marked_dirs((f.relpath for f in files), cfg.complete_markers)
        found.incomplete = sorted(d for d in found.dirs_at_end
                                  if d not in marked and not markerless(cfg, d, checkpoint_dirs))
    return found


def final_order(owed: dict[str, float]) -> list[str]:
    """What `end` owes, newest first: when the grace period is short, the latest checkpoint is
    what matters."""
    return [key for key, _ in sorted(owed.items(), key=lambda kv: -kv[1])]


# ------------------------------------------------------------------------------- restore

@dataclasses.dataclass(frozen=True)
class RestorePlan:
    files: dict[str, tuple[str, FileEntry]]
    """stored name → (replica, entry) of everything to restore."""
    groups: dict[str, tuple[str, ...]]
    """checkpoint dir → its names (restored whole, markers last)."""
    incomplete: tuple[str, ...]
    """checkpoint dirs left out: no marker yet, or a replica's part not yet durable."""


def for_restore(
    manifests: dict[str, Manifest],
    markers: tuple[globs.Glob, ...],
    patterns: tuple[globs.Glob, ...] = (),
    own: str = "0",
) -> RestorePlan:
    """Which files of these replicas' manifests (in memory) to restore; pure. `restore_stream`
    decides; this collects its units."""
    chosen = restore_stream({r: _sorted_entries(m) for r, m in manifests.items()},
                            {r: m.checkpoints for r, m in manifests.items()}, markers, patterns, own)
    files, groups = {}, {}
    for d, unit in chosen.units():
        files.update((name, (replica, entry)) for name, replica, entry in unit)
        if d is not None:
            groups[d] = tuple(name for name, _, _ in unit)
    return RestorePlan(files, groups, chosen.incomplete())


def _sorted_entries(m: Manifest) -> Callable[[], Iterable[FileEntry]]:
    return lambda: (m.files[n] for n in sorted(m.files))


RestoreUnit = tuple  # (checkpoint dir or None, [(name, replica, entry), ...]): restored whole, markers last


class RestoreStream:
    """Which files of the replicas' latest commits to restore, as a stream of units; pure.

    A checkpoint directory (it holds a marker, has the shape of one that does, or a convention
    names it) is taken only when it holds a marker and every participating replica's part of
    it is durable. The participants of a shape are the replicas that made any part of any
    directory of that shape durable. With one replica that is just "has its marker".

    `sources` gives each replica's entries sorted by name, afresh on each call (listing.py
    streams them): a survey reads them once (markers, directories and the replicas in each,
    the checkpoint units as committed), then `units()` reads them again, merged by name (the
    own replica wins a clash), holding one checkpoint directory at a time. Memory grows with
    the directories, not the files.
    """

    def __init__(self, sources: dict[str, Callable[[], Iterable[FileEntry]]],
                 checkpoints: dict[str, Mapping[str, tuple[str, ...]]], markers: tuple[globs.Glob, ...],
                 patterns: tuple[globs.Glob, ...], own: str):
        self.sources, self.markers, self.patterns, self.own = sources, markers, patterns, own
        self._incomplete: set[str] = set()
        self.groups: set[str] = set()
        """The checkpoint dirs `units()` gave whole so far."""
        recorded = {r: {d: set(names) for d, names in cps.items()} for r, cps in checkpoints.items()}
        held: dict[tuple[str, str], int] = {}
        strays: set[str] = set()
        marked: set[str] = set()
        in_dir: dict[tuple[str, bool], set[str]] = {}  # (parent dir, is a shard) → replicas
        matched: set[int] = set()

        def every(replica: str, entry: FileEntry) -> None:  # losers of a clash too: units as committed
            units = recorded.get(replica)
            if units:
                d = entry.name
                while "/" in d:
                    d = d.rpartition("/")[0]
                    if d in units:
                        held[replica, d] = held.get((replica, d), 0) + 1
                        if entry.name not in units[d]:
                            strays.add(d)

        for replica, entry in self._merged(every):
            parent, _, base = entry.name.rpartition("/")
            if parent and globs.matches_any(markers, base):
                marked.add(parent)
            in_dir.setdefault((parent, globs.matches_any(SHARD_HINTS, base)), set()).add(replica)
            matched.update(i for i, p in enumerate(patterns) if i not in matched and p.matches(entry.name))
        # Checkpoint dirs whose files differ from the set committed with their marker
        # (`Manifest.checkpoints`): restoring them would place a torn checkpoint.
        self.torn = strays | {d for r, units in recorded.items() for d, names in units.items()
                              if held.get((r, d), 0) != len(names)}
        self.unmatched = tuple(p for i, p in enumerate(patterns) if i not in matched)
        """The patterns that name no file of these commits: `restore(name)` looks them up in
        older ones (the trainer deleted the file and the deletion was committed)."""
        self._marked = marked
        self._dirs: dict[tuple[str, bool], str | None] = {
            key: _checkpoint_dir(f"{key[0]}/x{'.distcp' if key[1] else ''}" if key[0] else "x", marked)
            for key in in_dir}
        self._present: dict[str, set[str]] = {}
        for key, replicas in in_dir.items():
            if self._dirs[key] is not None:
                self._present.setdefault(self._dirs[key], set()).update(replicas)
        self._participants: dict[str, set[str]] = {}
        for d, replicas in self._present.items():
            self._participants.setdefault(_shape(d), set()).update(replicas)

    def incomplete(self) -> tuple[str, ...]:
        """Checkpoint dirs left out (no marker yet, or a replica's part not yet durable), or
        restored file by file as asked by name; whole once `units()` has run to its end."""
        return tuple(sorted(self._incomplete))

    def units(self) -> Iterator[RestoreUnit]:
        """What to restore, in name order: a file alone (dir None), or a checkpoint dir whole."""
        open_dirs: dict[str, list] = {}
        stack: list[str] = []  # the open checkpoint dirs, each inside the one before
        for replica, entry in self._merged():
            name = entry.name
            while stack and not name.startswith(stack[-1] + "/"):  # sorted: that dir is done
                yield from self._close(stack.pop(), open_dirs)
            parent, _, base = name.rpartition("/")
            d = self._dirs.get((parent, globs.matches_any(SHARD_HINTS, base)))
            chosen = not self.patterns or globs.matches_any(self.patterns, name)
            if d is None:
                if chosen:
                    yield None, [(name, replica, entry)]
                continue
            if d not in open_dirs:
                open_dirs[d] = []
                stack.append(d)
            if chosen:  # completeness is judged on every stored file, before the patterns choose
                open_dirs[d].append((name, replica, entry))
        while stack:
            yield from self._close(stack.pop(), open_dirs)

    def _close(self, d: str, open_dirs: dict[str, list]) -> Iterator[RestoreUnit]:
        asked = open_dirs.pop(d)
        if not asked:
            return
        if d in self._marked and self._participants[_shape(d)] <= self._present[d] and d not in self.torn:
            self.groups.add(d)
            yield d, sorted(asked, key=lambda a: (a[0].rpartition("/")[0] == d and
                                                  globs.matches_any(self.markers, a[0].rpartition("/")[2]), a[0]))
        elif d not in self.torn and asked_by_name(d, self.patterns):
            self._incomplete.add(d)  # restored as asked, still named as incomplete
            for a in asked:
                yield None, [a]
        else:
            self._incomplete.add(d)

    def _merged(self, every: Callable[[str, FileEntry], None] | None = None) -> Iterator[tuple[str, FileEntry]]:
        """(replica, entry) of every replica's entries in name order, each name once: the own
        replica's, else the first replica's by name. `every` sees each entry, clashes too."""
        order = sorted(self.sources, key=lambda r: (r != self.own, r))
        if len(order) == 1:  # one replica (the usual restore): nothing to merge
            for entry in self.sources[order[0]]():
                if every is not None:
                    every(order[0], entry)
                yield order[0], entry
            return
        streams = [_tagged(self.sources[r](), rank, r, every) for rank, r in enumerate(order)]
        last = None
        for name, _, replica, entry in heapq.merge(*streams):
            if name != last:
                last = name
                yield replica, entry


def restore_stream(sources: dict[str, Callable[[], Iterable[FileEntry]]],
                   checkpoints: dict[str, Mapping[str, tuple[str, ...]]], markers: tuple[globs.Glob, ...],
                   patterns: tuple[globs.Glob, ...] = (), own: str = "0") -> RestoreStream:
    """`RestoreStream` of these replicas' entries (its survey reads them once, here)."""
    return RestoreStream(sources, checkpoints, markers, patterns, own)


def _tagged(entries: Iterable[FileEntry], rank: int, replica: str, every) -> Iterator[tuple]:
    for e in entries:
        if every is not None:
            every(replica, e)
        yield e.name, rank, replica, e


def unmatched(manifests: dict[str, Manifest], patterns: tuple[globs.Glob, ...]) -> tuple[globs.Glob, ...]:
    """The patterns that name no file of these manifests: `restore(name)` looks them up in
    older manifests (the trainer deleted the file and the deletion was committed)."""
    return restore_stream({r: _sorted_entries(m) for r, m in manifests.items()}, {}, (), patterns).unmatched


def merge_restore(first: RestorePlan, more: RestorePlan) -> RestorePlan:
    """`first` plus what `more` adds (names `first` has win): the latest manifest's files, and
    older versions of names it no longer holds."""
    files = {**more.files, **first.files}
    groups = {**more.groups, **first.groups}
    incomplete = tuple(sorted(set(first.incomplete) | (set(more.incomplete) - set(groups))))
    return RestorePlan(files, groups, incomplete)
