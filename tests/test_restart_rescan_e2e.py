"""A sidecar restarted on a run dir whose files changed while it was down: the start-up rescan
finds them, and a flush made as soon as the sidecar answers covers them (the rescan may still be
running when the API first answers: `loaded` means the lease is held and the durable manifest
read, not that the run dir has been compared with it)."""

from __future__ import annotations

import os
import subprocess

import pytest

from harness import RUNSYNC, describes, wait_for
from runsync import contract

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SAVE = contract.SAVE
FILES = 2_000
"""Enough that the start-up rescan takes more than one step of the loop (engine.RESCAN_STEP)."""


def synced_run_dir(run_dir, s3_env) -> None:
    """FILES small files, made durable by `runsync sync` (as a run that was saved before)."""
    for i in range(FILES):
        d = run_dir / f"d{i // 500}"
        d.mkdir(exist_ok=True)
        (d / f"f{i:05d}.txt").write_text(str(i))
    env = {**os.environ, **s3_env, "RUNSYNC_STORE": s3_env["RUNSYNC_STORE"]}
    subprocess.run([RUNSYNC, "sync", str(run_dir), "--run", "team-a/proj/run-1"], env=env, check=True,
                   stdout=subprocess.DEVNULL)


def change_while_stopped(run_dir) -> dict[str, bytes]:
    """A changed file and a new one, last in the rescan's order (sorted by path)."""
    changed = {"d3/f01999.txt": b"changed while the sidecar was down",
               "zz-new.bin": os.urandom(4096)}
    for name, data in changed.items():
        (run_dir / name).write_bytes(data)
    return changed


def restarted_after_changes(sidecars, store, s3_env):
    """A synced run dir whose sidecar stopped cleanly, two files changed while it was down, and a
    new sidecar started on it (returned once its API answers): (sidecar, changed, durable before)."""
    sc = sidecars({SAVE: "**:live"})
    synced_run_dir(sc.run_dir, s3_env)
    sc.start()
    sc.flush()
    assert sc.terminate()[0] == 0
    before = store.files()
    changed = change_while_stopped(sc.run_dir)
    again = sidecars({SAVE: "**:live"}, replica="0")
    again.log_path = sc.log_path.with_name("sidecar-restarted.log")
    again.start()
    return again, changed, before


def test_a_file_changed_while_the_sidecar_was_down_is_uploaded_after_restart(sidecars, store, s3_env):
    again, changed, before = restarted_after_changes(sidecars, store, s3_env)
    wait_for(lambda: all(n in store.files() and describes(store.files()[n], d) for n, d in changed.items()),
             timeout=60, what="the files changed while the sidecar was down, durable")
    files = store.files()
    assert len(files) == FILES + 1
    assert all(files[n] == e for n, e in before.items() if n not in changed), "an unchanged file was sent again"


def test_a_flush_right_after_restart_covers_files_changed_while_down(sidecars, store, s3_env):
    again, changed, _ = restarted_after_changes(sidecars, store, s3_env)  # the API answers `loaded`
    doc = again.flush()
    assert doc["durable"], doc
    files = store.files()  # read once the flush returned: no waiting here
    for name, data in changed.items():
        assert name in files and describes(files[name], data), f"{name} not covered by the flush"


def test_a_rescan_during_an_upload_leaves_the_file_to_that_upload(sidecars, store, s3_env):
    """The periodic rescan (every 5 s here) finds a file whose upload is under way (8 MiB over a
    1 MiB/s link: 8 s): it is that upload's, not queued to go again after it. One commit names
    it, and nothing is pending once the flush answered (the old code checked the file a second
    time and committed again, about a second later)."""
    from harness import LinkProxy

    uplink = LinkProxy(s3_env["AWS_ENDPOINT_URL_S3"], up_rate=1024 * 1024)
    try:
        sc = sidecars({SAVE: "*.pt:live"}, extra_env={"AWS_ENDPOINT_URL_S3": uplink.endpoint}).start()
        data = os.urandom(8 * 1024 * 1024)
        (sc.run_dir / "model.pt").write_bytes(data)
        assert sc.flush(timeout=120)["durable"]
        assert describes(store.files()["model.pt"], data)
        wait_for(lambda: not sc.status()["pending"] and not sc.status()["uploading"], timeout=30, what="nothing pending")
        assert [m.seq for m in store.manifests()] == [1], "a second commit for the same file"
    finally:
        uplink.close()
