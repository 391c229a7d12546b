"""The latest valid manifest of every replica of a run, read in parallel: what restore-init,
`runsync restore` and `runsync ls` start from.

Format 1 has no pointer to a replica's latest commit, so each replica costs three requests: a
LIST of its manifests (the highest number), a GET of its lease (which epoch owned that number:
fencing, lease.py) and a GET of the manifest (one more per fenced-off manifest walked past).
The LIST and the lease GET do not depend on each other and go out together, for all replicas at
once; so the chain is LIST replicas → (LIST manifests ‖ GET lease) → GET manifest, whatever R.
(Storage format 2, docs/format-2.md, replaces the first two by one GET of `head.json`.)
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from . import keys, lease, manifest

MAX_WORKERS = 32


def latest_by_replica(s3, store: keys.StoreURL, run: keys.RunPath,
                      only: str | None = None) -> dict[str, manifest.Manifest]:
    """The latest valid manifest of each replica of the run (or of replica `only`) that has one."""
    layouts = []
    for replica in ([only] if only is not None else manifest.replicas(s3, store, run)):
        try:
            layouts.append(keys.Layout(store, run, replica))
        except keys.RunPathError:
            continue  # not a replica runsync wrote
    if not layouts:
        return {}
    # More threads than the client has connections would only queue (or open and drop connections).
    workers = min(MAX_WORKERS, s3.meta.config.max_pool_connections, 2 * len(layouts))
    with ThreadPoolExecutor(workers, thread_name_prefix="discovery") as pool:
        leases = [pool.submit(lease.read, s3, layout) for layout in layouts]
        numbers = [pool.submit(manifest.seqs, s3, layout) for layout in layouts]
        found = pool.map(lambda i: next(manifest.walk(s3, layouts[i], leases[i].result()[0], numbers[i].result()),
                                        None), range(len(layouts)))
        return {layout.replica: m for layout, m in zip(layouts, found) if m is not None}
