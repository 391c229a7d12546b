"""kopf settings, in one startup handler; the operator's values on `memo`."""

from __future__ import annotations

import functools
import threading
from pathlib import Path

import kopf

from runsync import contract

from . import leader, readiness, servingcert, stores, tlsserver
from .kubeclient import api_client
from .metrics import METRICS
from .values import Values


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, stores_by_name: kopf.Index, logger, **_) -> None:
    values = Values.from_env()
    memo.settings = values  # not `values`: Memo is a dict, and that name is taken
    settings.scanning.disabled = True          # the chart installs the CRD; no cluster-wide scans
    settings.admission.managed = None          # the chart owns the MutatingWebhookConfiguration
    # Only injected pods are watched (images.py), filtered by the API server, not in the operator.
    settings.watching.label_selectors["pods"] = f"{contract.INJECT_LABEL}=true"
    if values.tls_secret:
        _keep_serving_certificate(values, logger)
    settings.admission.server = tlsserver.WebhookServer(
        addr=values.webhook_addr, port=values.webhook_port,
        certfile=values.certfile, pkeyfile=values.pkeyfile,
        reload_interval=10)                    # a renewed certificate is served within 10 s
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


def _keep_serving_certificate(values: Values, logger) -> None:
    """The chart's own TLS mode: make or read the CA and serving certificate now (kopf's server
    needs the files), point the webhook's caBundle at the CA, and look again every 10 minutes
    (a renewal here or by another replica, a deleted Secret); tlsserver loads changed files."""
    import kubernetes

    client = api_client()
    keeper = servingcert.Keeper(kubernetes.client.CoreV1Api(client), values.namespace, values.tls_secret,
                                [h.strip() for h in values.webhook_hosts.split(",") if h.strip()],
                                Path(values.certfile), Path(values.pkeyfile))
    admission = kubernetes.client.AdmissionregistrationV1Api(client)

    def keep() -> None:
        material = keeper.ensure()
        if values.webhook_config and servingcert.set_ca_bundle(admission, values.webhook_config, material.ca_cert):
            logger.info(f"MutatingWebhookConfiguration {values.webhook_config}: caBundle set to the CA in "
                        f"Secret {values.namespace}/{values.tls_secret}")

    keep()  # a failure here stops the operator: it could not serve admissions

    def again() -> None:
        try:
            keep()
        except Exception as err:  # noqa: BLE001 - the current pair stays served; try next time
            logger.warning(f"Secret {values.namespace}/{values.tls_secret}: cannot check the webhook certificate "
                           f"({err}); the current one is still served; retrying in 10 minutes")
        _later(again)

    _later(again)


def _later(fn, seconds: float = 600) -> None:
    timer = threading.Timer(seconds, fn)
    timer.daemon = True  # never holds the operator's exit
    timer.start()


@kopf.on.cleanup()
def release_lease(memo: kopf.Memo, **_) -> None:
    if memo.get("election") is not None:
        memo.election.release()
