"""A commit's cost beside N durable files (issue 18: flat, whatever N): a run dir of N files made
durable (`runsync sync`), a sidecar started on it and left to finish its start-up rescan, then
one file changed and flushed `--commits` times. Each: the flush's wall time (write to durable)
and the sidecar's CPU over it. With `--before TREE`, the older code's sidecar first, on the
same data and server, so both see the same load.

    python bench/commit_scale.py --files 100000 --commits 5 [--before .before]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import boto3

from runsync import contract
from runsync_testing import downward, locals3, ports
from standing import RUNSYNC, _before_path
from tools import proc_cpu


def commits(server, files: int, count: int, before: Path | None, bucket: str = "bench-commit") -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        for i in range(files):
            d = run_dir / f"d{i // 1000:03d}"
            if i % 1000 == 0:
                d.mkdir(parents=True)
            (d / f"f{i:06d}.txt").write_text(str(i))
        env = {**os.environ, **server.env(), "RUNSYNC_STORE": f"s3://{bucket}/x"}
        subprocess.run([RUNSYNC, "sync", str(run_dir), "--run", "b/b/commit"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        ann = Path(tmp) / "ann"
        ann.write_text(downward.format_annotations_file({contract.SAVE: "**:live"}))
        env.update({contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: "b/b/commit",
                    contract.ENV_ANNOTATIONS: str(ann), contract.ENV_HOLDER: "bench"})
        codes = [("before", {**env, "PYTHONPATH": _before_path(before, Path(tmp))})] if before else []
        codes.append(("after" if before else "", env))
        out = []
        for code, code_env in codes:
            out.append({"code": code, "files": files, **_flushes(code_env, run_dir, count,
                                                                Path(tmp) / f"sidecar-{code or 'x'}.log")})
            print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        return out


def _flushes(env: dict, run_dir: Path, count: int, log_path: Path) -> dict:
    api, metrics = ports.free_ports(2)
    env = {**env, contract.ENV_API: f"127.0.0.1:{api}", contract.ENV_METRICS: f"127.0.0.1:{metrics}"}
    proc = subprocess.Popen([RUNSYNC, "sidecar"], env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{api}"
    try:
        while True:  # ready: loaded, the start-up rescan done
            try:
                status = json.loads(urllib.request.urlopen(f"{base}/v1/status", timeout=1).read())
                if status["loaded"] and not status["pending"] and not status["uploading"]:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the sidecar exited ({proc.returncode}); see {log_path}")
            time.sleep(0.1)
        wall, cpu, loads = [], [], []
        for i in range(count):
            cpu0, t0 = proc_cpu(proc.pid), time.perf_counter()
            (run_dir / "d000" / "f000000.txt").write_text(f"changed {i} {time.time()}")
            req = urllib.request.Request(f"{base}/v1/flush", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
            doc = json.loads(urllib.request.urlopen(req, timeout=300).read())
            assert doc.get("durable"), doc
            wall.append(time.perf_counter() - t0)
            cpu.append(proc_cpu(proc.pid) - cpu0)
            loads.append(os.getloadavg()[0])
        return {"flush_s_median": round(statistics.median(wall), 3), "flush_s": [round(w, 3) for w in wall],
                "cpu_s_median": round(statistics.median(cpu), 3), "cpu_s": [round(c, 3) for c in cpu],
                "load": [round(x, 1) for x in loads]}
    finally:
        proc.terminate()
        proc.wait(120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--commits", type=int, default=5)
    ap.add_argument("--before", type=Path, help="a checkout of older code (its repo root), run first")
    args = ap.parse_args()
    with locals3.start() as server:
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id=server.credentials.access_key,
                     aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket="bench-commit")
        print(json.dumps(commits(server, args.files, args.commits, args.before), indent=1))


if __name__ == "__main__":
    main()
