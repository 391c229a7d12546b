"""Start-up of `runsync restore-init` (issues 17, 18), against one local SeaweedFS.

    .venv/bin/python bench/startup.py [--repeat 5] [--save FILE] [--compare FILE] [--profile]

- restore-init of a 14 MB checkpoint, as the pod runs it (the console script, a fresh process
  each time): seconds from just before the process is started to its first S3 request (a
  `before-send` hook that only `RUNSYNC_BENCH_FIRST_REQUEST` turns on, transfer.py) and to its
  exit with the file restored and checked;
- what that process imports (`-X importtime`): its heaviest top-level packages, and whether
  rich, typer, kopf, prometheus_client or awscrt are among them;
- `sync()` in one process, called again and again: seconds per call of a one-file sync, which
  includes making (or reusing) its S3 client;
- with `--profile`, cProfile's top lines of one restore-init (py-spy is not installed here).

Medians of `--repeat` runs. `--save` writes the numbers as JSON; `--compare` prints them beside
an earlier `--save` (before/after). No test asserts a time; tests/test_bench.py only runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3

from runsync import contract, keys, sync, transfer
from runsync_testing import locals3

BIN = Path(sys.executable).parent
RUNSYNC = str(BIN / "runsync")
RUN = "bench/p/startup"
HEAVY = ("rich", "typer", "click", "kopf", "prometheus_client", "awscrt", "kubernetes", "yaml")
"""Packages whose presence in restore-init's imports is reported."""
CHECKPOINT = 14 * 1000 * 1000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--size", type=int, default=CHECKPOINT, help="bytes of the checkpoint")
    ap.add_argument("--save", type=Path, help="write the results as JSON here")
    ap.add_argument("--compare", type=Path, help="a --save of an earlier run: print before/after")
    ap.add_argument("--profile", action="store_true", help="also cProfile one restore-init")
    args = ap.parse_args(argv)

    server = locals3.start()
    try:
        env = {**server.env(), contract.ENV_STORE: ""}
        bucket = f"startup-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id=server.credentials.access_key,
                     aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket=bucket)
        env[contract.ENV_STORE] = f"s3://{bucket}/runs"
        with tempfile.TemporaryDirectory(prefix="bench-startup-") as work:
            results = run_all(Path(work), env, args)
    finally:
        server.stop()
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    results["cores"] = os.cpu_count()
    print(report(results, json.loads(args.compare.read_text()) if args.compare else None))
    if args.save:
        args.save.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def run_all(work: Path, env: dict[str, str], args) -> dict:
    src = work / "src"
    (src / "checkpoints").mkdir(parents=True)
    data = os.urandom(args.size)
    (src / "checkpoints" / "last.pt").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    up = subprocess.run([RUNSYNC, "sync", str(src), "--run", RUN], env=_clean_env(env), capture_output=True, text=True)
    if up.returncode:
        raise RuntimeError(f"runsync sync failed: {up.stderr}")

    first, total = [], []
    for i in range(args.repeat):
        f, t = restore_init(work / f"pod{i}", env, digest)
        first.append(f)
        total.append(t)
    results = {
        "size": args.size, "repeat": args.repeat,
        "first_request_s": _stats(first), "restore_s": _stats(total),
        "imports": imports(work / "imports", env),
        "sync_call_s": sync_calls(work, env, args.repeat),
    }
    if args.profile:
        results["profile"] = profile(work / "profile", env)
    return results


