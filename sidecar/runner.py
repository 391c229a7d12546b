"""The in-pod roles: `runsync sidecar`, its preStop hook, and `runsync restore-init`; and the
SDK's in-process engine outside a pod (`Embedded`).

The sidecar is wired here: the watcher's thread, the engine's loop, the API and metrics
servers, and the signal handlers (the engine starts its own upload workers and committer):

    watcher thread ──FileEvent──▶ engine.inbox ◀──Request── API threads (SDK, preStop)
                                       │                 ◀── SIGTERM (a flag the loop polls)
                                  engine loop ──Task──▶ upload workers ──▶ S3
                                       └───commit────▶ committer thread ──▶ S3

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
from typing import TYPE_CHECKING, NoReturn

from botocore.exceptions import BotoCoreError, ClientError

from . import addresses, config, contract, keys, logs, statedir, transfer
from .errors import InputError, StoreUnreachable
from .logs import log
from .settings import Settings

if TYPE_CHECKING:  # restore-init needs none of the sidecar's machinery: wire() loads it
    from prometheus_client import CollectorRegistry

    from . import engine, runmeta, watch
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
    memory_limit: int | None = None
    """The container's memory limit in bytes; transfer buffers are sized to stay under it."""

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
        memory = env.get(contract.ENV_MEMORY_LIMIT) or None
        if memory is not None and not memory.isdigit():
            raise InputError(f"{contract.ENV_MEMORY_LIMIT}={memory!r} is not a number of bytes; the operator sets it "
                             "from the downward API (resourceFieldRef: limits.memory)")
        return cls(
            run_dir=run_dir,
            run=keys.RunPath.parse(need(contract.ENV_RUN_PATH)),
            replica=keys.check_replica(env.get(contract.ENV_REPLICA) or contract.DEFAULT_REPLICA),
            store=keys.StoreURL.parse(need(contract.ENV_STORE)),
            annotations=env.get(contract.ENV_ANNOTATIONS) or None,
            api=addresses.parse_addr(env.get(contract.ENV_API) or contract.DEFAULT_API, contract.ENV_API, True),
            metrics=addresses.parse_addr(env.get(contract.ENV_METRICS) or contract.DEFAULT_METRICS,
                                   contract.ENV_METRICS, False),
            grace=grace,
            holder=env.get(contract.ENV_HOLDER) or socket.gethostname(),
            memory_limit=int(memory) if memory else None,
        )


@dataclasses.dataclass
class Wired:
    """An engine with its watcher thread running: the sidecar's core, or the SDK's in-process one."""

    engine: engine.Engine
    watcher: watch.Watcher
    registry: CollectorRegistry
    watcher_thread: threading.Thread


def wire(run_dir: str, layout: keys.Layout, settings: Settings, annotations: str | None,
         holder: str, sizes: transfer.Settings = transfer.Settings(), base: config.RunConfig | None = None,
         facts: runmeta.Facts | None = None) -> Wired:
    from prometheus_client import CollectorRegistry

    from . import engine, runmeta, unreadable, watch
    from .metrics import Metrics

    s3 = transfer.client()
    _check_encryption_when_reachable(s3, layout)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    _restore_metrics(run_dir, metrics)
    skipped = unreadable.Unreadable(os.path.abspath(run_dir), metrics)
    core: engine.Engine | None = None
    watcher = watch.Watcher(run_dir, lambda ev: core.post(ev), on_unwatchable=skipped.report)
    core = engine.Engine(run_dir, layout, s3, transfer.Transfers(s3, layout.store, sizes), metrics,
                         settings, annotations_file=annotations, holder=holder, skipped=skipped, base=base,
                         facts=facts or runmeta.Facts(writer=holder, annotations=annotations))
    thread = threading.Thread(target=_watch, args=(watcher,), name="watcher", daemon=True)
    thread.start()
    return Wired(core, watcher, registry, thread)


def _check_encryption_when_reachable(s3, layout: keys.Layout) -> None:
    """The sidecar starts beside a trainer that is already running: a store that does not answer
    yet is waited for (a crash loop would only add the kubelet's back-off), while a store that
    refuses the encryption asked for stops the sidecar at once (nothing is written unchecked)."""
    backoff, attempt = transfer.Backoff(), 0
    while True:
        try:
            return transfer.check_encryption(s3, layout)
        except StoreUnreachable as err:
            attempt += 1
            delay = backoff.delay(attempt)
            log.warning("cannot check server-side encryption yet; retrying", extra={"fields": {
                "error": str(err), "retry_in_s": round(delay, 2)}})
            time.sleep(delay)


