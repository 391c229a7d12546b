"""Two costs a cluster pays all the time: an idle sidecar beside a big run dir, and admission.

- Idle sidecar: a run dir of N files already durable (synced first), the sidecar started on it:
  time until ready, then CPU share and RSS sampled over `--idle-seconds`.
- Admission: AdmissionReviews at a fixed rate against the real operator over HTTPS; p50 / p99.
Run by `bench/run`; alone: `python bench/standing.py` after `scripts/setup`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import boto3

from runsync import contract
from runsync_testing import downward, localkube, locals3, ports
from tools import link_checkout, proc_cpu, proc_rss

RUNSYNC = str(Path(sys.executable).with_name("runsync"))


def idle(server, files: int, seconds: float, bucket: str = "bench-idle", before: Path | None = None,
         repeat: int = 1, profile: Path | None = None, warm: bool = False,
         restore_init: bool = False) -> dict | list[dict]:
    """One run dir of `files` durable files (one `runsync sync`), then a sidecar started on it
    `repeat` times; with `before` (a checkout's root), the older code's sidecar right before each,
    on the same data and server, so both see the same load. Returns one dict (no `before`, one
    repeat, as `bench/main.py` reads it) or one per sidecar started."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        for i in range(files):
            d = run_dir / f"d{i // 1000:03d}"
            if i % 1000 == 0:
                d.mkdir(parents=True)
            (d / f"f{i:06d}.txt").write_text(str(i))
        env = {**os.environ, **server.env(), "RUNSYNC_STORE": f"s3://{bucket}/x"}
        started = time.perf_counter()
        subprocess.run([RUNSYNC, "sync", str(run_dir), "--run", "b/b/idle"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        sync_s = time.perf_counter() - started
        ann = Path(tmp) / "ann"
        ann.write_text(downward.format_annotations_file({contract.SAVE: "**:live"}))
        env.update({contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: "b/b/idle", contract.ENV_ANNOTATIONS: str(ann),
                    contract.ENV_HOLDER: "sync-then-sidecar"})
        codes = [("before", {**env, "PYTHONPATH": _before_path(before, Path(tmp))})] if before else []
        codes.append(("after" if before else "", env))
        out = []
        for r in range(repeat):
            for code, code_env in codes:
                # Each start as a new pod's (a restored run dir, as after `sync`): what a sidecar
                # keeps in `.runsync/` would favour whichever code runs second. `warm`: a
                # restart in the same pod, with what the previous start (same code) kept.
                if warm:
                    _idle_sidecar(code_env, Path(tmp) / f"sidecar-{code or 'x'}-{r}-prime.log", 1, None)
                else:
                    for kept in ("manifest.json", "durable.sqlite"):
                        (run_dir / ".runsync" / kept).unlink(missing_ok=True)
                    if restore_init:  # as in a pod: restore-init first (the files are there: none downloaded)
                        t = time.perf_counter()
                        subprocess.run([RUNSYNC, "restore-init"], env=code_env, check=True, stdout=subprocess.DEVNULL)
                        init_s = time.perf_counter() - t
                one = _idle_sidecar(code_env, Path(tmp) / f"sidecar-{code or 'x'}-{r}.log", seconds,
                                    profile and profile.with_name(f"{profile.stem}-{code or 'x'}-{r}{profile.suffix}"))
                start = "warm" if warm else "new pod, restore-init first" if restore_init else "new pod"
                out.append({"code": code, "repeat": r, "files": files, "start": start, "sync_all_s": round(sync_s, 1),
                            **({"restore_init_s": round(init_s, 2)} if restore_init and not warm else {}),
                            "load": round(os.getloadavg()[0], 1), **one})
                print(json.dumps(out[-1]), file=sys.stderr, flush=True)
        return out[0] if len(out) == 1 else out


def _before_path(tree: Path, tmp: Path) -> str:
    """The older code as the package `runsync` (as tools.Before does), compiled."""
    return str(link_checkout(tree, tmp / "before"))


def _idle_sidecar(env: dict, log_path: Path, seconds: float, profile: Path | None) -> dict:
    """Start a sidecar on the synced run dir: `api_s` until its API answers with the lease held
    and the durable manifest read (`loaded`); `ready_s` until nothing is pending (the start-up
    rescan done, nothing to upload); then CPU share and RSS over `seconds`."""
    api, metrics = ports.free_ports(2)
    env = {**env, contract.ENV_API: f"127.0.0.1:{api}", contract.ENV_METRICS: f"127.0.0.1:{metrics}"}
    cmd = [RUNSYNC, "sidecar"]
    if profile:  # py-spy as the parent: it samples from the first line (`.json`: speedscope, else folded stacks)
        cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "-r", "100", "-f", "speedscope" if
               profile.suffix == ".json" else "raw", "-o", str(profile), "--"] + cmd
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    api_s = None
    while True:
        try:
            status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{api}/v1/status", timeout=1).read())
            if status["loaded"] and api_s is None:
                api_s = time.perf_counter() - t0
            if status["loaded"] and not status["pending"] and not status["uploading"]:
                break
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the sidecar exited ({proc.returncode}); see {log_path}")
        time.sleep(0.05)
    ready_s = time.perf_counter() - t0
    pid = proc.pid if not profile else _child(proc.pid)
    cpu0 = proc_cpu(pid)
    rss = []
    w0 = time.perf_counter()
    while time.perf_counter() - w0 < seconds:
        time.sleep(1)
        rss.append(proc_rss(pid))
    cpu1 = proc_cpu(pid)
    wall = time.perf_counter() - w0
    os.kill(pid, 15)
    proc.wait(120)
    return {"api_loaded_s": round(api_s, 2), "sidecar_ready_s": round(ready_s, 2),
            "idle_cpu_share": round((cpu1 - cpu0) / wall, 4), "rss_mib_max": round(max(rss) / 2**20, 1),
            "rss_mib_median": round(statistics.median(rss) / 2**20, 1)}


def _child(pid: int) -> int:
    """The sidecar under py-spy: py-spy's only child."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return int(f.read().split()[0])


def admission(server, rate: float, count: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        op = localkube.Operator(Path(tmp), [localkube.store("team-a", "default", "b", server.endpoint)])
        try:
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": "p", "namespace": "team-a", "labels": {contract.INJECT_LABEL: "true"},
                "annotations": {contract.SAVE: "ckpt/**:live"},
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "1", "controller": True}]},
                "spec": {"containers": [{"name": "t", "image": "python:3.11"}]}}
            latencies: list[float] = []
            lock = threading.Lock()

            def one():
                t = time.perf_counter()
                assert op.review(pod)["response"]["allowed"]
                with lock:
                    latencies.append(time.perf_counter() - t)

            threads = []
            start = time.perf_counter()
            for i in range(count):  # open loop: requests leave on schedule, whatever the answers do
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                th = threading.Thread(target=one)
                th.start()
                threads.append(th)
            for th in threads:
                th.join(30)
            latencies.sort()
            return {"rate_per_s": rate, "requests": len(latencies),
                    "p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
                    "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 1)}
        finally:
            op.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--idle-seconds", type=float, default=60)
    ap.add_argument("--rate", type=float, default=50)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--idle-only", action="store_true", help="the idle sidecar alone (no admission)")
    ap.add_argument("--before", type=Path, help="a checkout of older code (its repo root): its sidecar "
                    "runs right before each of this code's, on the same synced run dir")
    ap.add_argument("--repeat", type=int, default=1, help="sidecars started per code on the one synced run dir")
    ap.add_argument("--warm", action="store_true", help="each sidecar a restart in the same pod: after one "
                    "start of the same code on the run dir, with what it kept in .runsync/")
    ap.add_argument("--restore-init", action="store_true", help="each new pod's sidecar after its restore-init "
                    "(as the operator's pod runs them; the synced files are there, so none is downloaded)")
    ap.add_argument("--profile", type=Path, help="py-spy each sidecar into this path (-<code>-<repeat> added)")
    args = ap.parse_args()
    with locals3.start() as server:
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id=server.credentials.access_key,
                     aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket="bench-idle")
        doc = {} if args.idle_only else {"admission": admission(server, args.rate, args.requests)}
        doc["idle_sidecar"] = idle(server, args.files, args.idle_seconds, before=args.before, repeat=args.repeat,
                                   profile=args.profile, warm=args.warm, restore_init=args.restore_init)
        print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
