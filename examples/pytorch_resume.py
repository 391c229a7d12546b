"""A PyTorch training script that checkpoints each epoch and resumes on start, with runsync.

In a pod injected by runsync: `python pytorch_resume.py`. On a laptop:
`RUNSYNC_STORE=s3://bucket/prefix python pytorch_resume.py --local-dir runs/demo --run me/demo/run-1`.
"""

import argparse
import os

import torch

import runsync

ap = argparse.ArgumentParser()
ap.add_argument("--epochs", type=int, default=5)
ap.add_argument("--local-dir")
ap.add_argument("--run")
args = ap.parse_args()

run = runsync.init(dir=args.local_dir, run=args.run) if args.local_dir else runsync.init()
ckpt = os.path.join(run.dir, "ckpt", "last.pt")
os.makedirs(os.path.dirname(ckpt), exist_ok=True)
runsync.save(os.path.join(run.dir, "ckpt", "*.pt"), base_path=run.dir)   # live: each new version

model = torch.nn.Linear(10, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
start = 0
try:
    state = torch.load(runsync.restore("ckpt/last.pt").name)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    start = state["epoch"] + 1
    print(f"resumed from epoch {state['epoch']}")
except FileNotFoundError:
    print("starting fresh")

x, y = torch.randn(256, 10), torch.randn(256, 1)
for epoch in range(start, args.epochs):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": epoch}, ckpt + ".tmp")
    os.replace(ckpt + ".tmp", ckpt)            # complete once renamed into place
    runsync.flush()                            # durable before the next epoch
    print(f"epoch {epoch} loss {loss.item():.4f}: checkpoint durable")
