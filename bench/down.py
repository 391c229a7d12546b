"""Restore throughput alone (issue 17): `runsync restore` against s5cmd, before and after.

    .venv/bin/python bench/down.py [--before .before] [--repeat 3] [--sets "1 x 2 GiB,..."] [--profile DIR]
                                   [--restore-init]

The data sets of bench/main.py are synced once (format 1, this code), and committed a second
time as format 2 (the same objects, part CRC64NVMEs computed here). Each repetition then runs,
interleaved so all see the same load: s5cmd `cp` (as bench/tools.py runs it), the `--before`
code's restore of the format-1 run, this code's restore of the format-1 run and of the format-2
run (`--restore-init`: also each code's `runsync restore-init` of the format-1 run, as a pod
runs it, into an empty run dir). Medians, ratios to s5cmd and the load average are printed; `--profile DIR` also writes
py-spy's busiest frames (all threads) of one restore of each set by this code. No test asserts a time.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3

from runsync import checksums, contract, keys, manifest
from runsync_testing import locals3

sys.path.insert(0, str(Path(__file__).resolve().parent))
import main as bench_main  # noqa: E402
import startup  # noqa: E402
import tools  # noqa: E402

BIN = Path(sys.executable).parent


def commit_format_2(s3, store: keys.StoreURL, src: str, dst: str) -> None:
    """Run `dst` names the objects of `src`'s latest manifest, with part CRCs (format 2)."""
    latest = manifest.latest(s3, keys.Layout(store, keys.RunPath.parse(src), "0"))
    layout = keys.Layout(store, keys.RunPath.parse(dst), "0")
    entries = []
    for e in latest.files.values():
        data = s3.get_object(Bucket=store.bucket, Key=e.key)["Body"].read()
        crcs = []
        for i in range(checksums.part_count(e.size, checksums.PART_SIZE)):
            off, n = checksums.part_range(i, e.size, checksums.PART_SIZE)
            crcs.append(checksums.encode(checksums.crc64nvme(memoryview(data)[off:off + n])))
        sha = e.sha256 or hashlib.sha256(data).hexdigest()  # entries written now carry part CRCs only
        key = layout.file_key(e.name, sha)
        s3.copy_object(Bucket=store.bucket, Key=key, CopySource={"Bucket": store.bucket, "Key": e.key})
        entries.append(manifest.FileEntry(e.name, key, e.size, e.mtime_ns, sha, e.policy,
                                          checksums.PART_SIZE if e.size else 0, tuple(crcs)))
        del data
    manifest.commit(s3, layout, None, entries, final=True, writer="bench")


def top_frames(raw: Path, n: int = 12) -> str:
    """The leaf frames that held the most samples, with their share, from py-spy's raw output."""
    leaves: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.rsplit(";", 1)[-1]
        leaves[leaf] = leaves.get(leaf, 0) + int(count)
    total = sum(leaves.values()) or 1
    return "\n".join(f"{100 * c / total:5.1f}%  {leaf}" for leaf, c in sorted(leaves.items(), key=lambda x: -x[1])[:n]) + "\n"


def timed(cmd: list[str], env: dict[str, str], dest: Path) -> float:
    shutil.rmtree(dest, ignore_errors=True)
    subprocess.run(["sync"])
    t = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t
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
            commit_format_2(s3, store, run, run + "-f2")
            subprocess.run(s5._cmd(env) + [f"{src}/*", f"s3://{bucket}/s5/{i}/"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
        shutil.rmtree(tmp / "data")
        samples: dict[tuple[str, str], list[float]] = {}
        dest = tmp / "dest"
        for rep in range(args.repeat):
            for i, (name, src) in enumerate(sets.items()):
                runs = [("s5cmd", s5._cmd(env) + [f"s3://{bucket}/s5/{i}/*", f"{dest}/"], env)]
                for code in reversed(codes):
                    runs.append((f"runsync {code.label} f1", code.command("restore", f"bench/p/set{i}", "--to", str(dest)),
                                 code.env(env)))
                if args.restore_init:  # the same holder each time: the lease is ours, no wait
                    pod = {contract.ENV_DIR: str(dest), contract.ENV_RUN_PATH: f"bench/p/set{i}",
                           contract.ENV_HOLDER: "bench-down"}
                    for code in reversed(codes):  # its run dir must exist: `timed` empties it first
                        runs.append((f"restore-init {code.label}", ["sh", "-c", 'mkdir -p "$0" && exec "$@"', str(dest),
                                     *code.command("restore-init")], code.env(env | pod)))
                runs.append(("runsync after f2", codes[0].command("restore", f"bench/p/set{i}-f2", "--to", str(dest)), env))
                for label, cmd, e in runs:
                    s = timed(cmd, e, dest)
                    samples.setdefault((name, label), []).append(s)
                    print(f"rep {rep} {name:>14} {label:>20} {s:7.2f} s  load {os.getloadavg()[0]:.1f}", flush=True)
        if args.profile:  # py-spy, all threads (the work is in the pools): the busiest leaf frames
            args.profile.mkdir(parents=True, exist_ok=True)
            for i, name in enumerate(sets):
                for fmt, run in (("f1", f"bench/p/set{i}"), ("f2", f"bench/p/set{i}-f2")):
                    raw = args.profile / f"{name.replace(' ', '')}-{fmt}.raw"
                    timed([str(BIN / "py-spy"), "record", "-f", "raw", "-r", "200", "-o", str(raw), "--",
                           *codes[0].command("restore", run, "--to", str(dest))], env, dest)
                    (args.profile / f"{raw.stem}.txt").write_text(top_frames(raw))
        print(f"\n| set | tool | median s | MB/s | vs s5cmd |\n|---|---|---|---|---|")
        for (name, label), xs in samples.items():
            count, size = bench_main.FULL_SETS[name]
            med, base = statistics.median(xs), statistics.median(samples[(name, "s5cmd")])
            print(f"| {name} | {label} | {med:.2f} | {count * size / med / 2**20:.0f} | {base / med:.2f}x |")
        print(f"\nload average {os.getloadavg()}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