def _watch(watcher: watch.Watcher) -> None:
    try:
        watcher.run()
    except Exception:  # noqa: BLE001 - said once; liveness fails and the kubelet restarts the sidecar
        log.exception("the watcher stopped; /healthz now fails so the kubelet restarts the sidecar")


def alive(wired: Wired) -> bool:
    """Liveness (/healthz): the watcher thread runs and the engine loop turned in the last 30 s.
    A sidecar that no longer sees files must be restarted, not left looking healthy."""
    return wired.watcher_thread.is_alive() and time.monotonic() - wired.engine.last_tick < 30


SHARED_UMASK = 0o002
"""restore-init and the sidecar create group-writable dirs (2775 under the fsGroup's setgid run
dir) and files (0664), so a trainer of another UID in the pod's fsGroup can use them (README,
"Users and permissions")."""


def run(settings: Settings | None = None, env=os.environ) -> int:
    from . import api, runmeta

    pod = PodEnv.read(env)
    os.umask(SHARED_UMASK)
    logs.setup(sys.stdout)
    settings = dataclasses.replace(settings or Settings(), grace=pod.grace)
    sizes = transfer.Settings().within(pod.memory_limit)  # the kubelet kills the container over its limit
    wired = wire(pod.run_dir, keys.Layout(pod.store, pod.run, pod.replica), settings, pod.annotations, pod.holder,
                 sizes, facts=runmeta.Facts.from_env(env, writer=f"sidecar@{pod.holder}"))
    core = wired.engine
    api_server = api.serve_api(pod.api, core.post, wired.watcher.fence)
    metrics_server = api.serve_metrics(
        pod.metrics, wired.registry, alive=lambda: alive(wired),
        ready=lambda: not core.finished)

    def on_signal(signum, frame):
        core.stop_requested = True  # no locks in a signal handler: the loop polls this

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("sidecar started", extra={"fields": {
        "run": str(pod.run), "replica": pod.replica, "store": str(pod.store), "run_dir": pod.run_dir,
        "api": "%s:%d" % pod.api, "metrics": "%s:%d" % pod.metrics, "grace_s": pod.grace,
        "memory_limit": pod.memory_limit, "crt_memory": sizes.crt_memory if sizes.crt else None}})
    code = core.loop()
    wired.watcher.stop()
    for server in (api_server, metrics_server):  # each shutdown waits up to its 0.5 s poll: in parallel
        threading.Thread(target=server.shutdown, daemon=True).start()
    log.info("sidecar stopped", extra={"fields": {"manifest": core.books.seq}})
    return code


class Embedded:
    """The sidecar's engine in this process (the SDK outside a pod): started by `start`,
    flushed and stopped by `stop` (the SDK calls it at exit)."""

    def __init__(self, run_dir: str, layout: keys.Layout, settings: Settings, holder: str,
                 base: config.RunConfig | None = None):
        self.wired = wire(run_dir, layout, settings, None, holder, base=base)
        self.thread = threading.Thread(target=self.wired.engine.loop, name="runsync-engine", daemon=True)
        self.thread.start()

    def ask(self, kind: str, payload: dict, timeout: float = 600):
        import concurrent.futures

        from . import messages

        reply: concurrent.futures.Future = concurrent.futures.Future()
        self.wired.engine.post(messages.Request(kind, payload, reply))
        return reply.result(timeout=timeout)

    def fence(self) -> int:
        """A fence of the watcher: a flush waits for the events before it (`flush(fence=)`)."""
        return self.wired.watcher.fence()

    def flush(self, timeout: float, fence: int | None = None) -> dict:
        """Wait up to `timeout` for what was written before `fence` (a new one if None)."""
        return self.ask("flush", {"fence": self.fence() if fence is None else fence, "timeout": timeout}, timeout + 10)

    def stop(self, timeout: float = 120) -> None:
        if self.thread.is_alive():
            from . import messages

            self.wired.engine.post(messages.Request("terminate", {}))
            self.thread.join(timeout)
        self.wired.watcher.stop()


def _restore_metrics(run_dir: str, metrics: Metrics) -> None:
    report = statedir.StateDir(run_dir).read_restore_report()
    if report is not None:  # else no restore ran in this pod
        metrics.restore_bytes.set(report[0])
        metrics.restore_seconds.set(report[1])


def pre_stop(env=os.environ, timeout: float = 10.0) -> str:
    """The preStop hook: tell the running sidecar that the pod is terminating."""
    import urllib.error
    import urllib.request

    host, port = addresses.parse_addr(env.get(contract.ENV_API) or contract.DEFAULT_API, contract.ENV_API, True)
    url = f"http://{host}:{port}{contract.API_PREFIX}/prestop"
    request = urllib.request.Request(url, data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read()).get("deadline") and "final flush started" or "ok"
    except (urllib.error.URLError, OSError) as err:
        raise InputError(f"cannot reach the sidecar at {url} ({err}); is it running?") from None


