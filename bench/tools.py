"""The tools being compared: each moves one directory up to `s3://bucket/prefix` and back down.

Every tool returns a `Sample` of its own wall time and client CPU (user + sys). CLI tools are
timed as whole processes, start-up included, as a user runs them; the boto3 peers are libraries,
so their own script reports the transfer alone. The runsync sidecar is timed from the moment the
files are in the run dir (closed) until its flush says they are durable, restore-init as the
process the pod runs.
"""

from __future__ import annotations

import compileall
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from py_compile import PycInvalidationMode

from runsync import contract
from runsync_testing import downward

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
sys.path.insert(0, str(HERE.parent / "tests"))
from harness import Sidecar  # noqa: E402  (the same process wrapper the end-to-end tests use)


@dataclasses.dataclass(frozen=True)
class Sample:
    seconds: float
    cpu: float
    user: float | None = None
    """The user-mode part of `cpu`: the tool's own work, apart from the kernel's (page cache,
    sockets), which swung 10x between runs on these VMs (`warm_pages`)."""


def _children_cpu() -> tuple[float, float]:
    """(user + sys, user) CPU seconds of the reaped children."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime, r.ru_utime


def run_timed(cmd: list[str], env: dict[str, str]) -> Sample:
    (c0, u0), t0 = _children_cpu(), time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise RuntimeError(f"{cmd[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    c1, u1 = _children_cpu()
    return Sample(time.perf_counter() - t0, c1 - c0, u1 - u0)


class Tool:
    name = ""
    needs: tuple[str, ...] = ()  # binaries that must exist for this tool to run

    def available(self) -> bool:
        return all(Path(b).exists() for b in self.needs)

    def up(self, src: Path, bucket: str, prefix: str, env: dict[str, str]) -> Sample: ...

    def down(self, bucket: str, prefix: str, dest: Path, env: dict[str, str]) -> Sample: ...


class RunsyncCLI(Tool):
    name = "runsync sync/restore"
    needs = (str(BIN / "runsync"),)

    def up(self, src, bucket, prefix, env):
        return run_timed([str(BIN / "runsync"), "sync", str(src), "--run", "bench/p/r"],
                         {**env, contract.ENV_STORE: f"s3://{bucket}/{prefix}"})

    def down(self, bucket, prefix, dest, env):
        return run_timed([str(BIN / "runsync"), "restore", "bench/p/r", "--to", str(dest)],
                         {**env, contract.ENV_STORE: f"s3://{bucket}/{prefix}"})


class RunsyncPod(Tool):
    """The sidecar (`live`) for uploads, restore-init for downloads: what a training pod runs."""

    name = "runsync sidecar/restore-init"
    needs = (str(BIN / "runsync"),)

    def up(self, src, bucket, prefix, env):
        with tempfile.TemporaryDirectory(prefix="bench-pod-") as work:
            run_dir = Path(work) / "run"
            run_dir.mkdir()
            staging = Path(work) / "staging"  # same filesystem, so a rename puts a closed file in place
            shutil.copytree(src, staging)
            car = Sidecar(run_dir, {**env, contract.ENV_STORE: f"s3://{bucket}/{prefix}"},
                          {contract.SAVE: "**:live"}, Path(work), run="bench/p/r", settle=0.5).start()
            try:
                c0, u0 = proc_cpu(car.proc.pid), proc_cpu(car.proc.pid, user=True)
                t0 = time.perf_counter()
                for p in sorted(staging.iterdir()):
                    os.rename(p, run_dir / p.name)
                doc = car.flush(timeout=3600)
                sample = Sample(time.perf_counter() - t0, proc_cpu(car.proc.pid) - c0,
                                proc_cpu(car.proc.pid, user=True) - u0)
                if not doc.get("durable"):
                    raise RuntimeError(f"sidecar flush not durable: {doc}")
                code, _ = car.terminate()  # final flush and lease release, so restore-init needs no wait
                if code:
                    raise RuntimeError(f"sidecar exited {code}: {car.logs()[-2000:]}")
                return sample
            finally:
                car.stop()

    def down(self, bucket, prefix, dest, env):
        dest.mkdir(parents=True, exist_ok=True)
        ann = dest.parent / f"{dest.name}.annotations"
        ann.write_text(downward.format_annotations_file({contract.SAVE: "**:live"}))
        try:
            return run_timed([str(BIN / "runsync"), "restore-init"], {
                **env, contract.ENV_STORE: f"s3://{bucket}/{prefix}", contract.ENV_DIR: str(dest),
                contract.ENV_RUN_PATH: "bench/p/r", contract.ENV_ANNOTATIONS: str(ann),
                contract.ENV_HOLDER: "bench-restore", contract.ENV_GRACE: "5"})
        finally:
            ann.unlink()
            shutil.rmtree(dest / ".runsync", ignore_errors=True)


class S5cmd(Tool):
    name = "s5cmd"
    needs = (str(BIN / "s5cmd"),)

    def _cmd(self, env):
        return [str(BIN / "s5cmd"), "--endpoint-url", env["AWS_ENDPOINT_URL_S3"], "cp", "-c", "16", "-p", "64"]

    def up(self, src, bucket, prefix, env):
        return run_timed(self._cmd(env) + [f"{src}/*", f"s3://{bucket}/{prefix}/"], env)

    def down(self, bucket, prefix, dest, env):
        return run_timed(self._cmd(env) + [f"s3://{bucket}/{prefix}/*", f"{dest}/"], env)


class Rclone(Tool):
    name = "rclone"
    needs = (str(BIN / "rclone"),)
    # Tuned as rclone's docs suggest for many parallel streams on a fast link.
    FLAGS = ["--transfers", "16", "--checkers", "16", "--s3-upload-concurrency", "8", "--s3-chunk-size", "16M",
             "--multi-thread-streams", "8", "--s3-no-check-bucket", "--no-traverse", "--no-update-modtime"]

    def _env(self, env):
        return {**env, "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
                "RCLONE_CONFIG_BENCH_ENDPOINT": env["AWS_ENDPOINT_URL_S3"],
                "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": env["AWS_ACCESS_KEY_ID"],
                "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": env["AWS_SECRET_ACCESS_KEY"],
                "RCLONE_CONFIG_BENCH_REGION": env.get("AWS_REGION", "us-east-1")}

    def up(self, src, bucket, prefix, env):
        return run_timed([str(BIN / "rclone"), "copy", str(src), f"bench:{bucket}/{prefix}", *self.FLAGS],
                         self._env(env))

    def down(self, bucket, prefix, dest, env):
        return run_timed([str(BIN / "rclone"), "copy", f"bench:{bucket}/{prefix}", str(dest), *self.FLAGS],
                         self._env(env))


class AwsCli(Tool):
    """aws cli v1 in a venv of its own (it pins its own botocore)."""

    name = "aws cli"
    AWS = HERE.parent / ".venv" / "peers" / "awscli" / "bin" / "aws"
    needs = (str(AWS),)

    def _env(self, env):
        cfg = HERE.parent / ".venv" / "peers" / "awscli.config"
        cfg.write_text("[default]\ns3 =\n  max_concurrent_requests = 32\n  multipart_chunksize = 16MB\n")
        return {**env, "AWS_CONFIG_FILE": str(cfg)}

    def up(self, src, bucket, prefix, env):
        return run_timed([str(self.AWS), "--endpoint-url", env["AWS_ENDPOINT_URL_S3"], "s3", "cp", "--recursive",
                          "--only-show-errors", str(src), f"s3://{bucket}/{prefix}/"], self._env(env))

    def down(self, bucket, prefix, dest, env):
        return run_timed([str(self.AWS), "--endpoint-url", env["AWS_ENDPOINT_URL_S3"], "s3", "cp", "--recursive",
                          "--only-show-errors", f"s3://{bucket}/{prefix}/", str(dest)], self._env(env))


class Boto3(Tool):
    """boto3 as a library: `kind` "tm" (transfer manager, defaults, file after file) or "crt"."""

    def __init__(self, kind: str):
        self.kind = kind
        self.name = "boto3 + CRT" if kind == "crt" else "boto3 TM"

    def available(self):
        if self.kind != "crt":
            return True
        return subprocess.run([sys.executable, "-c", "import awscrt"], capture_output=True).returncode == 0

    def _run(self, direction, root, bucket, prefix, env):
        done = subprocess.run([sys.executable, str(HERE / "peer_boto3.py"), self.kind, direction, str(root),
                               bucket, prefix], env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{self.name} failed: {done.stderr[-2000:]}")
        doc = json.loads(done.stdout.strip().splitlines()[-1])
        return Sample(doc["seconds"], doc["cpu"], doc.get("user"))

    def up(self, src, bucket, prefix, env):
        return self._run("up", src, bucket, prefix, env)

    def down(self, bucket, prefix, dest, env):
        return self._run("down", dest, bucket, prefix, env)


def warm_pages(where: Path, nbytes: int) -> None:
    """Write and delete a file of `nbytes` in `where`, just before a timed transfer, so every tool
    lands its bytes on memory the guest kernel has just freed. On these VMs a GiB written to a
    new file cost 0.8-6.7 s of kernel CPU, the same GiB right after this warm-up 0.19-0.22 s
    (ext4; tmpfs swung alike, so memory, not the disk; bench/README.md, "The kernel's share"):
    more than any tool's own work on the 1 GiB sets. It narrows the swing, it does not end it:
    read the user CPU column for the tools' own work."""
    block = os.urandom(8 * MiB)
    path = where / f".warm-{os.getpid()}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(0, nbytes, len(block)):
            os.write(fd, block)
    finally:
        os.close(fd)
        path.unlink()


