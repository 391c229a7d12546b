"""The latest valid manifest of every replica of a run, read in parallel: what restore-init,
`runsync restore` and `runsync ls` start from.

Format 1 has no pointer to a replica's latest commit. A replica needs its manifest numbers (a
LIST), its lease (which epoch owned the highest number: fencing, lease.py) and that manifest
(one more GET per fenced-off manifest walked past). So:

    LIST <run>/ with delimiter "/objects/" every replica's manifest keys and lease.json in one
                                           page (format 2's file objects fold into one prefix each;
                                           format 1's `files/` do not: a big format-1 run overflows
                                           the page and takes the per-replica path below)
    GET lease.json ‖ ...                   every replica that has manifests, at once
    GET its highest manifest ‖ ...

2R + 1 requests and three round trips, whatever R, while the run's manifest keys fit in one
LIST page (1,000 keys). Replicas past the end of that page cost a LIST of their own (and the
run's replicas a delimiter "/" LIST), in parallel with the lease reads: 3R + 2 at worst, as
format 1 forces. A replica with a `head.json` (head.py) needs no LIST of its own: a GET of
the head and a HEAD of the number after it instead, however long its history.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from . import keys, lease, listing, manifest

MAX_WORKERS = 32
PAGE = 1000
"""Keys in the one LIST of the run (S3's most per page)."""
_FILES = "/objects/"


def latest_by_replica(s3, store: keys.StoreURL, run: keys.RunPath,
                      only: str | None = None) -> dict[str, manifest.Manifest]:
    """The latest valid manifest of each replica of the run (or of replica `only`) that has one."""
    return _latest(s3, store, run, only, manifest.read)


def listings_by_replica(s3, store: keys.StoreURL, run: keys.RunPath,
                        only: str | None = None) -> dict[str, listing.Listing]:
    """`latest_by_replica` with each commit as a `Listing`: its entries are streamed by the
    caller, never held whole (`runsync ls`, restore)."""
    return _latest(s3, store, run, only, manifest.open_listing)


def _latest(s3, store: keys.StoreURL, run: keys.RunPath, only: str | None, reader) -> dict:
    if only is not None:
        listed, unlisted = {}, [keys.Layout(store, run, only)]
    else:
        listed, unlisted = _listed(s3, store, run)
    with ThreadPoolExecutor(_workers(s3, len(listed) + 2 * len(unlisted)), thread_name_prefix="discovery") as pool:
        # Leases and manifest numbers do not depend on each other: all go out at once.
        leases = {layout: pool.submit(lease.read, s3, layout) for layout, (_, has_lease) in listed.items() if has_lease}
        leases.update((layout, pool.submit(lease.read, s3, layout)) for layout in unlisted)
        numbers = {layout: pool.submit(manifest.known_seqs, s3, layout) for layout in unlisted}

        def latest(layout: keys.Layout) -> manifest.Manifest | None:
            current = leases[layout].result()[0] if layout in leases else None
            seqs = listed[layout][0] if layout in listed else numbers[layout].result()
            return next(manifest.walk(s3, layout, current, seqs, reader), None)

        # Submitted after every read they wait on, so a worker never waits for a queued task.
        layouts = list(listed) + unlisted
        return {layout.replica: m for layout, m in zip(layouts, pool.map(latest, layouts)) if m is not None}


def _listed(s3, store: keys.StoreURL, run: keys.RunPath
            ) -> tuple[dict[keys.Layout, tuple[list[int], bool]], list[keys.Layout]]:
    """One LIST page of the run: {replica: (its manifest numbers, has a lease)} for the replicas
    with manifests that it holds whole, and the replicas it cut off or did not reach."""
    prefix = keys.Layout(store, run, "0").run_prefix
    page = s3.list_objects_v2(Bucket=store.bucket, Prefix=prefix, Delimiter=_FILES, MaxKeys=PAGE)
    seqs: dict[str, list[int]] = {}
    leased: set[str] = set()
    last = ""
    for key in [o["Key"] for o in page.get("Contents", ())] + [p["Prefix"] for p in page.get("CommonPrefixes", ())]:
        replica, slash, rest = key[len(prefix):].partition("/")
        if not slash or not _is_replica(replica):
            continue  # run.json, or not a replica runsync wrote
        last = max(last, replica + "/")
        numbers = seqs.setdefault(replica, [])
        seq = keys.Layout(store, run, replica).manifest_seq(key)
        if seq is not None:
            numbers.append(seq)
        elif rest == "lease.json":
            leased.add(replica)
    unlisted: list[str] = []
    if page.get("IsTruncated"):  # keys come in order: only the page's last replica may go on past it
        seqs = {r: v for r, v in seqs.items() if r + "/" < last}
        unlisted = [r for r in manifest.replicas(s3, store, run) if r not in seqs and _is_replica(r)]
    return ({keys.Layout(store, run, r): (v, r in leased) for r, v in seqs.items() if v},
            [keys.Layout(store, run, r) for r in unlisted])


def _is_replica(name: str) -> bool:
    try:
        keys.check_replica(name)
        return True
    except keys.RunPathError:
        return False


def _workers(s3, tasks: int) -> int:
    # More threads than the client has connections would only queue (or open and drop connections).
    return max(1, min(MAX_WORKERS, s3.meta.config.max_pool_connections, tasks))
