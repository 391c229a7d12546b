"""Where close-to-durable time goes: the sidecar's steps from a checkpoint's close to its commit.

Runs the sidecar's engine in this process (as the SDK does) against a local SeaweedFS, with a
`live` rule, writes `ckpt-<i>.pt` of `--size` MiB `--count` times (spaced past the commit
interval), and wraps the steps on the way (the close event, the worker, the upload and its digest
read, the stat after it, the lease renewal, the record PUT, head.json, the commit's answer) to
print one timeline per checkpoint, in ms since the close, as JSON lines. Wrapping costs
microseconds per step; the steps themselves are the sidecar's own code.

    .venv/bin/python bench/trace_commit.py --size 1024 --count 3
    PYTHONPATH=<dir with a `runsync` symlink to an older tree's sidecar/> .venv/bin/python bench/trace_commit.py

`after_upload_ms`: from the worker's end (the upload, its digests and checks done) to the commit
the loop has applied.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "testing"))

MiB = 1024 * 1024
_events: list[tuple[float, str]] = []
_lock = threading.Lock()


def mark(what: str) -> None:
    with _lock:
        _events.append((time.perf_counter(), what))


def wrap(owner, name: str, label: str) -> None:
    """`owner.name` (a function or method) marks `label start` and `label end` around each call."""
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        mark(f"{label} start")
        try:
            return fn(*args, **kwargs)
        finally:
            mark(f"{label} end")

    setattr(owner, name, traced)


def instrument() -> None:
    from runsync import engine, hashing, head, lease, manifest, tasks, transfer

    wrap(engine.Engine, "_file_event", "event")
    wrap(tasks.Worker, "run", "worker")
    wrap(transfer.Transfers, "_submit", "submit")
    wrap(hashing, "of_fd", "digest read")
    wrap(transfer.Transfers, "_finish", "finish (wait, fstat)")
    wrap(engine.Engine, "_done", "done")
    wrap(lease, "renew", "lease renew")
    wrap(manifest, "commit", "record")
    wrap(head, "write", "head.json")
    wrap(engine.Engine, "_committed", "committed")
    both_init = transfer._Both.__init__

    def noting(self, sent, digests):  # the upload's own end, apart from the digests'
        both_init(self, sent, digests)
        threading.Thread(target=lambda: (_quiet(sent.result), mark("upload sent")), daemon=True).start()

    transfer._Both.__init__ = noting


def _quiet(fn) -> None:
    try:
        fn()
    except Exception:  # noqa: BLE001 - the sidecar reports it
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=1024, help="MiB per checkpoint")
    ap.add_argument("--count", type=int, default=3)
    args = ap.parse_args()
    from runsync_testing import locals3

    server = locals3.start()
    work = Path(tempfile.mkdtemp(prefix="trace-commit-"))
    try:
        os.environ.update(server.env())
        from runsync import config, contract, keys, runner, settings

        instrument()
        import boto3
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id=server.credentials.access_key,
                     aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket="trace")
        run_dir = work / "run"
        run_dir.mkdir()
        layout = keys.Layout(keys.StoreURL.parse("s3://trace/t"), keys.RunPath.parse("bench/p/trace"), "0")
        base = config.parse({contract.SAVE: "ckpt-*.pt:live"})
        core = runner.Embedded(str(run_dir), layout, settings.Settings(), "tracer", base=base)
        engine = core.wired.engine
        block = os.urandom(8 * MiB)
        size = args.size * MiB
        for i in range(args.count):
            time.sleep(1.2)  # past the commit interval, as checkpoints minutes apart would be
            name = f"ckpt-{i:03d}.pt"
            with _lock:
                _events.clear()
            with open(run_dir / f"ckpt-{i:03d}.pt", "wb") as f:
                for off in range(0, size, len(block)):
                    f.write(i.to_bytes(8, "big") + block[8:min(len(block), size - off)])
            t0 = time.perf_counter()
            while not (engine.books.durable and name in engine.books.durable.files):
                time.sleep(0.002)
            took = time.perf_counter() - t0
            with _lock:
                steps = [(round((t - t0) * 1000, 1), what) for t, what in _events]
            uploaded = max((t for t, what in steps if what == "worker end"), default=0.0)
            print(json.dumps({"size_MiB": args.size, "i": i, "close_to_durable_ms": round(took * 1000, 1),
                              "after_upload_ms": round(took * 1000 - uploaded, 1), "load": os.getloadavg()[0],
                              "steps": steps}), flush=True)
            (run_dir / name).unlink()  # its mirrored removal is waited for, not timed
            while engine.books.durable and name in engine.books.durable.files:
                time.sleep(0.05)
        core.stop()
    finally:
        server.stop()
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
