"""runsync against AWS's PyTorch connector (`s3torchconnector`) on the same SeaweedFS: saving and
loading a state dict, with `torch.save` and with torch's distributed checkpoint (DCP).

- The connector as its docs show it: `S3Checkpoint` `torch.save` into a writer and `torch.load`
  from a reader; its DCP `S3StorageWriter`/`S3StorageReader` with `dcp.save`/`dcp.load`. Timed in
  the trainer's process, the transfer alone (a library pays no start-up per call).
- runsync as a user runs it: the trainer's local `torch.save` (or local DCP save) into the run dir
  and `runsync.flush()` beside a real sidecar; then restore-init as the pod runs it (a fresh
  process, start-up included) and the trainer's local `torch.load` (or DCP load).

Each step is bench/peer_torch.py in a process of its own. The ratio is runsync's seconds over the
connector's for the same state dict and direction (target: <= 1.0).
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import tools
from runsync import contract

MB, MiB = 1000 * 1000, 1024 * 1024
FULL = {"state dict 15 MB": 15 * MB, "state dict 256 MiB": 256 * MiB}
SMOKE = {"state dict 4 MiB": 4 * MiB}
PEER = Path(__file__).resolve().parent / "peer_torch.py"
NAME = "s3torchconnector"
"""The `--tools` name that turns this section on."""
# (format, connector's tool name, runsync's tool name, connector steps, runsync steps, file in the run dir)
KINDS = [("torch.save", "s3torchconnector S3Checkpoint", "runsync torch.save + flush",
          ("s3ckpt-save", "s3ckpt-load"), ("local-save", "local-load"), "model.pt"),
         ("DCP", "s3torchconnector DCP", "runsync DCP + flush",
          ("s3dcp-save", "s3dcp-load"), ("local-dcp-save", "local-dcp-load"), "dcp")]


def available() -> bool:
    return subprocess.run([sys.executable, "-c", "import s3torchconnector"], capture_output=True).returncode == 0


def step(name: str, size: int, target: str, env: dict[str, str]) -> dict:
    done = subprocess.run([sys.executable, str(PEER), name, str(size), target], env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"peer_torch {name} {target} failed ({done.returncode}): {done.stderr[-3000:]}")
    doc = json.loads(done.stdout.strip().splitlines()[-1])
    if doc["bytes"] < size - 4 * 8:  # a benchmark that moved the wrong bytes measures nothing
        raise RuntimeError(f"peer_torch {name} {target} holds {doc['bytes']} bytes, want {size}")
    return doc


def connector(s3, env, size: int, steps: tuple[str, str], is_file: bool) -> tuple[float, float]:
    bucket = f"ckpt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    target = f"s3://{bucket}/ckpt/model.pt" if is_file else f"s3://{bucket}/ckpt/dcp/"
    try:
        return step(steps[0], size, target, env)["seconds"], step(steps[1], size, target, env)["seconds"]
    finally:
        tools.drop_bucket(s3, bucket)


def runsync(s3, env, size: int, steps: tuple[str, str], name: str, work: Path) -> tuple[float, float]:
    """Save beside a sidecar, end the pod, restore-init into a new pod's dir and load."""
    bucket = f"ckpt-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    run_env = {**env, contract.ENV_STORE: f"s3://{bucket}/runs"}
    run_dir, dest = work / "run", work / "restored"
    run_dir.mkdir()
    try:
        car = tools.Sidecar(run_dir, run_env, {contract.SAVE: "**:live"}, work, run="bench/p/r",  # the run RunsyncPod.down restores
                            settle=0.5).start()
        try:
            saved = step(steps[0], size, str(run_dir / name), car.env)["seconds"]
            code, _ = car.terminate()  # final flush and lease release: the next pod's restore needs no wait
            if code:
                raise RuntimeError(f"sidecar exited {code}: {car.logs()[-2000:]}")
        finally:
            car.stop()
        restore = tools.RunsyncPod().down(bucket, "runs", dest, {**env}).seconds
        loaded = step(steps[1], size, str(dest / name), env)["seconds"]
        return saved, restore + loaded
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(dest, ignore_errors=True)
        tools.drop_bucket(s3, bucket)


def measure(s3, env: dict[str, str], sizes: dict[str, int], repeat: int, log) -> list[dict]:
    """Samples: one row per (repeat, state dict, format, direction, tool), connector and runsync
    interleaved so both see the same load."""
    rows = []
    for rep in range(repeat):
        for dataset, size in sizes.items():
            for fmt, peer_name, ours_name, peer_steps, our_steps, name in KINDS:
                with tempfile.TemporaryDirectory(prefix="bench-ckpt-") as work:
                    results = {peer_name: connector(s3, env, size, peer_steps, fmt == "torch.save"),
                               ours_name: runsync(s3, env, size, our_steps, name, Path(work))}
                for tool, pair in results.items():
                    for direction, seconds in zip(("save", "load"), pair):
                        rows.append({"rep": rep, "dataset": f"{dataset} ({fmt})", "direction": direction,
                                     "tool": tool, "seconds": round(seconds, 3),
                                     "MBps": round(size / seconds / MiB, 1)})
                        log(f"{rep} {rows[-1]['dataset']:>30} {direction:>4} {tool:>32} {seconds:8.3f} s")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Median seconds per cell; runsync's rows carry `vs_connector` (its seconds / the connector's)."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["direction"], r["tool"]), []).append(r["seconds"])
    out = [{"dataset": d, "direction": direction, "tool": t, "runs": len(s), "seconds": round(statistics.median(s), 3)}
           for (d, direction, t), s in groups.items()]
    for s in out:
        if s["tool"].startswith("runsync"):
            peer = next(p for p in out if (p["dataset"], p["direction"]) == (s["dataset"], s["direction"])
                        and p["tool"].startswith(NAME))
            s["vs_connector"] = round(s["seconds"] / peer["seconds"], 2) if peer["seconds"] else None
    return out


def markdown(summary: list[dict]) -> str:
    lines = ["| state dict (format) | dir | tool | seconds (median) | runsync / connector |", "|---|---|---|---|---|"]
    for s in summary:
        mark = "**" if s["tool"].startswith("runsync") else ""
        lines.append(f"| {s['dataset']} | {s['direction']} | {mark}{s['tool']}{mark} | {s['seconds']} | "
                     f"{s.get('vs_connector', '')} |")
    return "\n".join(lines)
