"""A long chain of small commits beside a large listing (issue 18: a sidecar committing a log
line a second for weeks beside F files): what each commit writes, before and after.

    .venv/bin/python bench/chain.py [--files 100000] [--commits 200] [--before TREE]

One local SeaweedFS. Per code (`--before TREE`, e.g. `git worktree add .before df48cd9`), a
child process with that tree's `runsync` writes a base of F entries (each with its own key and
CRC, as a 4 KiB file's) with the product's commit code (manifest.commit_next), then `--commits`
commits of one changed file each on the sqlite index of durable entries, as the sidecar's
committer makes them (durable.Index), and reports: the bases and summaries written, the bytes
under `manifests/` added by those commits (records and chunks, listed from the bucket), the
requests they sent by kind (a botocore hook on the writer's client), their wall time (median and
slowest commit) and the child's CPU and peak RSS. Prints a Markdown table; numbers of one
machine, not assertions.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUCKET = "bench-chain"


def child(files: int, commits: int, prefix: str) -> None:
    import collections

    from runsync import durable, keys, lease, manifest, transfer

    s3 = transfer.client()
    counts: collections.Counter = collections.Counter()
    counting = [False]
    def count(model, **_) -> None:  # (a before-call handler that returns a value answers the call)
        if counting[0]:
            counts[model.name] += 1
    s3.meta.events.register("before-call.s3", count)
    layout = keys.Layout(keys.StoreURL.parse(f"s3://{BUCKET}/{prefix}"), keys.RunPath("team-a", "chain", "run"), "0")
    def entry(name: str, t: int) -> manifest.FileEntry:  # as a 4 KiB file's entry is: its own key and CRC
        crc = base64.b64encode(os.urandom(8)).decode()
        return manifest.FileEntry(name, f"{layout.objects_prefix}00000001/{os.urandom(8).hex()}", 4096, t, "",
                                  "live", 16 << 20, (crc,))

    held = lease.acquire(s3, layout, "bench", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    manifest.commit_next(s3, layout, None, [entry(f"data/{i:07d}.bin", 1) for i in range(files)],
                         final=False, writer="bench", epoch=held.lease.epoch)
    # The sidecar's committer: the durable entries in its sqlite index, each commit overlaid on it.
    index = durable.Index(tempfile.mkdtemp(prefix="runsync-chain-index-"))
    previous = index.adopt(manifest.latest_listing(s3, layout))

    def manifest_bytes() -> int:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=layout.manifests_prefix)
        return sum(o["Size"] for page in pages for o in page.get("Contents", ()))

    before, walls = manifest_bytes(), []
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    counting[0] = True
    for i in range(commits):
        started = time.perf_counter()
        previous = index.committed(manifest.commit_next(s3, layout, previous, [entry("log.txt", 1_000 + i)],
                                                        final=False, writer="bench", epoch=held.lease.epoch))
        walls.append(time.perf_counter() - started)
    counting[0] = False
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    latest = manifest.read(s3, layout, previous.seq)  # as a reader finds it: every file, the last log line
    if len(latest.files) != files + 1 or latest.files["log.txt"].mtime_ns != 1_000 + commits - 1:
        raise SystemExit(f"commit {previous.seq} reads back wrong: {len(latest.files)} files")
    kinds = {"base": 0, "summary": 0, "delta": 0}
    for seq in range(2, previous.seq + 1):
        doc = json.loads(s3.get_object(Bucket=BUCKET, Key=layout.manifest_key(seq))["Body"].read())
        kinds["summary" if doc.get("summary") == seq else doc["kind"]] += 1
    lease.renew(s3, layout, held, state="released")
    print(json.dumps({"kinds": kinds, "bytes": manifest_bytes() - before, "requests": dict(counts),
                      "median_ms": 1000 * statistics.median(walls), "max_ms": 1000 * max(walls),
                      "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
                      "rss_mib": cpu1.ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--commits", type=int, default=200)
    ap.add_argument("--before", type=Path, help="a checkout of the code to compare with (its repo root)")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--prefix", default="")
    args = ap.parse_args()
    if args.child:
        child(args.files, args.commits, args.prefix)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tools

    server, env = tools.server_with_bucket(BUCKET)
    try:
        rows = []
        with tempfile.TemporaryDirectory(prefix="runsync-chain-") as tmp:
            codes = tools.codes(args.before, tmp)
            for label, code in codes:
                cenv = {**env, **({"PYTHONPATH": os.pathsep.join(p for p in (code, env.get("PYTHONPATH")) if p)}
                                  if code else {})}
                done = subprocess.run([sys.executable, __file__, "--child", "--files", str(args.files), "--commits",
                                       str(args.commits), "--prefix", label], env=cenv, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{label}: {done.stderr[-3000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append((label, row))
                print(label, json.dumps(row), f"load {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
        print(f"F = {args.files:,} entries, {args.commits} commits of one changed file each; "
              f"load average {os.getloadavg()[0]:.2f}")
        print("| code | bases / summaries / deltas | manifest bytes written | bytes per commit | requests (by kind) "
              "| commit ms median / slowest | CPU s | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for label, r in rows:
            k = r["kinds"]
            reqs = ", ".join(f"{n} {c}" for n, c in sorted(r["requests"].items()))
            print(f"| {label} | {k['base']} / {k['summary']} / {k['delta']} | {r['bytes']:,} | "
                  f"{r['bytes'] // args.commits:,} | {reqs} | {r['median_ms']:.0f} / {r['max_ms']:.0f} | "
                  f"{r['cpu_s']:.1f} | {r['rss_mib']:.0f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
