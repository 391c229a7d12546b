"""A toy trainer that knows nothing of runsync but its run dir, the way a real one checkpoints.

Every `--every` steps it writes, under `$RUNSYNC_DIR` (or `--dir`):
- `ckpt/last.pt`: one file, written to a temp name and renamed into place;
- `ckpt/step-N/__R_0.distcp`: its rank's shard, and on rank 0 `.metadata` renamed into place
  last, as PyTorch DCP does; it keeps the two newest step directories and deletes older ones.
On start it resumes from the newest complete checkpoint it finds. With `--flush-log FILE` it asks
the sidecar (`RUNSYNC_API`) to flush after each checkpoint and appends the step to FILE once the
sidecar confirms it durable: what a script calling `runsync.flush()` would rely on.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import urllib.request
from pathlib import Path


def latest_checkpoint(run_dir: Path, rank: int) -> int:
    """The newest step with both a complete `last.pt` or a complete step directory."""
    best = 0
    try:
        best = json.loads((run_dir / "ckpt/last.pt").read_bytes().split(b"\n", 1)[0])["step"]
    except (OSError, ValueError, KeyError):
        pass
    for d in (run_dir / "ckpt").glob("step-*"):
        if (d / ".metadata").exists() and (d / f"__{rank}_0.distcp").exists():
            best = max(best, int(d.name.split("-")[1]))
    return best


def write_checkpoint(run_dir: Path, step: int, rank: int, size: int) -> None:
    ckpt = run_dir / "ckpt"
    ckpt.mkdir(exist_ok=True)
    header = json.dumps({"step": step, "rank": rank}).encode() + b"\n"
    tmp = ckpt / ".last.pt.tmp"
    tmp.write_bytes(header + os.urandom(size))
    os.replace(tmp, ckpt / "last.pt")
    step_dir = ckpt / f"step-{step}"
    step_dir.mkdir(exist_ok=True)
    (step_dir / f"__{rank}_0.distcp").write_bytes(header + os.urandom(size))
    if rank == 0:
        (step_dir / ".metadata.tmp").write_bytes(header)
        os.replace(step_dir / ".metadata.tmp", step_dir / ".metadata")
    steps = sorted(int(d.name.split("-")[1]) for d in ckpt.glob("step-*"))
    for old in steps[:-2]:
        shutil.rmtree(ckpt / f"step-{old}", ignore_errors=True)


def flush(timeout: float = 30.0) -> bool:
    api = os.environ.get("RUNSYNC_API")
    if not api:
        return False
    req = urllib.request.Request(f"http://{api}/v1/flush", data=json.dumps({"timeout": timeout}).encode(),
                                 method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout + 10) as resp:
            return json.loads(resp.read()).get("durable") is True
    except OSError:
        return False


def barrier(sync_dir: Path, rank: int, world: int, step: int, timeout: float = 60.0) -> None:
    """Checkpoints are collective (as DCP's save is): wait until every rank saved `step`."""
    sync_dir.mkdir(parents=True, exist_ok=True)
    (sync_dir / f".rank-{rank}").write_text(str(step))
    os.replace(sync_dir / f".rank-{rank}", sync_dir / f"rank-{rank}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if all(int((sync_dir / f"rank-{r}").read_text()) >= step for r in range(world)):
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    raise SystemExit(f"rank {rank}: the other ranks did not reach step {step}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dir", default=os.environ.get("RUNSYNC_DIR", "."))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--every", type=int, default=1)
    ap.add_argument("--sleep", type=float, default=0.1, help="seconds per step")
    ap.add_argument("--size", type=int, default=64 * 1024, help="bytes per checkpoint file")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--flush-log", default=None)
    ap.add_argument("--world", type=int, default=1, help="ranks that checkpoint together")
    ap.add_argument("--sync-dir", default=None, help="a directory the ranks share for their barrier")
    args = ap.parse_args(argv)
    run_dir = Path(args.dir)
    start = latest_checkpoint(run_dir, args.rank)
    print(f"trainer rank {args.rank}: " + (f"resumed from step {start}" if start else "starting fresh"), flush=True)
    for step in range(start + 1, args.steps + 1):
        time.sleep(args.sleep)
        loss = 2.5 / step ** 0.5
        if step % args.every == 0:
            write_checkpoint(run_dir, step, args.rank, args.size)
            print(f"trainer rank {args.rank}: step {step} loss {loss:.3f} checkpoint saved", flush=True)
            if args.flush_log and flush():
                with open(args.flush_log, "a") as f:
                    f.write(f"{step}\n")
            if args.world > 1:
                barrier(Path(args.sync_dir), args.rank, args.world, step)
    print(f"trainer rank {args.rank}: done at step {args.steps}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
