"""Restore throughput alone (issue 17): `runsync restore` against s5cmd, before and after.

    .venv/bin/python bench/down.py [--before .before] [--repeat 3] [--sets "1 x 2 GiB,..."] [--profile DIR]
                                   [--restore-init]

The data sets of bench/main.py are synced once by this code (`runsync sync` writes format 2:
objects the CRT uploaded, part CRC64NVMEs), and written a second time as format 1, as runsync
wrote it before format 2 (boto3 `upload_file` to `files/<name>~<sha16>`, a format-1 manifest;
tests/test_format1_compat.py). Until 2026-12-04 the "f1" rows here were in fact that format-2
sync, and the "f2" rows format-2 entries over `copy_object` copies (bench/README.md, "Format-2
large restore: the cause"). Each repetition then runs, interleaved so all see the same load:
s5cmd `cp` (as bench/tools.py runs it), the `--before` code's restore of the format-2 run, this
code's restore of the format-2 run and of the format-1 run (`--restore-init`: also each code's
`runsync restore-init` of the format-2 run, as a pod runs it, into an empty run dir). Medians, ratios to s5cmd and the load average are printed; `--profile DIR` also writes
py-spy's busiest frames (all threads) of one restore of each set by this code. No test asserts a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig

from runsync import contract, keys
from runsync_testing import locals3

sys.path.insert(0, str(Path(__file__).resolve().parent))
import main as bench_main  # noqa: E402
import startup  # noqa: E402
import tools  # noqa: E402

BIN = Path(sys.executable).parent
MiB = 1024 * 1024


def sha256_of(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            sha.update(block)
    return sha.hexdigest()


def write_format_1(s3, store: keys.StoreURL, src: Path, run: str, shas: dict[str, str] | None = None) -> None:
    """Run `run` holds the files of `src` as runsync wrote them before format 2: boto3 puts
    (s3transfer multipart, 16 MiB parts) at `files/<name>~<sha16>`, one format-1 manifest naming
    them (SHA-256 entries, no part CRCs), under a released lease (tests/test_format1_compat.py).
    `shas`: each file's SHA-256 by name, when the caller has them already."""
    prefix = keys.Layout(store, keys.RunPath.parse(run), "0").replica_prefix
    config = TransferConfig(multipart_threshold=16 * MiB, multipart_chunksize=16 * MiB)
    entries = []
    for path in sorted(src.iterdir()):
        sha = shas[path.name] if shas else sha256_of(path)
        key = f"{prefix}files/{path.name}~{sha[:16]}"
        s3.upload_file(str(path), store.bucket, key, Config=config)
        st = path.stat()
        entries.append({"name": path.name, "key": key, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                        "sha256": sha, "policy": "end"})
    commit_format_1(s3, store, run, entries)


def commit_format_1(s3, store: keys.StoreURL, run: str, entries: list[dict]) -> None:
    """A format-1 manifest naming `entries` (dicts as format 1 stored them), under a released lease."""
    prefix = keys.Layout(store, keys.RunPath.parse(run), "0").replica_prefix
    doc = {"format": 1, "run": run, "replica": "0", "seq": 1, "created": time.time(), "final": True,
           "writer": "bench", "epoch": 1, "files": entries, "checkpoints": {}}
    s3.put_object(Bucket=store.bucket, Key=f"{prefix}manifests/{1:012d}.json", Body=json.dumps(doc).encode())
    lease = {"holder": "bench", "epoch": 1, "heartbeat": time.time() - 3600, "state": "released", "ttl": 15.0,
             "epochs": [[1, 0]]}
    s3.put_object(Bucket=store.bucket, Key=f"{prefix}lease.json", Body=json.dumps(lease).encode())


def top_frames(raw: Path, n: int = 12) -> str:
    """The leaf frames that held the most samples, with their share, from py-spy's raw output."""
    leaves: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        leaves[leaf] = leaves.get(leaf, 0) + int(count)
    total = sum(leaves.values()) or 1
    return "\n".join(f"{100 * c / total:5.1f}%  {leaf}" for leaf, c in sorted(leaves.items(), key=lambda x: -x[1])[:n]) + "\n"


