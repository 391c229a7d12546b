"""durable.Index alone: a sqlite file of the durable entries that reads as a manifest's files,
advanced by a commit's changes only, kept only while it records the store's latest commit."""

from __future__ import annotations

import dataclasses
import json
import logging

from runsync import durable, keys
from runsync.entries import DEFAULT_MARKERS, FileEntry, Manifest, Overlay, settle

LAYOUT = keys.Layout(keys.StoreURL.parse("s3://bkt/p"), keys.RunPath.parse("t/p/r"), "0")


def entry(name: str, size: int = 3, crcs: tuple = ("AAAAAAAAAAA=",)) -> FileEntry:
    return FileEntry(name, LAYOUT.file_key(name, "a" * 64), size, 1, "", "live", 8 << 20, crcs)


def meta(seq: int, created: float = 1.0) -> Manifest:
    return Manifest(run="t/p/r", replica="0", seq=seq, created=created, files={}, epoch=2,
                    checkpoints={"ck": ("ck/a", "ck/.metadata")}, base=1, chain=seq - 1, requires=("k1",))


class Opened:  # the part of listing.Listing that adopt reads
    def __init__(self, m: Manifest, entries: list[FileEntry]):
        self.meta, self._entries, self.streamed = m, entries, 0

    def entries(self):
        self.streamed += 1
        return iter(self._entries)


def test_adopt_fills_then_a_reopened_index_reads_the_same(tmp_path):
    listed = [entry(f"d/f{i:05d}", size=i) for i in range(2500)] + [entry("e", crcs=())]
    index = durable.Index(tmp_path)
    m = index.adopt(Opened(meta(5), listed))
    assert m.seq == 5 and m.epoch == 2 and m.checkpoints == {"ck": ("ck/a", "ck/.metadata")} and m.requires == ("k1",)
    assert len(m.files) == 2501 and m.size == sum(e.size for e in listed) and m.files["d/f00007"] == listed[7] and m.files.get("nope") is None
    assert list(m.files) == sorted(e.name for e in listed) and list(index.entries(batch=100)) == sorted(
        listed, key=lambda e: e.name)
    index.close()

    again = durable.Index(tmp_path)
    same = Opened(meta(5), listed)
    assert again.adopt(same).files["e"] == listed[-1] and same.streamed == 0  # reused, not streamed
    other = Opened(meta(5, created=2.0), listed[:3])  # another commit numbered 5 (another store)
    assert len(again.adopt(other).files) == 3 and other.streamed == 1
    assert again.adopt(None) is None and len(again) == 0 and durable.Index(tmp_path).manifest() is None


def test_a_commit_writes_its_changes_only_and_settle_overlays_the_index(tmp_path):
    index = durable.Index(tmp_path)
    previous = index.adopt(Opened(meta(1), [entry("a"), entry("b"), entry("ck/a"), entry("ck/.metadata")]))
    files, units = settle(previous, [entry("c"), entry("a", size=9)], {"b"}, DEFAULT_MARKERS)
    assert isinstance(files, Overlay) and files.changed.keys() == {"a", "c"} and files.removed == {"b"}
    assert sorted(files) == ["a", "c", "ck/.metadata", "ck/a"] and len(files) == 4
    m = index.committed(dataclasses.replace(previous, seq=2, files=files, checkpoints=units))
    assert m.files is index and index.manifest().seq == 2 and index["a"].size == 9 and "b" not in index
    # the marker deleted: the checkpoint dir leaves whole, found by a range read
    files, units = settle(m, [], {"ck/.metadata"}, DEFAULT_MARKERS)
    assert sorted(files) == ["a", "c"] and units == {}
    index.committed(dataclasses.replace(m, seq=3, files=files, checkpoints=units))
    assert sorted(durable.Index(tmp_path)) == ["a", "c"]


def test_a_commit_not_settled_on_the_index_rebuilds_it(tmp_path):
    index = durable.Index(tmp_path)
    index.adopt(Opened(meta(1), [entry("a")]))
    merged = dataclasses.replace(meta(4), files={"x": entry("x")})  # after a conflict: a re-read manifest
    assert list(index.committed(merged).files) == ["x"] and index.manifest().seq == 4


