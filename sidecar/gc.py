"""`runsync gc`: list a run's objects, read its leases and manifests, ask `retention` what goes,
then delete it (or, with a dry run, only say so).

Deletion order keeps every reader whole: dropped manifests first, then the objects only they
named (a manifest never names a missing object, even when gc is cut short). Right before
deleting a replica's objects, its manifests are listed again (anything a manifest committed
since names stays) and its lease read again (a writer that took it since may commit an upload
it found already stored: the uncommitted objects stay).
"""

from __future__ import annotations

import dataclasses
import time

from botocore.exceptions import BotoCoreError, ClientError

from . import head, keys, lease, listing, manifest, records, retention, runsindex
from .errors import InputError, StoreError
from .logs import log

_BATCH = 1000  # DeleteObjects takes at most 1,000 keys


def names(opened: listing.Listing) -> frozenset[str]:
    """The object keys a commit names: the one format-specific question retention asks."""
    return frozenset(e.key for e in opened.entries())


@dataclasses.dataclass
class RunResult:
    run: keys.RunPath
    decision: retention.Decision
    expired: str | None = None
    """Why the whole run goes, when it does."""
    newest: float = 0.0
    """The newest object's LastModified when gc looked."""
    seen: dict[str, int] = dataclasses.field(default_factory=dict)
    """replica -> the highest manifest number gc read."""
    idle: tuple[str, ...] = ()
    """Replicas whose lease no live writer held when gc looked."""


@dataclasses.dataclass
class Report:
    dry_run: bool
    runs: list[RunResult]

    @property
    def drops(self) -> list[tuple[keys.RunPath, retention.Drop]]:
        return [(r.run, d) for r in self.runs for d in r.decision.drops]

    @property
    def bytes(self) -> int:
        return sum(d.size for _, d in self.drops)

    @property
    def problems(self) -> list[str]:
        return [f"{r.run}: {p}" for r in self.runs for p in r.decision.problems]


def run_paths(s3, store: keys.StoreURL, scope: str) -> list[keys.RunPath]:
    """The runs `scope` names: NAMESPACE, NAMESPACE/PROJECT or NAMESPACE/PROJECT/RUN."""
    parts = scope.split("/")
    if len(parts) == 3:
        return [keys.RunPath.parse(scope)]
    if len(parts) > 3 or not all(parts):
        raise InputError(f"gc scope {scope!r} is not NAMESPACE, NAMESPACE/PROJECT or NAMESPACE/PROJECT/RUN")
    keys.RunPath.parse(f"{parts[0]}/{parts[1] if len(parts) > 1 else 'x'}/x")  # checks the parts given
    root = keys.namespaces_prefix(store) + scope + "/"
    projects = [root] if len(parts) == 2 else manifest.list_prefixes(s3, store.bucket, root)
    found = []
    for project in projects:
        if project.endswith(f"/{runsindex.DIR}/"):
            continue  # the runs index, not a project
        for prefix in manifest.list_prefixes(s3, store.bucket, project):
            try:
                found.append(keys.RunPath.parse(prefix[len(keys.namespaces_prefix(store)):-1]))
            except InputError:
                continue  # not a run runsync wrote
    return sorted(found, key=str)


def gc(s3, store: keys.StoreURL, scope: str, policy: retention.Policy, dry_run: bool,
       now: float | None = None) -> Report:
    now = time.time() if now is None else now
    results = []
    for run in run_paths(s3, store, scope):
        result = decide(s3, store, run, policy, now)
        if not dry_run:
            apply(s3, store, result)
        results.append(result)
        log.info("would collect" if dry_run else "collected", extra={"fields": {
            "run": str(run), "dry_run": dry_run, "objects": len(result.decision.drops),
            "bytes": result.decision.bytes, "expired": result.expired, "problems": result.decision.problems}})
    return Report(dry_run, results)


