"""A trainer with umask 077 under another UID: what the sidecar cannot read is skipped, logged by
name once and counted; the watcher survives it, a flush answers naming it, and the final flush
does not wait for it. A dead watcher fails liveness, so the kubelet restarts the sidecar."""

from __future__ import annotations

import os
import subprocess
import urllib.error
import urllib.request

import pytest

from harness import Sidecar, wait_for
from runsync import contract, engine, keys, runner
from runsync_testing import kubelet

pytestmark = [pytest.mark.s3, pytest.mark.slow]
TRAINER = kubelet.Identity(1000, 1000, (), False)
SIDECAR_UID = 65532


def as_trainer(script: str, umask: int) -> None:
    subprocess.run(kubelet.command(TRAINER, ["/bin/sh", "-c", script], [], umask=umask), check=True, timeout=30)


def healthz(sc: Sidecar) -> int:
    try:
        with urllib.request.urlopen(f"http://{sc.metrics_addr}/healthz", timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as err:
        return err.code


@pytest.mark.usefixtures("as_kubelet")
def test_what_a_umask_077_trainer_writes_is_skipped_by_name_and_the_rest_still_syncs(pod_root, s3_env, store):
    run = pod_root / "run"
    run.mkdir()
    os.chmod(run, 0o777)  # an emptyDir
    sc = Sidecar(run, s3_env, {contract.SAVE: "**:live"}, pod_root, user=SIDECAR_UID).start()
    try:
        as_trainer(f"mkdir {run}/private && echo secret > {run}/private/a.bin && echo secret > {run}/top.bin", 0o077)
        as_trainer(f"echo ok > {run}/ok.txt && mkdir {run}/later && echo ok > {run}/later/b.txt", 0o022)

        reply = sc.flush(timeout=30)
        assert reply["durable"] is True
        assert reply["unreadable"] == ["private", "top.bin"]
        assert sorted(store.files()) == ["later/b.txt", "ok.txt"]  # the watcher went on after `private`
        assert sc.metric("runsync_unreadable_total", kind="dir") == 1
        assert sc.metric("runsync_unreadable_total", kind="file") == 1
        assert healthz(sc) == 200

        as_trainer(f"echo again > {run}/ok.txt", 0o022)
        assert sc.flush(timeout=30)["unreadable"] == ["private", "top.bin"]
        code, _ = sc.terminate()
        assert code == 0
        records = sc.log_records()
        skipped = sorted(r["path"] for r in records if r.get("msg") == "cannot read; skipped")
        assert skipped == ["private", "top.bin"]  # once each, though rescans and the final flush saw them
        assert not [r for r in records if r.get("msg") in ("upload failed; will retry", "worker failed")]
        assert store.latest().final
    finally:
        sc.stop()


def test_a_dead_watcher_fails_liveness(tmp_path, s3_env, bucket):
    run = tmp_path / "run"
    run.mkdir()
    layout = keys.Layout(keys.StoreURL.parse(f"s3://{bucket}/runs"), keys.RunPath.parse("team-a/proj/live"), "0")
    wired = runner.wire(str(run), layout, engine.Settings(), None, "holder")
    try:
        assert runner.alive(wired)
        wired.watcher.stop()  # the watcher thread ends, as it would on an error it cannot get past
        wait_for(lambda: not runner.alive(wired), what="liveness to fail")
    finally:
        wired.engine.worker.shutdown()
        wired.engine.committer.shutdown()
