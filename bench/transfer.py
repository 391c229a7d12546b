"""Upload and download throughput and client CPU: runsync against s5cmd and boto3, one server.

One SeaweedFS on loopback; each tool moves the same data sets, three times, medians reported,
and ratios to the peers printed. Client CPU is the tool's own user+sys time (the children's
rusage for CLIs, this process's for boto3). Not part of the test run: `bench/run`.
"""

from __future__ import annotations

import argparse
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

from runsync import locals3

RUNSYNC = str(Path(sys.executable).with_name("runsync"))
S5CMD = str(Path(sys.executable).with_name("s5cmd"))
MiB = 1024 * 1024


def make_sets(root: Path, scale: float) -> dict[str, Path]:
    sets = {"1 x 1 GiB": (1, int(1024 * scale)), "500 x 1 MiB": (int(500 * scale) or 1, 1),
            "8 x 64 MiB": (8, int(64 * scale) or 1)}
    out = {}
    block = os.urandom(MiB)
    for name, (count, mib) in sets.items():
        d = root / name.replace(" ", "")
        d.mkdir(parents=True)
        for i in range(count):
            with open(d / f"f{i:04d}.bin", "wb") as f:
                for j in range(mib):
                    f.write(block[j % 7:] + block[:j % 7])  # distinct content per MiB
        out[name] = d
    return out


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def timed(fn, cpu=children_cpu) -> tuple[float, float]:
    c0, t0 = cpu(), time.perf_counter()
    fn()
    return time.perf_counter() - t0, cpu() - c0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=1.0, help="shrink the data sets (0.1 = a tenth)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="runsync-bench-"))
    server = locals3.start()
    try:
        env = {**os.environ, **server.env()}
        s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id=server.credentials.access_key,
                          aws_secret_access_key=server.credentials.secret_key)
        sets = make_sets(tmp / "data", args.scale)
        results: dict[str, dict[str, list[tuple[float, float]]]] = {}

        def record(tool, what, t, cpu):
            results.setdefault(what, {}).setdefault(tool, []).append((t, cpu))

        for rep in range(args.repeat):
            for name, src in sets.items():
                nbytes = sum(p.stat().st_size for p in src.iterdir())
                bucket = f"b-{uuid.uuid4().hex[:12]}"
                s3.create_bucket(Bucket=bucket)
                # runsync sync / restore (fresh run each time)
                e = {**env, "RUNSYNC_STORE": f"s3://{bucket}/rs"}
                t, c = timed(lambda: subprocess.run([RUNSYNC, "sync", str(src), "--run", "b/b/r"], env=e, check=True,
                                                    stdout=subprocess.DEVNULL))
                record("runsync", f"{name} up", nbytes / t / MiB, c / (nbytes / 1024 ** 3))
                dest = tmp / f"rs-{rep}-{name.replace(' ', '')}"
                t, c = timed(lambda: subprocess.run([RUNSYNC, "restore", "b/b/r", "--to", str(dest)], env=e,
                                                    check=True, stdout=subprocess.DEVNULL))
                record("runsync", f"{name} down", nbytes / t / MiB, c / (nbytes / 1024 ** 3))
                shutil.rmtree(dest)
                # s5cmd, its recommended flags for throughput
                s5 = [S5CMD, "--endpoint-url", server.endpoint]
                t, c = timed(lambda: subprocess.run(s5 + ["cp", "-c", "16", "-p", "64", f"{src}/*", f"s3://{bucket}/s5/"],
                                                    env=e, check=True, stdout=subprocess.DEVNULL))
                record("s5cmd", f"{name} up", nbytes / t / MiB, c / (nbytes / 1024 ** 3))
                dest = tmp / f"s5-{rep}"
                t, c = timed(lambda: subprocess.run(s5 + ["cp", "-c", "16", "-p", "64", f"s3://{bucket}/s5/*", f"{dest}/"],
                                                    env=e, check=True, stdout=subprocess.DEVNULL))
                record("s5cmd", f"{name} down", nbytes / t / MiB, c / (nbytes / 1024 ** 3))
                shutil.rmtree(dest)
                # boto3's transfer manager, defaults, file after file
                cfg = TransferConfig()
                files = sorted(src.iterdir())
                t, c = timed(lambda: [s3.upload_file(str(p), bucket, f"b3/{p.name}", Config=cfg) for p in files],
                             cpu=self_cpu)
                record("boto3", f"{name} up", nbytes / t / MiB, c / (nbytes / 1024 ** 3))
                dest = tmp / f"b3-{rep}"
                dest.mkdir()
                t, c = timed(lambda: [s3.download_file(bucket, f"b3/{p.name}", str(dest / p.name), Config=cfg)
                                      for p in files], cpu=self_cpu)
                record("boto3", f"{name} down", nbytes / t / MiB, c / (nbytes / 1024 ** 3))
                shutil.rmtree(dest)
        table = {}
        for what, tools in results.items():
            row = {tool: {"MBps": round(statistics.median(x for x, _ in v), 1),
                          "cpu_s_per_GiB": round(statistics.median(c for _, c in v), 2)} for tool, v in tools.items()}
            for peer in ("s5cmd", "boto3"):
                row[f"runsync/{peer}"] = round(row["runsync"]["MBps"] / row[peer]["MBps"], 2)
            table[what] = row
        print(json.dumps(table, indent=1))
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
