"""The mutating admission webhook: AdmissionReview → skip, deny, or allow with a patch.

Transport is kopf's; here is a straight pipeline: decide → parse → find the Store → inject.
Every failure becomes one `kopf.AdmissionError` whose message names the annotation (or thing),
the value and the fix. Nothing here calls the API: Stores come from an index.
"""

from __future__ import annotations

import dataclasses
import time

import kopf

from runsync import config, keys
from runsync.errors import ConfigError, RunsyncError

from . import identity, inject
from .metrics import METRICS
from .stores import StoreSpec
from .values import WEBHOOK_ID, Values


@kopf.on.mutate("pods", id=WEBHOOK_ID, operation="CREATE")
def inject_pod(body, patch: kopf.Patch, warnings: list[str], memo: kopf.Memo, stores_by_name: kopf.Index,
               **_) -> None:
    started = time.perf_counter()
    try:
        result = mutate(dict(body), memo.settings, stores_by_name)
    except kopf.AdmissionError as err:
        METRICS.denials.labels(getattr(err, "reason", "invalid")).inc()
        METRICS.admissions.labels("denied").inc()
        raise
    finally:
        METRICS.latency.observe(time.perf_counter() - started)
    if result is None:
        METRICS.admissions.labels("skipped").inc()
        return
    warnings.extend(result.warnings)
    injected = result.pod

    def replace(pod: dict) -> None:  # kopf diffs the body before and after into the JSON patch
        pod.clear()
        pod.update(injected)

    patch.fns.append(replace)
    METRICS.admissions.labels("injected").inc()


def mutate(pod: dict, values: Values, stores) -> inject.Result | None:
    """The whole decision for one pod; None when it is not for runsync."""
    if inject.skip_reason(pod) is not None:
        return None
    meta = pod.get("metadata") or {}
    namespace = meta.get("namespace") or ""
    if namespace in (values.namespace, "kube-system"):
        return None  # never the operator's own pods, never the control plane's
    try:
        cfg = config.parse(meta.get("annotations") or {})
    except ConfigError as err:
        raise _deny(str(err), "annotation") from None
    who = identity.of(pod, cfg.run, cfg.replica)
    try:
        run_path = keys.RunPath.parse(f"{namespace}/{cfg.project}/{who.run}")
        keys.check_replica(who.replica)
    except RunsyncError as err:
        raise _deny(f"cannot name the run from this pod: {err}; set runsync.dev/run and runsync.dev/replica",
                    "identity") from None
    found = stores.get((namespace, cfg.store)) if stores is not None else None
    if not found:
        raise _deny(f"runsync.dev/store: Store {cfg.store!r} does not exist in namespace {namespace!r}; "
                    "create it (kind: Store, apiVersion: runsync.dev/v1alpha1) or name another", "store")
    try:
        store = StoreSpec.parse(next(iter(found)))
    except (KeyError, TypeError, ValueError) as err:
        raise _deny(f"Store {cfg.store!r} in {namespace!r} has no usable spec ({err})", "store") from None
    try:
        result = inject.inject(pod, cfg, values, store, run_path, who.replica)
    except inject.InjectionError as err:
        raise _deny(str(err), "conflict" if isinstance(err, inject.Conflict) else "annotation") from None
    return result if who.shared is None else dataclasses.replace(result, warnings=(who.shared, *result.warnings))


def _deny(message: str, reason: str) -> kopf.AdmissionError:
    err = kopf.AdmissionError(message, code=400)
    err.reason = reason  # for the denials metric
    return err
