"""Close-to-durable latency under `live`: from a checkpoint file's close to the manifest naming it.

A sidecar watches a run dir; the trainer's stand-in writes `ckpt-<i>.pt` (fresh bytes), closes it,
and calls flush (as `runsync.flush()` does), then checks that a new manifest names it. The same
bytes uploaded by boto3's transfer manager alone give the transfer's own time, so the difference
is what runsync adds (event, hash, commit). A multipart-sized checkpoint is also sent through the
sidecar's own uploader alone (the CRT, CRC64NVME per part, `runsync.crt`), so what runsync adds
beside its transfer is told apart from the uploader's speed (`crt_p50_ms`, `overhead_vs_crt_p50_ms`).
Checkpoints are spaced past the commit batching interval, as a trainer's are.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import boto3

from runsync import contract
from tools import Sidecar

MiB = 1024 * 1024


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def close_to_durable(env: dict[str, str], bucket: str, size: int, count: int, wait: str = "flush") -> dict:
    """`wait`: "flush", the trainer's `runsync.flush()` (one call the sidecar answers once what
    was closed before it is durable), or "poll", the status asked every 5 ms (as this bench did
    before 2026-12-04: 200 requests a second through the sidecar's loop, beside the upload)."""
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    block = os.urandom(min(size, 8 * MiB))
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as work:
        run_dir = Path(work) / "run"
        run_dir.mkdir()
        car = Sidecar(run_dir, {**env, contract.ENV_STORE: f"s3://{bucket}/latency-{size}"},
                      {contract.SAVE: "ckpt-*.pt:live"}, Path(work), run="bench/p/latency").start()
        durable, raw, alone = [], [], []
        crt_manager = _crt_manager(env) if size >= MULTIPART else None
        try:
            for i in range(count):
                path = run_dir / f"ckpt-{i:03d}.pt"
                time.sleep(1.1)  # past the commit interval, as checkpoints minutes apart would be
                before = car.status()["manifest"] or 0
                with open(path, "wb") as f:
                    stamp = i.to_bytes(8, "big")
                    for off in range(0, size, len(block)):
                        f.write(stamp + block[8:min(len(block), size - off)])
                t0 = time.perf_counter()  # the file is closed
                if wait == "flush":
                    assert car.flush(timeout=600)["durable"]
                while True:
                    st = car.status()
                    if (st["manifest"] or 0) > before and st["durable_files"] == 1 and (
                            wait == "flush" or not st["pending"] and not st["uploading"]):
                        break
                    assert wait == "poll", f"flush answered before {path.name} was durable: {st}"
                    time.sleep(0.005)
                durable.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                s3.upload_file(str(path), bucket, f"raw-{size}/{i}")
                raw.append(time.perf_counter() - t0)
                if crt_manager is not None:
                    t0 = time.perf_counter()
                    crt_manager.upload(str(path), bucket, f"crt-{size}/{i}",
                                       extra_args={"ChecksumAlgorithm": "CRC64NVME"}).result()
                    alone.append(time.perf_counter() - t0)
                path.unlink()  # keep the disk small; the mirrored deletion is waited for, not timed
                while car.status()["durable_files"]:
                    time.sleep(0.05)
        finally:
            car.stop()
            if crt_manager is not None:
                crt_manager.shutdown()
    result = {"size_MiB": size / MiB, "count": count,
              "p50_ms": round(percentile(durable, 0.5) * 1000, 1), "p99_ms": round(percentile(durable, 0.99) * 1000, 1),
              "transfer_p50_ms": round(statistics.median(raw) * 1000, 1),
              "overhead_p50_ms": round((statistics.median(durable) - statistics.median(raw)) * 1000, 1)}
    if alone:
        result |= {"crt_p50_ms": round(statistics.median(alone) * 1000, 1),
                   "overhead_vs_crt_p50_ms": round((statistics.median(durable) - statistics.median(alone)) * 1000, 1)}
    return result


MULTIPART = 16 * MiB
"""The sidecar's multipart threshold: from this size its uploads go through the CRT."""


def _crt_manager(env: dict[str, str]):
    """The sidecar's CRT uploader on the bench's server (None when awscrt is not installed)."""
    from runsync import crt, transfer

    if not crt.available():
        return None
    saved = {k: os.environ.get(k) for k in env if k.startswith("AWS_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    try:
        return crt.manager(transfer.client(), MULTIPART, env["AWS_ENDPOINT_URL_S3"])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
