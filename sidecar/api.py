"""HTTP on loopback for the SDK and the preStop hook; /metrics and probes on the metrics port.

The API turns requests into engine messages and waits for the engine's answer; it decides
nothing itself:

    GET  /v1/status                               the engine's state, JSON
    POST /v1/save     {glob, base_path?, policy?} add a save rule (kept across restarts); the files it
                                                  names now go at once; {rules, names}
    POST /v1/flush    {timeout?}                  200 once all complete so far is durable; 504 if not in time
    POST /v1/prestop                              start the final flush (the pod is terminating)
    POST /v1/code     {git, diff_file}            store the run's code state (the SDK captured it; the
                                                  patch is a file it put in the state dir: any size, any bytes)
    POST /v1/restore  {name, run_path?, replace?} restore files of this run (or PROJECT/RUN) into the run dir
                      {root?}                     (or into `root`, a dir below it); `name` is a stored name, not a glob
"""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import contract
from .addresses import parse_addr  # noqa: F401 - callers' name
from .errors import InputError, RunsyncError
from .messages import Request

if TYPE_CHECKING:  # restore-init reads parse_addr only; serve_metrics loads prometheus_client
    from prometheus_client import CollectorRegistry

MAX_BODY = 64 * 1024


class _Handler(http.server.BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - http.server's signature
        pass  # requests are not logged: the engine logs what they cause

    def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The caller went away (a trainer killed while it waited on flush): nothing to tell.
            self.close_connection = True

    def _json(self, code: int, doc) -> None:
        self._send(code, json.dumps(doc).encode())

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("request body too large")
        raw = self.rfile.read(length) if length else b"{}"
        doc = json.loads(raw or b"{}")
        if not isinstance(doc, dict):
            raise ValueError("expected a JSON object")
        return doc

    def do_GET(self):  # noqa: N802
        self.server.route(self, "GET")

    def do_POST(self):  # noqa: N802
        self.server.route(self, "POST")


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, routes: dict[tuple[str, str], Callable[[_Handler], None]]):
        self.routes = routes
        super().__init__(addr, _Handler)

    def route(self, handler: _Handler, method: str) -> None:
        fn = self.routes.get((method, handler.path.split("?")[0]))
        if fn is None:
            handler._json(404, {"error": f"no such endpoint: {method} {handler.path}"})
            return
        try:
            fn(handler)
        except (ValueError, json.JSONDecodeError) as err:
            handler._json(400, {"error": str(err)})


def serve_api(addr: tuple[str, int], post: Callable, fence: Callable[[], int]) -> _Server:
    """The SDK's API; `post` sends a message to the engine, `fence` asks the watcher for one."""

    def ask(kind: str, payload: dict, timeout: float = 30.0):
        reply: concurrent.futures.Future = concurrent.futures.Future()
        post(Request(kind, payload, reply))
        return reply.result(timeout=timeout)

    def status(h: _Handler) -> None:
        h._json(200, ask("status", {}))

    def save(h: _Handler) -> None:
        body = h._body()
        try:
            h._json(200, ask("save", body))
        except InputError as err:  # not a rule, or a name the store cannot hold
            h._json(400, {"error": str(err)})

    def flush(h: _Handler) -> None:
        timeout = float(h._body().get("timeout") or 300.0)
        if not 0 < timeout <= 3600:
            raise ValueError("timeout must be between 0 and 3600 seconds")
        n = fence()
        result = ask("flush", {"fence": n, "timeout": timeout}, timeout + 10)
        h._json(200 if result.get("durable") else 504, result)

    def prestop(h: _Handler) -> None:
        h._json(202, ask("prestop", {}))

    def code(h: _Handler) -> None:
        try:
            h._json(200, ask("code", h._body()))
        except RunsyncError as err:
            h._json(502, {"error": str(err)})

    def restore(h: _Handler) -> None:
        body = h._body()
        if not isinstance(body.get("name"), str):
            raise ValueError("'name' (a stored name) is required")
        try:
            h._json(200, ask("restore", body, timeout=3600))
        except RunsyncError as err:
            h._json(400 if isinstance(err, InputError) else 502, {"error": str(err)})

    p = contract.API_PREFIX
    routes = {("GET", p + "/status"): status, ("POST", p + "/save"): save,
              ("POST", p + "/flush"): flush, ("POST", p + "/prestop"): prestop,
              ("POST", p + "/code"): code, ("POST", p + "/restore"): restore}
    return _start(_Server(addr, routes))


def serve_metrics(addr: tuple[str, int], registry: CollectorRegistry, alive: Callable[[], bool],
                  ready: Callable[[], bool]) -> _Server:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    def metrics(h: _Handler) -> None:
        h._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)

    def probe(check: Callable[[], bool]):
        def handle(h: _Handler) -> None:
            ok = check()
            h._send(200 if ok else 503, b"ok\n" if ok else b"not ready\n", "text/plain")
        return handle

    routes = {("GET", "/metrics"): metrics, ("GET", "/healthz"): probe(alive), ("GET", "/readyz"): probe(ready)}
    return _start(_Server(addr, routes))


def _start(server: _Server) -> _Server:
    threading.Thread(target=server.serve_forever, name=f"http-{server.server_address[1]}", daemon=True).start()
    return server
