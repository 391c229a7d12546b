"""A replica's history against a real SeaweedFS, from the outside (`runsync sync`, `ls`, `restore`):
a commit costs the same whatever the history behind it (no LIST of the manifests per commit:
`head.json` names the latest), and a head that lags behind a commit, or no head at all (format 1),
still gives the latest commit."""

from __future__ import annotations

import time

import pytest

from runsync import keys, lease, manifest
from runsync_testing import s3count

pytestmark = pytest.mark.s3

RUN = "team-a/proj/long"


def _history(store, commits: int) -> keys.Layout:
    """`commits` commits of one file each, by the product's lease and manifest code, lease released."""
    s3, layout = store.client, keys.Layout(store.layout.store, keys.RunPath.parse(RUN), "0")
    held = lease.acquire(s3, layout, "trainer", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    previous = None
    for i in range(commits):
        key = layout.file_key(f"step-{i}.txt", f"{i:064x}")
        s3.put_object(Bucket=layout.store.bucket, Key=key, Body=b"x")
        entry = manifest.FileEntry(f"step-{i}.txt", key, 1, time.time_ns(), f"{i:064x}", "live")
        previous = manifest.commit_next(s3, layout, previous, [entry], final=False, writer="trainer",
                                        epoch=held.lease.epoch)
    lease.renew(s3, layout, held, state="released")
    return layout


def test_a_commit_after_300_commits_sends_no_list_of_the_history(tmp_path, cli, store, monkeypatch):
    layout = _history(store, 300)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("one more commit")
    counts = tmp_path / "counts.json"
    result = cli("sync", str(run_dir), "--run", RUN, env={**cli.env, **s3count.environ(counts, tmp_path)})

    assert result.returncode == 0, result.stdout + result.stderr
    assert manifest.latest(store.client, layout).seq == 301
    requests = s3count.read(counts)
    # The one LIST is check_store's (can these credentials list the bucket), once per process.
    assert requests.get("ListObjectsV2", 0) == 1, requests


def _ls(cli) -> set[str]:
    result = cli("ls", RUN)
    assert result.returncode == 0, result.stdout + result.stderr
    return {name for name in (f"step-{i}.txt" for i in range(5)) if name in result.stdout}


def test_a_head_that_lags_behind_a_commit_still_gives_the_latest(cli, store):
    layout = _history(store, 3)
    s3, bucket = store.client, layout.store.bucket
    head_key = layout.replica_prefix + "head.json"
    stale = s3.get_object(Bucket=bucket, Key=head_key)["Body"].read()
    _history_more(store, layout, 2)  # commits 4 and 5; then the head goes back, as if never written
    s3.put_object(Bucket=bucket, Key=head_key, Body=stale)

    assert _ls(cli) == {f"step-{i}.txt" for i in range(5)}


def test_a_replica_without_a_head_is_read_as_before(cli, store):
    """Format 1 replicas have no head.json: their manifests are listed."""
    layout = _history(store, 4)
    store.client.delete_object(Bucket=layout.store.bucket, Key=layout.replica_prefix + "head.json")

    assert _ls(cli) == {f"step-{i}.txt" for i in range(4)}


def _history_more(store, layout: keys.Layout, commits: int) -> None:
    s3 = store.client
    held = lease.acquire(s3, layout, "trainer-2", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    previous = manifest.latest(s3, layout)
    for i in range(previous.seq, previous.seq + commits):
        key = layout.file_key(f"step-{i}.txt", f"{i:064x}")
        s3.put_object(Bucket=layout.store.bucket, Key=key, Body=b"x")
        entry = manifest.FileEntry(f"step-{i}.txt", key, 1, time.time_ns(), f"{i:064x}", "live")
        previous = manifest.commit_next(s3, layout, previous, [entry], final=False, writer="trainer-2",
                                        epoch=held.lease.epoch)
    lease.renew(s3, layout, held, state="released")
