"""One trainer-side step of the checkpoint comparison, in a process of its own: build a state dict
(not timed), time one save or load, print one JSON line {"seconds", "cpu", "bytes"}. A save is
timed in the steady state of a trainer that checkpoints again and again: after one untimed save
with the same connector client (or beside the same sidecar); a load is the first in its process,
as after a pod's restart.

    python bench/peer_torch.py STEP SIZE TARGET

STEP is one of
- `s3ckpt-save` / `s3ckpt-load`: s3torchconnector's `S3Checkpoint` with `torch.save`/`torch.load`,
  TARGET an s3:// URI;
- `s3dcp-save` / `s3dcp-load`: its DCP `S3StorageWriter`/`S3StorageReader` with
  `torch.distributed.checkpoint.save`/`load`, TARGET an s3:// prefix;
- `local-save` / `local-dcp-save`: what a runsync trainer does, `torch.save` (or a local DCP save)
  to TARGET in the run dir, then `runsync.flush()` to the sidecar beside it (RUNSYNC_API etc. in
  the environment, as the operator sets them);
- `local-load` / `local-dcp-load`: `torch.load` (or a local DCP load) of TARGET, after restore-init.

SIZE is the state dict's bytes. The connector reads AWS_* credentials and AWS_ENDPOINT_URL_S3
from the environment; region us-east-1, path-style addressing (SeaweedFS has no virtual hosts).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time

import torch
import torch.distributed.checkpoint as dcp

TENSORS = 8


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def state_dict(size: int, empty: bool) -> dict[str, torch.Tensor]:
    """TENSORS float32 tensors of `size` bytes in all: random (nothing compresses), or zeros of
    the same shapes as the template a DCP load fills in place."""
    n = size // 4 // TENSORS
    make = torch.zeros if empty else torch.randn
    return {f"layer{i}.weight": make(n) for i in range(TENSORS)}


def connector():
    from s3torchconnector import S3Checkpoint, S3ClientConfig
    return S3Checkpoint, S3ClientConfig(force_path_style=True)


def dcp_filesystem(region: str, endpoint: str | None, reader_constructor=None):
    """The DCP writer and reader take no endpoint (1.5.0): their S3 filesystem is given a client
    that has one, built as theirs is otherwise."""
    from s3torchconnector._s3client import S3Client
    from s3torchconnector.dcp import S3FileSystem
    _, config = connector()
    client = S3Client(region, endpoint=endpoint, s3client_config=config)
    return S3FileSystem(region, s3_client=client, reader_constructor=reader_constructor)


def torch_save(ckpt, sd, uri: str) -> None:
    with ckpt.writer(uri) as w:
        torch.save(sd, w)


def warm(save, target: str) -> tuple[float, float]:
    """A trainer saves again and again with one client: one save first, not timed, so the timed
    one is a steady-state save (runsync's sidecar is just as warm). Returns the clock after it."""
    save(target.rstrip("/") + "-warm" + ("/" if target.endswith("/") else ""))
    return cpu(), time.perf_counter()


def warm_local(save, sd: dict[str, torch.Tensor]) -> tuple[float, float]:
    """The same steady state for runsync: one save and flush first, not timed, then new values in
    every tensor (the next step's weights: no byte of the timed save was stored before)."""
    save()
    for t in sd.values():
        t.add_(1.0)
    return cpu(), time.perf_counter()


def main() -> None:
    step, size, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    region, endpoint = "us-east-1", os.environ.get("AWS_ENDPOINT_URL_S3")
    sd = state_dict(size, empty=step.endswith("dcp-load"))
    if step.startswith("local-") and step.endswith("save"):
        import runsync  # the SDK; in a pod it talks to the sidecar's API
        runsync.init()
    c0, t0 = cpu(), time.perf_counter()
    if step == "s3ckpt-save":
        S3Checkpoint, config = connector()
        ckpt = S3Checkpoint(region, endpoint=endpoint, s3client_config=config)
        c0, t0 = warm(lambda uri: torch_save(ckpt, sd, uri), target)
        torch_save(ckpt, sd, target)
    elif step == "s3ckpt-load":
        S3Checkpoint, config = connector()
        with S3Checkpoint(region, endpoint=endpoint, s3client_config=config).reader(target) as r:
            sd = torch.load(r, weights_only=True)
    elif step == "s3dcp-save":
        from s3torchconnector.dcp import S3StorageWriter
        fs = dcp_filesystem(region, endpoint)

        def save(uri: str) -> None:
            writer = S3StorageWriter(region, uri)
            writer.fs = fs
            dcp.save(sd, storage_writer=writer)
        c0, t0 = warm(save, target)
        save(target)
    elif step == "s3dcp-load":
        from s3torchconnector.dcp import S3StorageReader
        reader = S3StorageReader(region, target)
        reader.fs = dcp_filesystem(region, endpoint, reader._reader_constructor)
        dcp.load(sd, storage_reader=reader)
    elif step == "local-save":
        c0, t0 = warm_local(lambda: (torch.save(sd, target), runsync.flush()), sd)
        torch.save(sd, target)
        runsync.flush()
    elif step == "local-dcp-save":
        c0, t0 = warm_local(lambda: (dcp.save(sd, checkpoint_id=target), runsync.flush()), sd)
        dcp.save(sd, checkpoint_id=target)
        runsync.flush()
    elif step == "local-load":
        sd = torch.load(target, weights_only=True)
    elif step == "local-dcp-load":
        dcp.load(sd, checkpoint_id=target)
    else:
        raise SystemExit(f"peer_torch: unknown step {step!r}")
    seconds, used = time.perf_counter() - t0, cpu() - c0
    loaded = sum(t.numel() * t.element_size() for t in sd.values())
    if step.endswith("load") and not all(t.abs().sum() > 0 for t in sd.values()):
        raise SystemExit(f"peer_torch: {step} of {target} left a tensor all zeros: the load did not fill it")
    print(json.dumps({"seconds": seconds, "cpu": used, "bytes": loaded}))


if __name__ == "__main__":
    main()
