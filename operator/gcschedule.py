"""Keep one gc CronJob per Store that has `retention` (gcjob.py builds it): made when the
retention appears, replaced when it changes, deleted when it goes (the Store's own deletion
takes it through its ownerReference). Like the health check, only the Lease holder acts."""

from __future__ import annotations

import json

import kopf

from . import gcjob
from .stores import GROUP, PLURAL, VERSION, StoreSpec


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.timer(GROUP, VERSION, PLURAL, interval=600, initial_delay=120)  # a CronJob deleted by hand comes back
def keep_gc_schedule(spec: dict, namespace: str, name: str, uid: str, memo: kopf.Memo, logger, **_) -> None:
    election = memo.get("election")
    if election is not None and not election.leading:
        return
    import kubernetes

    api = kubernetes.client.BatchV1Api()
    retention = gcjob.Retention.parse(spec)
    job_name = gcjob.name(name)
    if retention is None:
        try:
            api.delete_namespaced_cron_job(job_name, namespace)
            logger.info(f"Store {namespace}/{name}: no retention; CronJob {job_name} deleted")
        except kubernetes.client.ApiException as err:
            if err.status != 404:
                raise
        return
    want = gcjob.cronjob(namespace, name, uid, StoreSpec.parse(spec), retention, memo.settings)
    try:
        have = api.read_namespaced_cron_job(job_name, namespace, _preload_content=False)
    except kubernetes.client.ApiException as err:
        if err.status != 404:
            raise
        api.create_namespaced_cron_job(namespace, want)
        logger.info(f"Store {namespace}/{name}: CronJob {job_name} runs gc on {retention.schedule!r}")
        return
    annotations = (json.loads(have.data).get("metadata") or {}).get("annotations") or {}
    if annotations.get(gcjob.SPEC_HASH) != want["metadata"]["annotations"][gcjob.SPEC_HASH]:
        api.replace_namespaced_cron_job(job_name, namespace, want)
        logger.info(f"Store {namespace}/{name}: CronJob {job_name} updated")
