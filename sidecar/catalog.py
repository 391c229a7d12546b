"""Read-only views of a store: the runs it holds (`runsync runs`) and a run's files (`runsync ls`).

Everything is derived from the committed manifests, which replicas write without contending:
a run's size is the sum of its replicas' latest manifests, its last update the newest of them,
and it has ended when every replica's latest manifest is final.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor

from . import keys, manifest


@dataclasses.dataclass(frozen=True)
class RunSummary:
    path: keys.RunPath
    replicas: int
    files: int
    size: int
    updated: float | None
    state: str
    """`running` (some replica's latest manifest is not final), `ended`, or `empty`."""


def files(s3, store: keys.StoreURL, run: keys.RunPath) -> list[tuple[str, manifest.Manifest]]:
    """(replica, latest manifest) of every replica of the run that committed one."""
    return list(manifest.latest_by_replica(s3, store, run).items())


def runs(s3, store: keys.StoreURL, namespace: str | None = None, project: str | None = None) -> list[RunSummary]:
    """The runs under the store, or under one namespace or project, sorted by path."""
    root = keys.namespaces_prefix(store)
    namespaces = [namespace] if namespace else _children(s3, store, root)
    paths = []
    for ns in namespaces:
        projects = [project] if project else _children(s3, store, f"{root}{ns}/")
        for proj in projects:
            for run in _children(s3, store, f"{root}{ns}/{proj}/"):
                try:
                    paths.append(keys.RunPath.parse(f"{ns}/{proj}/{run}"))
                except keys.RunPathError:
                    continue  # not a run runsync wrote
    with ThreadPoolExecutor(max_workers=8) as pool:
        return sorted(pool.map(lambda p: _summary(s3, store, p), paths), key=lambda r: str(r.path))


def _summary(s3, store: keys.StoreURL, path: keys.RunPath) -> RunSummary:
    latest = files(s3, store, path)
    manifests = [m for _, m in latest]
    state = "empty" if not manifests else "ended" if all(m.final for m in manifests) else "running"
    return RunSummary(
        path=path, replicas=len(manifests), files=sum(len(m.files) for m in manifests),
        size=sum(m.size for m in manifests),
        updated=max((m.created for m in manifests), default=None), state=state,
    )


def _children(s3, store: keys.StoreURL, prefix: str) -> list[str]:
    return [p[len(prefix):-1] for p in manifest.list_prefixes(s3, store.bucket, prefix)]