def decide(s3, store: keys.StoreURL, run: keys.RunPath, policy: retention.Policy, now: float) -> RunResult:
    """What goes of one run (nothing is deleted here)."""
    run_prefix = keys.Layout(store, run, "0").run_prefix
    listing = _list(s3, store.bucket, run_prefix)
    replicas = [_replica(s3, store, run, name, objs, now) for name, objs in _by_replica(listing, run_prefix).items()]
    newest = max((o.modified for o in listing), default=0.0)
    seen = {r.name: max((v.seq for v in r.versions), default=0) for r in replicas}
    idle = tuple(r.name for r in replicas if not r.held)
    why = retention.expired(listing, any(r.held for r in replicas), policy, now)
    if why is not None and not any(r.unreadable for r in replicas):
        manifests = tuple(r.manifests_prefix for r in replicas)  # these first, as always
        drops = [retention.Drop(o.key, o.size, why, "manifest" if o.key.startswith(manifests) else "run")
                 for o in listing]
        return RunResult(run, retention.Decision(drops=drops), why, newest, seen, idle)
    decision = retention.Decision()
    for r in replicas:
        try:
            d = retention.replica(r, policy, now)  # may resolve commits again (`_Names`): S3 can fail
        except (StoreError, ClientError, BotoCoreError) as err:
            d = retention.Decision(problems=[f"replica {r.name} left alone: {err}"])
        decision.drops.extend(d.drops)
        decision.problems.extend(d.problems)
        decision.kept_manifests += d.kept_manifests
        decision.kept_objects += d.kept_objects
        decision.kept_bytes += d.kept_bytes
    return RunResult(run, decision, None, newest, seen, idle)


def apply(s3, store: keys.StoreURL, result: RunResult) -> None:
    """Delete what `decide` chose: manifests first, then what only they named, leases last."""
    bucket, run_prefix = store.bucket, keys.Layout(store, result.run, "0").run_prefix
    drops = result.decision.drops
    if result.expired is not None:
        listing = _list(s3, bucket, run_prefix)
        if max((o.modified for o in listing), default=0.0) > result.newest or len(listing) > len(drops):
            log.warning("run written during gc: not expired", extra={"fields": {"run": str(result.run)}})
            result.decision.drops, result.expired = [], None
            return
    manifests = [d.key for d in drops if d.kind == "manifest"]
    _delete(s3, bucket, manifests)
    if result.expired is None:
        since = _named_since(s3, store, result.run, result.seen)
        # a writer that took a lease meanwhile may commit what it found already uploaded
        woke = tuple(f"{run_prefix}{r}/" for r in result.idle if _held(s3, keys.Layout(store, result.run, r)))
        stay = {d.key for d in drops if d.key in since or (d.kind == "uncommitted" and d.key.startswith(woke))}
        if stay:
            result.decision.drops = drops = [d for d in drops if d.key not in stay]
            log.info("objects a writer may name since gc looked stay", extra={"fields": {
                "run": str(result.run), "objects": len(stay)}})
    rest = [d.key for d in drops if d.kind != "manifest"]
    _delete(s3, bucket, [k for k in rest if not k.endswith("/lease.json")])
    _delete(s3, bucket, [k for k in rest if k.endswith("/lease.json")])
    if result.expired is not None:
        runsindex.forget(s3, store, result.run)  # its line in `runsync runs` goes with it


