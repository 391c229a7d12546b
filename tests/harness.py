"""Run `runsync sidecar` as a real process, as the pod would, and talk to it as the SDK would."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import yaml

from runsync import checksums, contract, keys, manifest
from runsync_testing import downward, kubelet, ports

RUNSYNC = str(Path(sys.executable).with_name("runsync"))


class Sidecar:
    """One sidecar process on a run dir, with its own API and metrics ports."""

    def __init__(self, run_dir: Path, s3_env: dict[str, str], annotations: dict[str, str], workdir: Path,
                 run: str = "team-a/proj/run-1", replica: str = "0", grace: float = 20,
                 settle: float = 0.5, extra_env: dict[str, str] | None = None, user: int | None = None):
        self.run_dir = run_dir
        self.user = user
        """Run as this UID and GID (as the operator's securityContext says; needs root)."""
        self.run = run
        self.replica = replica
        self.annotations_path = workdir / f"annotations-{replica}"
        self.set_annotations(annotations)
        api_port, metrics_port = ports.free_ports(2)
        self.api = f"127.0.0.1:{api_port}"
        self.metrics_addr = f"127.0.0.1:{metrics_port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
        self.env.update(s3_env)
        self.env.update({
            contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: run, contract.ENV_REPLICA: replica,
            contract.ENV_ANNOTATIONS: str(self.annotations_path), contract.ENV_API: self.api,
            contract.ENV_METRICS: self.metrics_addr, contract.ENV_GRACE: str(grace),
            **(extra_env or {}),
        })
        self.settle = settle
        self.log_path = workdir / f"sidecar-{replica}.log"
        self.proc: subprocess.Popen | None = None

    def set_annotations(self, annotations: dict[str, str]) -> None:
        # The kubelet swaps the file atomically; so do we.
        tmp = self.annotations_path.with_suffix(".tmp")
        tmp.write_text(downward.format_annotations_file(annotations))
        os.replace(tmp, self.annotations_path)

    def start(self, wait: bool = True) -> "Sidecar":
        argv = [RUNSYNC, "sidecar", "--settle-seconds", str(self.settle), "--rescan-seconds", "5"]
        if self.user is not None:
            argv = kubelet.command(kubelet.Identity(self.user, self.user, (), False), argv, [])
        self.proc = subprocess.Popen(
            argv, env={**self.env, "HOME": "/"} if self.user is not None else self.env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if wait:
            deadline = time.monotonic() + 120  # a poll, not a timing claim: imports take long on a busy machine
            while time.monotonic() < deadline:
                try:
                    if self.status().get("loaded"):
                        return self
                except OSError:
                    pass
                assert self.proc.poll() is None, self.logs()[-3000:]
                time.sleep(0.05)
            raise TimeoutError("sidecar did not start:\n" + self.logs()[-3000:])
        return self

    # -- the SDK's side of the API
    def _call(self, method: str, path: str, body: dict | None = None, timeout: float = 60):
        data = json.dumps(body or {}).encode() if method == "POST" else None
        req = urllib.request.Request(f"http://{self.api}{contract.API_PREFIX}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"{}")

    def status(self) -> dict:
        return self._call("GET", "/status", timeout=5)[1]

    def flush(self, timeout: float = 30) -> dict:
        code, doc = self._call("POST", "/flush", {"timeout": timeout}, timeout=timeout + 15)
        assert code == 200, (code, doc, self.logs()[-3000:])
        return doc

    def save(self, glob: str, policy: str = "live", base_path: str | None = None):
        return self._call("POST", "/save", {"glob": glob, "policy": policy, "base_path": base_path})

    def metrics(self) -> dict[str, float]:
        """Samples of /metrics as {'name{labels}': value}."""
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        samples = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def metric(self, name: str, **labels) -> float:
        lab = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        return self.metrics().get(f"{name}{{{lab}}}" if lab else name, 0.0)

    # -- lifecycle
    def terminate(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM, as the kubelet sends it; returns (exit code, seconds taken)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        return code, time.monotonic() - started

    def terminate_as_kubelet(self, grace: float) -> tuple[int, bool]:
        """SIGTERM, then SIGKILL once `grace` seconds have passed, as the kubelet does; returns
        (exit code, whether it had to be killed)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace), False
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(), True

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
        return out


class Store:
    """What a user can see in the bucket: manifests, objects."""

    def __init__(self, s3_env: dict[str, str], run: str = "team-a/proj/run-1", replica: str = "0"):
        self.client = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL_S3"], region_name="us-east-1",
                                   aws_access_key_id=s3_env["AWS_ACCESS_KEY_ID"],
                                   aws_secret_access_key=s3_env["AWS_SECRET_ACCESS_KEY"])
        self.layout = keys.Layout(keys.StoreURL.parse(s3_env["RUNSYNC_STORE"]), keys.RunPath.parse(run), replica)

    def latest(self) -> manifest.Manifest | None:
        return manifest.latest(self.client, self.layout)

    def files(self) -> dict[str, manifest.FileEntry]:
        m = self.latest()
        return dict(m.files) if m else {}

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.layout.store.bucket, Key=key)["Body"].read()

    def keys(self) -> list[str]:
        found = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.layout.store.bucket):
            found += [o["Key"] for o in page.get("Contents", ())]
        return found

    def manifests(self) -> list[manifest.Manifest]:
        out = []
        for key in self.keys():
            seq = self.layout.manifest_seq(key)
            if seq is not None:
                out.append(manifest.read(self.client, self.layout, seq))  # either format
        return sorted(out, key=lambda m: m.seq)


def git(cwd, *args: str) -> str:
    """Run git in `cwd` as a test author; its stdout, stripped."""
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@x"}
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env).stdout.decode().strip()


def wait_for(predicate, timeout: float = 20, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def write_slowly(path: Path, data: bytes, chunks: int = 10, pause: float = 0.03) -> None:
    """A trainer writing a file in pieces, closing it only at the end."""
    step = max(1, len(data) // chunks)
    with open(path, "wb") as f:
        for i in range(0, len(data), step):
            f.write(data[i:i + step])
            f.flush()
            time.sleep(pause)


_LAUNCHER = """
import os, subprocess, sys
with open(sys.argv[1], "wb") as out, open(sys.argv[2], "wb") as err:
    proc = subprocess.Popen(sys.argv[3:], stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024)
"""


def measured(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str, str, int]:
    """Run `runsync ARGS` as a process: exit code, stdout, stderr and its peak RSS in bytes
    (wait4's ru_maxrss). A small launcher forks it: a child's ru_maxrss counts the image it was
    forked from, and the test process may hold a large expected listing."""
    full = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}, **env}
    out_path, err_path = tmp_path / "stdout", tmp_path / "stderr"
    launched = subprocess.run([sys.executable, "-c", _LAUNCHER, str(out_path), str(err_path), RUNSYNC, *args],
                              env=full, capture_output=True, text=True, timeout=600, check=True)
    code, peak = (int(x) for x in launched.stdout.split())
    return code, out_path.read_text(), err_path.read_text(), peak


def uploaded_files(records: list[dict]) -> list[str]:
    return [r["file"] for r in records if r.get("msg") == "uploaded"]


def error_line(result) -> str:
    """The last `runsync: error:` line a command printed (it fails the test if there is none)."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("runsync: error:")]
    assert lines, result.stdout + result.stderr
    return lines[-1]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ident(data: bytes, part_size: int = checksums.PART_SIZE) -> str:
    """The content identity a format-2 writer records for `data`: its part CRC64NVMEs and size
    (docs/format-2.md, "Content identity"); compare with `ident_of(entry)`."""
    view = memoryview(data)
    crcs = [checksums.encode(checksums.crc64nvme(view[i:i + part_size])) for i in range(0, len(data), part_size)]
    return f"{','.join(crcs)}/{len(data)}"


def ident_of(entry: manifest.FileEntry) -> str:
    """An entry's content identity: as `ident` for format 2, its SHA-256 for format 1."""
    if not entry.part_size:
        return entry.sha256
    assert entry.part_size == checksums.PART_SIZE, entry  # what `ident` assumes
    return f"{','.join(entry.crc64nvme)}/{entry.size}"


def describes(entry: manifest.FileEntry, data: bytes) -> bool:
    """Whether `entry` names exactly `data` (part CRCs and size; SHA-256 in format 1)."""
    return ident_of(entry) == (ident(data, entry.part_size) if entry.part_size else sha(data))


def listing(root: Path) -> set[str]:
    """Every path under `root`, relative: what a check of "nothing written elsewhere" compares."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and ".runsync" not in p.parts}


def restore_init(s3_env, run_dir: Path, annotations: dict[str, str], workdir: Path, run: str = "team-a/proj/run-1",
                 holder: str = "pod-b", replica: str = "0", grace: float = 5, timeout: float = 120):
    ann = workdir / f"annotations-init-{holder}-{replica}"
    ann.write_text(downward.format_annotations_file(annotations))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
    env.update(s3_env)
    env.update({contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: run, contract.ENV_REPLICA: replica,
                contract.ENV_ANNOTATIONS: str(ann), contract.ENV_HOLDER: holder, contract.ENV_GRACE: str(grace)})
    run_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([RUNSYNC, "restore-init"], env=env, capture_output=True, text=True, timeout=timeout)


def put_manifest(store: Store, files: dict[str, bytes], seq: int = 1, key_for=None) -> None:
    """Write a manifest by hand, as a hostile or broken writer could: any names, any keys."""
    entries = {}
    for name, data in files.items():
        key = key_for(name) if key_for else store.layout.replica_prefix + "files/x~" + sha(data)[:16]
        store.client.put_object(Bucket=store.layout.store.bucket, Key=key, Body=data)
        entries[name] = {"name": name, "key": key, "size": len(data), "mtime_ns": 1, "sha256": sha(data),
                         "policy": "live"}
    doc = {"format": 1, "run": str(store.layout.run), "replica": "0", "seq": seq, "created": time.time(), "final": True,
           "files": list(entries.values())}
    store.client.put_object(Bucket=store.layout.store.bucket, Key=store.layout.manifest_key(seq),
                            Body=json.dumps(doc).encode())


CHART = str(Path(__file__).resolve().parent.parent / "charts" / "runsync")
HELM = str(Path(sys.executable).with_name("helm"))  # the pinned binary scripts/setup installs


def render_chart(args: list[str] = (), namespace: str = "runsync-system") -> list[dict]:
    """`helm template` of the chart (CRDs included) with `args`, as parsed documents."""
    result = subprocess.run([HELM, "template", "rs", CHART, "--namespace", namespace, "--kube-version", "1.30.0",
                             "--include-crds", *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [d for d in yaml.safe_load_all(result.stdout) if d]


class _Requests:
    """The requests in one connection's bytes to the server, however they are split: each head
    (request line and headers) appended to `into`, its body (Content-Length bytes) passed over."""

    def __init__(self, into: list):
        self.into, self.body_left = into, 0
        self.pending: bytes | None = b""

    def feed(self, data: bytes) -> None:
        if self.pending is None:  # a body of unknown length went by: not followed further
            return
        self.pending += data
        while True:
            if self.body_left:
                skipped = min(self.body_left, len(self.pending))
                self.pending, self.body_left = self.pending[skipped:], self.body_left - skipped
                if self.body_left:
                    return
            head, found, rest = self.pending.partition(b"\r\n\r\n")
            if not found:
                return
            line, *fields = head.decode("latin-1").split("\r\n")
            headers = {k.strip().lower(): v.strip() for k, _, v in (f.partition(":") for f in fields)}
            method, path, _ = (line.split(" ", 2) + ["", ""])[:3]
            self.into.append((method, path, headers.get("range", "")))
            if "chunked" in headers.get("transfer-encoding", "").lower():
                self.pending = None
                return
            self.pending, self.body_left = rest, int(headers.get("content-length") or 0)


class LinkProxy:
    """A loopback TCP proxy in front of S3, for a link that misbehaves: `up_rate` forwards each
    connection's request bytes at that many bytes/s (a slow uplink); `cut_after`, while `cut` is
    set, closes a connection once the server has sent that many bytes on it (a download dropped
    midway, as a network or a dying server drops it; counted in `cuts`); `stall_after`, likewise,
    holds a connection open but sends nothing more once the server has sent that many bytes on
    it (a peer gone silent mid-body; counted in `stalls`, released by `close`). `connections`
    counts the connections clients opened; `requests` holds each request the server got, as
    (method, path, Range header or ""), in the order each connection sent them."""

    def __init__(self, endpoint: str, up_rate: float | None = None, cut_after: int | None = None,
                 stall_after: int | None = None):
        host, port = endpoint.removeprefix("http://").split(":")
        self.upstream, self.up_rate, self.cut_after, self.cut = (host, int(port)), up_rate, cut_after, True
        self.stall_after, self.stalls, self._closed = stall_after, 0, threading.Event()
        self.cuts = self.connections = 0
        self.requests: list[tuple[str, str, str]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            server = socket.create_connection(self.upstream)
            threading.Thread(target=self._pipe, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, True), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        sent = 0
        requests = None if downstream else _Requests(self.requests)
        try:
            while data := src.recv(16384):
                if requests is not None:
                    requests.feed(data)  # before the server has it: recorded by the time it answers
                if downstream and self.cut and self.cut_after is not None and sent + len(data) > self.cut_after:
                    dst.sendall(data[:self.cut_after - sent])
                    self.cuts += 1
                    break
                if downstream and self.stall_after is not None and sent + len(data) > self.stall_after:
                    dst.sendall(data[:self.stall_after - sent])
                    self.stalls += 1
                    self._closed.wait()
                    break
                dst.sendall(data)
                sent += len(data)
                if not downstream and self.up_rate:
                    time.sleep(len(data) / self.up_rate)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self._closed.set()
        self.sock.close()
