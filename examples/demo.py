"""The README's main job: a Job's pod goes through the real webhook, is preempted, and its
replacement resumes from the last checkpoint in S3.

Starts SeaweedFS on loopback (access keys on) and the real operator (`runsync operator`, i.e.
`kopf run`, with a tiny local stub for API discovery and the Store list). A Job's pod spec with
runsync annotations and a non-root trainer (UID 1000) is sent through the webhook over HTTPS; the
injected pod is run locally as a kubelet would run it (runsync_testing.localpod): restore-init,
the native sidecar and a toy trainer that checkpoints every step and knows nothing of runsync,
each as its securityContext's user, the runsync containers with a read-only root, the run dir
group-owned by the pod's fsGroup. As root that is enforced; otherwise every container runs as
the current user, and the demo says so. Mid-run the node is reclaimed: the trainer is killed,
the sidecar gets preStop and SIGTERM and makes the last checkpoint durable. The Job's replacement
pod goes through the webhook too, restores, and the trainer (as UID 1000) resumes from what
restore-init placed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import boto3

from runsync import contract
from runsync_testing import localkube, localpod, locals3

HERE = Path(__file__).parent
RUNSYNC = str(Path(sys.executable).with_name("runsync"))
NAMESPACE = "ml-team"
JOB = "bert-finetune"
STEPS = 40
TRAINER_UID = 1000
ANNOTATIONS = {contract.SAVE: "ckpt/**:live", contract.IGNORE: "**/*.tmp", contract.PROJECT: "bert"}


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def ready(metrics_addr: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{metrics_addr.replace('0.0.0.0', '127.0.0.1')}/readyz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait_for(predicate, what: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Poll `predicate`; the demo fails (naming what it waited for) if `proc` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"demo failed: waited for {what}; the process exited with {proc.poll()}")
        time.sleep(0.1)


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
    """One pod of the Job: patched by the webhook, then run as its spec says (LocalPod)."""

    def __init__(self, name: str, root: Path, operator: localkube.Operator, secrets: dict):
        template = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {contract.INJECT_LABEL: "true"},
                         "annotations": ANNOTATIONS,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": JOB, "uid": "1",
                                              "controller": True}]},
            "spec": {"terminationGracePeriodSeconds": 60, "restartPolicy": "Never", "containers": [{
                "name": "trainer", "image": "python:3.11",
                "securityContext": {"runAsUser": TRAINER_UID, "runAsGroup": TRAINER_UID},
                "command": ["python", "toy_trainer.py", "--steps", str(STEPS), "--sleep", "0.25",
                            "--size", "2000000"]}]}}
        self.name = name
        self.patched, response = operator.patched(template)
        self.local = localpod.LocalPod(self.patched, root / name, secrets)
        self.flushed = root / name / "flushed.txt"  # beside the pod's volumes: the trainer's own log
        self.flushed.touch()
        self.flushed.chmod(0o666)  # the trainer (UID 1000) appends to it
        self.trainer_lines: list[str] = []
        added = [c["name"] for c in self.patched["spec"]["initContainers"]]
        env = self.local.env(self.local.container("runsync-sidecar"))
        print(f"  webhook | {name}: added init containers {added}, run {env[contract.ENV_RUN_PATH]} "
              f"replica {env[contract.ENV_REPLICA]}, store {env[contract.ENV_STORE]}")
        for warning in response.get("warnings", []):
            print(f"  webhook | warning: {warning}")
        ours = self.patched["spec"]["initContainers"][0]["securityContext"]
        print(f"  webhook | runsync runs as {ours['runAsUser']}:{ours['runAsGroup']} (the trainer's user), "
              f"pod fsGroup {self.patched['spec']['securityContext']['fsGroup']}")
        if self.local.unenforced:
            print(f"  {name} | not root ({self.local.unenforced}): every container runs as this user, "
                  f"not as UID {TRAINER_UID}")
        else:
            print(f"  {name} | the trainer runs as UID {TRAINER_UID}, the runsync containers with a read-only root")

    def restore_init(self) -> None:
        c = self.local.container("runsync-restore")
        result = subprocess.run(self.local.argv(c), env=self.local.env(c), capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"demo failed: restore-init: {result.stderr.strip()}")
        for line in result.stdout.splitlines():
            doc = json.loads(line)
            if doc.get("msg") == "restore done":
                print(f"  {self.name} restore-init | restored {doc['files']} files ({doc['bytes']} bytes) "
                      f"in {doc['seconds']:.2f} s from manifest {doc['manifests']}")

    def start(self) -> None:
        c = self.local.container("runsync-sidecar")
        self.sidecar_env = self.local.env(c)
        self.sidecar = subprocess.Popen(self.local.argv(c), env=self.sidecar_env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        # The kubelet starts app containers once the sidecar's startup probe (/readyz) passes.
        wait_for(lambda: ready(self.sidecar_env[contract.ENV_METRICS]), "the sidecar's startup probe",
                 self.sidecar)
        app = self.local.container("trainer")
        argv = [sys.executable, "-u", str(HERE / app["command"][1]), *app["command"][2:],
                "--flush-log", str(self.flushed)]
        self.trainer = subprocess.Popen(self.local.command(app, argv), env=self.local.env(app),
                                        stdout=subprocess.PIPE, text=True)
        self.pump = pump(self.trainer, f"{self.name} trainer", self.trainer_lines)

    def preempt(self) -> None:
        self.trainer.kill()  # the node is gone: the trainer dies mid-step
        c = self.local.container("runsync-sidecar")
        subprocess.run(self.local.pre_stop(c), env=self.sidecar_env, capture_output=True)
        self.sidecar.send_signal(signal.SIGTERM)
        started = time.monotonic()
        code = self.sidecar.wait(70)
        print(f"  {self.name} sidecar | final flush done, exit {code} after {time.monotonic() - started:.1f} s "
              "(grace period 60 s)")

    def finish(self) -> None:
        self.trainer.wait()
        self.pump.join(5)
        subprocess.run(self.local.pre_stop(self.local.container("runsync-sidecar")), env=self.sidecar_env,
                       capture_output=True)
        self.sidecar.send_signal(signal.SIGTERM)
        self.sidecar.wait(70)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="runsync-demo-") as tmp, locals3.start() as server:
        root = Path(tmp)
        root.chmod(0o755)  # the pod's containers run as other UIDs and must reach its volumes
        say(f"A local S3 server (SeaweedFS) is up at {server.endpoint}, with access keys")
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id=server.credentials.access_key,
                     aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket="runs")
        secrets = {"s3-keys": {"AWS_ACCESS_KEY_ID": server.credentials.access_key,
                               "AWS_SECRET_ACCESS_KEY": server.credentials.secret_key}}
        (root / "operator").mkdir()
        operator = localkube.Operator(root / "operator", [localkube.store(NAMESPACE, "default", "runs",
                                                                          server.endpoint, prefix="demo")])
        try:
            say("The operator (kopf) serves its admission webhook over HTTPS; namespace "
                f"{NAMESPACE} has a Store 'default' -> s3://runs/demo")
            say(f"Job {JOB} creates its pod; the webhook injects runsync; restore-init finds nothing")
            first = Pod(f"{JOB}-x7k2p", root, operator, secrets)
            first.restore_init()
            first.start()
            # Mid-run: once the trainer was told a few checkpoints were durable.
            wait_for(lambda: len(first.flushed.read_text().split()) >= 3, "three durable checkpoints",
                     first.trainer)

            say("The node is reclaimed: the trainer dies, the sidecar flushes what is left")
            first.preempt()
            flushed = first.flushed.read_text().split()
            print(f"  the trainer had been told step {flushed[-1]} was durable before it died")
            run_path = first.sidecar_env[contract.ENV_RUN_PATH]
            env = {**first.sidecar_env, "RUNSYNC_STORE": "s3://runs/demo"}
            subprocess.run([RUNSYNC, "ls", run_path], env=env)

            say("The Job makes a replacement pod on a fresh node: same run, so restore-init brings the checkpoint back")
            second = Pod(f"{JOB}-m4q9z", root, operator, secrets)
            second.restore_init()
            second.start()
            second.finish()
            resumed = next((line for line in second.trainer_lines if "resumed from step" in line), "")
            say(f"The run resumed ({resumed.split(': ', 1)[-1]}) and finished at step {STEPS}")
            subprocess.run([RUNSYNC, "runs"], env=env)
            if not resumed:
                sys.exit("demo failed: the second pod did not resume")
        finally:
            operator.stop()


if __name__ == "__main__":
    main()
