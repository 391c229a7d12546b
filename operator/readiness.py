"""The operator's /readyz (beside /metrics on the metrics port): ready once the Store index is filled.

kopf serves admissions as soon as its webhook server is up, before its first list of Stores has
reached the index: a new replica would deny pods "Store 'default' does not exist" for a Store
that exists. Kubernetes sends a Service's traffic only to ready pods, so the chart's
readinessProbe asks here. Ready means: every Store the API lists now is in the index (one list
per probe until then; zero Stores is ready at once). It stays ready after that: kopf's watch keeps
the index current. kopf's own /healthz (liveness) is separate and says only that kopf runs.
"""

from __future__ import annotations

import socketserver
import threading
import wsgiref.simple_server
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, make_wsgi_app

READY_PATH = "/readyz"


class StoreIndexReadiness:
    """Compares kopf's Store index (a live mapping) with what `list_keys()` returns."""

    def __init__(self, index, list_keys: Callable[[], Iterable[tuple[str, str]]]):
        self.index = index
        self.list_keys = list_keys
        self._ready = threading.Event()

    def check(self) -> tuple[bool, str]:
        if self._ready.is_set():
            return True, "ready: the Store index is filled"
        try:
            listed = set(self.list_keys())
        except Exception as err:  # noqa: BLE001 - not ready, and say why
            return False, f"not ready: cannot list Stores ({type(err).__name__}: {err})"
        missing = sorted(key for key in listed if key not in self.index)  # `in` only: kopf mutates it
        if missing:
            names = ", ".join(f"{ns}/{name}" for ns, name in missing[:10])
            return False, f"not ready: {len(missing)} of {len(listed)} Stores not in the index yet ({names})"
        self._ready.set()
        return True, f"ready: the Store index holds all {len(listed)} Stores"


def list_store_keys(group: str, version: str, plural: str) -> list[tuple[str, str]]:
    """(namespace, name) of every Store, through the API client kopf logged in."""
    import kubernetes

    listed = kubernetes.client.CustomObjectsApi().list_cluster_custom_object(group, version, plural,
                                                                             _request_timeout=5)
    return [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in listed.get("items", [])]


class _Server(socketserver.ThreadingMixIn, wsgiref.simple_server.WSGIServer):
    daemon_threads = True


class _QuietHandler(wsgiref.simple_server.WSGIRequestHandler):
    def log_message(self, *_) -> None:  # probes every few seconds: not worth a log line each
        pass


def serve(addr: str, registry: CollectorRegistry, readiness: StoreIndexReadiness) -> wsgiref.simple_server.WSGIServer:
    """/readyz from `readiness`, everything else is prometheus_client's exposition of `registry`."""
    metrics = make_wsgi_app(registry)

    def app(environ, start_response):
        if environ.get("PATH_INFO") != READY_PATH:
            return metrics(environ, start_response)
        ok, text = readiness.check()
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
        return [text.encode() + b"\n"]

    host, _, port = addr.rpartition(":")
    server = wsgiref.simple_server.make_server(host, int(port), app, server_class=_Server,
                                               handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-readyz", daemon=True).start()
    return server
