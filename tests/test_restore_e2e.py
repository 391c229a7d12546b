"""Restore: restore-init and `runsync restore`, against a real SeaweedFS and real sidecars."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import RUNSYNC, Sidecar, Store, wait_for
from runsync import config, contract, keys

pytestmark = pytest.mark.s3
RUN = "team-a/proj/run-1"
TRAINER = str(Path(__file__).parent.parent / "examples" / "toy_trainer.py")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
            if p.is_file() and ".runsync" not in p.parts}


def restore_init(s3_env, run_dir: Path, annotations: dict[str, str], workdir: Path, run: str = RUN,
                 holder: str = "pod-b", replica: str = "0", grace: float = 5, timeout: float = 120):
    ann = workdir / f"annotations-init-{holder}-{replica}"
    ann.write_text(config.format_annotations_file(annotations))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
    env.update(s3_env)
    env.update({contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: run, contract.ENV_REPLICA: replica,
                contract.ENV_ANNOTATIONS: str(ann), contract.ENV_HOLDER: holder, contract.ENV_GRACE: str(grace)})
    run_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.run([RUNSYNC, "restore-init"], env=env, capture_output=True, text=True, timeout=timeout)


def test_cli_restore_to_a_laptop_dir_then_nothing_twice(cli, tmp_path, store):
    src = tmp_path / "src"
    (src / "ckpt/step-1").mkdir(parents=True)
    (src / "ckpt/step-1/__0_0.distcp").write_bytes(os.urandom(300_000))
    (src / "ckpt/step-1/.metadata").write_bytes(b"m")
    (src / "big.bin").write_bytes(os.urandom(20 * 1024 * 1024))
    (src / "notes/a.txt").parent.mkdir()
    (src / "notes/a.txt").write_text("hello")
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    dest = tmp_path / "laptop"
    first = cli("restore", RUN, "--to", str(dest), "--json")
    assert first.returncode == 0, first.stderr
    assert tree(dest) == tree(src)
    latest = store.latest()
    for name, entry in latest.files.items():
        assert sha((dest / name).read_bytes()) == entry.sha256
        assert (dest / name).stat().st_mtime_ns == entry.mtime_ns
    assert json.loads(first.stdout)["bytes"] == sum(e.size for e in latest.files.values())
    again = json.loads(cli("restore", RUN, "--to", str(dest), "--json").stdout)
    assert again["written"] == [] and again["bytes"] == 0
    only = tmp_path / "only"
    part = json.loads(cli("restore", RUN, "notes/*", "--to", str(only), "--json").stdout)
    assert part["written"] == ["notes/a.txt"]
    human = cli("restore", RUN, "--to", str(dest))
    assert "restored 0 files (0 B)" in human.stdout and "4 up to date" in human.stdout


def test_newer_local_files_are_kept_unless_replace(cli, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("stored")
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    dest = tmp_path / "pvc"
    dest.mkdir()
    (dest / "a.txt").write_text("newer local work")
    os.utime(dest / "a.txt", ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    kept = json.loads(cli("restore", RUN, "--to", str(dest), "--json").stdout)
    assert kept["kept_newer"] == ["a.txt"] and (dest / "a.txt").read_text() == "newer local work"
    replaced = json.loads(cli("restore", RUN, "--to", str(dest), "--replace", "--json").stdout)
    assert replaced["written"] == ["a.txt"] and (dest / "a.txt").read_text() == "stored"


def put_manifest(store: Store, files: dict[str, bytes], seq: int = 1, key_for=None) -> None:
    entries = {}
    for name, data in files.items():
        key = key_for(name) if key_for else store.layout.replica_prefix + "files/x~" + sha(data)[:16]
        store.client.put_object(Bucket=store.layout.store.bucket, Key=key, Body=data)
        entries[name] = {"name": name, "key": key, "size": len(data), "mtime_ns": 1, "sha256": sha(data),
                         "policy": "live"}
    doc = {"format": 1, "run": RUN, "replica": "0", "seq": seq, "created": time.time(), "final": True,
           "files": list(entries.values())}
    store.client.put_object(Bucket=store.layout.store.bucket, Key=store.layout.manifest_key(seq),
                            Body=json.dumps(doc).encode())


@pytest.mark.parametrize("name", ["../escaped.txt", "/etc/escaped.txt", "a/../../escaped.txt"])
def test_hostile_names_in_a_manifest_are_refused(cli, tmp_path, store, name):
    put_manifest(store, {"ok.txt": b"fine", name: b"evil"})
    dest = tmp_path / "deep/dest"
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 1
    assert "unreadable" in result.stderr and "stored name" in result.stderr
    assert not list(tmp_path.rglob("escaped.txt")) and not Path("/etc/escaped.txt").exists()
    assert not dest.exists() or not list(dest.rglob("*"))


def test_a_name_through_a_symlinked_dir_is_refused(cli, tmp_path, store):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    put_manifest(store, {"link/payload.txt": b"evil", "safe.txt": b"ok"},
                 key_for=lambda n: store.layout.file_key(n, sha(b"evil" if "link" in n else b"ok")))
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 1
    assert "symlink" in result.stderr and "link" in result.stderr
    assert list(outside.iterdir()) == []
    assert not [p for p in dest.rglob("*") if ".runsync-" in p.name]


def test_a_corrupted_object_fails_clearly_and_leaves_nothing(cli, tmp_path, store):
    src = tmp_path / "src"
    (src / "ckpt/step-1").mkdir(parents=True)
    (src / "ckpt/step-1/__0_0.distcp").write_bytes(os.urandom(100_000))
    (src / "ckpt/step-1/.metadata").write_bytes(b"m")
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    entry = store.files()["ckpt/step-1/__0_0.distcp"]
    store.client.put_object(Bucket=store.layout.store.bucket, Key=entry.key, Body=b"bit rot" * 1000)
    dest = tmp_path / "dest"
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr and entry.key in result.stderr
    # The checkpoint directory is placed whole or not at all: not even its good marker.
    assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_restore_init_resumes_own_run_then_warm_starts_from_another(cli, tmp_path, s3_env):
    pre = tmp_path / "pretrain"
    pre.mkdir()
    (pre / "weights.bin").write_bytes(b"pretrained" * 100)
    assert cli("sync", str(pre), "--run", "team-a/proj/pretrain").returncode == 0
    fresh = tmp_path / "fresh"
    result = restore_init(s3_env, fresh, {contract.RESTORE_FROM: "proj/pretrain"}, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert (fresh / "weights.bin").read_bytes() == b"pretrained" * 100
    report = json.loads((fresh / ".runsync/restore.json").read_text())
    assert report["bytes"] == 1000

    other = restore_init(s3_env, tmp_path / "x", {contract.RESTORE_FROM: "team-b/proj/pretrain"}, tmp_path)
    assert other.returncode == 2
    assert other.stderr.strip() == ('runsync: error: runsync.dev/restore-from: invalid run "team-b/proj/pretrain"; '
                                    "expected PROJECT/RUN of a run in the pod's own namespace")


def test_restore_strict_fails_on_an_empty_run(tmp_path, s3_env):
    lax = restore_init(s3_env, tmp_path / "a", {}, tmp_path, run="team-a/proj/new")
    assert lax.returncode == 0, lax.stderr
    strict = restore_init(s3_env, tmp_path / "b", {contract.RESTORE_STRICT: "true"}, tmp_path,
                          run="team-a/proj/new2")
    assert strict.returncode == 1
    assert "nothing to restore for team-a/proj/new2" in strict.stderr and "restore-strict" in strict.stderr


@pytest.mark.slow
def test_new_pod_waits_for_the_old_pods_final_flush(tmp_path, s3_env, store):
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old = Sidecar(old_dir, s3_env, {contract.SAVE: "final/*:end"}, tmp_path, grace=30,
                  extra_env={contract.ENV_HOLDER: "pod-a"}).start()
    try:
        (old_dir / "final").mkdir()
        data = os.urandom(150 * 1024 * 1024)
        (old_dir / "final/model.pt").write_bytes(data)  # only uploaded at the end
        old.proc.send_signal(signal.SIGTERM)            # the old pod is terminating...
        new_dir = tmp_path / "new"
        result = restore_init(s3_env, new_dir, {}, tmp_path, holder="pod-b", grace=30)  # ...the new one starts
        assert result.returncode == 0, result.stdout + result.stderr
        assert old.proc.wait(60) == 0
        assert sha((new_dir / "final/model.pt").read_bytes()) == sha(data)
        assert any(json.loads(line).get("msg") == "waiting for the previous pod to finish its final flush"
                   for line in result.stdout.splitlines() if line.startswith("{"))
    finally:
        old.stop()


@pytest.mark.slow
def test_a_fenced_off_writer_cannot_commit(tmp_path, s3_env, store):
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    old = Sidecar(old_dir, s3_env, {contract.SAVE: "**:live"}, tmp_path, extra_env={contract.ENV_HOLDER: "pod-a"}).start()
    try:
        (old_dir / "a.txt").write_text("before")
        old.flush()
        # The old pod is wedged but alive: the new pod waits out the bound, then takes over.
        result = restore_init(s3_env, tmp_path / "new", {}, tmp_path, holder="pod-b", grace=0.5)
        assert result.returncode == 0, result.stderr
        taken = store.latest()
        (old_dir / "b.txt").write_text("after the takeover")
        code, doc = old._call("POST", "/flush", {"timeout": 5})
        assert code == 504 or doc.get("durable") is not True
        wait_for(lambda: any("fenced" in r.get("msg", "") for r in old.log_records()), timeout=20,
                 what="the old writer to notice it was fenced")
        assert "b.txt" not in store.files()
        assert store.latest().seq == taken.seq
    finally:
        old.stop()


def run_trial(tmp_path: Path, s3_env: dict, trial: int, rng: random.Random, replicas: int = 1) -> dict:
    """One preemption: trainer(s) and sidecar(s) run, SIGKILL the trainers and SIGTERM the
    sidecars at a random moment, then restore into a fresh dir and check the promise."""
    run = f"team-a/trials/run-{trial}"
    annotations = {contract.SAVE: "ckpt/**:live"}
    if replicas > 1:
        annotations[contract.RESTORE_REPLICAS] = "all"
    pods = []
    for r in range(replicas):
        run_dir = tmp_path / f"t{trial}-r{r}"
        run_dir.mkdir()
        sc = Sidecar(run_dir, s3_env, annotations, tmp_path, run=run, replica=str(r), grace=5, settle=0.3,
                     extra_env={contract.ENV_HOLDER: f"trial-{trial}-pod-{r}"})
        sc.log_path = tmp_path / f"sidecar-t{trial}-r{r}.log"
        sc.start()
        flushed = tmp_path / f"flushed-{trial}-{r}.txt"
        env = dict(sc.env)
        trainer = subprocess.Popen([sys.executable, TRAINER, "--steps", "1000", "--sleep", "0.05", "--size", "30000",
                                    "--rank", str(r), "--flush-log", str(flushed), "--world", str(replicas),
                                    "--sync-dir", str(tmp_path / f"barrier-{trial}")], env=env,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pods.append((sc, trainer, flushed))
    # Everyone completes a first checkpoint before the trials' random preemption.
    for sc, _, flushed in pods:
        wait_for(lambda: flushed.exists() and flushed.read_text().strip(), timeout=30, what="a first flush")
    time.sleep(rng.uniform(0.0, 2.0))
    for sc, trainer, _ in pods:  # the node goes: the trainers die, the sidecars get SIGTERM
        trainer.kill()
        sc.proc.send_signal(signal.SIGTERM)
    for sc, trainer, _ in pods:
        trainer.wait()
        assert sc.proc.wait(30) == 0
    last_flushed = min(max(int(x) for x in flushed.read_text().split()) for _, _, flushed in pods)

    dest = tmp_path / f"restored-{trial}"
    args = ["restore", run, "--to", str(dest), "--json"] + (["--all-replicas"] if replicas > 1 else [])
    result = subprocess.run([RUNSYNC, *args], env=pods[0][0].env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    # A complete checkpoint, matching a committed manifest, never older than the last flush.
    steps = [int(d.name.split("-")[1]) for d in (dest / "ckpt").glob("step-*")]
    assert steps, "no checkpoint directory restored"
    for step in steps:
        d = dest / "ckpt" / f"step-{step}"
        assert (d / ".metadata").exists(), f"step-{step} restored without its marker"
        for r in range(replicas):
            assert (d / f"__{r}_0.distcp").exists(), f"step-{step} restored without rank {r}'s shard"
    assert max(steps) >= last_flushed, (max(steps), last_flushed)
    last = json.loads((dest / "ckpt/last.pt").read_bytes().split(b"\n", 1)[0])["step"]
    assert last >= last_flushed
    store = Store({**s3_env}, run=run)
    committed: dict[str, str] = {}
    for r in reversed(range(replicas)):  # replica 0's entry wins a clash, as in restore
        store.layout = keys.Layout(store.layout.store, keys.RunPath.parse(run), str(r))
        m = store.latest()
        assert m.final, f"replica {r}: no final manifest"
        committed.update({name: entry.sha256 for name, entry in m.files.items()})
    restored = tree(dest)
    assert restored and set(restored) <= set(committed)
    for name, data in restored.items():  # every byte restored is a committed file's
        assert sha(data) == committed[name], name
    for sc, _, _ in pods:
        sc.stop()
    return {"last_flushed": last_flushed, "restored": max(steps), "files": len(report["written"])}


@pytest.mark.slow
def test_twenty_preemptions_restore_a_complete_checkpoint_never_older_than_the_last_flush(tmp_path, s3_env):
    rng = random.Random(int(os.environ.get("RUNSYNC_TRIAL_SEED", "20261125")))
    outcomes = [run_trial(tmp_path, s3_env, trial, rng) for trial in range(20)]
    assert all(o["restored"] >= o["last_flushed"] for o in outcomes)


@pytest.mark.slow
def test_two_replicas_never_restore_a_marker_without_every_shard(tmp_path, s3_env):
    rng = random.Random(int(os.environ.get("RUNSYNC_TRIAL_SEED", "7")))
    for trial in range(5):
        run_trial(tmp_path, s3_env, 100 + trial, rng, replicas=2)
