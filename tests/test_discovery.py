"""Discovery (the latest valid manifest of every replica) against a real SeaweedFS: the one LIST
of the run and the per-replica LISTs it falls back to past that page find what reading each
replica alone finds (`manifest.latest`: the fenced-off manifests skipped)."""

from __future__ import annotations

import collections

import pytest

from runsync import discovery, keys, lease, manifest

pytestmark = pytest.mark.s3


def _commit(s3, layout: keys.Layout, holder: str, count: int) -> lease.Held:
    held = lease.acquire(s3, layout, holder, wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    previous = manifest.latest(s3, layout)
    for i in range(count):
        key = layout.file_key(f"f{i}.txt", f"{i:064x}")
        s3.put_object(Bucket=layout.store.bucket, Key=key, Body=b"x")
        entry = manifest.FileEntry(f"f{i}.txt", key, 1, 1, f"{i:064x}", "live")
        previous = manifest.commit_next(s3, layout, previous, [entry], final=False, writer=holder,
                                        epoch=held.lease.epoch)
    return held


@pytest.fixture
def wide_run(store):
    """Replicas whose keys interleave in LIST order ("1/" < "10/" < "2/"), several manifests each,
    one fenced-off manifest in replica 10, a replica with no manifest and run-level objects."""
    s3, run = store.client, keys.RunPath.parse("team-a/proj/wide")
    layout_of = lambda r: keys.Layout(store.layout.store, run, r)  # noqa: E731
    for replica, count in (("0", 3), ("1", 2), ("10", 2), ("2", 4), ("3", 1)):
        held = _commit(s3, layout_of(replica), f"w-{replica}", count)
        lease.renew(s3, layout_of(replica), held, state="released")
    _commit(s3, layout_of("10"), "w-10b", 0)  # a new writer takes replica 10 over...
    old = manifest.latest(s3, layout_of("10"))
    manifest.commit(s3, layout_of("10"), old, [], final=True, writer="w-10", epoch=old.epoch,
                    removed=list(old.files), seq=old.seq + 1)  # ...and the old one commits anyway
    lease.acquire(s3, layout_of("4"), "w-4", wait=0, max_seq=lambda: 0)  # a lease, never a commit
    s3.put_object(Bucket=store.layout.store.bucket, Key=layout_of("0").run_metadata_key, Body=b"{}")
    s3.put_object(Bucket=store.layout.store.bucket, Key=layout_of("0").code_key("git.json"), Body=b"{}")
    return s3, store.layout.store, run


def _seen(found: dict[str, manifest.Manifest]) -> dict[str, tuple[int, int, int]]:
    return {r: (m.seq, m.epoch, len(m.files)) for r, m in found.items()}


@pytest.mark.parametrize("page", [1, 2, 3, 5, 8, 13, 1000])
def test_every_page_size_finds_what_each_replica_alone_finds(wide_run, monkeypatch, page):
    s3, store, run = wide_run
    expected = {r: m for r in manifest.replicas(s3, store, run)
                if (m := manifest.latest(s3, keys.Layout(store, run, r))) is not None}
    assert _seen(expected) == {"0": (3, 1, 3), "1": (2, 1, 2), "10": (2, 1, 2), "2": (4, 1, 4), "3": (1, 1, 1)}
    monkeypatch.setattr(discovery, "PAGE", page)
    assert _seen(discovery.latest_by_replica(s3, store, run)) == _seen(expected)


def test_a_run_in_one_page_takes_one_list_and_two_gets_per_replica(wide_run):
    s3, store, run = wide_run
    counts: collections.Counter = collections.Counter()
    s3.meta.events.register("before-call.s3", lambda model, **_: counts.update([model.name]))
    found = discovery.latest_by_replica(s3, store, run)
    assert len(found) == 5
    # 5 leases, 5 latest manifests and replica 10's fenced-off one; replica 4 has no manifest to read.
    assert counts == {"ListObjectsV2": 1, "GetObject": 5 + 5 + 1}
