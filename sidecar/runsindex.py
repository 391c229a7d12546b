"""The runs index: what `runsync runs` shows of each run, in the names of empty objects, so that
one LIST of a namespace answers for a thousand runs instead of a GET of each run.json.

    <ns>/.runs/<project>/<run>/v1_<state>_<replicas>_<files>_<size>_<created>_<updated>_<ended>_<stale>_<generation>

Times are run.json's own epoch seconds (Python's exact float repr), `-` when unset; `stale` is the oldest `updated` of a running
replica (`-` when none runs): a reader whose clock is run.json's stale limit past it reads
run.json instead (that replica may have died without a word). `.runs` cannot be a project (a
project name starts with a letter or digit) and sits inside the namespace's prefix, so a
tenant's credentials for `<ns>/` cover it.

run.json stays the record; a marker is a cache of it, written after each run.json write (the new
marker first, then the old one deleted), best effort. Whatever goes wrong, a reader falls back to
run.json: a run with no marker, or with a running replica gone quiet, is read as before. When two
markers of a run are left (two writers racing, a DELETE lost), the higher generation (run.json's
write counter) wins.
"""

from __future__ import annotations

import dataclasses
import time

from . import keys
from .logs import log

DIR = ".runs"
VERSION = "v1"
RUNNING = "running"


@dataclasses.dataclass(frozen=True)
class Marker:
    state: str
    replicas: int
    files: int
    size: int
    created: float | None
    updated: float | None
    ended: float | None
    stale: float | None
    """The oldest `updated` among running replicas; None when none runs."""
    generation: int

    @classmethod
    def of(cls, doc: dict) -> "Marker":
        """run.json → its marker."""
        entries = [r for r in (doc.get("replicas") or {}).values() if isinstance(r, dict)]
        running = [float(r.get("updated") or 0) for r in entries if r.get("status") == RUNNING]
        return cls(state=str(doc.get("status") or RUNNING), replicas=len(entries),
                   files=sum(int(r.get("files") or 0) for r in entries),
                   size=sum(int(r.get("size") or 0) for r in entries),
                   created=doc.get("created"), updated=doc.get("updated"), ended=doc.get("ended"),
                   stale=min(running) if running else None, generation=int(doc.get("generation") or 0))

    @property
    def name(self) -> str:
        fields = (self.state, self.replicas, self.files, self.size, _time(self.created), _time(self.updated),
                  _time(self.ended), _time(self.stale), self.generation)
        return "_".join([VERSION, *map(str, fields)])

    @classmethod
    def parse(cls, name: str) -> "Marker | None":
        """A marker's name → Marker; None for a name this version does not know."""
        parts = name.split("_")
        if len(parts) != 10 or parts[0] != VERSION or not parts[1].isalpha():
            return None
        try:
            nums = [int(p) for p in parts[2:5]]
            times = [None if p == "-" else float(p) for p in parts[5:9]]
            return cls(parts[1], *nums, *times, generation=int(parts[9]))
        except ValueError:
            return None

    def fresh(self, now: float, limit: float) -> bool:
        """Can a reader trust it? Not when a running replica has been quiet for `limit` seconds."""
        return self.stale is None or now - self.stale < limit


def _time(t: float | None) -> str:
    return "-" if t is None else repr(float(t))


def prefix(store: keys.StoreURL, namespace: str, project: str | None = None) -> str:
    base = keys.namespaces_prefix(store) + f"{namespace}/{DIR}/"
    return base + f"{project}/" if project else base


def run_prefix(store: keys.StoreURL, run: keys.RunPath) -> str:
    return prefix(store, run.namespace, run.project) + f"{run.run}/"


# ----------------------------------------------------------------------------- writer

def publish(s3, layout: keys.Layout, old: dict | None, new: dict, damaged: bool = False,
            deadline: float | None = None, clock=time.monotonic) -> None:
    """After run.json went from `old` to `new`: put `new`'s marker, delete `old`'s. Best effort,
    logged; past `deadline` (the end's grace) only the delete, so readers fall back to run.json.
    When the old run.json was `damaged` (its generation unknown), every other marker of the run goes."""
    bucket, base = layout.store.bucket, run_prefix(layout.store, layout.run)
    mine = base + Marker.of(new).name
    fields = {"run": str(layout.run), "marker": mine}
    put = deadline is None or clock() < deadline
    try:
        if put:
            s3.put_object(Bucket=bucket, Key=mine, Body=b"")
    except Exception as err:  # noqa: BLE001 - a cache: run.json holds the truth
        put = False
        log.warning("runs index marker not written; `runsync runs` reads run.json for this run",
                    extra={"fields": {**fields, "error": str(err)}})
    try:
        if damaged:
            gone = list(_keys(s3, bucket, base))
        else:
            gone = [base + Marker.of(old).name] if old and old.get("generation") else []  # none before
        gone = [k for k in gone if k != mine or not put]
        for key in gone:
            s3.delete_object(Bucket=bucket, Key=key)
    except Exception as err:  # noqa: BLE001
        log.warning("old runs index marker not deleted; the newer generation wins",
                    extra={"fields": {**fields, "error": str(err)}})


def forget(s3, store: keys.StoreURL, run: keys.RunPath) -> None:
    """The run is gone (gc expired it): so are its markers."""
    bucket = store.bucket
    for key in list(_keys(s3, bucket, run_prefix(store, run))):
        s3.delete_object(Bucket=bucket, Key=key)


# ----------------------------------------------------------------------------- reader

def read(s3, store: keys.StoreURL, namespace: str, project: str | None = None) -> dict[str, Marker]:
    """`project/run` → its newest marker, for every marked run of the namespace (or project)."""
    root = prefix(store, namespace)
    found: dict[str, Marker] = {}
    for key in _keys(s3, store.bucket, prefix(store, namespace, project)):
        path, _, name = key[len(root):].rpartition("/")
        marker = Marker.parse(name)
        if marker is not None and (path not in found or found[path].generation < marker.generation):
            found[path] = marker
    return found


def _keys(s3, bucket: str, prefix_: str):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix_):
        yield from (o["Key"] for o in page.get("Contents", ()))