def proc_cpu(pid: int, user: bool = False) -> float:
    """CPU seconds (user + sys; user alone if `user`) of a running process and its reaped
    children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in (fields[11:15:2] if user else fields[11:15])) / os.sysconf("SC_CLK_TCK")


def proc_rss(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[21]) * os.sysconf("SC_PAGE_SIZE")


class Before(Tool):
    """A runsync tool running older code: `tree` is a checkout's repo root (`git worktree add`),
    put first on PYTHONPATH as the package `runsync` (bench/startup.py does the same)."""

    def __init__(self, tool: Tool, tree: Path, work: Path):
        self.tool, self.name, self.needs = tool, f"{tool.name} (before)", tool.needs
        self.path = str(link_checkout(tree, work))

    def env(self, env: dict[str, str]) -> dict[str, str]:
        return {**env, "PYTHONPATH": self.path}

    def up(self, src, bucket, prefix, env):
        return self.tool.up(src, bucket, prefix, self.env(env))

    def down(self, bucket, prefix, dest, env):
        return self.tool.down(bucket, prefix, dest, self.env(env))


ALL = [RunsyncCLI(), RunsyncPod(), S5cmd(), Rclone(), AwsCli(), Boto3("tm"), Boto3("crt")]
RUNSYNC = {"runsync sync/restore", "runsync sidecar/restore-init"}
RUNSYNC |= {f"{name} (before)" for name in RUNSYNC}  # never a peer


def drop_bucket(s3, bucket: str) -> None:
    """Empty and delete a bucket: SeaweedFS frees a bucket's volumes at once."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    s3.delete_bucket(Bucket=bucket)