def exit_now(code: int) -> NoReturn:
    """End this process with `code` once stdout and stderr are flushed, without the interpreter's
    teardown. For a command whose work is done and closed (every file placed and its state
    written, or its commit made; its report printed), teardown only holds what waits on the
    process: the trainer's start after restore-init (0.1-0.2 s after a large file, whose ranges
    built botocore's client; bench/README.md, "Teardown"), the kubelet's grace period after the
    sidecar (the CRT's native threads)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def restore_init(env=os.environ) -> int:
    """`runsync restore-init`: take the replica's lease (after the previous pod's final flush),
    then restore the run's files into the run dir before any app container starts."""
    from . import crtclient

    pod = PodEnv.read(env)
    os.umask(SHARED_UMASK)
    logs.setup(sys.stdout)
    s3 = crtclient.for_restore(transfer.Settings())
    try:
        return _restore_init(pod, s3)
    except (ClientError, BotoCoreError) as err:
        raise transfer.describe(err, pod.store, s3) from None


def _restore_init(pod: PodEnv, s3) -> int:
    from . import config, durable, lease, manifest, restorer

    cfg = config.parse(config.read_annotations_file(pod.annotations)) if pod.annotations else config.RunConfig()
    layout = keys.Layout(pod.store, pod.run, pod.replica)
    transfer.check_store(s3, pod.store)
    transfer.check_encryption(s3, layout)
    held = lease.acquire(
        s3, layout, pod.holder, wait=pod.grace + lease.DEFAULT_TTL,
        max_seq=lambda: manifest.max_seq(s3, layout),
        on_wait=lambda l: log.info("waiting for the previous pod to finish its final flush",
                                   extra={"fields": {"holder": l.holder, "epoch": l.epoch}}))
    log.info("lease taken", extra={"fields": {"holder": pod.holder, "epoch": held.lease.epoch}})
    statedir.StateDir(pod.run_dir).drop_checked()  # an earlier pod's word holds no more
    if cfg.restore.mode == "none":
        log.info("restore disabled (runsync.dev/restore: none)")
        return 0
    source = pod.run
    all_replicas = cfg.restore_replicas == "all"
    started = time.monotonic()
    found = restorer.latest_manifests(s3, pod.store, pod.run, pod.replica, all_replicas)  # read once, reused
    if not found and cfg.restore_from is not None:
        source = keys.RunPath(pod.run.namespace, cfg.restore_from.project, cfg.restore_from.run)
        log.info("warm start", extra={"fields": {"restore_from": str(source)}})
    report = restorer.restore(
        s3, pod.store, source, pod.run_dir, replica=pod.replica, all_replicas=all_replicas,
        patterns=cfg.restore.globs, markers=cfg.complete_markers, manifests=found if source == pod.run else None,
        keep_names=False)
    report.seconds = time.monotonic() - started  # the discovery above is part of the restore
    restorer.log_report(report, str(source))
    state = statedir.StateDir(pod.run_dir)
    state.write_restore_report(report.bytes, report.seconds, report.files)
    if source == pod.run and pod.replica in found:
        # The sidecar of this pod (same lease) finds the commit indexed and reads only its
        # record: beside 100,000 files that is about a second of CPU before it answers.
        index, adopted = durable.Index(state.path), None
        try:
            if index.path is not None:  # in memory (the state dir cannot hold it) it would help no one
                adopted = index.adopt(found[pod.replica])
        except Exception as err:  # noqa: BLE001 - only a head start: the sidecar builds its own
            log.warning("the restored commit was not indexed for the sidecar; it will read it itself",
                        extra={"fields": {"path": str(index.path), "error": str(err)}})
        finally:
            index.close()
        if index.path is not None and adopted is not None and cfg.restore.mode == "auto" and not all_replicas:
            # Every file of the commit is here as committed, but these: the sidecar's first
            # listing takes our word for the rest (statedir.Checked). Only for an index on disk:
            # one that fell back to memory while adopting is not the one the sidecar reads.
            try:
                state.write_checked(statedir.Checked(adopted.seq, adopted.epoch, tuple(report.kept_newer),
                                                     report.incomplete))
            except OSError as err:
                log.warning("the restored files were not vouched for to the sidecar; it will look at each",
                            extra={"fields": {"path": str(state.path), "error": str(err)}})
    if report.empty and cfg.restore_strict:
        raise restorer.RestoreError(f"nothing to restore for {source} in {pod.store} and runsync.dev/restore-strict is "
                         "true; fix: check runsync.dev/run and runsync.dev/store, or set restore-strict: false")
    return 0
