"""Count the S3 requests of a `runsync` process by kind (GetObject, ListObjectsV2, ...).

The product has no counter: `environ(counts_file, workdir)` gives a child process a
`sitecustomize` (on PYTHONPATH) that, only when `S3COUNT_FILE` is set, registers a
botocore `before-call.s3` hook on every botocore session (and wraps the requests of
runsync.crtclient, restore-init's CRT client) and writes the counts as JSON to that
file at exit. Bench and tests read them with `read`. A count is not a timing: tests may assert it.
The bytes each kind sent (request bodies: what a PUT wrote) go beside it, read with `read_bytes`.

`S3COUNT_LIVE=1` (`environ(..., live=True)`) also rewrites the file after every request, so a
test can read the counts of a process that is still running (an idle sidecar over a window).

`S3COUNT_LATENCY_MS` (bench only) adds that many milliseconds before each request is sent: the
round trip to a remote store, which loopback SeaweedFS does not have (a sleep releases the GIL,
as a network wait does).
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import threading
from pathlib import Path

LATENCY_ENV = "S3COUNT_LATENCY_MS"
LIVE_ENV = "S3COUNT_LIVE"
ENV = "S3COUNT_FILE"
"""Not RUNSYNC_*: the test harness passes the environment on without those."""
_SITECUSTOMIZE = "from runsync_testing import s3count\ns3count.install()\n"


def environ(counts_file: Path, workdir: Path, latency_ms: float = 0, live: bool = False) -> dict[str, str]:
    """The variables that make a child Python process count its S3 requests into `counts_file`
    (and wait `latency_ms` before sending each; with `live`, written after each request too)."""
    site = Path(workdir) / "s3count-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = os.environ.get("PYTHONPATH")
    return {ENV: str(counts_file), LATENCY_ENV: str(latency_ms), LIVE_ENV: "1" if live else "",
            "PYTHONPATH": f"{site}{os.pathsep}{path}" if path else str(site)}


def install() -> None:
    """Called by the generated sitecustomize at interpreter start-up; a no-op unless asked."""
    target = os.environ.get(ENV)
    if not target:
        return
    import botocore.session

    counts: collections.Counter = collections.Counter()
    sent: collections.Counter = collections.Counter()
    lock = threading.Lock()

    live = bool(os.environ.get(LIVE_ENV))

    def write() -> None:
        with lock:  # one writer at a time, so the newest counts land last
            part = Path(f"{target}.{os.getpid()}.part")
            part.write_text(json.dumps(dict(counts), sort_keys=True))
            part.replace(target)  # a reader never sees half a file
            _bytes_file(target).write_text(json.dumps(dict(sent), sort_keys=True))

    def count(model, **_):
        with lock:
            counts[model.name] += 1
        if live:
            write()

    def measure(request, event_name, **_):  # event_name: before-send.s3.<Kind>
        size = int(request.headers.get("Content-Length") or 0)  # a retry sends (and counts) again
        with lock:
            sent[event_name.rsplit(".", 1)[-1]] += size

    original = botocore.session.Session.__init__
    delay = add_latency(float(os.environ.get(LATENCY_ENV) or 0))

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.register("before-call.s3", count)  # clients copy their session's handlers
        self.register("before-send.s3", measure)
        if delay:
            self.register("before-send.s3", delay)

    botocore.session.Session.__init__ = init
    _count_crtclient(count, sent, lock, delay)
    atexit.register(write)
    end, pid = os._exit, os.getpid()

    def _exit(code: int) -> None:  # runsync's processes end so (runner.exit_now): no atexit there
        try:
            if os.getpid() == pid:  # (a forked child's os._exit does not write its parent's counts)
                write()
        finally:
            end(code)

    os._exit = _exit


def _count_crtclient(count, sent, lock, delay) -> None:
    """The requests made through the CRT: restore-init's (runsync.crtclient) under botocore's
    names; small files' whole-object GETs and PUTs (runsync.crtobjects) as "GetObject (CRT)" and
    "PutObject (CRT)", one a call, so a test can tell which path a file took (on the wire a GET
    of up to 16 MiB is one request, a larger one several: tests/harness.py's LinkProxy sees
    them). Large files' CRT multipart uploads (s3transfer's CRT manager) are not counted."""
    try:
        from runsync import crtclient, crtobjects
    except ImportError:
        return
    import types

    def sending(kind: str, body: bytes | None, size: int | None = None) -> None:
        """One request of `kind` with `body` (or a stream of `size` bytes), counted (and
        delayed) as botocore's hooks do."""
        count(types.SimpleNamespace(name=kind))
        with lock:
            sent[kind] += len(body or b"") if size is None else size
        if delay:
            delay()

    get, put, call = crtobjects.Objects.get, crtobjects.Objects.put, crtclient.Client._call

    def counted_get(self, key, on_headers, on_body, size=0):
        sending("GetObject (CRT)", None)
        return get(self, key, on_headers, on_body, size)

    def counted_put(self, key, body, size):
        sending("PutObject (CRT)", None, size)
        return put(self, key, body, size)

    def counted_call(self, operation, method, bucket, key, query=None, headers=(), body=None):
        sending(operation, body)
        return call(self, operation, method, bucket, key, query, headers, body)

    crtobjects.Objects.get, crtobjects.Objects.put, crtclient.Client._call = counted_get, counted_put, counted_call


def add_latency(ms: float):
    """A `before-send.s3` handler that waits `ms` (None for 0): each retry waits again, as it would."""
    if not ms:
        return None
    import time

    return lambda **_: time.sleep(ms / 1000)


def read(counts_file: Path) -> dict[str, int]:
    return json.loads(Path(counts_file).read_text())


def read_bytes(counts_file: Path) -> dict[str, int]:
    """Bytes of request bodies sent, by kind (PutObject, UploadPart, ...)."""
    return json.loads(_bytes_file(counts_file).read_text())


def _bytes_file(counts_file) -> Path:
    return Path(f"{counts_file}.bytes")
