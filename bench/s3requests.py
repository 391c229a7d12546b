"""S3 requests by kind of one real sidecar: per idle replica-hour and per checkpoint (issue 17).

    .venv/bin/python bench/s3requests.py [--window 60] [--before .before]

One local SeaweedFS; per code tree (`--before TREE`: an older checkout, e.g. `git worktree add
.before 0cd8527`, run next to this one) a sidecar process on a run dir with `**:live`, its S3
requests counted by kind inside the process (runsync_testing.s3count, written live). Per sidecar:

- it commits a first file and is left alone: once its lease says `idle` (or, for code without
  an idle state, IDLE_WAIT s after the flush), every request over `--window` s is counted and
  scaled to an hour; the renewals an idle lease schedules beyond the window (every ttl/2 of the
  lease found in the store) are added to the lease's PutObject;
- per checkpoint: a 1 MiB and then a 256 MiB `live` file, then 256 files of 1 MiB (a sharded
  save), each renamed in, counted from the rename until `flush()` says durable, and from there
  until the lease says idle again.

Uploads go through botocore (`RUNSYNC_CRT=0`) so that multipart parts are counted too (the CRT
sends them outside botocore's hooks; the count of parts is the same). A count, not a timing:
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import boto3

from runsync import contract, keys, lease
from runsync_testing import locals3, s3count

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from harness import Sidecar  # noqa: E402  (the process wrapper the end-to-end tests use)
from startup import Code  # noqa: E402

RUN = "bench/p/requests"
IDLE_WAIT = 10.0
"""Seconds after a flush before a sidecar without an idle state is taken as idle."""
MiB = 1024 * 1024
CHECKPOINTS = (("1 MiB", MiB, 1), ("256 MiB", 256 * MiB, 1), ("256 x 1 MiB", MiB, 256))
"""(name, bytes a file, files) of each checkpoint: the last a sharded save renamed in at once."""


def kinds(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(set(after) | set(before))
            if after.get(k, 0) != before.get(k, 0)}


def start(code: Code, work: Path, env: dict[str, str], label: str) -> tuple[Sidecar, Path]:
    run_dir, counts = work / f"run-{label}", work / f"counts-{label}.json"
    run_dir.mkdir()
    sc = Sidecar(run_dir, env, {contract.SAVE: "**:live"}, work, run=RUN, replica=label,
                 extra_env={contract.ENV_HOLDER: f"pod-{label}", "RUNSYNC_CRT": "0",
                            **s3count.environ(counts, work / label, live=True)})
    if code.path:  # the older tree first on the path, after the counting sitecustomize
        sc.env["PYTHONPATH"] = f"{sc.env['PYTHONPATH']}{os.pathsep}{code.path}"
    sc.proc = subprocess.Popen(code.command("sidecar", "--settle-seconds", "0.5"), env=sc.env,
                               stdout=open(sc.log_path, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if sc.status().get("loaded"):
                return sc, counts
        except OSError:
            pass
        if sc.proc.poll() is not None:
            raise SystemExit(sc.logs()[-3000:])
        time.sleep(0.1)
    raise SystemExit("sidecar did not start:\n" + sc.logs()[-3000:])


def has_idle(code: Code) -> bool:
    """Does this tree's lease know the idle state?"""
    source = Path(code.path) / "runsync" if code.path else Path(lease.__file__).parent
    return "IDLE_TTL" in (source / "lease.py").read_text()


def wait_idle(s3, layout: keys.Layout, idle_state: bool) -> lease.Lease:
    """Until the lease says idle (or, for code without that state, IDLE_WAIT s have passed)."""
    since = time.monotonic()
    while True:
        found, _ = lease.read(s3, layout)
        if found is not None and (found.state == "idle" if idle_state else time.monotonic() - since >= IDLE_WAIT):
            return found
        time.sleep(0.2)


