"""runsync at scale (issue 18): four curves, each with S3 requests by kind, wall time, CPU and RSS
of the runsync process a user or a pod runs, before and after.

    bench/run --scale R,M,F,N,H [--R 1,8,32,128] [--M 10,100,1000] [--F 1000,10000,50000]
              [--N 10,100,1000] [--H 10,100,1000] [--F-steps first,noop,changed,restore] [--repeat 3]
              [--before DIR] [--latency-ms 0] [--out FILE]

- R: restore-init with `runsync.dev/restore-replicas: all` over a run of R replicas (each left by
  a `runsync sync --replica r` of its log file and its shard of a DCP checkpoint; replica 0 adds
  the `.metadata` marker). Every restore is checked to hold all 2R + 1 files.
- M: one more commit, a `runsync sync` of one changed file, on a replica with M manifests in its
  history (written by the SDK's embedded engine: M x change a file, `runsync.flush()`): requests,
  wall, bytes PUT.
- F: F small (4 KiB) files: a first `sync`, a no-op `sync`, a `sync` after one changed file (its
  bytes PUT: the 4 KiB file and the manifest record), restore-init into an empty dir: wall, client
  CPU ms per file, peak RSS, requests. `--F-steps first` runs only the first sync (its memory
  and CPU per file, bench/sync_memory.py for where they go).
- N: `runsync runs NS --json` over N runs (written as bench/runs_catalog.py writes them).
- H: history bounded: a replica with M manifests (as curve M writes them), then `runsync gc RUN
  --keep 3 --min-age 0s`: the run's keys and bytes before and after, gc's requests, wall and RSS,
  then one more commit and a `runsync restore` of the latest (checked to hold it).

Only public interfaces run here (the CLI, the SDK, restore-init as a process), so the bench keeps
working while the format changes. Requests are counted inside each process by kind
(runsync_testing.s3count, which the bench's sitecustomize installs; the product has no counter);
CPU and peak RSS come from wait4. `--before DIR` (a checkout of older code, e.g. `git worktree
add .before 0cd8527`) runs the same steps with that code, each repeat next to this code's, so both
see the same load; each tree writes its own data. `--latency-ms` adds a round trip to every
request of the measured processes (loopback has none; a remote store has 10-50 ms). Prints a
Markdown table per curve and writes them to --out. Numbers of one machine, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from runsync import contract, keys, transfer
from runsync_testing import downward, locals3, s3count

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runs_catalog  # noqa: E402
from startup import Code  # noqa: E402  (the tree to run: this one, or --before's checkout)

HERE = Path(__file__).resolve().parent
LAUNCHER = ("import json, os, subprocess, sys; p = subprocess.Popen(sys.argv[2:]); _, status, u = os.wait4(p.pid, 0); "
            "open(sys.argv[1], 'w').write(json.dumps([os.waitstatus_to_exitcode(status), u.ru_utime + u.ru_stime, "
            "u.ru_maxrss]))")
"""Starts each measured process from a small one: Linux seeds a child's peak RSS (ru_maxrss) with
its parent's at exec (vfork shares the parent's memory until then), so a bench that had grown
would report its own peak for every process it started (2026-12-05: restore-init "613 MiB" at
1,000,000 files, 53 MiB by its own VmHWM at 150,000). `-I`: the launcher itself runs no
sitecustomize (s3count's would write its own empty counts over the child's)."""
SHARD_BYTES = 4096
SMALL_FILE = 4096
DEFAULTS = {"R": "1,8,32,128", "M": "10,100,1000", "F": "1000,10000,50000", "N": "10,100,1000",
            "H": "10,100,1000"}
F_STEPS = ("first", "noop", "changed", "restore")


class Bench:
    """One SeaweedFS, one bucket per tree, the processes run and measured."""

    def __init__(self, server, work: Path, latency_ms: float):
        self.work = work
        self.latency_ms = latency_ms
        self.base = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))},
                     **server.env()}
        self.s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                               aws_access_key_id=server.credentials.access_key,
                               aws_secret_access_key=server.credentials.secret_key)
        self.serial = 0
        self.buckets: set[str] = set()
        self._making = threading.Lock()
        self.f_steps: tuple[str, ...] = F_STEPS

    def store(self, code: Code) -> str:
        bucket = f"scale-{code.label}"
        with self._making:  # curve R's writer threads all ask at once: one makes it, all wait for it
            if bucket not in self.buckets:
                try:
                    self.s3.create_bucket(Bucket=bucket)
                except self.s3.exceptions.BucketAlreadyOwnedByYou:
                    pass
                # SeaweedFS answers NoSuchBucket for a moment after creating one: wait until it serves it
                for _ in range(100):
                    try:
                        self.s3.head_bucket(Bucket=bucket)
                        break
                    except self.s3.exceptions.ClientError:
                        time.sleep(0.1)
                self.buckets.add(bucket)
        return f"s3://{bucket}/runs"

    def env(self, code: Code, **extra: str) -> dict[str, str]:
        return code.env({**self.base, contract.ENV_STORE: self.store(code), **extra})

    def run(self, code: Code, args: list[str], env: dict[str, str], counted: bool = True) -> dict:
        """`runsync ARGS` (or `python ARGS` when args[0] is a .py file) as a process of `code`:
        wall s, cpu s, peak rss MiB, requests and bytes sent by kind."""
        self.serial += 1
        counts = self.work / f"counts-{self.serial}.json"
        if counted:
            site = s3count.environ(counts, self.work, self.latency_ms)
            env = {**env, **site, "PYTHONPATH": os.pathsep.join(
                p for p in (site["PYTHONPATH"], env.get("PYTHONPATH")) if p)}
        argv = [sys.executable, *args] if args[0].endswith(".py") else code.command(*args)
        out, err = self.work / f"out-{self.serial}", self.work / f"err-{self.serial}"
        usage_file = self.work / f"usage-{self.serial}.json"
        started = time.perf_counter()
        with open(out, "wb") as o, open(err, "wb") as e:
            subprocess.run([sys.executable, "-I", "-c", LAUNCHER, str(usage_file), *argv], env=env, stdout=o, stderr=e,
                           stdin=subprocess.DEVNULL, check=True)
        wall = time.perf_counter() - started
        code_, cpu, maxrss = json.loads(usage_file.read_text())
        if code_:
            raise SystemExit(f"{' '.join(args)} ({code.label}) failed: {out.read_text()[-2000:]} "
                             f"{err.read_text()[-2000:]}")
        return {"wall": wall, "cpu": cpu, "rss_mib": maxrss / 1024,
                "requests": s3count.read(counts) if counted else {},
                "sent": s3count.read_bytes(counts) if counted else {}, "out": out.read_text()}

    def restore_init(self, code: Code, run: str, run_dir: Path, annotations: dict[str, str]) -> dict:
        run_dir.mkdir(parents=True)
        ann = run_dir.parent / f"{run_dir.name}.annotations"
        ann.write_text(downward.format_annotations_file(annotations))
        self.serial += 1
        result = self.run(code, ["restore-init"], self.env(
            code, **{contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: run, contract.ENV_REPLICA: "0",
                     contract.ENV_ANNOTATIONS: str(ann), contract.ENV_HOLDER: f"pod-{self.serial}",
                     contract.ENV_GRACE: "5"}))
        result["files"] = sum(1 for p in run_dir.rglob("*") if p.is_file() and keys.STATE_DIR not in p.parts)
        return result

    def sync(self, code: Code, src: Path, run: str, replica: str = "0", counted: bool = True) -> dict:
        return self.run(code, ["sync", str(src), "--run", run, "--replica", replica], self.env(code), counted)


def small_files(root: Path, count: int, size: int = SMALL_FILE) -> None:
    for i in range(count):
        d = root / f"d{i // 1000:03d}"  # 1,000 a dir, as a dataset cache lays them out
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i:06d}.bin").write_bytes(os.urandom(size))


def requests_cell(r: dict) -> str:
    return f"{sum(r.values())} ({', '.join(f'{k} {v}' for k, v in sorted(r.items()))})"


def med(results: list[dict], key: str) -> float:
    return statistics.median(x[key] for x in results)


# -- the curves: each returns Markdown table rows, one per (size, tree)

def curve_r(bench: Bench, trees: list[Code], sizes: list[int], repeat: int) -> tuple[str, list[str]]:
    head = "| R | code | requests (by kind) | wall s (median) | CPU s | peak RSS MiB | files |"
    rows = []
    for r in sizes:
        run = f"team-a/scale/r{r}"
        for code in trees:
            def leave(rep: int, code=code) -> None:  # what replica `rep`'s sidecar leaves
                src = bench.work / f"r{r}-{code.label}-{rep}"
                (src / "logs").mkdir(parents=True)
                (src / "logs" / f"rank-{rep:04d}.txt").write_text(f"rank {rep} step 100\n")
                (src / "ckpt" / "step-100").mkdir(parents=True)
                (src / "ckpt" / "step-100" / f"__{rep}_0.distcp").write_bytes(os.urandom(SHARD_BYTES))
                if rep == 0:
                    (src / "ckpt" / "step-100" / ".metadata").write_bytes(b"dcp metadata")
                bench.sync(code, src, run, str(rep), counted=False)
                shutil.rmtree(src)
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(leave, range(r)))
        results = {c.label: [] for c in trees}
        for i in range(repeat):
            for code in trees:  # interleaved: before and after see the same load
                res = bench.restore_init(code, run, bench.work / f"pod-r{r}-{code.label}-{i}",
                                         {contract.RESTORE_REPLICAS: "all"})
                if res["files"] != 2 * r + 1:
                    raise SystemExit(f"R={r} ({code.label}): restore-init put {res['files']} files, want {2 * r + 1}")
                results[code.label].append(res)
        for code in trees:
            rs = results[code.label]
            rows.append(f"| {r} | {code.label} | {requests_cell(rs[-1]['requests'])} | {med(rs, 'wall'):.2f} | "
                        f"{med(rs, 'cpu'):.2f} | {max(x['rss_mib'] for x in rs):.0f} | {rs[-1]['files']} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return head, rows


def curve_m(bench: Bench, trees: list[Code], sizes: list[int], repeat: int) -> tuple[str, list[str]]:
    head = "| M | code | requests (by kind) | wall s (median) | CPU s | bytes PUT |"
    rows = []
    for m in sizes:
        results = {c.label: [] for c in trees}
        for code in trees:
            src = bench.work / f"m{m}-{code.label}"
            bench.run(code, [str(HERE / "scale_history.py"), str(src), f"team-a/scale/m{m}", str(m)],
                      bench.env(code), counted=False)
        for i in range(repeat):
            for code in trees:
                src = bench.work / f"m{m}-{code.label}"
                (src / "step.txt").write_text(f"after the history, commit {i}\n")
                results[code.label].append(bench.sync(code, src, f"team-a/scale/m{m}"))
        for code in trees:
            rs = results[code.label]
            rows.append(f"| {m} | {code.label} | {requests_cell(rs[-1]['requests'])} | {med(rs, 'wall'):.2f} | "
                        f"{med(rs, 'cpu'):.2f} | {sum(rs[-1]['sent'].values())} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return head, rows


def curve_h(bench: Bench, trees: list[Code], sizes: list[int], repeat: int) -> tuple[str, list[str]]:
    head = ("| M | code | keys before gc (bytes) | gc requests (by kind) | gc wall s / CPU s / RSS MiB | "
            "keys after gc (bytes) | commit after gc: requests, wall s | restore after gc |")
    rows = []
    for m in sizes:
        for code in trees:
            run = f"team-a/scale/h{m}"
            src = bench.work / f"h{m}-{code.label}"
            bench.run(code, [str(HERE / "scale_history.py"), str(src), run, str(m)], bench.env(code), counted=False)
            store = keys.StoreURL.parse(bench.store(code))
            before = _keys_under(bench.s3, store, run)
            gc = bench.run(code, ["gc", run, "--keep", "3", "--min-age", "0s", "--json"], bench.env(code))
            after = _keys_under(bench.s3, store, run)
            (src / "step.txt").write_text("after gc\n")
            commit = bench.sync(code, src, run)
            dest = bench.work / f"h{m}-{code.label}-restored"
            bench.run(code, ["restore", run, "--to", str(dest)], bench.env(code), counted=False)
            restored = (dest / "step.txt").read_text() == "after gc\n"
            rows.append(f"| {m} | {code.label} | {before[0]} ({before[1]:,}) | {requests_cell(gc['requests'])} | "
                        f"{gc['wall']:.2f} / {gc['cpu']:.2f} / {gc['rss_mib']:.0f} | {after[0]} ({after[1]:,}) | "
                        f"{sum(commit['requests'].values())}, {commit['wall']:.2f} | {'latest' if restored else 'WRONG'} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return head, rows


def _keys_under(s3, store: keys.StoreURL, run: str) -> tuple[int, int]:
    """(keys, bytes) of the run in the store (its `.runs` index marker is the namespace's, not counted)."""
    count = size = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=store.key(run) + "/"):
        for obj in page.get("Contents", ()):
            count += 1
            size += obj["Size"]
    return count, size


