"""A real PyTorch trainer, checkpointing the way DDP jobs do, for runsync's preemption trials.

Two ranks (gloo on 127.0.0.1) train a small MLP (about 2 MB of weights, 6 MB with Adam's state)
under DistributedDataParallel. After every step:
- `torch.distributed.checkpoint.save` into `ckpt/step-N/` (every rank writes its shard; rank 0
  writes `.metadata` last, through `.metadata.tmp` renamed into place);
- rank 0 `torch.save`s the weights to `ckpt/last.pt.tmp`, then `os.replace`s it to `ckpt/last.pt`;
- rank 0 keeps the newest `--keep` step dirs (`shutil.rmtree` of older ones, as torchtitan's
  keep_latest_k does), then `runsync.flush()`, and appends N to `--flush-log` once confirmed.
On start it resumes with `dcp.load` from the newest `ckpt/step-N/` that has its `.metadata`.

`--saved-log` (outside the run dir) gets `N SHA256` as each checkpoint starts: the digest of
the weights saved at step N, which the trials compare with what PyTorch loads after a restore.
`--phase-log` gets `save N`, `rotate N`, `flush N` as each phase starts, so a trial can strike
inside one; `--slow-unlink S` sleeps S seconds after each file a rotation deletes (a slow disk),
so a kill can land inside a rotation.

Run it in a pod with runsync injected (`RUNSYNC_DIR`, `RUNSYNC_API`):
    python examples/ddp_trainer.py --steps 100
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import socket
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

WORLD = 2


def model_of(dim: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))


def digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the weights, in key order: equal values, equal digest."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def newest_step(ckpt: Path) -> int | None:
    steps = [int(d.name.split("-")[1]) for d in ckpt.glob("step-*") if (d / ".metadata").exists()]
    return max(steps, default=None)


def append(path: str | None, line: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def rank_main(rank: int, args: argparse.Namespace, port: int) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    run_dir = Path(args.dir or os.environ["RUNSYNC_DIR"])
    ckpt = run_dir / "ckpt"
    if rank == 0:
        ckpt.mkdir(parents=True, exist_ok=True)
        import runsync  # the sidecar's SDK: flush() returns once what was written is durable
    dist.barrier()
    model = model_of(args.dim)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = 1
    resume = newest_step(ckpt)
    if resume is not None:  # every rank reads the whole checkpoint (DCP reshards as needed)
        state = {"model": model.state_dict(), "step": torch.tensor(0)}
        dcp.load(state, checkpoint_id=str(ckpt / f"step-{resume}"))
        model.load_state_dict(state["model"])
        start = int(state["step"]) + 1
        if rank == 0:
            print(f"resumed from step {int(state['step'])}", flush=True)
    ddp = DistributedDataParallel(model)
    if args.slow_unlink and rank == 0:
        unlink = os.unlink

        def slow_unlink(*a, **kw):  # shutil.rmtree deletes through os.unlink
            unlink(*a, **kw)
            time.sleep(args.slow_unlink)
        os.unlink = slow_unlink
    for step in range(start, args.steps + 1):
        g = torch.Generator().manual_seed(step * WORLD + rank)  # same batches after a resume
        x = torch.randn(16, args.dim, generator=g)
        loss = (ddp(x) - x).pow(2).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        weights = model.state_dict()
        if rank == 0:
            append(args.phase_log, f"save {step}")
            # Recorded before the save: a kill right after it leaves a durable step-N on record.
            append(args.saved_log, f"{step} {digest(weights)}")
        dcp.save({"model": weights, "step": torch.tensor(step)}, checkpoint_id=str(ckpt / f"step-{step}"))
        if rank == 0:
            tmp = ckpt / "last.pt.tmp"
            torch.save({"model": weights, "step": step}, tmp)
            os.replace(tmp, ckpt / "last.pt")
            append(args.phase_log, f"rotate {step}")
            steps = sorted(int(d.name.split("-")[1]) for d in ckpt.glob("step-*"))
            for old in steps[:-args.keep]:
                shutil.rmtree(ckpt / f"step-{old}", ignore_errors=True)
            append(args.phase_log, f"flush {step}")
            runsync.flush(timeout=120)
            append(args.flush_log, str(step))
        dist.barrier()  # rank 1 does not run ahead of the flush
        if args.sleep:
            time.sleep(args.sleep)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", help="run dir (default $RUNSYNC_DIR)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--dim", type=int, default=512, help="width of the MLP: 2 x dim^2 weights")
    p.add_argument("--keep", type=int, default=3, help="step dirs kept")
    p.add_argument("--sleep", type=float, default=0.0, help="seconds between steps")
    p.add_argument("--flush-log")
    p.add_argument("--saved-log")
    p.add_argument("--phase-log")
    p.add_argument("--slow-unlink", type=float, default=0.0)
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # two ranks on a small machine
    mp.start_processes(rank_main, args=(args, free_port()), nprocs=WORLD, start_method="spawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
