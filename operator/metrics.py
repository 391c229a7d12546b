"""The operator's metrics: admissions by result, denials by reason, admission latency."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclasses.dataclass
class _Metrics:
    registry: CollectorRegistry

    def __post_init__(self) -> None:
        r = self.registry
        self.admissions = Counter("runsync_admissions", "Pods seen by the webhook, by result.", ["result"], registry=r)
        self.denials = Counter("runsync_admission_denials", "Pods denied, by reason.", ["reason"], registry=r)
        self.latency = Histogram("runsync_admission_seconds", "Time to decide on one pod.",
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1), registry=r)


# One operator process serves one registry; handlers are module-level functions in kopf.
METRICS = _Metrics(CollectorRegistry())