def curve_f(bench: Bench, trees: list[Code], sizes: list[int], repeat: int) -> tuple[str, list[str]]:
    head = ("| F | code | step | requests (by kind) | wall s | client CPU ms / file | peak RSS MiB "
            "| bytes PUT |")
    rows = []
    for f in sizes:
        for i in range(repeat):
            for code in trees:
                src, run = bench.work / f"f{f}-{code.label}-{i}", f"team-a/scale/f{f}-{i}"
                small_files(src, f)
                changed = next((src / "d000").iterdir())
                steps = [("first sync", bench.sync(code, src, run))]
                if "noop" in bench.f_steps:
                    steps.append(("no-op sync", bench.sync(code, src, run)))
                if "changed" in bench.f_steps:
                    changed.write_bytes(os.urandom(SMALL_FILE))
                    steps.append(("sync of 1 changed", bench.sync(code, src, run)))
                pod = bench.work / f"pod-f{f}-{code.label}-{i}"
                if "restore" in bench.f_steps:
                    steps.append(("restore-init", bench.restore_init(code, run, pod, {contract.SAVE: "**:live"})))
                    if steps[-1][1]["files"] != f:
                        raise SystemExit(f"F={f} ({code.label}): restore-init put {steps[-1][1]['files']} files, "
                                         f"want {f}")
                shutil.rmtree(src)
                shutil.rmtree(pod, ignore_errors=True)
                if i == repeat - 1:  # one repeat's rows; the earlier ones warm the same path
                    for name, res in steps:
                        rows.append(f"| {f} | {code.label} | {name} | {requests_cell(res['requests'])} | "
                                    f"{res['wall']:.2f} | {1000 * res['cpu'] / f:.2f} | {res['rss_mib']:.0f} | "
                                    f"{sum(res['sent'].values())} |")
                        print(rows[-1], file=sys.stderr, flush=True)
    return head, rows


