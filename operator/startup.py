"""kopf settings, in one startup handler; the operator's values on `memo`."""

from __future__ import annotations

import functools

import kopf

from . import leader, readiness, stores
from .metrics import METRICS
from .values import Values


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, stores_by_name: kopf.Index, logger, **_) -> None:
    values = Values.from_env()
    memo.settings = values  # not `values`: Memo is a dict, and that name is taken
    settings.scanning.disabled = True          # the chart installs the CRD; no cluster-wide scans
    settings.admission.managed = None          # the chart owns the MutatingWebhookConfiguration
    settings.admission.server = kopf.WebhookServer(
        addr=values.webhook_addr, port=values.webhook_port,
        certfile=values.certfile, pkeyfile=values.pkeyfile,
        file_check_interval=10)                # a renewed certificate is served within 10 s
    settings.posting.level = 30                # events for warnings and errors only
    # The index kopf passes here is the live one that its Store list and watch fill.
    ready = readiness.StoreIndexReadiness(stores_by_name, functools.partial(
        readiness.list_store_keys, stores.GROUP, stores.VERSION, stores.PLURAL))
    readiness.serve(values.metrics_addr, METRICS.registry, ready)
    # Every replica serves admissions; only the Lease holder runs the Store health handlers.
    election = leader.Election(leader.coordination_api(), values.namespace)
    try:
        election.round()  # decided before kopf's watch starts the handlers
    except Exception as err:  # noqa: BLE001 - no API yet: the next rounds decide
        logger.warning(f"Lease {values.namespace}/{election.name}: first round failed ({err}); retrying")
    election.run(on_change=lambda leading: logger.info(
        f"Lease {values.namespace}/{election.name}: {'took it' if leading else 'lost it'}; this replica "
        f"{'runs' if leading else 'no longer runs'} the Store health handlers"))
    memo.election = election
    logger.info(f"runsync operator ({election.identity}, "
                f"{'leading' if election.leading else 'following'}): webhook on {values.webhook_addr}:{values.webhook_port}, "
                f"metrics and {readiness.READY_PATH} on {values.metrics_addr}")


@kopf.on.cleanup()
def release_lease(memo: kopf.Memo, **_) -> None:
    if memo.get("election") is not None:
        memo.election.release()
