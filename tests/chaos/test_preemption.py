"""Preemption at random moments, with one and two replicas, and an old pod overlapping its
replacement. The promise (SPEC.md): the restored state is a complete committed checkpoint, never
older than the last one `flush()` confirmed, and nothing lands outside the run dir."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_trials

from harness import RUNSYNC, Sidecar, Store, ident, ident_of, listing, restore_init, sha, tree, wait_for
from runsync import contract, keys

pytestmark = [pytest.mark.s3, pytest.mark.slow]
TRAINER = str(Path(__file__).resolve().parents[2] / "examples" / "toy_trainer.py")
GRACE = 5.0


def preempt(tmp_path: Path, s3_env: dict, name: str, rng, replicas: int, graceful: bool) -> dict:
    """Trainers that write single-file and sharded checkpoints, each beside its sidecar; at a
    random moment the node goes: either gracefully (SIGTERM, then SIGKILL after the grace period,
    as the kubelet does) or all at once (SIGKILL, the node lost). Then the replacement restores."""
    run = f"team-a/chaos/{name}"
    annotations = {contract.SAVE: "ckpt/**:live"}
    if replicas > 1:
        annotations[contract.RESTORE_REPLICAS] = "all"
    size = rng.choice([20_000, 200_000, 2_000_000])  # checkpoint shards of a few sizes
    pods = []
    for r in range(replicas):
        run_dir = tmp_path / f"{name}-r{r}"
        run_dir.mkdir()
        sc = Sidecar(run_dir, s3_env, annotations, tmp_path, run=run, replica=str(r), grace=GRACE, settle=0.3,
                     extra_env={contract.ENV_HOLDER: f"{name}-pod-{r}"})
        sc.log_path = tmp_path / f"sidecar-{name}-r{r}.log"
        sc.start()
        flushed = tmp_path / f"flushed-{name}-{r}.txt"
        trainer = subprocess.Popen([sys.executable, TRAINER, "--steps", "100000", "--sleep", str(rng.choice([0.02, 0.05, 0.2])),
                                    "--size", str(size), "--rank", str(r), "--flush-log", str(flushed),
                                    "--world", str(replicas), "--sync-dir", str(tmp_path / f"barrier-{name}")],
                                   env=dict(sc.env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pods.append((sc, trainer, flushed))
    for sc, _, flushed in pods:  # everyone has a first confirmed checkpoint
        wait_for(lambda: flushed.exists() and flushed.read_text().strip(), timeout=60, what="a first flush")
    time.sleep(rng.uniform(0.0, 3.0))
    for sc, trainer, _ in pods:
        if graceful:
            trainer.send_signal(signal.SIGTERM)
            sc.proc.send_signal(signal.SIGTERM)
        else:
            trainer.kill()
            sc.proc.kill()
    overran = 0
    for sc, trainer, _ in pods:
        for proc in (trainer, sc.proc):
            try:
                proc.wait(GRACE)
            except subprocess.TimeoutExpired:  # the kubelet's SIGKILL at the end of the grace period
                overran += proc is sc.proc
                proc.kill()
                proc.wait()
    last_flushed = min(max(int(x) for x in flushed.read_text().split()) for _, _, flushed in pods)

    before = listing(tmp_path)
    dests = []
    if graceful:  # the replacement pods, through restore-init (the lease was released)
        for r in range(replicas):
            dest = tmp_path / f"{name}-new-r{r}"
            done = restore_init(s3_env, dest, annotations, tmp_path, run=run, holder=f"{name}-new-{r}",
                                replica=str(r), grace=GRACE, timeout=120)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            dests.append(dest)
    else:  # the node is gone and its lease still held: a user restores by hand
        dest = tmp_path / f"{name}-new-r0"
        args = ["restore", run, "--to", str(dest)] + (["--all-replicas"] if replicas > 1 else [])
        done = subprocess.run([RUNSYNC, *args], env=pods[0][0].env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        dests.append(dest)
    outside = {p for p in listing(tmp_path) - before
               if not any(p == d.name or p.startswith(d.name + "/") for d in dests)
               and not p.startswith("annotations-init-")}
    assert not outside, f"written outside the run dir: {sorted(outside)[:5]}"

    store = Store(s3_env, run=run)
    latest = {}
    for r in range(replicas):
        store.layout = keys.Layout(store.layout.store, keys.RunPath.parse(run), str(r))
        latest[r] = store.latest()
        assert latest[r] is not None, f"replica {r}: nothing committed"
    newest = 0
    for own, dest in enumerate(dests):
        committed: dict[str, str] = {}  # what this replica restores: its own entry wins a clash
        for r in sorted(latest, key=lambda r: r == own):
            committed.update({n: ident_of(e) for n, e in latest[r].files.items()})
        steps = sorted(int(d.name.split("-")[1]) for d in (dest / "ckpt").glob("step-*"))
        assert steps, f"{dest.name}: no checkpoint directory restored"
        for step in steps:  # complete: marker and every rank's shard
            d = dest / "ckpt" / f"step-{step}"
            assert (d / ".metadata").exists(), f"step-{step} restored without its marker"
            for r in range(replicas):
                assert (d / f"__{r}_0.distcp").exists(), f"step-{step} restored without rank {r}'s shard"
        newest = max(newest, steps[-1])
        last = json.loads((dest / "ckpt/last.pt").read_bytes().split(b"\n", 1)[0])["step"]
        assert last >= last_flushed, f"last.pt is step {last}, older than the flushed step {last_flushed}"
        for path, data in tree(dest).items():  # every byte restored is a committed file's
            assert ident(data) == committed.get(path), f"{path} is not a committed file"
    assert newest >= last_flushed, f"restored step {newest}, older than the flushed step {last_flushed}"
    for sc, _, _ in pods:
        sc.stop()
    return {"graceful": graceful, "overran": overran}


@pytest.mark.parametrize("replicas,scenario", [(1, "preemption, one replica"), (2, "preemption, two replicas")])
def test_preemptions_restore_a_complete_checkpoint_never_older_than_the_last_flush(tmp_path, s3_env, tally,
                                                                                   replicas, scenario):
    outcomes = []

    def one(i, rng):
        # one preemption in four loses the node outright (no SIGTERM at all)
        outcomes.append(preempt(tmp_path, s3_env, f"p{replicas}-{i}", rng, replicas, graceful=i % 4 != 1))

    count, failures = run_trials(scenario, one)
    hard = sum(not o["graceful"] for o in outcomes)
    tally.record(scenario, "0 torn or stale restores", count, len(failures),
                 f"{hard} node-lost, {sum(o['overran'] for o in outcomes)} sidecars SIGKILLed at grace end")
    assert not failures, "\n".join(failures)


def test_old_and_new_pod_overlapping_never_mix(tmp_path, s3_env, tally):
    """A wedged old pod (alive, not terminated) and its replacement: the new one takes the lease
    after the bound; whatever the old one writes after that is never committed or restored."""
    scenario = "old and new pod overlap"
    count, failures = run_trials(scenario, lambda i, rng: overlap(tmp_path, s3_env, i, rng))
    tally.record(scenario, "a fenced-off writer never commits", count, len(failures))
    assert not failures, "\n".join(failures)


def overlap(tmp_path: Path, s3_env: dict, i: int, rng) -> None:
    run = f"team-a/chaos/overlap-{i}"
    store = Store(s3_env, run=run)
    old_dir, new_dir = tmp_path / f"old-{i}", tmp_path / f"new-{i}"
    old_dir.mkdir()
    old = Sidecar(old_dir, s3_env, {contract.SAVE: "**:live"}, tmp_path, run=run,
                  extra_env={contract.ENV_HOLDER: f"old-{i}"})
    old.log_path = tmp_path / f"old-{i}.log"
    old.start()
    try:
        before = {f"a{k}.bin": os.urandom(rng.randint(1, 300_000)) for k in range(rng.randint(1, 5))}
        for n, data in before.items():
            (old_dir / n).write_bytes(data)
        assert old.flush()["durable"]
        done = restore_init(s3_env, new_dir, {}, tmp_path, run=run, holder=f"new-{i}", grace=rng.uniform(0.2, 1.0))
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        taken = store.latest().seq
        (old_dir / "after.bin").write_bytes(os.urandom(1000))  # the old pod writes on
        wait_for(lambda: any("fenced" in r.get("msg", "") for r in old.log_records()), timeout=30,
                 what="the old writer to notice it was fenced")
        assert "after.bin" not in store.files()
        assert store.latest().seq == taken
        assert {n: sha(d) for n, d in tree(new_dir).items()} == {n: sha(d) for n, d in before.items()}
    finally:
        old.stop()