def curve_n(bench: Bench, trees: list[Code], sizes: list[int], repeat: int) -> tuple[str, list[str]]:
    head = "| N runs | code | requests (by kind) | requests / run | wall s (median) | CPU s | peak RSS MiB |"
    rows = []
    s3 = transfer.client()
    for n in sizes:
        results = {c.label: [] for c in trees}
        for code in trees:
            runs_catalog.populate(s3, keys.StoreURL.parse(bench.store(code)), f"n{n}", n, 50, with_meta=True)
        for i in range(repeat):
            for code in trees:
                res = bench.run(code, ["runs", f"n{n}", "--json"], bench.env(code))
                if len(json.loads(res["out"])) != n:
                    raise SystemExit(f"N={n} ({code.label}): `runsync runs` listed {len(json.loads(res['out']))} runs")
                results[code.label].append(res)
        for code in trees:
            rs = results[code.label]
            req = rs[-1]["requests"]
            rows.append(f"| {n} | {code.label} | {requests_cell(req)} | {sum(req.values()) / n:.2f} | "
                        f"{med(rs, 'wall'):.2f} | {med(rs, 'cpu'):.2f} | {max(x['rss_mib'] for x in rs):.0f} |")
            print(rows[-1], file=sys.stderr, flush=True)
    return head, rows