def test_a_state_dir_that_cannot_hold_the_file_keeps_the_index_in_memory_and_says_so(tmp_path, caplog):
    (tmp_path / durable.FILE).mkdir()  # unopenable as a database, even for root (read-only, full disk alike)
    with caplog.at_level(logging.WARNING):
        index = durable.Index(tmp_path)
        m = index.adopt(Opened(meta(1), [entry("a")]))
    assert m.files["a"] == entry("a") and index.path is None
    warned = [r for r in caplog.records if "kept in memory" in r.getMessage()]
    assert warned and str(tmp_path / durable.FILE) in json.dumps(warned[0].fields)


def test_stats_read_many_names_at_once(tmp_path):
    index = durable.Index(tmp_path)
    index.adopt(Opened(meta(1), [entry(f"f{i:04d}", size=i) for i in range(1200)]))
    names = [f"f{i:04d}" for i in range(0, 1200, 2)] + ["absent"]
    assert index.stats(names, batch=100) == {**{n: (int(n[1:]), 1) for n in names[:-1]}, "absent": None}


def test_a_damaged_file_is_replaced_not_trusted(tmp_path):
    (tmp_path / durable.FILE).write_bytes(b"not a database" * 100)
    index = durable.Index(tmp_path)
    assert index.manifest() is None and index.path == tmp_path / durable.FILE
    index.adopt(Opened(meta(1), [entry("a")]))
    assert durable.Index(tmp_path).manifest().seq == 1


def test_a_commits_size_over_the_index_asks_about_its_changes_only(tmp_path):
    # runmeta and `sync`'s report read Manifest.size after each commit: over 1,000,000 durable
    # files, one changed file must not mean a query per name
    index = durable.Index(tmp_path)
    listed = [entry(f"f{i:04d}", size=i) for i in range(1000)]
    previous = index.adopt(Opened(meta(1), listed))
    files, _ = settle(previous, [entry("new", size=5000), entry("f0003", size=70)], {"f0010"}, DEFAULT_MARKERS)
    asked = []
    real = type(index).__getitem__
    try:
        type(index).__getitem__ = lambda self, name: asked.append(name) or real(self, name)
        size = dataclasses.replace(previous, seq=2, files=files).size
    finally:
        type(index).__getitem__ = real
    assert size == sum(range(1000)) - 3 - 10 + 70 + 5000 == sum(e.size for e in files.values())
    assert sorted(asked) == ["f0003", "f0010", "new"]


def test_marked_dirs_over_the_index_are_plans_over_every_name(tmp_path):
    """Rules.mark asks the index for the names that may be markers (one sqlite GLOB, a superset:
    its `*` also matches `/`, its classes differ) and plan decides: the same dirs as plan over
    every durable name, whatever the marker globs."""
    from runsync import globs, plan

    names = ["ck/.metadata", ".metadata", "a/b/trainer_state.json", "a/b.metadata", "x/y.done", "x/y/z.done.bak",
             "q/step-1.ok", "q/step-12.ok", "r/aready", "r/xready", "s/a[", "s/b/a[", "t/.hidden", "u/ünï/.metadata",
             "v/dir.done/file", "w/UPPER.DONE", "y/.done"] + [f"bulk/d{i // 100}/f{i}.pt" for i in range(1000)]
    index = durable.Index(tmp_path)
    index.adopt(Opened(meta(1), [entry(n) for n in sorted(names)]))
    for markers in (DEFAULT_MARKERS, ("*.done",), ("step-?.ok",), ("[!x]ready",), ("a[",), (".*",), ("*",),
                    ("b/a[",), ("*.DONE", "trainer_state.json")):
        markers = tuple(globs.Glob(m) for m in markers) if isinstance(markers[0], str) else markers
        every = plan.marked_dirs(names, markers)
        assert plan.marked_dirs(index.named_like(markers), markers) == every, markers
        if markers[0].pattern != "*":
            assert len(index.named_like(markers)) < 20  # a few candidates, not the 1,000 others
    assert index.named_like(()) == []


def test_named_like_of_a_literal_is_every_name(tmp_path):
    """A Literal's `[` is a character, not a class: no GLOB is made of it (every name is a candidate)."""
    from runsync import globs

    index = durable.Index(tmp_path)
    index.adopt(Opened(meta(1), [entry("a/w[1].pt"), entry("b/x")]))
    assert index.named_like((globs.Literal("w[1].pt"),)) == ["a/w[1].pt", "b/x"]
