"""The sidecar's Prometheus metrics, on a registry passed in (never the global one)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900)


class Metrics:
    def __init__(self, registry: CollectorRegistry):
        r = registry
        self.uploaded_files = Counter("runsync_uploaded_files", "Files uploaded, by policy.", ["policy"], registry=r)
        self.uploaded_bytes = Counter("runsync_uploaded_bytes", "Bytes uploaded, by policy.", ["policy"], registry=r)
        self.skipped_bytes = Counter(
            "runsync_skipped_bytes", "Bytes not sent because the store already held them: "
            "unchanged content, or an object left by an earlier run of the sidecar.", ["reason"], registry=r)
        self.failures = Counter("runsync_failures", "Failed uploads and commits, by kind.", ["kind"], registry=r)
        self.manifests = Counter("runsync_manifests_committed", "Manifests committed.", registry=r)
        self.unsynced = Counter("runsync_unsynced_files",
                                "Files still owed when the final flush ran out of time (each is logged).",
                                registry=r)
        self.unreadable = Counter("runsync_unreadable",
                                  "Files and dirs the sidecar may not read, skipped (each is logged once).",
                                  ["kind"], registry=r)
        self.incomplete_checkpoints = Counter(
            "runsync_incomplete_checkpoints", "Checkpoint dirs uploaded at the end without their marker "
            "(each is logged by name; restore skips them unless asked for them by name).", registry=r)
        self.queue_files = Gauge("runsync_queue_files", "Files waiting for or in upload.", registry=r)
        self.queue_bytes = Gauge("runsync_queue_bytes", "Bytes waiting for or in upload.", registry=r)
        self.latency = Histogram("runsync_close_to_durable_seconds",
                                 "From a file's close (or rename) to its manifest commit.",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.restore_bytes = Gauge("runsync_restore_bytes", "Bytes restore-init wrote in this pod.", registry=r)
        self.restore_seconds = Gauge("runsync_restore_duration_seconds", "How long restore-init took.",
                                     registry=r)
        self.last_sync = Gauge("runsync_last_sync_timestamp_seconds",
                               "Unix time of the last committed manifest.", registry=r)

    def committed(self, now: float, ready_at: list[float]) -> None:
        """A manifest committed at `now`, making durable the work that was ready at `ready_at`."""
        for t in ready_at:
            self.latency.observe(max(0.0, now - t))
        self.manifests.inc()
        self.last_sync.set(now)

    def record(self, how: str, policy: str, nbytes: int) -> None:
        """One file of a finished upload task: `how` is uploaded, stored (the store held it
        already) or unchanged."""
        if how == "uploaded":
            self.uploaded_files.labels(policy).inc()
            self.uploaded_bytes.labels(policy).inc(nbytes)
        else:
            self.skipped_bytes.labels("unchanged" if how == "unchanged" else "already_stored").inc(nbytes)
