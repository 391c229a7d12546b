"""Read-only views of a store: the runs it holds (`runsync runs`) and a run's files (`runsync ls`).

A run's summary comes from the namespace's runs index (runsindex: one LIST for a thousand runs),
else from its `run.json` (runmeta): one GET per run, in parallel. A run written
before run.json existed is derived from the committed manifests, as before (a LIST and GETs per
replica): its size is the sum of its replicas' latest manifests, its last update the newest of
them, and it has ended when every replica's latest manifest is final.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

from . import discovery, keys, listing, manifest, runmeta, runsindex


@dataclasses.dataclass(frozen=True)
class RunSummary:
    path: keys.RunPath
    replicas: int
    files: int
    size: int
    updated: float | None
    state: str
    """`running` (some replica runs), `ended`, `failed` (a replica's final manifest could not be
    committed: run.json only), or `empty`."""
    started: float | None = None
    """When the first replica started (run.json's `created`); None for runs without run.json."""
    ended: float | None = None


def files(s3, store: keys.StoreURL, run: keys.RunPath) -> list[tuple[str, manifest.Manifest]]:
    """(replica, latest manifest) of every replica of the run that committed one."""
    return list(discovery.latest_by_replica(s3, store, run).items())


def listings(s3, store: keys.StoreURL, run: keys.RunPath) -> list[tuple[str, listing.Listing]]:
    """(replica, latest commit) of every replica that committed one, its entries to be streamed."""
    return list(discovery.listings_by_replica(s3, store, run).items())


def runs(s3, store: keys.StoreURL, namespace: str | None = None, project: str | None = None) -> list[RunSummary]:
    """The runs under the store, or under one namespace or project, sorted by path."""
    root = keys.namespaces_prefix(store)
    namespaces = [namespace] if namespace else _children(s3, store, root)
    now = time.time()
    found, unmarked = [], []
    for ns in namespaces:
        projects = [project] if project else _children(s3, store, f"{root}{ns}/")
        marked = runsindex.read(s3, store, ns, project) if projects else {}
        for proj in projects:
            if proj == runsindex.DIR:
                continue
            for run in _children(s3, store, f"{root}{ns}/{proj}/"):
                try:
                    path = keys.RunPath.parse(f"{ns}/{proj}/{run}")
                except keys.RunPathError:
                    continue  # not a run runsync wrote
                marker = marked.get(f"{proj}/{run}")
                if marker is not None and marker.fresh(now, runmeta.STALE_SECONDS):
                    found.append(_from_marker(path, marker))
                else:
                    unmarked.append(path)  # no marker, or a running replica gone quiet: read run.json
    with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
        found.extend(pool.map(lambda p: _from_metadata(s3, store, p) or _summary(s3, store, p), unmarked))
    return sorted(found, key=lambda r: str(r.path))


PARALLEL = 16
"""Runs read at once (one GET each); the S3 client's connection pool holds 20 (transfer.client)."""


def metadata(s3, store: keys.StoreURL, run: keys.RunPath) -> dict | None:
    """The run's run.json (a stale `running` entry checked against its replica.json), or None
    for a run written before it existed."""
    doc = runmeta.read_run(s3, store, run)[0]
    return runmeta.settled(s3, store, run, doc, time.time()) if doc else None


def _from_metadata(s3, store: keys.StoreURL, path: keys.RunPath) -> RunSummary | None:
    doc = metadata(s3, store, path)
    replicas = (doc or {}).get("replicas")
    if not isinstance(replicas, dict) or not replicas:
        return None  # no run.json (or only the SDK's code state so far): the manifests say
    entries = [r for r in replicas.values() if isinstance(r, dict)]
    return RunSummary(
        path=path, replicas=len(entries), files=sum(int(r.get("files") or 0) for r in entries),
        size=sum(int(r.get("size") or 0) for r in entries), updated=doc.get("updated"),
        state=str(doc.get("status") or runmeta.RUNNING), started=doc.get("created"), ended=doc.get("ended"))


def _from_marker(path: keys.RunPath, m: runsindex.Marker) -> RunSummary:
    return RunSummary(path=path, replicas=m.replicas, files=m.files, size=m.size, updated=m.updated,
                      state=m.state, started=m.created, ended=m.ended)


def _summary(s3, store: keys.StoreURL, path: keys.RunPath) -> RunSummary:
    latest = files(s3, store, path)
    manifests = [m for _, m in latest]
    state = "empty" if not manifests else "ended" if all(m.final for m in manifests) else "running"
    updated = max((m.created for m in manifests), default=None)
    return RunSummary(
        path=path, replicas=len(manifests), files=sum(len(m.files) for m in manifests),
        size=sum(m.size for m in manifests), updated=updated, state=state,
        ended=updated if state == "ended" else None,
    )


def _children(s3, store: keys.StoreURL, prefix: str) -> list[str]:
    return [p[len(prefix):-1] for p in manifest.list_prefixes(s3, store.bucket, prefix)]
