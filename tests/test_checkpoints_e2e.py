"""Checkpoints as real trainers write them, through the real sidecar and restore-init: a writer
killed mid-write, a rotation cut short, a checkpoint dir left without its marker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from harness import restore_init, tree, wait_for
from runsync import contract

pytestmark = [pytest.mark.s3, pytest.mark.slow]

# torch.save to a temp name, as trainers do before os.replace: 1 MiB at a time, never finished.
ENDLESS_WRITE = textwrap.dedent('''
    import os, sys
    with open(sys.argv[1], "wb") as f:
        while True:
            f.write(os.urandom(1 << 20))
            f.flush()
''')


def test_sigterm_inside_a_big_write_to_a_temp_name_never_comes_back(sidecars, store, tmp_path, s3_env):
    sc = sidecars({contract.SAVE: "ckpt/**:live"}).start()
    ckpt = sc.run_dir / "ckpt"
    ckpt.mkdir()
    (ckpt / "last.pt").write_bytes(b"step 3, complete")
    tmp = ckpt / "last.pt.tmp"
    writer = subprocess.Popen([sys.executable, "-c", ENDLESS_WRITE, str(tmp)])
    try:
        wait_for(lambda: tmp.exists() and tmp.stat().st_size >= 4 << 20, timeout=60, what="the write to be under way")
    finally:
        writer.send_signal(signal.SIGTERM)  # the kernel closes the file: it looks finished
        writer.wait()
    assert writer.returncode == -signal.SIGTERM
    sc.flush()
    code, _ = sc.terminate()  # the final flush uploads everything that is complete
    assert code == 0
    assert sorted(store.files()) == ["ckpt/last.pt"]

    fresh = tmp_path / "replacement"
    result = restore_init(s3_env, fresh, {contract.SAVE: "ckpt/**:live"}, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert sorted(tree(fresh)) == ["ckpt/last.pt"]


def test_a_save_entry_naming_a_temp_file_uploads_it(sidecars, store):
    sc = sidecars({contract.SAVE: "ckpt/**:live, notes.txt.tmp:live"}).start()
    (sc.run_dir / "ckpt").mkdir()
    (sc.run_dir / "ckpt/a.pt.tmp").write_bytes(b"half")
    (sc.run_dir / "notes.txt.tmp").write_text("named literally")
    sc.flush()
    assert sc.terminate()[0] == 0
    assert sorted(store.files()) == ["notes.txt.tmp"]


def write_dcp_step(run_dir, step: int) -> None:
    """What torch.distributed.checkpoint.save leaves: shards, then `.metadata` renamed into place."""
    d = run_dir / f"ckpt/step-{step}"
    d.mkdir(parents=True)
    for rank in (0, 1):
        (d / f"__{rank}_0.distcp").write_bytes(f"step {step} rank {rank} ".encode() * 1000)
    (d / ".metadata.tmp").write_bytes(f"metadata of step {step}".encode())
    os.replace(d / ".metadata.tmp", d / ".metadata")


STEP8 = ["ckpt/step-8/.metadata", "ckpt/step-8/__0_0.distcp", "ckpt/step-8/__1_0.distcp"]


@pytest.mark.parametrize("cut_short_after", ["ckpt/step-8/__0_0.distcp", "ckpt/step-8/.metadata"])
def test_a_rotation_cut_short_never_commits_a_torn_checkpoint(sidecars, store, tmp_path, s3_env, cut_short_after):
    """shutil.rmtree of an old step dir, killed after its first unlink: the dir stays in the
    manifest as committed (its marker is still there) or leaves it whole (the marker went)."""
    sc = sidecars({contract.SAVE: "ckpt/**:live"}).start()
    write_dcp_step(sc.run_dir, 8)
    write_dcp_step(sc.run_dir, 9)
    sc.flush()
    assert set(STEP8) <= set(store.files())
    (sc.run_dir / cut_short_after).unlink()
    (sc.run_dir / "ckpt/last.pt").write_bytes(b"step 9")  # after the unlink: its commit carries the deletion
    sc.flush()
    wait_for(lambda: "ckpt/last.pt" in store.files(), timeout=60, what="the commit after the unlink")
    assert sc.terminate()[0] == 0
    step8 = sorted(n for n in store.files() if n.startswith("ckpt/step-8/"))
    assert step8 == (STEP8 if cut_short_after.endswith(".distcp") else []), step8

    fresh = tmp_path / "replacement"
    result = restore_init(s3_env, fresh, {contract.SAVE: "ckpt/**:live"}, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    restored = sorted(n for n in tree(fresh) if n.startswith("ckpt/step-8/"))
    assert restored == step8
    assert (fresh / "ckpt/step-9/.metadata").read_bytes() == b"metadata of step 9"


def test_a_marker_less_checkpoint_dir_goes_at_the_end_as_incomplete(sidecars, store, tmp_path, s3_env, cli):
    """Hugging Face's `checkpoint-5/` without its `trainer_state.json` when the run ends: uploaded
    at the end, logged by name; restore skips it unless asked for it by name."""
    sc = sidecars({contract.SAVE: "**:live"}).start()
    d = sc.run_dir / "checkpoint-5"
    d.mkdir()
    (d / "model.safetensors").write_bytes(b"weights" * 1000)
    (d / "optimizer.pt").write_bytes(b"adam" * 1000)
    (sc.run_dir / "log.txt").write_text("step 5")
    sc.flush()
    assert sc.terminate()[0] == 0
    assert {"checkpoint-5/model.safetensors", "checkpoint-5/optimizer.pt"} <= set(store.files())
    said = [r for r in sc.log_records() if r.get("dir") == "checkpoint-5"]
    assert said and "incomplete" in said[0]["msg"], sc.logs()[-3000:]

    fresh = tmp_path / "replacement"
    result = restore_init(s3_env, fresh, {contract.SAVE: "**:live"}, tmp_path)
    assert result.returncode == 0, result.stderr + result.stdout
    assert sorted(tree(fresh)) == ["log.txt"]
    by_name = cli("restore", sc.run, "checkpoint-5", "--to", str(tmp_path / "asked"))
    assert by_name.returncode == 0, by_name.stderr
    assert sorted(tree(tmp_path / "asked")) == ["checkpoint-5/model.safetensors", "checkpoint-5/optimizer.pt"]
