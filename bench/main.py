"""The whole benchmark, one SeaweedFS, one run: throughput and CPU against the peers,
close-to-durable latency, the idle sidecar, admission latency and checkpoints against
s3torchconnector (bench/checkpoint.py; `--tools` name `s3torchconnector`). `bench/run` sets it up.

Writes into --out: samples.csv (every run), summary.csv (medians and ratios), results.md (the
tables and the machine), chart.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3

from runsync_testing import locals3

sys.path.insert(0, str(Path(__file__).resolve().parent))
import checkpoint  # noqa: E402
import latency  # noqa: E402
import report  # noqa: E402
import standing  # noqa: E402
import tools  # noqa: E402

MiB = 1024 * 1024
FULL_SETS = {"1 x 2 GiB": (1, 2048 * MiB), "1000 x 1 MiB": (1000, MiB), "16 x 128 MiB": (16, 128 * MiB)}
SMOKE_SETS = {"1 x 8 MiB": (1, 8 * MiB), "40 x 64 KiB": (40, 64 * 1024), "4 x 2 MiB": (4, 2 * MiB)}


def make_sets(root: Path, sets: dict[str, tuple[int, int]]) -> dict[str, Path]:
    out = {}
    block = os.urandom(MiB)
    for name, (count, size) in sets.items():
        d = root / name.replace(" ", "")
        d.mkdir(parents=True)
        for i in range(count):
            with open(d / f"f{i:04d}.bin", "wb") as f:
                stamp = f"{name}/{i}/".encode()  # no two files alike, so no tool can skip one
                for off in range(0, size, MiB):
                    f.write((stamp + off.to_bytes(8, "big") + block)[:min(MiB, size - off)])
        out[name] = d
    return out


def tree_bytes(d: Path) -> tuple[int, int]:
    files = [p for p in d.rglob("*") if p.is_file() and ".runsync" not in p.parts]
    return len(files), sum(p.stat().st_size for p in files)


def throughput(server, env, s3, sets, chosen, repeat, tmp, log, rows: list[dict],
               directions=("up", "down")) -> list[dict]:
    """Appends to `rows` as it goes, so a failure later in the run keeps what was measured."""
    for rep in range(repeat):
        for name, src in sets.items():
            count, nbytes = tree_bytes(src)
            gib = nbytes / 1024 ** 3
            # Every other repeat in the reverse order: a GiB written costs this VM's kernel 0.2 s
            # on pages just freed and 2-3 s beyond them, so a fixed order favours the same tool.
            for tool in (chosen if rep % 2 == 0 else chosen[::-1]):
                bucket = f"bench-{uuid.uuid4().hex[:12]}"
                s3.create_bucket(Bucket=bucket)
                dest = tmp / "down"
                try:
                    for direction in directions:
                        # The upload's bytes may still be being written back by the server: each
                        # transfer starts with them on disk, so none is timed beside another's writeback
                        # (downloads still swung 3-6 CPU-s/GiB for every tool after this: bench/README.md).
                        os.sync()
                        tools.warm_pages(tmp, nbytes * 3 // 2)  # (deleted within seconds: little of it is written back)
                        srv0 = tools.proc_cpu(server.process.pid)
                        sample = tool.up(src, bucket, "d", env) if direction == "up" else tool.down(bucket, "d", dest, env)
                        srv = tools.proc_cpu(server.process.pid) - srv0
                        rows.append({"rep": rep, "dataset": name, "direction": direction, "tool": tool.name,
                                     "seconds": round(sample.seconds, 3), "MBps": round(nbytes / sample.seconds / MiB, 1),
                                     "client_cpu_s_per_GiB": round(sample.cpu / gib, 3),
                                     "client_user_cpu_s_per_GiB": None if sample.user is None else round(sample.user / gib, 3),
                                     "server_cpu_s_per_GiB": round(srv / gib, 3)})
                        log(f"{rep} {name:>14} {direction:>4} {tool.name:>30} {rows[-1]['MBps']:>8} MB/s "
                            f"{rows[-1]['client_cpu_s_per_GiB']:>6} CPU-s/GiB (user {rows[-1]['client_user_cpu_s_per_GiB']}) "
                            f"(server {rows[-1]['server_cpu_s_per_GiB']})")
                    got = tree_bytes(dest) if "down" in directions else stored(s3, bucket, count, nbytes)
                    if got != (count, nbytes):  # a benchmark that moved the wrong bytes measures nothing
                        raise RuntimeError(f"{tool.name} restored {got} (files, bytes) of {name}, want {(count, nbytes)}")
                finally:
                    shutil.rmtree(dest, ignore_errors=True)
                    tools.drop_bucket(s3, bucket)  # SeaweedFS frees a bucket's volumes at once
    return rows


def stored(s3, bucket: str, count: int, nbytes: int) -> tuple[int, int]:
    """(files, bytes) an upload left in `bucket`: its objects of the set's one file size (a tool's
    manifests and leases are other sizes)."""
    size = nbytes // count
    sizes = [o["Size"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
             for o in page.get("Contents", []) if o["Size"] == size]
    return len(sizes), sum(sizes)


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024 ** 2
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB RAM, {platform.platform()}, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--smoke", action="store_true", help="tiny data, one run, short latency/idle/admission")
    ap.add_argument("--repeat", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--tools", default="", help="comma-separated tool names to run (default: all installed)")
    ap.add_argument("--latency-count", default=None,
                    help="checkpoints per size: N for both, or N,M for the small and the large size "
                         "(default 50,10; --smoke 3,3)")
    ap.add_argument("--idle-files", type=int, default=None)
    ap.add_argument("--sets", default="", help="comma-separated data sets to run (default: all), e.g. '1000 x 1 MiB'")
    ap.add_argument("--only", choices=["upload", "download", "throughput", "latency", "checkpoints"],
                    help="upload: uploads and close-to-durable only (no downloads, idle sidecar or admission); "
                    "download: throughput only (each tool restores what it uploaded; both are timed); "
                    "throughput: uploads and downloads only (another repeat beside an earlier run); "
                    "latency: close-to-durable only; checkpoints: the s3torchconnector comparison only")
    ap.add_argument("--before", type=Path, help="a checkout of older code (its repo root): its runsync "
                    "tools run too, each next to this code's, and close-to-durable is measured for both")
    args = ap.parse_args()
    smoke = args.smoke
    repeat = args.repeat or (1 if smoke else 3)
    args.out.mkdir(parents=True, exist_ok=True)
    chosen = [t for t in tools.ALL if t.available() and (not args.tools or t.name in args.tools.split(","))]
    missing = [t.name for t in tools.ALL if not t.available()]
    torch_peer = checkpoint.available()
    if not torch_peer:
        missing.append(checkpoint.NAME)
    torch_peer = torch_peer and (not args.tools or checkpoint.NAME in args.tools.split(","))
    started = time.time()
    tmp = Path(tempfile.mkdtemp(prefix="runsync-bench-"))
    if args.before:  # each before-tool runs right before its after-tool: both see the same load
        chosen = [x for t in chosen for x in ((tools.Before(t, args.before, tmp / "before"), t)
                                             if t.name in tools.RUNSYNC else (t,))]
    upload_only = args.only in ("upload", "latency")
    if args.only in ("latency", "checkpoints"):
        chosen = []
    checkpoints_only = args.only == "checkpoints"
    if checkpoints_only and not torch_peer:
        raise SystemExit(f"--only checkpoints: {checkpoint.NAME} is not installed or not chosen; fix: "
                         "pip install -e '.[bench]' (or drop --tools)")

    def log(msg: str) -> None:
        print(f"[{time.time() - started:7.1f}s] {msg}", flush=True)

    failed: list[str] = []

    def section(name: str, run, default):
        """One section's failure is reported and the run goes on, so the other sections' numbers
        are kept and only the failed one needs a rerun."""
        try:
            return run()
        except Exception as e:  # noqa: BLE001 - reported in results.md, and the exit status
            failed.append(name)
            log(f"FAILED {name}: {type(e).__name__}: {str(e)[-2000:]}")
            return default

    running = [t.name for t in chosen] + ([checkpoint.NAME] if torch_peer else [])
    log(f"tools: {', '.join(running)}" + (f"; not installed: {', '.join(missing)}" if missing else ""))
    server = locals3.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))} | server.env()
        s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id=server.credentials.access_key,
                          aws_secret_access_key=server.credentials.secret_key)
        wanted = {k: v for k, v in (SMOKE_SETS if smoke else FULL_SETS).items()
                  if not args.sets or k in args.sets.split(",")}
        sets = make_sets(tmp / "data", wanted) if chosen else {}
        rows: list[dict] = []
        if chosen:
            section("throughput", lambda: throughput(server, env, s3, sets, chosen, repeat, tmp, log, rows,
                                                     ("up",) if upload_only else ("up", "down")), None)
        shutil.rmtree(tmp / "data", ignore_errors=True)
        summary = report.summarise(rows)
        report.write_csv(args.out / "samples.csv", rows)  # kept even if a later section fails

        s3.create_bucket(Bucket="bench-latency")
        lat: list[dict] = []
        codes = [("", env)] + ([("before", tools.Before(tools.ALL[0], args.before, tmp / "before").env(env))]
                               if args.before else [])
        counts = [int(x) for x in (args.latency_count or ("3,3" if smoke else "50,10")).split(",")]
        counts = counts * 2 if len(counts) == 1 else counts
        measured = [] if args.only in ("download", "throughput", "checkpoints") else counts
        for size, count in zip((MiB, 4 * MiB if smoke else 1024 * MiB), measured):
            for label, code_env in codes:
                got = section(f"close-to-durable {size // MiB} MiB {label}", lambda: latency.close_to_durable(
                    code_env, "bench-latency", size, count), None)
                if got:
                    lat.append({"code": label or "this", **got})
                    log(f"close-to-durable {json.dumps(lat[-1])}")
        tools.drop_bucket(s3, "bench-latency")
        idle = admission = f"not measured (--only {args.only})"
        if not args.only:
            s3.create_bucket(Bucket="bench-idle")
            idle = section("idle sidecar", lambda: standing.idle(  # after restore-init, as in every pod
                server, args.idle_files or (300 if smoke else 100_000), 3 if smoke else 60, "bench-idle",
                restore_init=True), "failed")
            log(f"idle sidecar {json.dumps(idle)}")
            admission = section("admission", lambda: standing.admission(server, 50, 25 if smoke else 500), "failed")
            log(f"admission {json.dumps(admission)}")
        ckpt_rows: list[dict] = []
        if torch_peer and args.only in (None, "checkpoints"):
            section("checkpoints", lambda: ckpt_rows.extend(checkpoint.measure(
                s3, env, checkpoint.SMOKE if smoke else checkpoint.FULL, repeat, log)), None)
        ckpt = checkpoint.summarise(ckpt_rows)

        report.write_csv(args.out / "samples.csv", rows + ckpt_rows)
        report.write_csv(args.out / "summary.csv", summary + ckpt)
        report.chart(args.out / "chart.png", summary)
        doc = "\n\n".join([
            f"# runsync benchmark{' (smoke)' if smoke else ''}",
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; one SeaweedFS (weed mini) on "
            f"loopback; medians of {repeat}; {round(time.time() - started)} s in all. "
            f"Not installed: {', '.join(missing) or 'none'}."
            + (f" FAILED (see the log; rerun these): {', '.join(failed)}." if failed else ""),
            "## Throughput and CPU\n\n" + report.markdown(summary),
            "## Close-to-durable under `live`\n\n" + ("| code " if args.before else "") + "| size MiB | n | p50 ms | "
            "p99 ms | transfer alone p50 ms | overhead p50 ms | CRT alone p50 ms | overhead vs CRT p50 ms |\n"
            + ("|---" if args.before else "") + "|---|---|---|---|---|---|---|---|\n" + "\n".join(
                (f"| {x['code']} " if args.before else "") + f"| {x['size_MiB']:g} | {x['count']} | {x['p50_ms']} | "
                f"{x['p99_ms']} | {x['transfer_p50_ms']} | {x['overhead_p50_ms']} | {x.get('crt_p50_ms', '-')} | "
                f"{x.get('overhead_vs_crt_p50_ms', '-')} |" for x in lat),
            "## Idle sidecar\n\n```\n" + json.dumps(idle, indent=1) + "\n```",
            "## Admission\n\n```\n" + json.dumps(admission, indent=1) + "\n```\n",
        ] + (["## Checkpoints against s3torchconnector\n\nsave: the connector's writer vs the trainer's local "
              "save + `runsync.flush()`; load: the connector's reader vs restore-init (a fresh process) + local "
              "load.\n\n" + checkpoint.markdown(ckpt) + "\n"] if ckpt else []))
        (args.out / "results.md").write_text(doc)
        print(doc)
        if failed:
            sys.exit(f"failed sections: {', '.join(failed)}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
