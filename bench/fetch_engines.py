"""Which engine for large restores (issue 17): our pool of ranged GETs (fetch.py) against the AWS
CRT's S3 client (s3transfer's CRT manager), in one process, on one object of one SeaweedFS.

    .venv/bin/python bench/fetch_engines.py [--mib 512] [--repeat 3]

Interleaved per repetition: the CRT download alone (no verification: a lower bound for it),
the CRT download plus the SHA-256 read it would still need, fetch.py verifying format 1
(SHA-256 folded in order) and format 2 (CRC64NVME per part). Wall seconds and process CPU.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from runsync import checksums, crt, fetch, transfer
from runsync_testing import locals3

MiB = 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    server = locals3.start()
    try:
        os.environ.update(server.env())
        s3 = transfer.client()
        bucket = f"eng-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        size = args.mib * MiB
        data = os.urandom(size)
        sha = hashlib.sha256(data).hexdigest()
        crcs = tuple(checksums.encode(checksums.crc64nvme(memoryview(data)[o:o + n]))
                     for o, n in (checksums.part_range(i, size, checksums.PART_SIZE)
                                  for i in range(checksums.part_count(size, checksums.PART_SIZE))))
        s3.upload_fileobj(__import__("io").BytesIO(data), bucket, "obj")
        del data
        pool = concurrent.futures.ThreadPoolExecutor(fetch.WORKERS)
        fetcher = fetch.Fetcher(s3, bucket, 16 * MiB, 4, pool)
        manager = crt.manager(s3, 16 * MiB, transfer.endpoint_override())
        work = Path(tempfile.mkdtemp(prefix="engines-"))

        def crt_only(dest):
            manager.download(bucket, "obj", str(dest)).result()

        def crt_sha(dest):
            crt_only(dest)
            assert transfer.hash_file(dest).sha256 == sha

        def pool_f1(dest):
            fetcher.fetch(fetch.Want("obj", "obj", size, sha), dest)

        def pool_f2(dest):
            fetcher.fetch(fetch.Want("obj", "obj", size, sha, checksums.PART_SIZE, crcs), dest)

        engines = {"crt, unverified": crt_only, "crt + sha256 pass": crt_sha,
                   "pool, format 1 (sha256 folded)": pool_f1, "pool, format 2 (crc64nvme parts)": pool_f2}
        times: dict[str, list[tuple[float, float]]] = {k: [] for k in engines}
        for rep in range(args.repeat):
            for name, run in engines.items():
                dest = work / "out"
                dest.unlink(missing_ok=True)
                os.sync()
                t, c = time.perf_counter(), time.process_time()
                run(dest)
                times[name].append((time.perf_counter() - t, time.process_time() - c))
                print(f"rep {rep} {name:>34} {times[name][-1][0]:6.2f} s {times[name][-1][1]:6.2f} CPU-s "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
        print(f"\n| engine ({args.mib} MiB) | median s | MB/s | CPU-s |\n|---|---|---|---|")
        for name, xs in times.items():
            w, c = statistics.median(x[0] for x in xs), statistics.median(x[1] for x in xs)
            print(f"| {name} | {w:.2f} | {size / w / MiB:.0f} | {c:.2f} |")
        print(f"\nload average {os.getloadavg()}")
        manager.shutdown()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
