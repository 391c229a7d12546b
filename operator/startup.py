"""kopf settings, in one startup handler; the operator's values on `memo`."""

from __future__ import annotations

import kopf
from prometheus_client import start_http_server

from .metrics import METRICS
from .values import Values


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger, **_) -> None:
    values = Values.from_env()
    memo.settings = values  # not `values`: Memo is a dict, and that name is taken
    settings.scanning.disabled = True          # the chart installs the CRD; no cluster-wide scans
    settings.admission.managed = None          # the chart owns the MutatingWebhookConfiguration
    settings.admission.server = kopf.WebhookServer(
        addr=values.webhook_addr, port=values.webhook_port,
        certfile=values.certfile, pkeyfile=values.pkeyfile)
    settings.posting.level = 30                # events for warnings and errors only
    host, _, port = values.metrics_addr.rpartition(":")
    start_http_server(int(port), addr=host, registry=METRICS.registry)
    logger.info(f"runsync operator: webhook on {values.webhook_addr}:{values.webhook_port}, "
                f"metrics on {values.metrics_addr}")