def _clean_env(env: dict[str, str], **more: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
    return {**base, **env, **more}


def _pod_env(run_dir: Path, env: dict[str, str], **more: str) -> dict[str, str]:
    run_dir.mkdir(parents=True)
    return _clean_env(env, **{contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: RUN,
                              contract.ENV_HOLDER: "bench-startup"}, **more)  # same holder: the lease is ours, no wait


def restore_init(run_dir: Path, env: dict[str, str], digest: str) -> tuple[float, float]:
    """(start → first request, start → exit) of one `runsync restore-init`, in seconds."""
    probe = run_dir.with_suffix(".probe")
    pod_env = _pod_env(run_dir, env, **{transfer.BENCH_PROBE: str(probe)})
    t0 = time.time()
    done = subprocess.run([RUNSYNC, "restore-init"], env=pod_env, capture_output=True, text=True)
    t1 = time.time()
    if done.returncode:
        raise RuntimeError(f"restore-init exited {done.returncode}: {done.stderr}{done.stdout}")
    restored = run_dir / "checkpoints" / "last.pt"
    if hashlib.sha256(restored.read_bytes()).hexdigest() != digest:
        raise RuntimeError(f"{restored} is not the checkpoint uploaded")
    return float(probe.read_text().split()[0]) - t0, t1 - t0


def imports(run_dir: Path, env: dict[str, str]) -> dict:
    """What restore-init imports: its top-level packages by cumulative µs, and the heavy ones present."""
    done = subprocess.run([sys.executable, "-X", "importtime", RUNSYNC, "restore-init"],
                          env=_pod_env(run_dir, env), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"restore-init exited {done.returncode}: {done.stderr[-2000:]}")
    top: dict[str, int] = {}
    loaded = set()
    for line in done.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = (p for p in line[len("import time:"):].split("|"))
        loaded.add(name.strip().split(".")[0])
        if not name.startswith("  "):  # top level: imported by the program itself, not by a package
            top[name.strip()] = top.get(name.strip(), 0) + int(cumulative)
    heaviest = sorted(top.items(), key=lambda kv: -kv[1])[:8]
    return {"total_us": sum(top.values()), "heaviest": heaviest,
            "heavy_loaded": sorted(p for p in HEAVY if p in loaded)}


def sync_calls(work: Path, env: dict[str, str], repeat: int) -> dict:
    """Seconds per `sync()` call of one changed 1 KiB file, in this process (client included)."""
    run_dir = work / "synced"
    run_dir.mkdir()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        store = keys.StoreURL.parse(env[contract.ENV_STORE])
        run = keys.RunPath.parse("bench/p/sync")
        times = []
        for i in range(repeat + 1):  # the first call also loads botocore's models: not counted
            (run_dir / "metrics.json").write_text(json.dumps({"step": i, "pad": "x" * 1000}))
            t0 = time.perf_counter()
            sync.sync(run_dir, store, run)
            times.append(time.perf_counter() - t0)
        return {**_stats(times[1:]), "first": round(times[0], 3)}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def profile(run_dir: Path, env: dict[str, str], lines: int = 18) -> list[str]:
    out = run_dir.with_suffix(".prof")
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), RUNSYNC, "restore-init"],
                          env=_pod_env(run_dir, env), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"restore-init under cProfile exited {done.returncode}: {done.stderr[-2000:]}")
    import io
    import pstats

    text = io.StringIO()
    pstats.Stats(str(out), stream=text).sort_stats("cumulative").print_stats(lines * 4)
    kept = [line for line in text.getvalue().splitlines()
            if line.strip() and "<frozen" not in line and "{built-in" not in line]  # the import machinery, again and again
    return kept[-lines - 1:] if len(kept) <= lines else kept[kept.index(next(l for l in kept if "ncalls" in l)):][:lines + 1]


def _stats(xs: list[float]) -> dict:
    return {"median": round(statistics.median(xs), 3), "min": round(min(xs), 3), "max": round(max(xs), 3)}


def report(now: dict, before: dict | None) -> str:
    rows = [
        (f"restore-init: start → first S3 request (s, median of {now['repeat']})",
         lambda r: r["first_request_s"]["median"]),
        (f"restore-init: start → {r_mb(now)} MB restored, exit (s, median)", lambda r: r["restore_s"]["median"]),
        ("restore-init: imports, top level (ms, -X importtime)", lambda r: round(r["imports"]["total_us"] / 1000)),
        ("restore-init imports " + "/".join(HEAVY), lambda r: ", ".join(r["imports"]["heavy_loaded"]) or "none"),
        ("sync() of one small file, 2nd call on (s, median)", lambda r: r["sync_call_s"]["median"]),
        ("load average (1, 5, 15 min)", lambda r: " ".join(map(str, r["load_average"]))),
    ]
    head = ["| | before | after |", "|---|---|---|"] if before else ["| | value |", "|---|---|"]
    body = [f"| {name} | {get(before)} | {get(now)} |" if before else f"| {name} | {get(now)} |" for name, get in rows]
    heaviest = ["", "heaviest top-level imports of restore-init (ms, cumulative): " +
                ", ".join(f"{n} {us / 1000:.0f}" for n, us in now["imports"]["heaviest"])]
    prof = ["", "cProfile of one restore-init (cumulative):", *now["profile"]] if now.get("profile") else []
    return "\n".join(head + body + heaviest + prof)


def r_mb(r: dict) -> int:
    return round(r["size"] / 1e6)


if __name__ == "__main__":
    sys.exit(main())
