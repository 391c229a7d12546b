"""The writer lease of a real sidecar against SeaweedFS (issue 17): an idle sidecar makes no S3
request at all, and a successor takes an idle replica over at once while fencing still holds."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from harness import Sidecar, describes, restore_init, sha, wait_for

from runsync import contract, keys, lease
from runsync_testing import s3count

pytestmark = [pytest.mark.s3, pytest.mark.slow]

WINDOW = 20.0
"""Seconds watched after the sidecar reports idle: four renewals of a 5 s heartbeat would fall in it."""


def lease_of(s3_client, s3_env) -> lease.Lease | None:
    layout = keys.Layout(keys.StoreURL.parse(s3_env["RUNSYNC_STORE"]), keys.RunPath.parse("team-a/proj/run-1"), "0")
    return lease.read(s3_client, layout)[0]


def idle_sidecar(tmp_path, s3_env, s3_client, holder: str, extra_env: dict[str, str] | None = None) -> Sidecar:
    """A sidecar that committed `a.txt` and then reported idle in its lease."""
    run_dir = tmp_path / holder
    run_dir.mkdir()
    sc = Sidecar(run_dir, s3_env, {contract.SAVE: "**:live"}, tmp_path,
                 extra_env={contract.ENV_HOLDER: holder, **(extra_env or {})}).start()
    (run_dir / "a.txt").write_text("committed before going idle")
    assert sc.flush()["durable"] is True
    wait_for(lambda: (lease_of(s3_client, s3_env) or lease.Lease("", 0, 0)).state == "idle", timeout=120,
             what="the lease to say idle")
    return sc


def test_an_idle_sidecar_makes_no_s3_request(tmp_path, s3_env, s3_client, store):
    counts = tmp_path / "counts.json"
    sc = idle_sidecar(tmp_path, s3_env, s3_client, "pod-a", s3count.environ(counts, tmp_path, live=True))
    try:
        before = s3count.read(counts)
        watched_until = time.monotonic() + WINDOW
        while time.monotonic() < watched_until:  # the sidecar keeps answering all along
            assert sc.status()["loaded"]
            time.sleep(0.5)
        assert s3count.read(counts) == before, "requests made while idle"
        assert lease_of(s3_client, s3_env).state == "idle"

        # The next change wakes it: the lease is active again and the file is committed.
        (tmp_path / "pod-a" / "b.txt").write_text("after idle")
        assert sc.flush()["durable"] is True
        assert describes(store.files()["b.txt"], b"after idle")
    finally:
        sc.stop()


def test_a_successor_takes_an_idle_replica_at_once_and_fences_the_old_writer(tmp_path, s3_env, s3_client, store):
    old = idle_sidecar(tmp_path, s3_env, s3_client, "pod-a")
    try:
        taken_from = lease_of(s3_client, s3_env)
        # A wait bound of 30 + 15 s: an active holder's heartbeat would hold the new pod that long.
        result = restore_init(s3_env, tmp_path / "new", {}, tmp_path, holder="pod-b", grace=30)
        assert result.returncode == 0, result.stdout + result.stderr
        logs = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert not any(r.get("msg", "").startswith("waiting for the previous") for r in logs)
        now = lease_of(s3_client, s3_env)
        assert (now.holder, now.epoch) == ("pod-b", taken_from.epoch + 1)
        assert (tmp_path / "new" / "a.txt").read_text() == "committed before going idle"
        committed = store.latest()

        (tmp_path / "pod-a" / "b.txt").write_text("after the takeover")
        code, doc = old._call("POST", "/flush", {"timeout": 5})
        assert code == 504 or doc.get("durable") is not True
        wait_for(lambda: any("fenced" in r.get("msg", "") for r in old.log_records()), timeout=60,
                 what="the old writer to say it was fenced")
        assert "b.txt" not in store.files()
        assert store.latest().seq == committed.seq
    finally:
        old.stop()


def test_the_lease_beats_through_a_final_flush_longer_than_its_ttl(tmp_path, s3_env, s3_client, store):
    """Every request of the old pod waits 4 s (a slow store): its final flush (create, parts,
    complete, commit) takes longer than the lease's 15 s ttl. The new pod still waits for it and
    restores the `end` file, because the heartbeat goes on through the final flush."""
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    slow = s3count.environ(tmp_path / "counts.json", tmp_path, latency_ms=4000)
    old = Sidecar(old_dir, s3_env, {contract.SAVE: "final/*:end"}, tmp_path, grace=120,
                  extra_env={contract.ENV_HOLDER: "pod-a", "RUNSYNC_CRT": "0", **slow}).start()
    try:
        (old_dir / "final").mkdir()
        data = os.urandom(48 * 1024 * 1024)
        (old_dir / "final/model.pt").write_bytes(data)  # only uploaded at the end
        terminated = time.time()
        old.proc.send_signal(signal.SIGTERM)
        # Renewed as `active` since SIGTERM (an idle mark may have been on its way before it).
        wait_for(lambda: (lambda l: l.state == "active" and l.heartbeat >= terminated)(lease_of(s3_client, s3_env)),
                 timeout=60, what="the old pod's lease to say it is ending")
        result = restore_init(s3_env, tmp_path / "new", {}, tmp_path, holder="pod-b", grace=120, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        assert old.proc.wait(120) == 0
        assert (tmp_path / "new/final/model.pt").exists(), result.stdout[-4000:] + "\n---OLD---\n" + old.logs()[-6000:]
        assert sha((tmp_path / "new/final/model.pt").read_bytes()) == sha(data)
        assert any(json.loads(line).get("msg") == "waiting for the previous pod to finish its final flush"
                   for line in result.stdout.splitlines() if line.startswith("{"))
    finally:
        old.stop()


def test_a_one_shot_writer_keeps_its_lease_fresh_while_it_uploads(s3_client, s3_env):
    """`runsync sync` holds the lease while it uploads (gc spares a held replica's objects no
    commit names yet): the heartbeat moves on, and the last renewal is the one it commits with."""
    layout = keys.Layout(keys.StoreURL.parse(s3_env["RUNSYNC_STORE"]), keys.RunPath.parse("team-a/proj/run-1"), "0")
    held = lease.acquire(s3_client, layout, "sync@test", wait=0, max_seq=lambda: 0, ttl=0.9, take_live=False)
    beating = lease.Beating(s3_client, layout, held)
    beating.start()
    try:
        wait_for(lambda: lease_of(s3_client, s3_env).heartbeat > held.lease.heartbeat, what="a renewal")
    finally:
        last = beating.stop()
    assert last.etag != held.etag
    released = lease.renew(s3_client, layout, last, state="released")  # its ETag is the stored one
    assert lease_of(s3_client, s3_env) == released.lease