def measure(code: Code, work: Path, env: dict[str, str], s3, store: keys.StoreURL, window: float) -> dict:
    label = code.label
    sc, counts = start(code, work, env, label)
    layout = keys.Layout(store, keys.RunPath.parse(RUN), label)
    out: dict = {}
    try:
        (sc.run_dir / "first.txt").write_text("the first commit")
        assert sc.flush(timeout=120)["durable"] is True
        found = wait_idle(s3, layout, has_idle(code))
        base = s3count.read(counts)
        time.sleep(window)  # a count over a window, not a timing claim
        seen = kinds(base, s3count.read(counts))
        found, _ = lease.read(s3, layout)
        hour = {k: v * 3600 / window for k, v in seen.items()}
        scheduled = 3600 / (found.ttl / 2) if found.state == "idle" and found.ttl / 2 > window else 0
        if scheduled:
            hour["PutObject"] = hour.get("PutObject", 0) + scheduled
        out["idle_hour"] = hour
        out["idle_window"] = seen
        out["idle_state"] = found.state
        for name, size, count in CHECKPOINTS:
            stage = work / f"stage-{label}-{size}-{count}"  # closed files renamed in at once, as a sharded save
            stage.mkdir()
            for i in range(count):
                (stage / f"shard-{i:04d}.bin").write_bytes(os.urandom(size))
            before = s3count.read(counts)
            (sc.run_dir / f"ckpt-{size}-{count}").mkdir()
            for shard in sorted(stage.iterdir()):
                shard.rename(sc.run_dir / f"ckpt-{size}-{count}" / shard.name)
            assert sc.flush(timeout=600)["durable"] is True
            durable = s3count.read(counts)
            wait_idle(s3, layout, has_idle(code))
            out[name] = {"until_durable": kinds(before, durable), "until_idle": kinds(durable, s3count.read(counts))}
    finally:
        sc.stop()
    return out


def total(d: dict[str, float]) -> float:
    return sum(d.values())


def show(d: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(d.items())) or "none"


def report(results: dict[str, dict], window: float) -> str:
    lines = ["| | " + " | ".join(results) + " |", "|---|" + "---|" * len(results)]
    row = lambda name, cells: lines.append(f"| {name} | " + " | ".join(cells) + " |")  # noqa: E731
    row(f"idle: requests seen in {window:g} s", [f"{total(r['idle_window']):g} ({show(r['idle_window'])})"
                                                for r in results.values()])
    row("idle: per replica-hour (scaled, + scheduled renewals)",
        [f"**{total(r['idle_hour']):.0f}** ({show({k: round(v) for k, v in r['idle_hour'].items()})})"
         for r in results.values()])
    cell = lambda d: f"{total(d):g} ({show(d)})"  # noqa: E731
    for name, _, _ in CHECKPOINTS:
        row(f"checkpoint {name}: until durable", [cell(r[name]["until_durable"]) for r in results.values()])
        row(f"checkpoint {name}: then until idle", [cell(r[name]["until_idle"]) for r in results.values()])
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=60.0, help="seconds of idleness counted")
    ap.add_argument("--before", type=Path, help="a checkout of the code to compare with (its repo root)")
    ap.add_argument("--save", type=Path, help="write the results as JSON here")
    args = ap.parse_args(argv)
    server = locals3.start()
    try:
        bucket = f"requests-{uuid.uuid4().hex[:12]}"
        s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id=server.credentials.access_key,
                          aws_secret_access_key=server.credentials.secret_key)
        s3.create_bucket(Bucket=bucket)
        env = {**server.env(), contract.ENV_STORE: f"s3://{bucket}/runs"}
        store = keys.StoreURL.parse(env[contract.ENV_STORE])
        results: dict[str, dict] = {}
        with tempfile.TemporaryDirectory(prefix="bench-requests-") as work:
            trees = [Code("after")]
            if args.before:
                trees.insert(0, Code.checkout("before", args.before, Path(work) / "before"))
            for code in trees:
                results[code.label] = measure(code, Path(work), env, s3, store, args.window)
    finally:
        server.stop()
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(report(results, args.window))
    if args.save:
        args.save.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