CURVES = {"R": ("Restore every replica: restore-init, `restore-replicas: all`", curve_r),
          "M": ("History: one more commit on a replica with M manifests", curve_m),
          "F": ("Many small files (4 KiB each)", curve_f),
          "N": ("`runsync runs NS` over N runs", curve_n),
          "H": ("History bounded: `runsync gc` of a replica with M manifests", curve_h)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", default="R,M,F,N,H", help="the curves to run, comma-separated")
    for name, default in DEFAULTS.items():
        parser.add_argument(f"--{name}", default=default, help=f"comma-separated sizes of curve {name}")
    parser.add_argument("--replicas", help="the same as --R (kept for older command lines)")
    parser.add_argument("--F-steps", default=",".join(F_STEPS),
                        help="curve F's steps after the first sync, comma-separated: noop,changed,restore")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with (its repo root)")
    parser.add_argument("--latency-ms", type=float, default=0,
                        help="added before each S3 request of the measured processes: a remote store's round trip")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scale.md")
    args = parser.parse_args(argv)
    chosen = [c.strip().upper() for c in args.scale.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CURVES]
    if unknown:
        raise SystemExit(f"bench/scale.py: unknown curve(s) {','.join(unknown)} in --scale {args.scale!r}; "
                         f"fix: pick from {','.join(CURVES)}")
    if args.replicas:
        args.R = args.replicas
    f_steps = tuple(x.strip() for x in args.F_steps.split(",") if x.strip())
    if set(f_steps) - set(F_STEPS):
        raise SystemExit(f"bench/scale.py: unknown step(s) {','.join(sorted(set(f_steps) - set(F_STEPS)))} in "
                         f"--F-steps {args.F_steps!r}; fix: pick from {','.join(F_STEPS)}")
    started = time.time()
    server = locals3.start()
    os.environ.update(server.env())  # curve N writes its runs in this process
    sections: list[str] = []
    failed: list[str] = []
    try:
        with tempfile.TemporaryDirectory(prefix="runsync-scale-") as tmp:
            trees = [Code("after")]
            if args.before:
                trees.insert(0, Code.checkout("before", args.before, Path(tmp) / "before-tree"))
            bench = Bench(server, Path(tmp), args.latency_ms)
            bench.f_steps = f_steps
            for name in chosen:
                title, curve = CURVES[name]
                sizes = [int(x) for x in getattr(args, name).split(",")]
                t0 = time.time()
                try:
                    head, rows = curve(bench, trees, sizes, args.repeat)
                except (Exception, SystemExit) as e:  # noqa: BLE001 - the other curves still run
                    failed.append(name)
                    print(f"curve {name} FAILED: {e}", file=sys.stderr, flush=True)
                    sections.append(f"## {name}: {title}\n\nFAILED after {round(time.time() - t0)} s: {e}")
                else:
                    sep = "|" + "---|" * (head.count("|") - 1)
                    sections.append(f"## {name}: {title}\n\n{round(time.time() - t0)} s.\n\n"
                                    + "\n".join([head, sep, *rows]))
                write(args, started, sections)  # after every curve: a later failure keeps these
    finally:
        server.stop()
    print(write(args, started, sections))
    if failed:
        raise SystemExit(f"bench/scale.py: curve(s) {','.join(failed)} failed (see above); fix: rerun "
                         f"them alone with --scale {','.join(failed)}")


def write(args, started: float, sections: list[str]) -> str:
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    doc = "\n\n".join([
        "# runsync at scale",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {os.cpu_count()} cores, load average {load} "
        f"at the end; one SeaweedFS on loopback; latency added per request {args.latency_ms:g} ms; "
        f"repeats {args.repeat}; {round(time.time() - started)} s in all. Requests and bytes PUT are of the "
        f"last repeat, counted in the measured process.",
        *sections]) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(doc)
    return doc


if __name__ == "__main__":
    main()
