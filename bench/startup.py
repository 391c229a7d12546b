"""Start-up of `runsync restore-init` (issues 17, 18), against one local SeaweedFS.

    .venv/bin/python bench/startup.py [--repeat 5] [--save FILE] [--compare FILE] [--profile]

- restore-init of a 14 MB checkpoint, as the pod runs it (the console script, a fresh process
  each time): seconds from just before the process is started to its first S3 request (a
  `before-send` hook that only `RUNSYNC_BENCH_FIRST_REQUEST` turns on, transfer.py) and to its
  exit with the file restored and checked;
- what that process imports (`-X importtime`): its heaviest top-level packages, and whether
  rich, typer, kopf, prometheus_client or awscrt are among them;
- the floor under it: a process that only imports boto3 and s3transfer, makes a client and
  lists the bucket, timed the same way;
- the RSS of an idle `runsync sidecar` (as the operator runs it) once it is ready;
- `sync()` in one process, called again and again: seconds per call of a one-file sync, which
  includes making (or reusing) its S3 client;
- with `--profile`, cProfile's top lines of one restore-init (py-spy is not installed here).

Medians of `--repeat` runs. `--before TREE` (a checkout of an older commit, e.g. `git worktree
add .before main`) measures that code too, each run of it next to a run of this one, so both
see the same load: the table is then before/after. `--save` writes the numbers as JSON. No
test asserts a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
import uuid
from pathlib import Path

import boto3

import tools
from runsync import contract, keys, transfer
from runsync_testing import locals3, ports

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
    ap.add_argument("--before", type=Path, help="a checkout of the code to compare with (its repo root)")
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
            trees = [Code("after")]
            if args.before:
                trees.insert(0, Code.checkout("before", args.before, Path(work) / "before"))
            results = run_all(Path(work), env, args, trees)
    finally:
        server.stop()
    print(report(results))
    if args.save:
        args.save.write_text(json.dumps(results, indent=1) + "\n")
    return 0


@dataclasses.dataclass(frozen=True)
class Code:
    """The runsync to run: this environment's, or an older checkout put first on PYTHONPATH."""

    label: str
    path: str = ""
    """A dir holding `runsync` (a link to the checkout's sidecar/); empty: the installed one."""
    entry: str = "runsync.launch:main"

    @classmethod
    def checkout(cls, label: str, root: Path, work: Path) -> "Code":
        tools.link_checkout(root, work)
        entry = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]["runsync"]
        return cls(label, str(work), entry)

    def command(self, *args: str, python: tuple[str, ...] = (), profile: str = "") -> list[str]:
        """`runsync ARGS` as the console script runs it (its entry point), under `python`'s flags;
        with `profile`, under cProfile, its stats written to that file when it ends in `os._exit`
        (as restore-init does: runner.exit_now)."""
        module, func = self.entry.split(":")
        script = f"import sys; from {module} import {func} as f; sys.argv[0] = 'runsync'; sys.exit(f())"
        if profile:  # restore-init ends in os._exit (runner.exit_now): the stats are written there
            script = (f"import cProfile, os; p = cProfile.Profile(); end = os._exit\n"
                      f"def _exit(code):\n    try: p.disable(); p.dump_stats({profile!r})\n    finally: end(code)\n"
                      f"os._exit = _exit; p.enable()\n{script}")
        return [sys.executable, *python, "-c", script, *args]

    def env(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, "PYTHONPATH": self.path} if self.path else env


def run_all(work: Path, env: dict[str, str], args, trees: list["Code"]) -> dict:
    src = work / "src"
    (src / "checkpoints").mkdir(parents=True)
    data = os.urandom(args.size)
    (src / "checkpoints" / "last.pt").write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    up = subprocess.run([RUNSYNC, "sync", str(src), "--run", RUN], env=_clean_env(env), capture_output=True, text=True)
    if up.returncode:
        raise RuntimeError(f"runsync sync failed: {up.stderr}")

    first: dict[str, list[float]] = {c.label: [] for c in trees}
    total: dict[str, list[float]] = {c.label: [] for c in trees}
    first_cpu: dict[str, list[float]] = {c.label: [] for c in trees}
    total_cpu: dict[str, list[float]] = {c.label: [] for c in trees}
    floor, floor_cpu = [], []
    client_ms: dict[str, list[float]] = {c.label: [] for c in trees}
    for i in range(args.repeat):
        for code in trees:  # interleaved: before and after see the same load
            client_ms[code.label].append(first_client_cpu_ms(code, env))
            f, t, fc, tc = restore_init(code, work / f"pod-{code.label}-{i}", env, digest)
            first[code.label].append(f)
            total[code.label].append(t)
            if fc is not None:
                first_cpu[code.label].append(fc)
            total_cpu[code.label].append(tc)
        f, fc = boto3_alone(env)
        floor.append(f)
        floor_cpu.append(fc)
    results: dict = {"size": args.size, "repeat": args.repeat, "codes": [c.label for c in trees],
                     "boto3_first_request_s": _stats(floor), "boto3_first_request_cpu_s": _stats(floor_cpu)}
    for code in trees:
        results[code.label] = {
            "first_request_s": _stats(first[code.label]), "restore_s": _stats(total[code.label]),
            "first_request_cpu_s": _stats(first_cpu[code.label]) if first_cpu[code.label] else None,
            "restore_cpu_s": _stats(total_cpu[code.label]),
            "first_client_cpu_ms": _stats(client_ms[code.label]),
            "imports": imports(code, work / f"imports-{code.label}", env),
            "sync_call_s": sync_calls(code, work / f"synced-{code.label}", env, args.repeat),
            "idle_sidecar_mib": _stats([idle_sidecar_rss(code, work / f"sidecar-{code.label}-{i}", env)
                                        for i in range(3)]),
        }
        if args.profile:
            results[code.label]["profile"] = profile(code, work / f"profile-{code.label}", env)
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]
    results["cores"] = os.cpu_count()
    return results