def server_with_bucket(bucket: str):
    """One local SeaweedFS with `bucket` made; (server, the environment a child process runs in:
    the server's credentials and endpoint, no AWS_* or RUNSYNC_* of the caller's)."""
    import boto3

    from runsync_testing import locals3

    server = locals3.start()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}, **server.env()}
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                 aws_access_key_id=server.credentials.access_key,
                 aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket=bucket)
    return server, env


def codes(before, tmp) -> list[tuple[str, str]]:
    """(label, PYTHONPATH) of the code to run: this tree's (installed), and before it the
    `--before` checkout's, as a package `runsync` linked from a dir under `tmp`."""
    found = [("after", "")]
    if before:
        found.insert(0, ("before", str(link_checkout(Path(before), Path(tmp) / "before"))))
    return found


def compiled(root: Path) -> None:
    """Write the bytecode of checkout `root`'s runsync, as the image's `pip install` writes it:
    where PYTHONDONTWRITEBYTECODE is set, as on these machines, a module with none (or stale, an
    edit since scripts/setup) is compiled again at each start, ~70 ms of restore-init's
    (bench/README.md, "Bytecode"). Both codes of a before/after, so neither pays it."""
    compileall.compile_dir(root.resolve() / "sidecar", quiet=1, invalidation_mode=PycInvalidationMode.TIMESTAMP)


compiled(HERE.parent)  # this checkout's, which every tool here runs


def link_checkout(root: Path, work: Path) -> Path:
    """`work`, made to hold `runsync`: a link to checkout `root`'s sidecar/, for PYTHONPATH,
    compiled (`compiled`)."""
    compiled(root)
    work.mkdir(parents=True, exist_ok=True)
    link = work / "runsync"
    if not link.exists():
        link.symlink_to(root.resolve() / "sidecar")
    return work
