"""Crashes and a bad network: the sidecar kill -9'd mid-upload or mid-commit and restarted, the S3
server stopped for 5-60 s, a proxy that fails a share of requests, a run dir of very many files.
The promise: nothing durable is lost, and every file the trainer left in the run dir ends up
durable, byte for byte, once the sidecar can reach S3 again."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fnmatch
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
from conftest import FULL, run_trials
from faults import FaultProxy

from harness import RUNSYNC, Sidecar, Store, ident, ident_of, tree, wait_for
from runsync import config, contract
from runsync_testing import locals3

pytestmark = [pytest.mark.s3, pytest.mark.slow]
TRAINER = str(Path(__file__).resolve().parents[2] / "examples" / "toy_trainer.py")


@pytest.fixture(scope="module")
def own_s3():
    """A server of this module's own, so stopping it disturbs no other test."""
    server = locals3.start()
    boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                 aws_access_key_id=server.credentials.access_key,
                 aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket="chaos")
    yield server
    server.stop()


def env_of(server, endpoint: str | None = None) -> dict[str, str]:
    env = {**server.env(), "RUNSYNC_STORE": "s3://chaos/runs"}
    if endpoint:
        env["AWS_ENDPOINT_URL_S3"] = endpoint
    return env


def trainer(run_dir: Path, env: dict, rng, flushed: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, TRAINER, "--dir", str(run_dir), "--steps", "100000",
                             "--sleep", str(rng.choice([0.02, 0.1])), "--size", str(rng.choice([50_000, 3_000_000])),
                             "--flush-log", str(flushed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def complete_files(run_dir: Path) -> dict[str, str]:
    """name → content identity (`ident`) of the run dir's files, but for a checkpoint dir the trainer was killed in
    the middle of (no marker yet): that one is incomplete, and by SPEC.md never uploaded; nor is
    a temp name a writer killed mid-write left (`.last.pt.tmp`: SPEC.md's documented list)."""
    return {n: ident(d) for n, d in tree(run_dir).items()
            if not (n.startswith("ckpt/step-") and not (run_dir / n).parent.joinpath(".metadata").exists())
            and not any(fnmatch.fnmatchcase(part, t) for part in n.split("/") for t in config.DEFAULT_TEMP_NAMES)}


def check_nothing_lost(run_dir: Path, store: Store, durable_before: dict[str, str]) -> int:
    """Every file in the run dir is durable with its bytes, and every object that was durable
    before is still in the bucket (a file the trainer deleted leaves the manifest, not the store)."""
    files = {n: ident_of(e) for n, e in store.files().items()}
    local = complete_files(run_dir)
    lost = {n: f"local {h[:12]}, durable {(files.get(n) or '-')[:12]}, mtime "
               f"{os.stat(run_dir / n).st_mtime:.3f}" for n, h in local.items() if files.get(n) != h}
    gone = [key for key in durable_before if not _exists(store, key)]
    assert not lost, f"{len(lost)} files lost at {time.time():.3f}: {dict(sorted(lost.items())[:5])}"
    assert not gone, f"{len(gone)} durable objects gone: {gone[:5]}"
    return len(local)


def _exists(store: Store, key: str) -> bool:
    try:
        store.client.head_object(Bucket=store.layout.store.bucket, Key=key)
        return True
    except store.client.exceptions.ClientError:
        return False


@dataclasses.dataclass
class Pod:
    """A sidecar (`ckpt/**:live`) and a trainer that flushes after every checkpoint."""

    run: str
    run_dir: Path
    store: Store
    car: Sidecar
    trainer: subprocess.Popen
    flushed: Path

    def confirmed(self) -> int:
        """Checkpoints the trainer saw confirmed durable."""
        return len(self.flushed.read_text().split()) if self.flushed.exists() else 0

    def stop_trainer(self) -> None:
        self.trainer.kill()
        self.trainer.wait()


@contextlib.contextmanager
def pod(tmp_path: Path, server, kind: str, i: int, rng, endpoint: str | None = None):
    """Trial `i` of `kind`: the pod running, with a first checkpoint confirmed. The sidecar talks
    to `endpoint` (a fault proxy) when given; the pod's `store` always to the server itself."""
    run, run_dir = f"team-a/{kind}/run-{i}", tmp_path / f"{kind}-{i}"
    run_dir.mkdir()
    car = Sidecar(run_dir, env_of(server, endpoint), {contract.SAVE: "ckpt/**:live"}, tmp_path, run=run,
                  settle=0.3, extra_env={contract.ENV_HOLDER: f"{kind}-pod-{i}"})
    car.log_path = tmp_path / f"{kind}-{i}.log"
    flushed = tmp_path / f"{kind}-flushed-{i}"
    proc = None
    try:
        car.start()
        proc = trainer(run_dir, car.env, rng, flushed)
        p = Pod(run, run_dir, Store(env_of(server), run=run), car, proc, flushed)
        wait_for(lambda: p.confirmed() >= 1, timeout=60, what="a first flush")
        yield p
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        car.stop()


def durable_keys(store: Store) -> dict[str, str]:
    return {e.key: ident_of(e) for e in store.files().values()}


def test_sidecar_kill_9_and_restart_loses_nothing(tmp_path, own_s3, tally):
    scenario = "sidecar kill -9"
    checked = [0]

    def one(i, rng):
        with pod(tmp_path, own_s3, "kill", i, rng) as p:
            time.sleep(rng.uniform(0.0, 2.0))
            durable_before = durable_keys(p.store)
            p.car.proc.send_signal(signal.SIGKILL)  # mid-upload or mid-commit: wherever it was
            p.car.proc.wait()
            time.sleep(rng.uniform(0.0, 1.5))  # the kubelet restarts the container
            p.car.start()
            time.sleep(rng.uniform(0.5, 2.0))
            p.stop_trainer()
            assert p.car.flush(timeout=60)["durable"]
            checked[0] += check_nothing_lost(p.run_dir, p.store, durable_before)

    count, failures = run_trials(scenario, one)
    tally.record(scenario, "0 lost files", count, len(failures), f"{checked[0]} files checked")
    assert not failures, "\n".join(failures)


def test_s3_server_stopped_then_back_loses_nothing(tmp_path, own_s3, tally):
    scenario = "S3 server stopped 5-60 s"
    outage_s = [0.0]

    def one(i, rng):
        try:
            with pod(tmp_path, own_s3, "outage", i, rng) as p:
                durable_before = durable_keys(p.store)
                down = rng.uniform(5, 60) if FULL else 5.0
                own_s3.stop(keep_data=True)
                time.sleep(down)
                outage_s[0] += down
                own_s3.restart()
                confirmed = p.confirmed()
                # the trainer's flushes succeed again once the server is back
                wait_for(lambda: p.confirmed() > confirmed, timeout=120, what="a flush after the outage")
                p.stop_trainer()
                assert p.car.flush(timeout=60)["durable"]
                assert p.car.proc.poll() is None, "the sidecar died during the outage"
                check_nothing_lost(p.run_dir, p.store, durable_before)
        finally:
            if own_s3.process.poll() is not None:
                own_s3.restart()

    count, failures = run_trials(scenario, one)
    tally.record(scenario, "0 lost files", count, len(failures), f"{outage_s[0]:.0f} s of outage in all")
    assert not failures, "\n".join(failures)


def test_faulty_network_loses_nothing_and_restores_exactly(tmp_path, own_s3, tally):
    scenario = "S3 faults at 5% (503/500/reset/latency)"
    seen = collections.Counter()

    def one(i, rng):
        proxy = FaultProxy(("127.0.0.1", int(own_s3.endpoint.rsplit(":", 1)[1])), rate=0.05,
                           seed=rng.randrange(2 ** 32))
        try:
            with pod(tmp_path, own_s3, "faults", i, rng, endpoint=proxy.endpoint) as p:
                wait_for(lambda: p.confirmed() >= (30 if FULL else 8), timeout=240,
                         what="checkpoints confirmed through the faulty network")
                p.stop_trainer()
                assert p.car.flush(timeout=120)["durable"]
                check_nothing_lost(p.run_dir, p.store, {})
                code, _ = p.car.terminate()
                assert code == 0, p.car.logs()[-2000:]
                dest = tmp_path / f"faults-restored-{i}"
                done = None
                for _ in range(3):  # a restore may fail clearly on an unlucky run of faults; a retry finishes it
                    done = subprocess.run([RUNSYNC, "restore", p.run, "--to", str(dest)],
                                          env=p.car.env, capture_output=True, text=True, timeout=300)
                    if done.returncode == 0:
                        break
                    assert "error" in done.stderr.lower(), done.stderr
                assert done.returncode == 0, done.stderr[-2000:]
                assert {n: ident(d) for n, d in tree(dest).items()} == complete_files(p.run_dir)
        finally:
            proxy.close()
            seen.update(proxy.counts)

    count, failures = run_trials(scenario, one)
    injected = sum(v for k, v in seen.items() if k != "requests")
    tally.record(scenario, "0 lost files, exact restore", count, len(failures),
                 f"{injected} faults in {seen['requests']} requests")
    assert not failures, "\n".join(failures)


def durable_files(car: Sidecar) -> int:
    """The sidecar's count, or 0 while its engine is too busy to answer within the timeout."""
    try:
        return car.status()["durable_files"]
    except OSError:
        return 0


def test_a_run_dir_of_very_many_files_is_all_durable(tmp_path, own_s3, tally):
    n = 100_000 if FULL else 2_000
    run = "team-a/many/run-0"
    run_dir = tmp_path / "many"
    for i in range(n):
        d = run_dir / f"d{i // 1000:03d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:06d}.txt").write_text(f"file {i}\n")
    env = env_of(own_s3)
    car = Sidecar(run_dir, env, {contract.SAVE: "**:live"}, tmp_path, run=run, settle=0.3)
    try:
        car.start()
        # Regression (seed 20261125, full run): a status listing every pending name of 100,000
        # took megabytes and outlasted the API timeout. Lists stop at 100, counts are whole.
        # The API answers before the start-up rescan has found every file: poll until it has.
        first = wait_for(lambda: (doc := car.status())["pending_count"] > 100 and doc, timeout=120,
                         interval=0.02, what="the rescan to find more than 100 pending files")
        assert first["pending_count"] > 100 and len(first["pending"]) <= 100, (first["pending_count"], len(first["pending"]))
        wait_for(lambda: durable_files(car) == n, timeout=1800 if FULL else 300, interval=1, what=f"{n} files durable")
        lost = check_nothing_lost(run_dir, Store(env, run=run), {})
        tally.record("run dir of very many files", "all durable", 1, 0, f"{lost} files")
    except (AssertionError, TimeoutError):
        tally.record("run dir of very many files", "all durable", 1, 1, f"{n} files")
        raise
    finally:
        car.stop()