def _clean_env(env: dict[str, str], **more: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
    return {**base, **env, **more}


def _pod_env(run_dir: Path, env: dict[str, str], **more: str) -> dict[str, str]:
    run_dir.mkdir(parents=True)
    return _clean_env(env, **{contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: RUN,
                              contract.ENV_HOLDER: "bench-startup"}, **more)  # same holder: the lease is ours, no wait


def restore_init(code: Code, run_dir: Path, env: dict[str, str], digest: str) -> tuple[float, float, float | None, float]:
    """(start → first request, start → exit, CPU to the first request, CPU in all) of one
    `runsync restore-init`, in seconds. CPU seconds hold up on a loaded machine where wall-clock
    seconds do not; an older checkout's probe may not write its CPU (None)."""
    probe = run_dir.with_suffix(".probe")
    pod_env = code.env(_pod_env(run_dir, env, **{transfer.BENCH_PROBE: str(probe)}))
    cpu0 = _children_cpu()
    t0 = time.time()
    done = subprocess.run(code.command("restore-init"), env=pod_env, capture_output=True, text=True)
    t1 = time.time()
    cpu = _children_cpu() - cpu0
    if done.returncode:
        raise RuntimeError(f"restore-init exited {done.returncode}: {done.stderr}{done.stdout}")
    restored = run_dir / "checkpoints" / "last.pt"
    if hashlib.sha256(restored.read_bytes()).hexdigest() != digest:
        raise RuntimeError(f"{restored} is not the checkpoint uploaded")
    noted = probe.read_text().split()
    return float(noted[0]) - t0, t1 - t0, float(noted[1]) if len(noted) > 1 else None, cpu


FIRST_CLIENT = """
import time
import boto3, botocore.session  # imported where used now (transfer.py): the client's own cost alone
from runsync import transfer
cpu = time.process_time()
transfer.client()
print(repr((time.process_time() - cpu) * 1000))
"""


def first_client_cpu_ms(code: Code, env: dict[str, str]) -> float:
    """CPU milliseconds of a fresh process's first `transfer.client()`, its imports done before:
    botocore's session and its S3 model, what `runsync.botodata` works out at install time."""
    done = subprocess.run([sys.executable, "-c", FIRST_CLIENT], env=code.env(_clean_env(env)),
                          capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


BOTO3_ALONE = """
import os, time
import boto3, s3transfer.manager
s3 = boto3.session.Session().client("s3", region_name=os.environ["AWS_REGION"])
print(repr(time.time()), repr(time.process_time()))
s3.list_objects_v2(Bucket=os.environ["BUCKET"], MaxKeys=1)
"""


def boto3_alone(env: dict[str, str]) -> tuple[float, float]:
    """Start → first request of a process that only imports boto3 and s3transfer, makes a client
    and lists the bucket: the floor under restore-init's start-up."""
    bucket = keys.StoreURL.parse(env[contract.ENV_STORE]).bucket
    t0 = time.time()
    done = subprocess.run([sys.executable, "-c", BOTO3_ALONE], env=_clean_env(env, BUCKET=bucket),
                          capture_output=True, text=True, check=True)
    wall, cpu = done.stdout.split()[:2]
    return float(wall) - t0, float(cpu)


def idle_sidecar_rss(code: Code, run_dir: Path, env: dict[str, str]) -> float:
    """MiB resident of `runsync sidecar` (as the operator runs it) once ready, idle, run dir empty."""
    annotations = run_dir.with_suffix(".annotations")
    annotations.write_text('runsync.dev/save="**:live"\n')
    api, metrics = ports.free_ports(2)
    pod_env = code.env(_pod_env(run_dir, env, **{
        contract.ENV_ANNOTATIONS: str(annotations), contract.ENV_API: f"127.0.0.1:{api}",
        contract.ENV_METRICS: f"127.0.0.1:{metrics}", contract.ENV_GRACE: "5"}))
    log = run_dir.with_suffix(".log")
    with open(log, "wb") as out:
        proc = subprocess.Popen(code.command("sidecar"), env=pod_env, stdout=out, stderr=subprocess.STDOUT)
    try:
        while True:  # a poll for readiness, not a timing
            if proc.poll() is not None:
                raise RuntimeError(f"the sidecar exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/readyz", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        status = Path(f"/proc/{proc.pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[1]) / 1024
    finally:
        proc.terminate()
        proc.wait(60)


def imports(code: Code, run_dir: Path, env: dict[str, str]) -> dict:
    """What restore-init imports: its top-level packages by cumulative µs, and the heavy ones present."""
    done = subprocess.run(code.command("restore-init", python=("-X", "importtime")),
                          env=code.env(_pod_env(run_dir, env)), capture_output=True, text=True)
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


SYNC_CALLS = """
import json, sys, time
from pathlib import Path
from runsync import keys, sync
run_dir, store, repeat = Path(sys.argv[1]), keys.StoreURL.parse(sys.argv[2]), int(sys.argv[3])
times = []
for i in range(repeat + 1):
    (run_dir / "metrics.json").write_text(json.dumps({"step": i, "pad": "x" * 1000}))
    t0 = time.perf_counter()
    sync.sync(run_dir, store, keys.RunPath.parse("bench/p/sync-" + sys.argv[4]))
    times.append(time.perf_counter() - t0)
print(json.dumps(times))
"""


def sync_calls(code: Code, run_dir: Path, env: dict[str, str], repeat: int) -> dict:
    """Seconds per `sync()` call of one changed 1 KiB file, in one process (its S3 client included);
    the first call, which also imports and loads botocore's models, is reported apart."""
    run_dir.mkdir()
    done = subprocess.run([sys.executable, "-c", SYNC_CALLS, str(run_dir), env[contract.ENV_STORE], str(repeat),
                           code.label], env=code.env(_clean_env(env)), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"sync() calls failed: {done.stderr[-2000:]}")
    times = json.loads(done.stdout.splitlines()[-1])
    return {**_stats(times[1:]), "first": round(times[0], 3)}


def profile(code: Code, run_dir: Path, env: dict[str, str], lines: int = 18) -> list[str]:
    out = run_dir.with_suffix(".prof")
    done = subprocess.run(code.command("restore-init", profile=str(out)),
                          env=code.env(_pod_env(run_dir, env)), capture_output=True, text=True)
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


def report(r: dict) -> str:
    codes = r["codes"]
    rows = [
        (f"restore-init: start → first S3 request (s, median of {r['repeat']})",
         lambda c: c["first_request_s"]["median"]),
        (f"restore-init: start → {round(r['size'] / 1e6)} MB restored, exit (s, median)",
         lambda c: c["restore_s"]["median"]),
        ("the floor: a process that imports boto3 + s3transfer, makes a client, lists (s, median)",
         lambda c: r["boto3_first_request_s"]["median"]),
        ("restore-init: CPU seconds to its first S3 request (median)",
         lambda c: c["first_request_cpu_s"]["median"] if c.get("first_request_cpu_s") else "–"),
        (f"restore-init: CPU seconds in all, {round(r['size'] / 1e6)} MB restored (median)", lambda c: c["restore_cpu_s"]["median"]),
        ("the floor's CPU seconds to its request (median)", lambda c: r["boto3_first_request_cpu_s"]["median"]),
        ("a new process's first S3 client, `transfer.client()` (CPU ms, median)",
         lambda c: round(c["first_client_cpu_ms"]["median"], 1)),
        ("restore-init: imports, top level (ms, -X importtime, one run)",
         lambda c: round(c["imports"]["total_us"] / 1000)),
        ("restore-init imports " + "/".join(HEAVY), lambda c: ", ".join(c["imports"]["heavy_loaded"]) or "none"),
        (f"sync() of one small file, calls 2 to {r['repeat'] + 1} in one process (s, median)",
         lambda c: c["sync_call_s"]["median"]),
        ("sync(): its first call in a process (s)", lambda c: c["sync_call_s"]["first"]),
        ("the idle sidecar's RSS once ready (MiB, median of 3)", lambda c: round(c["idle_sidecar_mib"]["median"], 1)),
    ]
    lines = ["| | " + " | ".join(codes) + " |", "|---|" + "---|" * len(codes)]
    lines += [f"| {name} | " + " | ".join(str(get(r[c])) for c in codes) + " |" for name, get in rows]
    lines += ["", f"load average (1, 5, 15 min) at the end: {' '.join(map(str, r['load_average']))}; "
              f"{r['cores']} cores"]
    for c in codes:
        lines += ["", f"{c}: heaviest top-level imports of restore-init (ms, cumulative): " +
                  ", ".join(f"{n} {us / 1000:.0f}" for n, us in r[c]["imports"]["heaviest"])]
        if r[c].get("profile"):
            lines += ["", f"{c}: cProfile of one restore-init (cumulative):", *r[c]["profile"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
