"""A replica's history against a real SeaweedFS, from the outside (`runsync sync`, `ls`, `restore`):
a commit costs the same whatever the history behind it (no LIST of the manifests per commit:
`head.json` names the latest), and a head that lags behind a commit, or no head at all (format 1),
still gives the latest commit."""

from __future__ import annotations

import hashlib
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


# ---------------------------------------------------------------- format 2: bases and deltas

def _records(store, layout: keys.Layout) -> dict[int, dict]:
    """The commit records as stored, by number."""
    import json

    return {seq: json.loads(store.read(key)) for key in store.keys() if (seq := layout.manifest_seq(key)) is not None}


def _commit_files(store, layout: keys.Layout, steps: list[tuple[dict[str, bytes], list[str]]]) -> None:
    """One commit per step (files written, names removed), by the product's lease and manifest code."""
    import hashlib

    s3 = store.client
    held = lease.acquire(s3, layout, "trainer", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    previous = manifest.latest(s3, layout)
    for written, removed in steps:
        entries = []
        for name, data in written.items():
            digest = hashlib.sha256(data).hexdigest()
            key = layout.file_key(name, digest)
            s3.put_object(Bucket=layout.store.bucket, Key=key, Body=data)
            entries.append(manifest.FileEntry(name, key, len(data), time.time_ns(), digest, "live"))
        previous = manifest.commit_next(s3, layout, previous, entries, final=False, writer="trainer",
                                        epoch=held.lease.epoch, removed=removed)
    lease.renew(s3, layout, held, state="released")


def _ten_commits(store, monkeypatch) -> tuple[keys.Layout, dict[str, bytes]]:
    """Ten commits that write, rewrite and remove files, a base every 4 deltas; the files of the last."""
    from runsync import records

    monkeypatch.setattr(records, "BASE_EVERY", 4)
    monkeypatch.setattr(records, "SMALL", 0)  # these few files as a large listing is written: chunks and deltas
    layout = keys.Layout(store.layout.store, keys.RunPath.parse(RUN), "0")
    expected: dict[str, bytes] = {}
    steps = []
    for i in range(10):
        written = {f"step-{i}.txt": f"step {i}".encode(), "latest.txt": f"latest {i}".encode()}
        removed = [f"step-{i - 3}.txt"] if i >= 3 else []
        expected.update(written)
        for name in removed:
            expected.pop(name)
        steps.append((written, removed))
    _commit_files(store, layout, steps)
    return layout, expected


def test_commits_leave_deltas_and_a_summary_and_restore_gives_the_latest(tmp_path, cli, store, monkeypatch):
    from harness import tree

    layout, expected = _ten_commits(store, monkeypatch)

    records = _records(store, layout)
    assert {seq: r["kind"] for seq, r in records.items()} == {1: "base", **{seq: "delta" for seq in range(2, 11)}}
    # the 5th delta folds the 4 before it (read from the base and itself, as are those after it
    # up to the next summary), and so on
    assert (records[6]["prev"], records[6]["summary"], records[6]["chain"]) == (1, 6, 1)
    assert (records[7]["prev"], records[7]["summary"], records[7]["chain"]) == (6, 6, 2)
    assert (records[10]["prev"], records[10]["summary"], records[10]["chain"]) == (1, 10, 1)
    assert "summary" not in records[5] and records[5]["prev"] == 4
    result = cli("restore", RUN, "--to", str(tmp_path / "out"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert tree(tmp_path / "out") == expected
    listing = cli("ls", RUN)
    assert listing.returncode == 0, listing.stderr
    assert {n for n in (f"step-{i}.txt" for i in range(10)) if n in listing.stdout} == \
        {n for n in expected if n.startswith("step-")}
    by_name = cli("restore", RUN, "step-2.txt", "--to", str(tmp_path / "old"))  # removed at commit 6: history
    assert by_name.returncode == 0, by_name.stdout + by_name.stderr
    assert (tmp_path / "old/step-2.txt").read_bytes() == b"step 2"


def test_a_commit_after_one_changed_file_in_5000_writes_a_small_record(tmp_path, cli, store):
    run_dir = tmp_path / "run"
    (run_dir / "data").mkdir(parents=True)
    for i in range(5000):
        (run_dir / "data" / f"{i:05d}.txt").write_text(f"file {i}")
    assert cli("sync", str(run_dir), "--run", RUN).returncode == 0
    (run_dir / "data/00042.txt").write_text("changed")
    result = cli("sync", str(run_dir), "--run", RUN)
    assert result.returncode == 0, result.stdout + result.stderr

    layout = keys.Layout(store.layout.store, keys.RunPath.parse(RUN), "0")
    records = _records(store, layout)
    assert records[1]["kind"] == "base" and records[2]["kind"] == "delta"
    size = store.client.head_object(Bucket=layout.store.bucket, Key=layout.manifest_key(2))["ContentLength"]
    assert size < 2048, size  # one entry, not 5,000
    assert not [k for k in store.keys() if k.startswith(layout.manifests_prefix + "000000000002.base/")]
    assert manifest.latest(store.client, layout).files["data/00042.txt"].size == len("changed")


def test_a_format_1_run_restores_and_continues_in_format_2(tmp_path, cli, store):
    import hashlib

    from harness import tree

    s3, layout = store.client, keys.Layout(store.layout.store, keys.RunPath.parse(RUN), "0")
    entries = {}
    for name in ("a.txt", "b.txt"):
        data, digest = name.encode(), hashlib.sha256(name.encode()).hexdigest()
        key = layout.file_key(name, digest)
        s3.put_object(Bucket=layout.store.bucket, Key=key, Body=data)
        entries[name] = manifest.FileEntry(name, key, len(data), 1, digest)
    old = manifest.Manifest(str(layout.run), "0", 1, time.time(), entries, final=True, writer="format-1")
    s3.put_object(Bucket=layout.store.bucket, Key=layout.manifest_key(1), Body=old.to_json())  # as format 1 wrote it
    assert b'"format": 1' in old.to_json()

    first = cli("restore", RUN, "--to", str(tmp_path / "first"))
    assert first.returncode == 0, first.stdout + first.stderr
    assert tree(tmp_path / "first") == {"a.txt": b"a.txt", "b.txt": b"b.txt"}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "c.txt").write_text("c")
    assert cli("sync", str(run_dir), "--run", RUN).returncode == 0
    assert _records(store, layout)[2]["format"] == 2 and _records(store, layout)[2]["kind"] == "base"
    after = cli("restore", RUN, "--to", str(tmp_path / "after"))
    assert after.returncode == 0, after.stdout + after.stderr
    assert tree(tmp_path / "after") == {"a.txt": b"a.txt", "b.txt": b"b.txt", "c.txt": b"c"}


def test_gc_keeps_the_chain_a_kept_commit_needs(tmp_path, cli, store, monkeypatch):
    from harness import tree

    layout, expected = _ten_commits(store, monkeypatch)
    result = cli("gc", RUN, "--keep", "1", "--min-age", "0")
    assert result.returncode == 0, result.stdout + result.stderr

    left = _records(store, layout)
    assert sorted(left) == [1, 10]  # the latest (a summary) and its base
    assert [k for k in store.keys() if k.startswith(layout.manifests_prefix + "000000000001.base/")]
    restored = cli("restore", RUN, "--to", str(tmp_path / "out"))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert tree(tmp_path / "out") == expected


def test_gc_reads_each_record_and_each_base_once(tmp_path, cli, store, monkeypatch):
    """gc judges every commit, but reads each record and each base's chunks once: resolving
    every delta on its own re-read its base and chain (here 40 GETs; at a commit a second, a
    day's history times the run's files)."""
    import json

    layout, _ = _ten_commits(store, monkeypatch)
    manifest_keys = [k for k in store.keys() if k.startswith(layout.manifests_prefix)]
    assert len(manifest_keys) == 11  # 10 records, the base's chunk
    counts = tmp_path / "counts.json"
    result = cli("gc", RUN, "--keep", "1", "--min-age", "0", "--dry-run", "--json",
                 env={**cli.env, **s3count.environ(counts, tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    # Besides the manifests: the lease (read when judging and again before deleting) and head.json.
    assert s3count.read(counts)["GetObject"] <= len(manifest_keys) + 3, s3count.read(counts)
    # and it still judges each one: the deltas the latest summary folded would go
    going = {d["key"] for d in json.loads(result.stdout)["deleted"] if d["kind"] == "manifest"}
    assert {layout.manifest_key(s) for s in range(2, 10)} == going


def test_a_chain_that_changes_a_quarter_of_its_base_gets_a_new_base(tmp_path, cli, store, monkeypatch):
    from harness import tree

    from runsync import records

    monkeypatch.setattr(records, "SMALL", 0)
    monkeypatch.setattr(records, "DELTA_FLOOR", 0)  # a quarter of 8 files: 2 entries
    layout = keys.Layout(store.layout.store, keys.RunPath.parse(RUN), "0")
    expected = {f"f{i}.txt": f"first {i}".encode() for i in range(8)}
    steps = [(dict(expected), [])]
    for i in range(6):  # a different file each commit: what changed since the base only grows
        steps.append(({f"f{i}.txt": f"second {i}".encode()}, []))
        expected[f"f{i}.txt"] = f"second {i}".encode()
    _commit_files(store, layout, steps)

    kinds = {seq: r["kind"] for seq, r in _records(store, layout).items()}
    assert kinds == {1: "base", 2: "delta", 3: "delta", 4: "base", 5: "delta", 6: "delta", 7: "base"}
    restored = cli("restore", RUN, "--to", str(tmp_path / "out"))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert tree(tmp_path / "out") == expected


# ------------------------------------------------- a long chain beside a large listing: summaries

def _big_base_then_one_file_a_commit(store, layout: keys.Layout, count: int, commits: int) -> list[manifest.FileEntry]:
    """A base of `count` entries (all pointing at one object), then `commits` commits that each
    change log.txt, as a sidecar beside a large run dir commits a log line a second. The log
    entries, in order (the i-th is what commit i + 2 holds)."""
    s3 = store.client
    key = layout.objects_prefix + "00000001/shared"
    s3.put_object(Bucket=layout.store.bucket, Key=key, Body=b"x")
    held = lease.acquire(s3, layout, "trainer", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    previous = manifest.commit_next(
        s3, layout, None, [manifest.FileEntry(f"data/{i:06d}.bin", key, 1, 1, "0" * 64, "live") for i in range(count)],
        final=False, writer="trainer", epoch=held.lease.epoch)
    logs = []
    for i in range(commits):
        logs.append(manifest.FileEntry("log.txt", key, 1, 1_000 + i, "0" * 64, "live"))
        previous = manifest.commit_next(s3, layout, previous, [logs[-1]], final=False, writer="trainer",
                                        epoch=held.lease.epoch)
    lease.renew(s3, layout, held, state="released")
    return logs


def test_a_long_chain_beside_a_large_listing_never_rewrites_the_listing(cli, store):
    """One changed file a commit for 140 commits beside 5,000 files: the listing is written once.
    A new base every 64 commits rewrote all of it (beside 1,000,000 files and a commit a second:
    ~270 MB every minute); the writer now folds its chain into one summary delta instead."""
    import json

    layout = keys.Layout(store.layout.store, keys.RunPath.parse(RUN), "0")
    logs = _big_base_then_one_file_a_commit(store, layout, 5000, 140)
    records = _records(store, layout)
    assert [seq for seq, r in sorted(records.items()) if r["kind"] == "base"] == [1]
    chunks = [k for k in store.keys() if k.startswith(layout.manifests_prefix) and layout.manifest_seq(k) is None]
    assert chunks and all(k.startswith(layout.manifests_prefix + "000000000001.base/") for k in chunks), chunks
    written = sum(len(store.read(layout.manifest_key(seq))) for seq in records if seq > 1)
    assert written < 140 * 2048, written  # O(changed): about a record of one entry per commit

    # Every commit still reads as what it committed: across summaries, around them, the latest.
    for seq in (2, 64, 65, 66, 67, 129, 130, 131, 141):
        m = manifest.read(store.client, layout, seq)
        assert len(m.files) == 5001 and m.files["log.txt"] == logs[seq - 2], seq
        assert m.files["data/004999.bin"].mtime_ns == 1 and "data/005000.bin" not in m.files
    listed = cli("ls", RUN, "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert len(rows) == 5001 and next(r for r in rows if r["name"] == "log.txt")["mtime"] == logs[-1].mtime_ns / 1e9

    # gc keeps what the latest needs (its base, the summary, the deltas since) and drops the rest.
    gc = cli("gc", RUN, "--keep", "1", "--min-age", "0")
    assert gc.returncode == 0, gc.stdout + gc.stderr
    left = sorted(_records(store, layout))
    assert left == [1, *range(130, 142)], left  # the base, the last summary (130) and the deltas since
    after = json.loads(cli("ls", RUN, "--json").stdout)
    assert after == rows


def test_a_base_over_the_durable_index_is_its_pages_merged_with_the_changes(tmp_path, store, monkeypatch):
    """The sidecar's next base, written from its sqlite index: the listing read back is the
    commit's exactly, and no list of every name was made (at 1,000,000 entries: ~100 MB and a
    query per name)."""
    from runsync import durable

    layout = keys.Layout(store.layout.store, keys.RunPath.parse(RUN), "0")
    s3 = store.client
    key = layout.objects_prefix + "00000001/shared"
    s3.put_object(Bucket=layout.store.bucket, Key=key, Body=b"x")
    entry = lambda name, t=1: manifest.FileEntry(name, key, 1, t, "0" * 64, "live")  # noqa: E731
    held = lease.acquire(s3, layout, "sidecar", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    first = [entry(f"d/{i:05d}") for i in range(3000)]
    manifest.commit_next(s3, layout, None, first, final=False, writer="sidecar", epoch=held.lease.epoch)
    index = durable.Index(tmp_path)
    previous = index.adopt(manifest.latest_listing(s3, layout))
    monkeypatch.setattr(durable.Index, "__iter__", lambda self: (_ for _ in ()).throw(AssertionError("every name")))
    changed = [entry(f"d/{i:05d}", 2) for i in range(0, 3000, 2)] + [entry("a-new"), entry("d/02999.5"), entry("z")]
    removed = {"d/00001", "d/02999"}
    top = manifest.commit_next(s3, layout, previous, changed, removed=removed, final=True, writer="sidecar",
                               epoch=held.lease.epoch)
    lease.renew(s3, layout, held, state="released")
    monkeypatch.undo()

    assert _records(store, layout)[top.seq]["kind"] == "base"
    expected = {e.name: e for e in first if e.name not in removed} | {e.name: e for e in changed}
    read = manifest.read(s3, layout, top.seq)
    assert list(read.files) == sorted(expected) and dict(read.files) == expected


def _chain_of(store, monkeypatch, steps, base_every: int = 4, floor: int | None = None) -> keys.Layout:
    from runsync import records

    monkeypatch.setattr(records, "BASE_EVERY", base_every)
    monkeypatch.setattr(records, "SMALL", 0)
    if floor is not None:
        monkeypatch.setattr(records, "DELTA_FLOOR", floor)
    layout = keys.Layout(store.layout.store, keys.RunPath.parse(RUN), "0")
    _commit_files(store, layout, steps)
    return layout


def test_a_fold_near_the_limit_gets_a_base_not_a_summary_every_commit(store, monkeypatch):
    # 40 files: a quarter is 10. Nine of them changed since the base is a summary of 9, which the
    # next two commits would push past 10 again: a summary rewritten every other commit. A base.
    base = {f"f{i:02d}.txt": b"v1" for i in range(40)}
    steps = [(base, []), ({f"f{i:02d}.txt": b"v2" for i in range(9)}, []), ({"f00.txt": b"v3"}, []),
             ({"f01.txt": b"v3"}, [])]
    layout = _chain_of(store, monkeypatch, steps, base_every=64, floor=0)
    assert {seq: r["kind"] for seq, r in _records(store, layout).items()} == {1: "base", 2: "delta", 3: "delta", 4: "base"}


def test_an_unreadable_chain_gets_a_base_and_the_writer_goes_on(tmp_path, cli, store, monkeypatch, caplog):
    from harness import tree

    # A writer that holds its last commit (the sidecar, in its index) while a link of its chain
    # is lost: the 5th delta would read the chain for a summary.
    from runsync import records

    monkeypatch.setattr(records, "BASE_EVERY", 4)
    monkeypatch.setattr(records, "SMALL", 0)
    s3, layout = store.client, keys.Layout(store.layout.store, keys.RunPath.parse(RUN), "0")
    held = lease.acquire(s3, layout, "sidecar", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    previous = None
    for name in ["a.txt", *(f"s{i}.txt" for i in range(4)), "b.txt"]:
        if previous is not None and previous.seq == 5:
            s3.delete_object(Bucket=layout.store.bucket, Key=layout.manifest_key(3))
        key = layout.file_key(name, "0" * 64)
        s3.put_object(Bucket=layout.store.bucket, Key=key, Body=name.encode())
        entry = manifest.FileEntry(name, key, len(name), time.time_ns(), hashlib.sha256(name.encode()).hexdigest(), "live")
        previous = manifest.commit_next(s3, layout, previous, [entry], final=False, writer="sidecar",
                                        epoch=held.lease.epoch)
    lease.renew(s3, layout, held, state="released")

    assert _records(store, layout)[6]["kind"] == "base"
    assert any("delta chain unreadable; writing a new base" in r.getMessage() for r in caplog.records)
    restored = cli("restore", RUN, "--to", str(tmp_path / "out"))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert tree(tmp_path / "out") == {n: n.encode() for n in ["a.txt", "b.txt", *(f"s{i}.txt" for i in range(4))]}


def test_checkpoint_dirs_come_and_go_across_a_summary(tmp_path, cli, store, monkeypatch):
    from harness import tree

    steps = [({"a.txt": b"a"}, []),
             ({"ck/1/x.distcp": b"x1", "ck/1/.metadata": b"m1"}, []),
             ({"ck/2/x.distcp": b"x2", "ck/2/.metadata": b"m2"}, []),
             ({}, ["ck/1/.metadata", "ck/1/x.distcp"]),  # the older checkpoint rotated away
             ({"log.txt": b"l"}, []),
             ({"ck/3/x.distcp": b"x3", "ck/3/.metadata": b"m3"}, [])]  # the 5th delta: a summary
    layout = _chain_of(store, monkeypatch, steps)
    records = _records(store, layout)
    assert records[6]["prev"] == 1 and records[6]["summary"] == 6
    m = manifest.read(store.client, layout, 6)
    assert {d: sorted(n) for d, n in m.checkpoints.items()} == {
        "ck/2": ["ck/2/.metadata", "ck/2/x.distcp"], "ck/3": ["ck/3/.metadata", "ck/3/x.distcp"]}
    restored = cli("restore", RUN, "--to", str(tmp_path / "out"))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert tree(tmp_path / "out") == {"a.txt": b"a", "log.txt": b"l", "ck/2/x.distcp": b"x2", "ck/2/.metadata": b"m2",
                                      "ck/3/x.distcp": b"x3", "ck/3/.metadata": b"m3"}


def test_a_fenced_off_writers_late_head_write_does_not_move_the_head_back(store):
    """gc leaves holes below the latest (the deltas a summary folded): a head moved back below
    one would stop readers' probe short, and a writer taking over there would fence off the
    commits above it. Each writer is a process of its own: its view of the head is its own."""
    from runsync import head

    s3, layout = store.client, keys.Layout(store.layout.store, keys.RunPath.parse(RUN), "0")

    def commit(previous, name: str, held, write_head: bool = True):
        key = layout.file_key(name, "0" * 64)
        s3.put_object(Bucket=layout.store.bucket, Key=key, Body=name.encode())
        entry = manifest.FileEntry(name, key, len(name), time.time_ns(), "0" * 64, "live")
        return manifest.commit_next(s3, layout, previous, [entry], final=False, writer=held.lease.holder,
                                    epoch=held.lease.epoch, write_head=write_head)

    head._seen.clear()  # writer A's process
    a = lease.acquire(s3, layout, "pod-a", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    previous = None
    for i in range(3):
        previous = commit(previous, f"a{i}.txt", a)
    late = commit(previous, "a3.txt", a, write_head=False)  # ... and A stops before its head PUT
    a_view = dict(head._seen)
    lease.renew(s3, layout, a, state="released")  # (as its lease would run out)

    head._seen.clear()  # writer C's process: takes over and commits
    c = lease.acquire(s3, layout, "pod-c", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    assert c.lease.took_over_from() == 4
    previous = manifest.latest(s3, layout)
    for i in range(2):
        previous = commit(previous, f"c{i}.txt", c)
    assert head.read(s3, layout).seq == 6

    head._seen.clear()
    head._seen.update(a_view)  # A wakes up and writes the head it owed
    head.write(s3, layout, late.seq, a.lease.epoch)
    assert head.read(s3, layout).seq == 6
    assert manifest.latest(s3, layout).seq == 6
