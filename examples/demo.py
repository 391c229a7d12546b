"""The README's main job: a training pod is preempted and its replacement resumes from S3.

Starts SeaweedFS on loopback (access keys on), then runs what an injected pod runs, as local
processes sharing one run dir per pod: `runsync restore-init`, then `runsync sidecar` beside
a toy trainer (examples/toy_trainer.py) that checkpoints every step and knows nothing of
runsync. Mid-run the node is reclaimed: the trainer is killed, the sidecar gets preStop and
SIGTERM and makes the last checkpoint durable. A new pod, on a fresh disk, restores and the
trainer resumes from that checkpoint. (The operator that writes this pod spec arrives with the
Helm chart; until then the demo sets the pod's environment itself.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import boto3

from runsync import config, contract, locals3

HERE = Path(__file__).parent
RUNSYNC = str(Path(sys.executable).with_name("runsync"))
RUN = "demo/bert/run-1"
STEPS = 40
ANNOTATIONS = {contract.SAVE: "ckpt/**:live, logs/*:end", contract.IGNORE: "**/*.tmp"}


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def pump(proc: subprocess.Popen, prefix: str, keep: list[str]) -> threading.Thread:
    def run():
        for line in proc.stdout:
            line = line.rstrip()
            keep.append(line)
            print(f"  {prefix} | {line}", flush=True)
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


class Pod:
    """What the operator's injected pod runs: restore-init, then the sidecar beside the trainer."""

    def __init__(self, name: str, root: Path, server_env: dict[str, str]):
        self.name = name
        self.run_dir = root / name / "run"
        self.run_dir.mkdir(parents=True)
        ann = root / name / "annotations"
        ann.write_text(config.format_annotations_file(ANNOTATIONS))
        api, metrics = locals3.free_ports(2)
        self.env = {**os.environ, **server_env, contract.ENV_DIR: str(self.run_dir),
                    contract.ENV_RUN_PATH: RUN, contract.ENV_STORE: "s3://runs/demo",
                    contract.ENV_ANNOTATIONS: str(ann), contract.ENV_API: f"127.0.0.1:{api}",
                    contract.ENV_METRICS: f"127.0.0.1:{metrics}", contract.ENV_GRACE: "20",
                    contract.ENV_HOLDER: name}
        self.trainer_lines: list[str] = []

    def restore_init(self) -> None:
        result = subprocess.run([RUNSYNC, "restore-init"], env=self.env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"demo failed: restore-init: {result.stderr.strip()}")
        import json
        for line in result.stdout.splitlines():
            doc = json.loads(line)
            if doc.get("msg") == "restore done":
                print(f"  {self.name} restore-init | restored {doc['files']} files ({doc['bytes']} bytes) "
                      f"in {doc['seconds']:.2f} s from manifest {doc['manifests']}")

    def start(self) -> None:
        self.sidecar = subprocess.Popen([RUNSYNC, "sidecar"], env=self.env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        self.trainer = subprocess.Popen(
            [sys.executable, "-u", str(HERE / "toy_trainer.py"), "--steps", str(STEPS), "--every", "1",
             "--sleep", "0.25", "--size", "2000000", "--flush-log", str(self.run_dir.parent / "flushed.txt")],
            env=self.env, stdout=subprocess.PIPE, text=True)
        self.pump = pump(self.trainer, f"{self.name} trainer", self.trainer_lines)

    def preempt(self) -> None:
        self.trainer.kill()  # the node is gone: the trainer dies mid-step
        subprocess.run([RUNSYNC, "sidecar", "--pre-stop"], env=self.env, capture_output=True)
        self.sidecar.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = self.sidecar.wait(30)
        print(f"  {self.name} sidecar | final flush done, exit {code} after {time.monotonic() - started:.1f} s "
              "(grace period 20 s)")

    def finish(self) -> None:
        self.trainer.wait()
        self.pump.join(5)
        self.sidecar.send_signal(signal.SIGTERM)
        self.sidecar.wait(30)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="runsync-demo-") as tmp, locals3.start() as server:
        root = Path(tmp)
        say(f"A local S3 server (SeaweedFS) is up at {server.endpoint}, with access keys")
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id=server.credentials.access_key,
                     aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket="runs")

        say(f"pod-1 starts run {RUN}: restore-init finds nothing, so the trainer starts fresh")
        first = Pod("pod-1", root, server.env())
        first.restore_init()
        first.start()
        time.sleep(6)

        say("The node is reclaimed: the trainer dies, the sidecar flushes what is left")
        first.preempt()
        flushed = (first.run_dir.parent / "flushed.txt").read_text().split()
        print(f"  the trainer had been told step {flushed[-1]} was durable before it died")
        subprocess.run([RUNSYNC, "ls", RUN], env={**first.env, "RUNSYNC_STORE": "s3://runs/demo"})

        say("pod-2 replaces it on a fresh disk: restore-init brings the last checkpoint back")
        second = Pod("pod-2", root, server.env())
        second.restore_init()
        second.start()
        second.finish()
        resumed = next((line for line in second.trainer_lines if "resumed from step" in line), "")
        say(f"The run resumed ({resumed.split(': ', 1)[-1]}) and finished at step {STEPS}")
        subprocess.run([RUNSYNC, "runs"], env={**second.env, "RUNSYNC_STORE": "s3://runs/demo"})
        if not resumed:
            sys.exit("demo failed: the second pod did not resume")


if __name__ == "__main__":
    main()