def _replica(s3, store, run, name, objects, now) -> retention.Replica:
    layout = keys.Layout(store, run, name)
    problems = []
    try:
        current, _ = lease.read(s3, layout)
    except StoreError as err:
        current, problems = None, [str(err)]
    seqs = sorted((seq, o.key) for o in objects if (seq := layout.manifest_seq(o.key)) is not None)
    try:
        commits = records.Replica(s3, layout, [seq for seq, _ in seqs])  # each record and base read once
    except (ClientError, BotoCoreError) as err:
        return _unreadable(name, layout, objects, problems + [f"commit records unreadable: {err}"])
    versions, bases = [], set()
    for seq, key in seqs:
        try:
            opened = commits.read(seq)
            if opened is None:
                continue  # deleted meanwhile (another gc): nothing to judge
            named = names(opened)  # read through once here to find what cannot be read
        except StoreError as err:
            problems.append(str(err))
            continue
        except (ClientError, BotoCoreError) as err:  # a chunk gone, a body failing its checksum
            problems.append(f"manifest {layout.manifest_key(seq)} unreadable: {err}")
            continue
        m = opened.meta
        valid = current is None or m.epoch == current.owner_of(seq)
        whole = not m.requires  # its listing is all in its record (format 1, a small base): keep its names
        versions.append(retention.Version(seq, key, valid, named if whole else _Names(commits, seq),
                                          frozenset(m.requires)))
        if m.base != seq:
            bases.add(m.base)  # a delta's: its chain reads it again
    for v in versions:
        if isinstance(v.names, frozenset) and v.seq not in bases:
            commits.forget(v.seq)
    try:
        top = head.read(s3, layout)
    except (ClientError, BotoCoreError) as err:
        top, problems = None, problems + [f"head {layout.head_key} unreadable: {err}"]
    return retention.Replica(
        name=name, data_prefixes=(layout.objects_prefix, layout.files_prefix), manifests_prefix=layout.manifests_prefix,
        objects=tuple(objects), versions=tuple(versions), unreadable=tuple(problems),
        held=current is not None and current.alive(now), head=top.seq if top is not None else None,
    )


def _unreadable(name, layout, objects, problems) -> retention.Replica:
    """A replica retention leaves alone (it says why)."""
    return retention.Replica(name=name, data_prefixes=(layout.objects_prefix, layout.files_prefix),
                             manifests_prefix=layout.manifests_prefix, objects=tuple(objects), versions=(),
                             unreadable=tuple(problems), held=True)


class _Names:
    """A commit's object keys, resolved again each time retention asks: held for every commit
    at once they would take commits x files of memory (86,400 commits a day at one a second)."""

    def __init__(self, commits: records.Replica, seq: int):
        self._commits, self._seq = commits, seq

    def _keys(self) -> frozenset[str]:
        return names(self._commits.read(self._seq))

    def __iter__(self):
        return iter(self._keys())

    def __sub__(self, other) -> frozenset[str]:
        return self._keys() - other


def _held(s3, layout: keys.Layout) -> bool:
    try:
        current, _ = lease.read(s3, layout)
    except StoreError:
        return True  # unreadable now: assume a writer
    return current is not None and current.alive(time.time())


def _by_replica(listing: list[retention.Obj], run_prefix: str) -> dict[str, list[retention.Obj]]:
    """Objects grouped by replica; a group with no files, manifests or lease (code/) is not one."""
    groups: dict[str, list[retention.Obj]] = {}
    for o in listing:
        first, sep, rest = o.key[len(run_prefix):].partition("/")
        if sep:
            groups.setdefault(first, []).append(o)
    found = {}
    for name, objs in groups.items():
        try:
            keys.check_replica(name)
        except InputError:
            continue
        tails = [o.key[len(run_prefix) + len(name) + 1:] for o in objs]
        if any(t.startswith(("objects/", "files/", "manifests/")) or t == "lease.json" for t in tails):
            found[name] = objs
    return found


def _named_since(s3, store, run, seen: dict[str, int]) -> set[str]:
    """Keys named by manifests committed after gc read them (a live writer's)."""
    named: set[str] = set()
    for name, last in seen.items():
        layout = keys.Layout(store, run, name)
        for seq in manifest.seqs(s3, layout):
            if seq > last and (opened := manifest.open_listing(s3, layout, seq)) is not None:
                named |= names(opened) | frozenset(opened.meta.requires)
    return named


def _list(s3, bucket: str, prefix: str) -> list[retention.Obj]:
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", ()):
            found.append(retention.Obj(o["Key"], o["Size"], o["LastModified"].timestamp()))
    return found


def _delete(s3, bucket: str, keys_: list[str]) -> None:
    for i in range(0, len(keys_), _BATCH):
        batch = keys_[i:i + _BATCH]
        reply = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True})
        errors = reply.get("Errors") or []
        if errors:
            first = errors[0]
            raise StoreError(f"could not delete s3://{bucket}/{first.get('Key')} ({first.get('Code')}: "
                             f"{first.get('Message')}) and {len(errors) - 1} more; fix: grant "
                             "s3:DeleteObject on the store's prefix, then run gc again")
