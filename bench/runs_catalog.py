"""`runsync runs NS` over many runs: from run.json (one GET per run) against the manifests path
that runs written before run.json still take (a LIST of replicas, a LIST of manifests, GETs and a
parse of the latest manifest per replica).

    .venv/bin/python bench/runs_catalog.py [--runs 1000] [--files 50] [--before TREE]

One local SeaweedFS; namespace `legacy` holds N runs with manifests only, namespace `meta` the
same N runs with their run.json too. Each is listed three times, in this process (requests
counted through botocore's events) and as the CLI (`runsync runs NS`, start-up included);
medians are printed as a Markdown table. `--before TREE` (a checkout, e.g. `git worktree add
.before main`) times that code's CLI too, each of its runs next to one of this code's (the same
load). A number of one machine, not an assertion.
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
from startup import Code  # bench/startup.py: runs an older checkout's console script

from runsync import catalog, keys, manifest, runmeta, transfer
from runsync_testing import locals3

RUNSYNC = str(Path(sys.executable).with_name("runsync"))


def populate(s3, store: keys.StoreURL, namespace: str, runs: int, files: int, with_meta: bool) -> None:
    def one(i: int) -> None:
        layout = keys.Layout(store, keys.RunPath(namespace, "proj", f"run-{i:05d}"), "0")
        entries = [manifest.FileEntry(f"ckpt/shard-{j}.pt", layout.file_key(f"ckpt/shard-{j}.pt", f"{j:064x}"),
                                      1 << 20, 0, f"{j:064x}", "live") for j in range(files)]
        m = manifest.commit(s3, layout, None, entries, final=True, writer="bench", seq=1)
        if with_meta:
            recorder = runmeta.Recorder(s3, layout, runmeta.Facts(writer="bench"))
            recorder.started(m)
            recorder.ended(m)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(runs)))


def in_process(s3, store: keys.StoreURL, namespace: str) -> tuple[float, dict[str, int], int]:
    counts: collections.Counter = collections.Counter()
    handler = lambda model, **_: counts.update([model.name])  # noqa: E731
    s3.meta.events.register("before-call.s3", handler)
    try:
        started = time.perf_counter()
        found = catalog.runs(s3, store, namespace)
        return time.perf_counter() - started, dict(counts), len(found)
    finally:
        s3.meta.events.unregister("before-call.s3", handler)


def cli(env: dict[str, str], namespace: str, code: Code) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `runsync runs NAMESPACE --json`; CPU holds up under load."""
    cpu, started = _children_cpu(), time.perf_counter()
    subprocess.run(code.command("runs", namespace, "--json"), env=code.env(env), check=True, capture_output=True)
    return time.perf_counter() - started, _children_cpu() - cpu


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--files", type=int, default=50, help="files in each run's manifest")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with (its repo root)")
    args = parser.parse_args()
    links = Path(tempfile.mkdtemp(prefix="bench-runs-"))  # where --before's checkout is linked from
    server = locals3.start()
    try:
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))},
               **server.env(), "RUNSYNC_STORE": "s3://bench-runs/runs"}
        os.environ.update(server.env())
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id=server.credentials.access_key,
                     aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket="bench-runs")
        s3 = transfer.client()
        store = keys.StoreURL.parse(env["RUNSYNC_STORE"])
        started = time.perf_counter()
        populate(s3, store, "legacy", args.runs, args.files, with_meta=False)
        populate(s3, store, "meta", args.runs, args.files, with_meta=True)
        print(f"populated 2 x {args.runs} runs in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        codes = [Code("after")]
        if args.before:
            codes.insert(0, Code.checkout("before", args.before, links / "before"))
        rows = []
        for namespace, label in (("legacy", "manifests (before run.json)"), ("meta", "run.json")):
            timings = [in_process(s3, store, namespace) for _ in range(args.repeat)]
            seconds = statistics.median(t for t, _, _ in timings)
            requests = timings[0][1]
            assert all(n == args.runs for _, _, n in timings), timings
            cli_seconds: dict[str, list[tuple[float, float]]] = {c.label: [] for c in codes}
            for _ in range(args.repeat):
                for code in codes:  # interleaved: before and after see the same load
                    cli_seconds[code.label].append(cli(env, namespace, code))
            per_run = sum(requests.values()) / args.runs
            wall = " → ".join(f"{statistics.median(w for w, _ in cli_seconds[c.label]):.2f}" for c in codes)
            cpu = " → ".join(f"{statistics.median(u for _, u in cli_seconds[c.label]):.2f}" for c in codes)
            rows.append(f"| {label} | {args.runs} | {seconds:.2f} | {wall} | {cpu} | {per_run:.2f} | "
                        + ", ".join(f"{k} {v}" for k, v in sorted(requests.items())) + " |")
        which = ", before → after" if args.before else ""
        print(f"| source | runs | in process (s, median) | `runsync runs --json` CLI (s, median{which}) | "
              f"its CPU (s, median{which}) | requests per run | requests |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print(f"load average (1, 5, 15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        server.stop()
        shutil.rmtree(links, ignore_errors=True)


if __name__ == "__main__":
    main()
