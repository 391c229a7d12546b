"""The committer against a real SeaweedFS: it takes the replica's lease, commits manifests in
order, and stops for good once another pod takes the lease."""

from __future__ import annotations

import queue

import pytest

from harness import wait_for
from runsync import head, keys, lease, manifest, messages, statedir, transfer
from runsync.committer import Committer
from runsync.metrics import Metrics
from prometheus_client import CollectorRegistry

pytestmark = pytest.mark.s3


@pytest.fixture
def layout(s3_env):
    return keys.Layout(keys.StoreURL.parse(s3_env["RUNSYNC_STORE"]), keys.RunPath.parse("team-a/proj/run-1"), "0")


@pytest.fixture
def make(s3_env, layout, tmp_path):
    made = []

    def committer(holder: str, lease_wait: float = 30.0) -> tuple[Committer, queue.Queue]:
        s3 = transfer.client()
        inbox: queue.Queue = queue.Queue()
        c = Committer(s3, layout, transfer.Transfers(s3, layout.store), statedir.StateDir(tmp_path / holder),
                      Metrics(CollectorRegistry()), inbox.put, holder, lease_wait)
        made.append(c)
        return c, inbox

    yield committer
    for c in made:
        c.shutdown()


def entry(layout, name: str, sha: str = "a" * 64) -> manifest.FileEntry:
    return manifest.FileEntry(name, layout.file_key(name, sha), 3, 1, sha, "live")


def test_load_then_commits_in_order_and_head_json_follows(make, layout, tmp_path):
    c, inbox = make("pod-a")
    c.load()
    loaded = inbox.get(timeout=60)
    assert isinstance(loaded, messages.Loaded) and loaded.manifest is None
    assert c.holding and not c.fenced

    one = {"a.txt": entry(layout, "a.txt")}
    c.commit(None, one, set(), [("a.txt", 1, 0.0)])
    first = inbox.get(timeout=60)
    assert isinstance(first, messages.Committed) and first.error == ""
    assert first.manifest.seq == 1 and set(first.manifest.files) == {"a.txt"}
    assert first.tokens == [("a.txt", 1, 0.0)]

    c.commit(first.manifest, {"b.txt": entry(layout, "b.txt", "b" * 64)}, {"a.txt"}, [])
    second = inbox.get(timeout=60).manifest
    assert second.seq == 2 and set(second.files) == {"b.txt"}          # a.txt removed
    # head.json after the answer (a flush never waits on it), so that readers need no LIST
    s3 = transfer.client()
    wait_for(lambda: head.latest_seq(s3, layout) == 2, what="head.json naming manifest 2")


def test_a_new_pod_takes_the_lease_and_the_old_committer_is_fenced_for_good(make, layout):
    old, old_inbox = make("pod-a")
    old.load()
    assert isinstance(old_inbox.get(timeout=60), messages.Loaded)

    new, new_inbox = make("pod-b", lease_wait=0)  # a pod that does not wait for the old one
    new.load()
    assert isinstance(new_inbox.get(timeout=60), messages.Loaded)

    old.commit(None, {"a.txt": entry(layout, "a.txt")}, set(), [("a.txt", 1, 0.0)])
    refused = old_inbox.get(timeout=60)
    assert refused.manifest is None and "taken by pod-b" in refused.error
    assert old.fenced

    final = new.commit_final(None, {"b.txt": entry(layout, "b.txt")}, set(), timeout=60)
    assert final.final and set(final.files) == {"b.txt"}
    assert manifest.latest(transfer.client(), layout).seq == final.seq
    held, _ = lease.read(transfer.client(), layout)
    assert held.holder == "pod-b" and held.state == "released"   # the next pod need not wait


def test_a_final_commit_that_answers_late_is_never_recorded_as_failed(s3_env, layout, tmp_path):
    """The final commit waits behind a slow task on the committer's thread (a heartbeat against
    a slow store) past its timeout, then commits: the run's metadata must not say `failed` for
    a replica whose final manifest is in the store."""
    import json
    import threading

    from runsync import runmeta

    s3 = transfer.client()
    inbox: queue.Queue = queue.Queue()
    c = Committer(s3, layout, transfer.Transfers(s3, layout.store), statedir.StateDir(tmp_path / "pod-a"),
                  Metrics(CollectorRegistry()), inbox.put, "pod-a", 30.0,
                  meta=runmeta.Recorder(s3, layout, runmeta.Facts(writer="sidecar@pod-a")))
    try:
        c.load()
        assert isinstance(inbox.get(timeout=60), messages.Loaded)
        slow = threading.Event()
        c._thread.submit(slow.wait)  # the committer's one thread, busy
        assert c.final(None, {"a.txt": entry(layout, "a.txt")}, set(), True, timeout=0.5) is None
        slow.set()
        c._thread.submit(lambda: None).result(timeout=60)  # everything queued before has run
        latest = manifest.latest(s3, layout)
        assert latest is not None and latest.final  # it did commit, late
        replica = json.loads(s3.get_object(Bucket=layout.store.bucket, Key=layout.replica_metadata_key)["Body"].read())
        run, _ = runmeta.read_run(s3, layout.store, layout.run)
        assert replica["status"] != "failed" and run["status"] != "failed", (replica, run)
    finally:
        c.shutdown()
