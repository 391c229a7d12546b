"""What the SDK and `kubectl exec ... curl` see of the engine (`report`), and the queue gauges.
Both read the loop's state and change none of it; both run on the loop's thread."""

from __future__ import annotations

import itertools

from . import keys
from .flushes import Flushes
from .ledger import Ledger
from .messages import Task, shown
from .metrics import Metrics

STATUS_LIST = 100
"""Names per list in `report`; counts are always whole."""


def report(layout: keys.Layout, mode: str, books: Ledger, inflight: dict[str, Task], flushes: Flushes,
           owed: dict[str, float], rules: list[dict], loaded: bool, rescanning: bool = False) -> dict:
    """Lists stop at `STATUS_LIST` names (with the full count beside them): a run dir of 100,000
    new files must not make a reply of megabytes, nor hold the engine's thread while it is built.
    `loaded`: the lease is held and the durable manifest read; `rescanning`: the run dir is
    being compared with it (a flush waits for that: `pending` names the rescan)."""
    def first(keys) -> list[str]:
        return sorted(shown(k) for k in itertools.islice(keys, STATUS_LIST))

    return {
        "run": str(layout.run), "replica": layout.replica, "store": str(layout.store), "mode": mode,
        "manifest": books.seq,
        "durable_files": len(books.durable.files) if books.durable else 0,
        "uploading": first(inflight), "uploading_count": len(inflight),
        "pending": flushes.first(STATUS_LIST), "pending_count": len(flushes.pending),
        "owed_at_end": first(owed), "owed_at_end_count": len(owed),
        "rules": rules, "loaded": loaded, "rescanning": rescanning,
    }


def queue_gauges(metrics: Metrics, inflight: int, inflight_bytes: int, waiting: int) -> None:
    """Files queued (in flight, plus `waiting`: newer versions and retries) and the bytes of the
    files in flight, as each was when its upload was handed out. Set every turn of the loop: a
    stat a file here was a million stats for 1,000 files in flight."""
    metrics.queue_files.set(inflight + waiting)
    metrics.queue_bytes.set(inflight_bytes)
