"""Where a first `runsync sync` of many small files spends its memory and CPU (issue 18), against
one local SeaweedFS.

    .venv/bin/python bench/sync_memory.py --files 20000 [--tracemalloc] [--cprofile] [--top 15]

F files of 4 KiB (1,000 a dir, as bench/scale.py lays them out) are synced once by
`runsync.sync.sync` in this process (the CLI's work without its start-up), under
- `--tracemalloc`: snapshots of what Python holds near its peak (taken whenever the traced total
  passes its last high by 5 %, sampled every 0.1 s), just before the commit (every upload done, its
  entry kept) and when `sync` returns, top lines by size, and tracemalloc's own peak;
- `--cprofile`: cProfile's top functions by internal and by cumulative CPU time;
- `--rss`: this process's RSS (VmRSS) sampled every 0.1 s: before the sync, at each tenth of
  its wall time, when the commit starts, and its high-water mark (VmHWM).
Wall clock and peak RSS under a tracer say little (both slow every call); bench/scale.py
--scale F measures the CLI as a process (wait4: CPU and peak RSS). Numbers of one machine.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import resource
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scale import small_files  # noqa: E402

from runsync import keys, manifest  # noqa: E402
from runsync import sync as syncing  # noqa: E402
from runsync_testing import locals3  # noqa: E402


def top(snapshot: tracemalloc.Snapshot, n: int) -> str:
    stats = snapshot.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)]).statistics("lineno")
    total = sum(s.size for s in stats)
    lines = [f"  total {total / 2**20:.1f} MiB in {sum(s.count for s in stats)} blocks"]
    for s in stats[:n]:
        frame = s.traceback[0]
        where = f"{frame.filename.split('site-packages/')[-1].split('/sidecar/')[-1]}:{frame.lineno}"
        lines.append(f"  {s.size / 2**20:7.2f} MiB {s.count:8d} blocks  {where}")
    return "\n".join(lines)


def _status(field: str) -> int:
    """A field of /proc/self/status, in KiB."""
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith(field + ":")).split()[1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--tracemalloc", action="store_true")
    ap.add_argument("--cprofile", action="store_true")
    ap.add_argument("--rss", action="store_true")
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--work", type=Path, default=None, help="where the run dir is made (default: a temp dir)")
    args = ap.parse_args(argv)
    server = locals3.start()
    os.environ.update(server.env())
    try:
        with tempfile.TemporaryDirectory(prefix="runsync-syncmem-", dir=args.work) as tmp:
            s3 = boto3.client("s3", **{"endpoint_url": server.endpoint, "region_name": "us-east-1",
                                       "aws_access_key_id": server.credentials.access_key,
                                       "aws_secret_access_key": server.credentials.secret_key})
            s3.create_bucket(Bucket="syncmem")
            src = Path(tmp) / "run"
            small_files(src, args.files)
            store, run = keys.StoreURL.parse("s3://syncmem/runs"), keys.RunPath.parse("b/mem/run")
            snaps: list[tuple[str, tracemalloc.Snapshot]] = []
            if args.tracemalloc:
                commit_next = manifest.commit_next

                def snapped(*a, **kw):
                    snaps.append(("before the commit", tracemalloc.take_snapshot()))
                    return commit_next(*a, **kw)
                manifest.commit_next = snapped
                tracemalloc.start(1)
                watching = threading.Event()
                peak_snap: list = [0, None]

                def near_peak() -> None:  # a snapshot whenever the traced total passes its last high by 5 %
                    while not watching.wait(0.1):
                        current = tracemalloc.get_traced_memory()[0]
                        if current > peak_snap[0] * 1.05 and current > 16 * 2**20:
                            peak_snap[:] = [current, tracemalloc.take_snapshot()]
                sampler = threading.Thread(target=near_peak, daemon=True)
                sampler.start()
            rss: list[tuple[float, int]] = []
            if args.rss:
                commit_at: list[float] = []
                commit_next = manifest.commit_next

                def marked(*a, **kw):
                    commit_at.append(time.monotonic())
                    return commit_next(*a, **kw)
                manifest.commit_next = marked
                sampling = threading.Event()

                def sample() -> None:
                    while not sampling.wait(0.1):
                        rss.append((time.monotonic(), _status("VmRSS")))
                rss.append((time.monotonic(), _status("VmRSS")))
                sampler_rss = threading.Thread(target=sample, daemon=True)
                sampler_rss.start()
            prof = cProfile.Profile(time.process_time) if args.cprofile else None
            cpu0 = time.process_time()
            if prof:
                prof.enable()
            report = syncing.sync(src, store, run)
            if prof:
                prof.disable()
            cpu = time.process_time() - cpu0
            if args.tracemalloc:
                watching.set()
                sampler.join()
                if peak_snap[1] is not None:
                    snaps.insert(0, (f"near the peak ({peak_snap[0] / 2**20:.1f} MiB traced)", peak_snap[1]))
                snaps.append(("when sync returned", tracemalloc.take_snapshot()))
                current, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            print(f"F={args.files}: uploaded {len(report.uploaded)}, commit {report.committed.seq}; "
                  f"CPU {cpu:.2f} s ({1000 * cpu / args.files:.2f} ms / file, under the tracer(s)); "
                  f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
                  f"load {load}")
            if args.tracemalloc:
                print(f"tracemalloc: peak {peak / 2**20:.1f} MiB traced, {current / 2**20:.1f} MiB at the end")
                for label, snap in snaps:
                    print(f"{label}:")
                    print(top(snap, args.top))
            if args.rss:
                sampling.set()
                sampler_rss.join()
                t0, t1 = rss[0][0], rss[-1][0]
                marks = [("before", rss[0][1])]
                for k in range(1, 11):
                    at = t0 + (t1 - t0) * k / 10
                    marks.append((f"{k / 10:.0%} of the wall", next(v for t, v in rss if t >= at - 1e-9)))
                if commit_at:
                    marks.append(("the commit starts", next((v for t, v in rss if t >= commit_at[0]), rss[-1][1])))
                print("RSS (MiB): " + "; ".join(f"{label} {v / 1024:.0f}" for label, v in marks)
                      + f"; high-water {_status('VmHWM') / 1024:.0f}")
            if prof:
                for key in ("tottime", "cumulative"):
                    out = io.StringIO()
                    pstats.Stats(prof, stream=out).sort_stats(key).print_stats(args.top)
                    print(f"cProfile by {key}:")
                    print("\n".join(line for line in out.getvalue().splitlines()[6:] if line.strip()))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
