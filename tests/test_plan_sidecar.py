"""What the sidecar does with a file event: plan's tables (pure; no files, no clock)."""

import pytest

from runsync import config, plan
from runsync.config import Policy
from runsync.watch import LocalFile

CFG = config.parse({"runsync.dev/save": "ckpt/**:live, results/*:now, logs/*:end",
                    "runsync.dev/ignore": "*.tmp"})
ALL = config.parse({"runsync.dev/save": "ckpt/**:live", "runsync.dev/restore-replicas": "all"})


def unit(relpath, cfg=CFG, known=frozenset()):
    return plan.classify(cfg, (), relpath, set(known))[1]


@pytest.mark.parametrize("relpath, cfg, known, expected", [
    ("results/a.csv", CFG, (), plan.Unit.FILE),
    ("notes.md", CFG, (), plan.Unit.FILE),                          # no rule: its own path, at the end
    ("x.tmp", CFG, (), plan.Unit.IGNORED),
    ("ckpt/step-1/.metadata", CFG, (), plan.Unit.MARKER),           # a marker names its directory
    ("ckpt/step-1/shard.distcp", CFG, (), plan.Unit.MEMBER),        # a DCP shard: its dir waits for the marker
    ("ckpt/step-2/w.bin", CFG, ("ckpt/step-1",), plan.Unit.MEMBER), # a sibling of a known checkpoint dir
    ("out/checkpoint-7/w.bin", CFG, (), plan.Unit.MEMBER),          # Hugging Face's convention
    ("ckpt/w.bin", CFG, ("ckpt/step-1",), plan.Unit.FILE),
    ("ckpt/step-1/shard.distcp", ALL, (), plan.Unit.QUIET_MEMBER),  # another replica writes the marker
    ("ckpt/step-2/shard.distcp", ALL, ("ckpt/step-1",), plan.Unit.MEMBER),  # this one has seen markers
])
def test_what_a_file_event_is_part_of(relpath, cfg, known, expected):
    assert unit(relpath, cfg, known) is expected


def test_a_name_that_would_leave_the_run_dir_is_never_sent():
    d = plan.Decision("../escape", Policy.LIVE)
    assert plan.unit_of(d, False) is plan.Unit.UNSTORABLE
    assert "run dir" in plan.unstorable("../escape")
    assert plan.unstorable("ok/name") is None


S = plan.Step


@pytest.mark.parametrize("policy, ending, sent_once, uploading, retrying, expected", [
    # live: every complete version; a burst coalesces behind the one in flight
    (Policy.LIVE, False, False, False, False, S.UPLOAD),
    (Policy.LIVE, False, True, False, False, S.UPLOAD),
    (Policy.LIVE, False, True, True, False, S.COALESCE),
    (Policy.LIVE, False, True, False, True, S.JOIN_RETRY),
    # now: once
    (Policy.NOW, False, False, False, False, S.UPLOAD),
    (Policy.NOW, False, True, False, False, S.SKIP),
    (Policy.NOW, True, True, False, False, S.SKIP),
    # end: held while the run goes on, sent once it ends
    (Policy.END, False, False, False, False, S.HOLD),
    (Policy.END, False, True, True, False, S.HOLD),
    (Policy.END, True, False, False, False, S.UPLOAD),
    (Policy.END, True, False, True, False, S.COALESCE),
])
def test_when_a_complete_file_goes(policy, ending, sent_once, uploading, retrying, expected):
    assert plan.step(policy, ending=ending, sent_once=sent_once, uploading=uploading, retrying=retrying) is expected


U, R = plan.Unit, plan.Seen


@pytest.mark.parametrize("unit, known, settled, ending, expected", [
    (U.IGNORED, False, True, True, R.SKIP),
    (U.MEMBER, False, True, True, R.SKIP),          # goes with its marker, never alone
    (U.FILE, True, True, False, R.KNOWN),           # size and mtime as sent: not read again
    (U.FILE, False, True, False, R.READY),
    (U.FILE, False, False, False, R.WATCH),         # changed lately: looked at again after settle
    (U.FILE, False, False, True, R.READY),          # the end takes every file as it is
    (U.MARKER, False, False, False, R.WATCH),
    (U.QUIET_MEMBER, False, False, True, R.DIR_AT_END),
    (U.QUIET_MEMBER, False, True, False, R.READY),
    (U.QUIET_MEMBER, True, True, True, R.KNOWN),
])
def test_what_a_rescan_does_with_a_file(unit, known, settled, ending, expected):
    assert plan.on_rescan(unit, known=known, settled=settled, ending=ending) is expected