CPU: list[float] = []
"""CPU seconds (user + system) of each `timed` command, in order: the load-proof measure."""


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd: list[str], env: dict[str, str], dest: Path, nbytes: int) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["sync"])
    # As bench/main.py: every tool lands its bytes on memory just freed. Without it, the restore
    # right after s5cmd's took 4.4-4.8 s and 2.6 CPU-s/GiB of 16 x 128 MiB, the same code one
    # place later 1.9-3.1 s and 0.8-1.4 (bench/README.md, "The tool after s5cmd").
    tools.warm_pages(dest.parent, nbytes * 3 // 2)  # (the run's temp dir, there from the start)
    cpu, t = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t
    CPU.append(_children_cpu() - cpu)
    if done.returncode:
        raise RuntimeError(f"{cmd[:3]} failed: {done.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sets", default=",".join(bench_main.FULL_SETS))
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--restore-init", action="store_true", help="also time restore-init as the pod runs it")
    args = ap.parse_args()
    chosen = {k: v for k, v in bench_main.FULL_SETS.items() if k in args.sets.split(",")}
    tmp = Path(tempfile.mkdtemp(prefix="bench-down-"))
    server = locals3.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))} | server.env()
        s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id=server.credentials.access_key,
                          aws_secret_access_key=server.credentials.secret_key)
        bucket = f"down-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        store = keys.StoreURL.parse(f"s3://{bucket}/runs")
        env[contract.ENV_STORE] = str(store)
        sets = bench_main.make_sets(tmp / "data", chosen)
        codes = [startup.Code("after")] + ([startup.Code.checkout("before", args.before, tmp / "before")]
                                           if args.before else [])
        s5 = tools.S5cmd()
        for i, (name, src) in enumerate(sets.items()):
            run = f"bench/p/set{i}"
            subprocess.run([str(BIN / "runsync"), "sync", str(src), "--run", run], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            write_format_1(s3, store, src, run + "-f1")
            subprocess.run(s5._cmd(env) + [f"{src}/*", f"s3://{bucket}/s5/{i}/"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
        shutil.rmtree(tmp / "data")
        samples: dict[tuple[str, str], list[float]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        dest = tmp / "dest"
        for rep in range(args.repeat):
            for i, (name, src) in enumerate(sets.items()):
                runs = [("s5cmd", s5._cmd(env) + [f"s3://{bucket}/s5/{i}/*", f"{dest}/"], env)]
                for code in reversed(codes):
                    runs.append((f"runsync {code.label} f2", code.command("restore", f"bench/p/set{i}", "--to", str(dest)),
                                 code.env(env)))
                if args.restore_init:  # the same holder each time: the lease is ours, no wait
                    pod = {contract.ENV_DIR: str(dest), contract.ENV_RUN_PATH: f"bench/p/set{i}",
                           contract.ENV_HOLDER: "bench-down"}
                    for code in reversed(codes):  # its run dir must exist: `timed` empties it first
                        runs.append((f"restore-init {code.label}", ["sh", "-c", 'mkdir -p "$0" && exec "$@"', str(dest),
                                     *code.command("restore-init")], code.env(env | pod)))
                runs.append(("runsync after f1", codes[0].command("restore", f"bench/p/set{i}-f1", "--to", str(dest)), env))
                for label, cmd, e in runs:
                    count, size = bench_main.FULL_SETS[name]
                    s = timed(cmd, e, dest, count * size)
                    samples.setdefault((name, label), []).append(s)
                    cpu.setdefault((name, label), []).append(CPU[-1] / (count * size / 2**30))
                    print(f"rep {rep} {name:>14} {label:>20} {s:7.2f} s  {cpu[(name, label)][-1]:.2f} CPU-s/GiB  "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
        if args.profile:  # py-spy, all threads (the work is in the pools): the busiest leaf frames
            args.profile.mkdir(parents=True, exist_ok=True)
            for i, name in enumerate(sets):
                for fmt, run in (("f2", f"bench/p/set{i}"), ("f1", f"bench/p/set{i}-f1")):
                    raw = args.profile / f"{name.replace(' ', '')}-{fmt}.raw"
                    timed([str(BIN / "py-spy"), "record", "-f", "raw", "-r", "200", "-o", str(raw), "--",
                           *codes[0].command("restore", run, "--to", str(dest))], env, dest,
                          bench_main.FULL_SETS[name][0] * bench_main.FULL_SETS[name][1])
                    (args.profile / f"{raw.stem}.txt").write_text(top_frames(raw))
        print(f"\n| set | tool | median s | MB/s | vs s5cmd | CPU-s/GiB |\n|---|---|---|---|---|---|")
        for (name, label), xs in samples.items():
            count, size = bench_main.FULL_SETS[name]
            med, base = statistics.median(xs), statistics.median(samples[(name, "s5cmd")])
            print(f"| {name} | {label} | {med:.2f} | {count * size / med / 2**20:.0f} | {base / med:.2f}x | {statistics.median(cpu[(name, label)]):.2f} |")
        print(f"\nload average {os.getloadavg()}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
