"""A commit's cost against the replica's history (M manifests) and size (F files): issue 18.

    .venv/bin/python bench/history.py [--manifests 10,100,1000] [--files 1000,50000]
                                      [--gc 100,1000] [--repeat 5] [--before TREE]

One local SeaweedFS. For each M a replica is given M commits (each rewrites one of its ten files), then `--repeat`
one-shot commits are measured as `runsync sync` makes them (the product's code: read the latest
manifest, take the lease, commit one changed file, release): seconds and S3 requests by kind per
commit. For each F a replica is given one commit of F files, then one commit of one changed
file: the bytes that commit PUTs under manifests/ (and head.json). `--before TREE` (e.g. `git
worktree add .before 0cd8527`) runs that code too, each measurement in its own process next to
this code's, so both see the same load. Prints Markdown tables: numbers of one machine, not
assertions. For each G (`--gc`), a run of GC_FILES files and G one-file commits after them, then
`runsync gc --dry-run --keep 1 --min-age 0` as a process: wall time, peak RSS, requests by kind.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUCKET = "bench-history"
GC_FILES = 10_000
"""The files of a G case's run: `runsync gc` judges G commits of a run this size."""


def child(kind: str, size: int, repeat: int, prefix: str) -> dict:
    """In a process of the code under test: seed, then measure."""
    from runsync import keys, lease, manifest, transfer

    s3 = transfer.client()
    layout = keys.Layout(keys.StoreURL.parse(f"s3://{BUCKET}/{prefix}"), keys.RunPath("team-a", "hist", f"{kind}{size}"), "0")
    counts: collections.Counter = collections.Counter()
    put_bytes = collections.Counter()

    def count(model, **_):
        counts[model.name] += 1

    def put(params, **_):  # the API's own parameters, before they are serialized
        if params["Key"].startswith((layout.manifests_prefix, layout.replica_prefix + "head")):
            body = params.get("Body", b"")
            put_bytes["manifest"] += len(body) if isinstance(body, (bytes, bytearray)) else 0

    def entry(i: int, gen: int = 0) -> manifest.FileEntry:
        digest = f"{gen:08x}{i:056x}"
        return manifest.FileEntry(f"f/{i:07d}.txt", layout.file_key(f"f/{i:07d}.txt", digest), 4096,
                                  time.time_ns(), digest, "live")

    def one_shot(changes) -> None:  # sync._commit, after sync's manifest.latest
        durable = manifest.latest(s3, layout)
        held = lease.acquire(s3, layout, "bench", wait=0, max_seq=lambda: manifest.max_seq(s3, layout), take_live=False)
        manifest.commit_next(s3, layout, durable, changes, final=True, writer="bench", epoch=held.lease.epoch)
        lease.renew(s3, layout, held, state="released")

    held = lease.acquire(s3, layout, "seed", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    previous = None
    if kind == "G":  # a base of GC_FILES files, then `size` commits of one changed file each
        previous = manifest.commit_next(s3, layout, None, [entry(i) for i in range(GC_FILES)], final=False,
                                        writer="seed", epoch=held.lease.epoch)
        for i in range(size):
            previous = manifest.commit_next(s3, layout, previous, [entry(i % GC_FILES, gen=i + 1)], final=False,
                                            writer="seed", epoch=held.lease.epoch)
        lease.renew(s3, layout, held, state="released")
        return {}
    if kind == "M":
        for i in range(size):
            previous = manifest.commit_next(s3, layout, previous, [entry(i % 10, gen=i)], final=False,
                                            writer="seed", epoch=held.lease.epoch)  # ten files, each rewritten
    else:
        previous = manifest.commit_next(s3, layout, None, [entry(i) for i in range(size)], final=False,
                                        writer="seed", epoch=held.lease.epoch)
    lease.renew(s3, layout, held, state="released")

    s3.meta.events.register("before-call.s3", count)
    s3.meta.events.register("before-parameter-build.s3.PutObject", put)
    seconds = []
    for r in range(repeat if kind == "M" else 1):
        started = time.perf_counter()
        one_shot([entry(r % 7, gen=r + 1)])
        seconds.append(time.perf_counter() - started)
    n = len(seconds)
    return {"seconds": statistics.median(seconds), "requests": {k: v / n for k, v in sorted(counts.items())},
            "manifest_bytes": put_bytes["manifest"] / n}


def run(code: str, kind: str, size: int, repeat: int, env: dict) -> dict:
    prefix = f"{code.rsplit('/', 1)[-1] or 'after'}-{time.time_ns()}"
    cmd = [sys.executable, __file__, "--child", f"{kind}{size}", "--repeat", str(repeat), "--prefix", prefix]
    env = {**env, "PYTHONPATH": code} if code else env
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    res = json.loads(out.stdout.splitlines()[-1])
    if kind == "G":  # `runsync gc --dry-run` of that run as a process: wall, peak RSS, requests
        from runsync_testing import s3count

        with tempfile.TemporaryDirectory(prefix="runsync-gc-") as tmp:
            counts = Path(tmp) / "counts.json"
            gc = [sys.executable, "-c", "import sys; from runsync.launch import main; sys.argv[0] = 'runsync'; sys.exit(main())",
                  "gc", f"team-a/hist/G{size}", "--dry-run", "--keep", "1", "--min-age", "0"]
            started = time.perf_counter()
            child_env = {**env, **s3count.environ(counts, Path(tmp)), "RUNSYNC_STORE": f"s3://{BUCKET}/{prefix}"}
            if code:
                child_env["PYTHONPATH"] = f"{child_env['PYTHONPATH']}{os.pathsep}{code}"
            with open(os.devnull, "wb") as sink:
                child_ = subprocess.Popen(gc, env=child_env, stdout=sink)
                _, status, usage = os.wait4(child_.pid, 0)
            if os.waitstatus_to_exitcode(status):
                raise SystemExit(f"runsync gc failed ({status})")
            res = {"gc_s": time.perf_counter() - started, "gc_rss_mib": usage.ru_maxrss / 1024,
                   "requests": s3count.read(counts)}
        return res
    if kind == "F":  # `runsync ls` of that run: its wall time and peak RSS, as a process
        ls = [sys.executable, "-c", "import sys; from runsync.launch import main; sys.argv[0] = 'runsync'; sys.exit(main())",
              "ls", f"team-a/hist/F{size}"]
        started = time.perf_counter()
        with open(os.devnull, "wb") as sink:
            child_ = subprocess.Popen(ls, env={**env, "RUNSYNC_STORE": f"s3://{BUCKET}/{prefix}"}, stdout=sink)
            _, status, usage = os.wait4(child_.pid, 0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"runsync ls failed ({status})")
        res["ls_s"], res["ls_rss_mib"] = time.perf_counter() - started, usage.ru_maxrss / 1024
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifests", default="10,100,1000")
    ap.add_argument("--files", default="1000,50000")
    ap.add_argument("--gc", default="", help=f"commits (e.g. 100,1000) of a {GC_FILES:,}-file run for `runsync gc` to judge")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--before", type=Path, help="a checkout of the code to compare with (its repo root)")
    ap.add_argument("--child")
    ap.add_argument("--prefix", default="")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1:]), args.repeat, args.prefix)))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tools

    server, env = tools.server_with_bucket(BUCKET)
    try:
        with tempfile.TemporaryDirectory(prefix="runsync-history-") as tmp:
            codes = tools.codes(args.before, tmp)
            rows = []
            cases = [("M", int(m)) for m in args.manifests.split(",") if m] + [("F", int(f)) for f in args.files.split(",") if f] + \
                [("G", int(g)) for g in args.gc.split(",") if g]
            for kind, size in cases:
                for label, code in codes:  # interleaved: before and after see the same load
                    res = run(code, kind, size, args.repeat, env)
                    rows.append((kind, size, label, res))
                    print(kind, size, label, res, file=sys.stderr)
        print(f"load average: {os.getloadavg()[0]:.2f}")
        print("| case | code | commit (ms, median) | requests per commit | manifest bytes per commit "
              "| `runsync ls` (s) | its peak RSS (MiB) |")
        print("|---|---|---|---|---|---|---|")
        for kind, size, label, res in rows:
            if kind == "G":
                continue
            reqs = ", ".join(f"{k} {v:g}" for k, v in res["requests"].items())
            ls = f"{res['ls_s']:.2f} | {res['ls_rss_mib']:.0f}" if "ls_s" in res else " | "
            print(f"| {kind}={size} | {label} | {res['seconds'] * 1000:.0f} | {reqs} | {res['manifest_bytes']:.0f} | {ls} |")
        gcs = [(size, label, res) for kind, size, label, res in rows if kind == "G"]
        if gcs:
            print(f"\n| commits of a {GC_FILES:,}-file run | code | `runsync gc --dry-run` (s) | peak RSS (MiB) | requests |")
            print("|---|---|---|---|---|")
            for size, label, res in gcs:
                reqs = ", ".join(f"{k} {v:g}" for k, v in sorted(res["requests"].items()))
                print(f"| {size} | {label} | {res['gc_s']:.2f} | {res['gc_rss_mib']:.0f} | {reqs} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
