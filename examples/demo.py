"""The README's main job: a run dir synced to a local S3 server, shown step by step.

Starts SeaweedFS on loopback (access keys on, a bucket made for the demo), writes a run dir the
way a trainer leaves it (config, logs, a sharded checkpoint with its completion marker, junk that
the ignore globs keep out), then runs the real `runsync` CLI on it: a first sync, a second one
that uploads nothing, a third after a change, then `ls` and `runs`. Until the preemption demo
lands, this is runsync's foundation at work.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3

from runsync import locals3

RUNSYNC = str(Path(sys.executable).with_name("runsync"))
RUN = "demo/bert/run-1"
IGNORE = "**/*.tmp, **/__pycache__"


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def runsync(env: dict[str, str], *args: str) -> None:
    print("$ runsync " + " ".join(shlex.quote(a) for a in args), flush=True)
    result = subprocess.run([RUNSYNC, *args], env=env)
    if result.returncode != 0:
        sys.exit(f"demo failed: runsync {args[0]} exited with {result.returncode}")


def write_run_dir(root: Path) -> None:
    (root / "ckpt/step-100").mkdir(parents=True)
    (root / "logs").mkdir()
    (root / "__pycache__").mkdir()
    (root / "config.yaml").write_text("model: bert-base\nlr: 3e-4\n")
    (root / "logs/train.log").write_text("".join(f"step {i} loss {2.5 - i / 100:.3f}\n" for i in range(100)))
    for rank in range(2):
        (root / f"ckpt/step-100/__{rank}_0.distcp").write_bytes(os.urandom(4 * 1024 * 1024))
    (root / "ckpt/step-100/.metadata").write_bytes(b"checkpoint index, written last")
    (root / "ckpt/step-100/partial.tmp").write_bytes(b"scratch")
    (root / "__pycache__/model.cpython-311.pyc").write_bytes(b"bytecode")


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="runsync-demo-") as tmp, locals3.start() as server:
        say(f"A local S3 server (SeaweedFS) is up at {server.endpoint}, with access keys")
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id=server.credentials.access_key,
                     aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket="runs")
        env = {**os.environ, **server.env(), "RUNSYNC_STORE": "s3://runs/demo-prefix"}
        print("RUNSYNC_STORE=s3://runs/demo-prefix, AWS_ENDPOINT_URL_S3 and keys set")

        run_dir = Path(tmp) / "run"
        write_run_dir(run_dir)
        say(f"A trainer left a run dir at {run_dir}")
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
            print(f"  {path.relative_to(run_dir)}  ({path.stat().st_size} B)")

        say("Upload it (ignoring scratch files and bytecode)")
        runsync(env, "sync", str(run_dir), "--run", RUN, "--ignore", IGNORE)

        say("Sync again: nothing changed, so nothing is uploaded")
        runsync(env, "sync", str(run_dir), "--run", RUN, "--ignore", IGNORE)

        say("The trainer appends to its log; only that file goes up")
        with open(run_dir / "logs/train.log", "a") as log:
            log.write("step 100 loss 1.500\n")
        runsync(env, "sync", str(run_dir), "--run", RUN, "--ignore", IGNORE)

        say("What the store holds for the run: its latest committed manifest")
        runsync(env, "ls", RUN)

        say("The runs in the store")
        runsync(env, "runs")
        say("Done: every file is durable in S3 and checked against its SHA-256")


if __name__ == "__main__":
    main()
