"""`runsync sidecar`: the only place that wires threads, signals, preStop and the final flush.

    watcher thread ──FileEvent──▶ engine.inbox ◀──Request── API threads (SDK, preStop)
                                       │                 ◀── SIGTERM
                                  engine loop ──▶ upload workers, committer ──▶ S3

Configuration comes only from the in-pod environment of SPEC.md; the process exits 0 after
the final manifest, within the grace period.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

from prometheus_client import CollectorRegistry

from . import api, contract, engine, keys, logs, transfer, watch
from .errors import InputError
from .logs import log
from .metrics import Metrics


@dataclasses.dataclass(frozen=True)
class PodEnv:
    """The sidecar's configuration, read from the environment the operator sets."""

    run_dir: str
    run: keys.RunPath
    replica: str
    store: keys.StoreURL
    annotations: str | None
    api: tuple[str, int]
    metrics: tuple[str, int]
    grace: float
    holder: str

    @classmethod
    def read(cls, env=os.environ) -> "PodEnv":
        def need(name: str) -> str:
            value = env.get(name, "")
            if not value:
                raise InputError(f"{name} is not set; the operator sets it in the pod (see SPEC.md, Interfaces)")
            return value

        run_dir = need(contract.ENV_DIR)
        if not os.path.isdir(run_dir):
            raise InputError(f"{contract.ENV_DIR}={run_dir!r} is not a directory; mount the run dir there")
        try:
            grace = float(env.get(contract.ENV_GRACE) or contract.DEFAULT_GRACE_SECONDS)
        except ValueError:
            raise InputError(f"{contract.ENV_GRACE}={env.get(contract.ENV_GRACE)!r} is not a number of seconds") from None
        return cls(
            run_dir=run_dir,
            run=keys.RunPath.parse(need(contract.ENV_RUN_PATH)),
            replica=keys.check_replica(env.get(contract.ENV_REPLICA) or contract.DEFAULT_REPLICA),
            store=keys.StoreURL.parse(need(contract.ENV_STORE)),
            annotations=env.get(contract.ENV_ANNOTATIONS) or None,
            api=api.parse_addr(env.get(contract.ENV_API) or contract.DEFAULT_API, contract.ENV_API, True),
            metrics=api.parse_addr(env.get(contract.ENV_METRICS) or contract.DEFAULT_METRICS,
                                   contract.ENV_METRICS, False),
            grace=grace,
            holder=env.get(contract.ENV_HOLDER) or socket.gethostname(),
        )


def run(settings: engine.Settings | None = None, env=os.environ) -> int:
    pod = PodEnv.read(env)
    logs.setup(sys.stdout)
    settings = dataclasses.replace(settings or engine.Settings(), grace=pod.grace)
    layout = keys.Layout(pod.store, pod.run, pod.replica)
    s3 = transfer.client()
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    transfers = transfer.Transfers(s3, pod.store)
    core: engine.Engine | None = None
    watcher = watch.Watcher(pod.run_dir, lambda ev: core.post(ev))
    core = engine.Engine(pod.run_dir, layout, s3, transfers, metrics, settings,
                         annotations_file=pod.annotations, fence=watcher.fence, holder=pod.holder)
    threading.Thread(target=watcher.run, name="watcher", daemon=True).start()
    api_server = api.serve_api(pod.api, core.post, watcher.fence)
    metrics_server = api.serve_metrics(
        pod.metrics, registry, alive=lambda: time.monotonic() - core.last_tick < 30,
        ready=lambda: not core.finished)

    def on_signal(signum, frame):
        core.post(engine.Request("terminate", {}))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("sidecar started", extra={"fields": {
        "run": str(pod.run), "replica": pod.replica, "store": str(pod.store), "run_dir": pod.run_dir,
        "api": "%s:%d" % pod.api, "metrics": "%s:%d" % pod.metrics, "grace_s": pod.grace}})
    code = core.loop()
    watcher.stop()
    api_server.shutdown()
    metrics_server.shutdown()
    log.info("sidecar stopped", extra={"fields": {"manifest": core.durable.seq if core.durable else None}})
    return code


def pre_stop(env=os.environ, timeout: float = 10.0) -> str:
    """The preStop hook: tell the running sidecar that the pod is terminating."""
    host, port = api.parse_addr(env.get(contract.ENV_API) or contract.DEFAULT_API, contract.ENV_API, True)
    url = f"http://{host}:{port}{contract.API_PREFIX}/prestop"
    request = urllib.request.Request(url, data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read()).get("deadline") and "final flush started" or "ok"
    except (urllib.error.URLError, OSError) as err:
        raise InputError(f"cannot reach the sidecar at {url} ({err}); is it running?") from None
