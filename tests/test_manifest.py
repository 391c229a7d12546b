"""manifest.settle: what the next manifest holds when a checkpoint dir is partly deleted."""

import dataclasses
import json

from runsync import manifest, plan
from runsync.globs import Glob
from runsync.manifest import FileEntry, Manifest

MARKERS = (Glob(".metadata"),)
STEP8 = ("ckpt/step-8/.metadata", "ckpt/step-8/a.distcp", "ckpt/step-8/b.distcp")


def entry(name, sha="0"):
    return FileEntry(name, "k/" + name, 1, 1, sha * 64)


def committed(*names, checkpoints=None):
    return Manifest("ns/p/r", "0", 1, 0.0, {n: entry(n) for n in names}, checkpoints=checkpoints or {})


# previous files, removed, changes → files after, units after
ROWS = [
    ("a shard gone, the marker stays: the dir stays whole",
     STEP8 + ("last.pt",), {"ckpt/step-8/a.distcp", "last.pt"}, (), STEP8, {"ckpt/step-8": STEP8}),
    ("the marker gone: every name under the dir leaves",
     STEP8, {"ckpt/step-8/.metadata"}, (), (), {}),
    ("held shards leave with the marker later",
     STEP8, {"ckpt/step-8/.metadata", "ckpt/step-8/b.distcp"}, (), (), {}),
    ("a new dir with its marker becomes a unit",
     (), set(), STEP8, STEP8, {"ckpt/step-8": STEP8}),
    ("a file outside any dir is removed as before",
     ("notes.txt",) + STEP8, {"notes.txt"}, (), STEP8, {"ckpt/step-8": STEP8}),
    ("a marker-less dir is no unit: its files leave one by one",
     ("ckpt/step-9/a.distcp", "ckpt/step-9/b.distcp"), {"ckpt/step-9/a.distcp"}, (), ("ckpt/step-9/b.distcp",), {}),
]


def test_settle_keeps_checkpoint_dirs_whole():
    for what, before, removed, changes, after, units in ROWS:
        files, got_units = manifest.settle(committed(*before), [entry(n) for n in changes], removed, MARKERS)
        assert tuple(sorted(files)) == tuple(sorted(after)), what
        assert got_units == units, what


def test_a_dir_held_in_a_manifest_other_than_as_committed_is_not_restored():
    torn = committed("ckpt/step-8/.metadata", "ckpt/step-8/b.distcp", "ckpt/step-9/.metadata",
                     checkpoints={"ckpt/step-8": STEP8, "ckpt/step-9": ("ckpt/step-9/.metadata",)})
    p = plan.for_restore({"0": torn}, MARKERS)
    assert p.incomplete == ("ckpt/step-8",)
    assert sorted(p.files) == ["ckpt/step-9/.metadata"]
    # A single file asked for by name is still checked against its whole dir.
    assert plan.for_restore({"0": torn}, MARKERS, (Glob("ckpt/step-8/.metadata"),)).files == {}


def test_checkpoint_units_round_trip_and_are_checked(tmp_path):
    from runsync import keys

    layout = keys.Layout(keys.StoreURL.parse("s3://bucket/p"), keys.RunPath.parse("ns/p/r"), "0")
    good = dataclasses.replace(committed(*STEP8, checkpoints={"ckpt/step-8": STEP8}),
                               files={n: FileEntry(n, layout.replica_prefix + "files/" + n, 1, 1, "0" * 64)
                                      for n in STEP8})
    back = Manifest.from_json(good.to_json(), layout, "m")
    assert back.checkpoints == {"ckpt/step-8": STEP8}
    doc = json.loads(good.to_json())
    doc["checkpoints"]["ckpt/step-8"][1] = "elsewhere/a.distcp"
    bad = json.dumps(doc).encode()
    try:
        Manifest.from_json(bad, layout, "m")
    except Exception as err:  # noqa: BLE001
        assert "names outside it" in str(err)
    else:
        raise AssertionError("a unit naming files outside its dir was accepted")