def local(relpath, mtime_s, size=1):
    return LocalFile(relpath, "/run/" + relpath, size, int(mtime_s * 1e9))


NOW = 1000.0
FILES = [local("ckpt/step-1/.metadata", 900), local("ckpt/step-1/w.bin", 899), local("logs/a", 999),
         local("results/new.csv", 998), local("results/old.csv", 100), local("x.tmp", 100)]


def test_a_rescan_takes_what_settled_watches_what_did_not_and_skips_what_was_sent():
    sent = {"results/old.csv": (1, int(100 * 1e9))}
    found = plan.rescan(CFG, (), set(), FILES, lambda relpath, name: (sent.get(relpath),), NOW, 5.0, False)
    # the marker makes its dir a checkpoint dir: w.bin goes with it, not alone
    assert found.ready == [("ckpt/step-1/.metadata", 900.0)]
    assert [f.relpath for f in found.watch] == ["logs/a", "results/new.csv"]
    assert found.known == []  # sent under its own path as it is now: not even classified
    assert found.dirs_at_end == {}


def test_a_rescan_leaves_a_file_being_uploaded_as_it_is_to_its_upload():
    as_handed_out = {"ckpt/step-1/.metadata": (1, int(900e9)), "results/new.csv": (1, int(998e9)),
                     "results/old.csv": (1, int(99e9))}  # old.csv changed since its upload began
    found = plan.rescan(CFG, (), set(), FILES, lambda relpath, name: (), NOW, 5.0, False, uploading=as_handed_out)
    assert found.ready == [("results/old.csv", 100.0)] and [f.relpath for f in found.watch] == ["logs/a"]
    # the marker, in flight, still makes its dir a checkpoint dir: w.bin is not sent alone
    assert "ckpt/step-1/w.bin" not in [f.relpath for f in found.watch] + [r for r, _ in found.ready]


def test_a_rescan_classifies_a_file_sent_under_another_name_and_knows_it():
    """A `base_path` rule stores `out/model.pt` as `model.pt`: the path alone says nothing."""
    cfg = config.parse({"runsync.dev/save": "- glob: out/**\n  base_path: out\n"})
    sent = {"model.pt": (1, int(100 * 1e9)), "out/old.pt": (1, int(100 * 1e9))}
    files = [local("out/model.pt", 100), local("out/old.pt", 100)]
    found = plan.rescan(cfg, (), set(), files, lambda relpath, name: (sent.get(name),), NOW, 5.0, False)
    assert [f.relpath for f in found.known] == ["out/model.pt"]
    assert found.ready == [("out/old.pt", 100.0)]  # stored as `old.pt`, never sent: its path says nothing


def test_the_last_rescan_takes_everything_newest_first():
    found = plan.rescan(CFG, (), set(), FILES, lambda relpath, name: (), NOW, 5.0, True)
    assert [r for r, _ in found.ready] == ["logs/a", "results/new.csv", "ckpt/step-1/.metadata", "results/old.csv"]


def test_a_replica_that_sees_no_marker_sends_its_part_at_the_end():
    files = [local("ckpt/step-1/1.distcp", 999)]
    assert plan.rescan(ALL, (), set(), files, lambda r, n: (), NOW, 5.0, True).dirs_at_end == {
        "ckpt/step-1": (Policy.LIVE, 999.0)}
    assert [f.relpath for f in plan.rescan(ALL, (), set(), files, lambda r, n: (), NOW, 5.0, False).watch] == [
        "ckpt/step-1/1.distcp"]


def test_the_end_sends_the_newest_first():
    assert plan.final_order({"a": 10.0, "\0dir:ckpt/step-2": 30.0, "b": 20.0}) == ["\0dir:ckpt/step-2", "b", "a"]
