"""Count the S3 requests of a `runsync` process by kind (GetObject, ListObjectsV2, ...).

The product has no counter: `environ(counts_file, workdir)` gives a child process a
`sitecustomize` (on PYTHONPATH) that, only when `S3COUNT_FILE` is set, registers a
botocore `before-call.s3` hook on every botocore session and writes the counts as JSON to that
file at exit. Bench and tests read them with `read`. A count is not a timing: tests may assert it.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import threading
from pathlib import Path

ENV = "S3COUNT_FILE"
"""Not RUNSYNC_*: the test harness passes the environment on without those."""
_SITECUSTOMIZE = "from runsync_testing import s3count\ns3count.install()\n"


def environ(counts_file: Path, workdir: Path) -> dict[str, str]:
    """The variables that make a child Python process count its S3 requests into `counts_file`."""
    site = Path(workdir) / "s3count-site"
    site.mkdir(parents=True, exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    path = os.environ.get("PYTHONPATH")
    return {ENV: str(counts_file), "PYTHONPATH": f"{site}{os.pathsep}{path}" if path else str(site)}


def install() -> None:
    """Called by the generated sitecustomize at interpreter start-up; a no-op unless asked."""
    target = os.environ.get(ENV)
    if not target:
        return
    import botocore.session

    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()

    def count(model, **_):
        with lock:
            counts[model.name] += 1

    original = botocore.session.Session.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.register("before-call.s3", count)  # clients copy their session's handlers

    botocore.session.Session.__init__ = init
    atexit.register(lambda: Path(target).write_text(json.dumps(dict(counts), sort_keys=True)))


def read(counts_file: Path) -> dict[str, int]:
    return json.loads(Path(counts_file).read_text())
