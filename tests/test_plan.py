"""The planner: which files a sync uploads, under which names, and which it leaves alone."""

from runsync import config, plan
from runsync.globs import Glob, Literal
from runsync.manifest import FileEntry, Manifest
from runsync.watch import LocalFile


def f(relpath, size=1, mtime_ns=1):
    return LocalFile(relpath, "/run/" + relpath, size, mtime_ns)


def manifest(*entries):
    return Manifest("ns/p/r", "0", 1, 0.0, {e.name: e for e in entries})


def entry(name, size=1, mtime_ns=1):
    return FileEntry(name, "k/" + name, size, mtime_ns, "0" * 64)


def test_rules_name_files_and_the_rest_go_at_end():
    rules = config.parse_save("- {glob: out/ckpt/*.pt, policy: now, base_path: out}\n- logs/*:live")
    p = plan.for_sync(rules, (Glob("*.tmp"),), [f("out/ckpt/a.pt"), f("logs/x"), f("notes.md"), f("b.tmp")], None)
    assert [(i.file.relpath, i.name, i.policy.value) for i in p.uploads] == [
        ("out/ckpt/a.pt", "ckpt/a.pt", "now"), ("logs/x", "logs/x", "live"), ("notes.md", "notes.md", "end")]
    assert [x.relpath for x in p.ignored] == ["b.tmp"]


def test_ignore_wins_over_save():
    p = plan.for_sync(config.parse_save("ckpt/**"), (Glob("ckpt/tmp-*"),), [f("ckpt/tmp-1"), f("ckpt/a")], None)
    assert [i.name for i in p.uploads] == ["ckpt/a"]


def test_first_rule_wins():
    p = plan.for_sync(config.parse_save("ckpt/a:now, ckpt/*:end"), (), [f("ckpt/a"), f("ckpt/b")], None)
    assert [(i.name, i.policy.value) for i in p.uploads] == [("ckpt/a", "now"), ("ckpt/b", "end")]


def test_unchanged_by_size_and_mtime():
    durable = manifest(entry("a", 5, 100), entry("b", 5, 100), entry("c", 5, 100))
    p = plan.for_sync((), (), [f("a", 5, 100), f("b", 5, 101), f("c", 6, 100), f("d")], durable)
    assert [i.name for i, _ in p.unchanged] == ["a"]
    assert [i.name for i in p.uploads] == ["b", "c", "d"]


def test_two_files_with_one_stored_name_collide():
    rules = config.parse_save("- {glob: a/x/*, base_path: a/x}\n- {glob: b/x/*, base_path: b/x}")
    p = plan.for_sync(rules, (), [f("a/x/m.pt"), f("b/x/m.pt")], None)
    assert [i.file.relpath for i in p.uploads] == ["a/x/m.pt"]
    assert [(a.file.relpath, b.file.relpath) for a, b in p.collisions] == [("a/x/m.pt", "b/x/m.pt")]


MARKERS = (Glob(".metadata"),)


def test_restore_looks_back_only_for_patterns_the_latest_lacks():
    latest = {"0": manifest(entry("results/epoch-0.csv"), entry("ckpt/step-9/.metadata"), entry("ckpt/step-9/a.distcp"))}
    patterns = (Glob("results/epoch-0.csv"), Glob("results/epoch-1.csv"), Glob("ckpt/step-3"))
    assert [str(p) for p in plan.unmatched(latest, patterns)] == ["results/epoch-1.csv", "ckpt/step-3"]


def test_an_older_manifest_adds_deleted_names_and_whole_dirs():
    newest = plan.for_restore({"0": manifest(entry("results/epoch-0.csv"))}, MARKERS, (Glob("results/*"),))
    older = plan.for_restore({"0": manifest(entry("ckpt/step-3/.metadata"), entry("ckpt/step-3/a.distcp"),
                                            entry("results/epoch-0.csv", 9))}, MARKERS, (Glob("ckpt/step-3"),))
    merged = plan.merge_restore(newest, older)
    assert sorted(merged.files) == ["ckpt/step-3/.metadata", "ckpt/step-3/a.distcp", "results/epoch-0.csv"]
    assert merged.files["results/epoch-0.csv"][1].size == 1     # the latest version wins
    assert merged.groups == {"ckpt/step-3": ("ckpt/step-3/a.distcp", "ckpt/step-3/.metadata")}


# A writer killed mid-write leaves a temp file that looks finished: uploaded only when a save
# entry names it explicitly.
TEMPS = [
    # save annotation, file, uploaded as
    ("", "last.pt.tmp", None),
    ("", "last.pt", "last.pt"),
    ("", "ckpt/step-3/.metadata.tmp", None),                 # PyTorch DCP
    ("", "ckpt/step-3/__1.metadata.tmp", None),
    ("", "out/model.ckpt.part", None),                       # Lightning 1.x
    ("", "tmp-checkpoint-5/model.safetensors", None),       # Hugging Face Trainer 4.35
    ("", "weights.bin.incomplete", None),                    # huggingface_hub
    ("", "data.tmp.a1b2c3", None), ("", "x.partial", None), ("", ".notes.txt.swp", None), ("", "cfg.yaml~", None),
    ("**", "last.pt.tmp", None),                             # a catch-all does not name it
    ("ckpt/**", "ckpt/step-3/.metadata.tmp", None),
    ("last.pt.tmp", "last.pt.tmp", "last.pt.tmp"),           # named literally
    ("*.tmp:live", "last.pt.tmp", "last.pt.tmp"),
    ("**/*.part", "out/model.ckpt.part", "out/model.ckpt.part"),
    ("tmp-checkpoint-*", "tmp-checkpoint-5/model.safetensors", "tmp-checkpoint-5/model.safetensors"),
]


def test_temp_names_are_skipped_unless_a_save_entry_names_them():
    for save, relpath, expected in TEMPS:
        cfg = config.parse({"runsync.dev/save": save} if save else {})
        assert plan.decide(cfg, (), relpath, set()).name == expected, (save, relpath)
        p = plan.for_sync(cfg.save, (), [f(relpath)], None)
        assert [i.name for i in p.uploads] == ([expected] if expected else []), (save, relpath)


def test_temp_names_none_turns_the_rule_off():
    cfg = config.parse({"runsync.dev/temp-names": "none"})
    assert plan.decide(cfg, (), "last.pt.tmp", set()).name == "last.pt.tmp"
    own = config.parse({"runsync.dev/temp-names": "*.writing"})
    assert plan.decide(own, (), "a.writing", set()).name is None
    assert plan.decide(own, (), "a.tmp", set()).name == "a.tmp"


def test_a_marker_less_dir_goes_at_the_end_only_if_it_never_had_a_marker():
    assert plan.incomplete_at_end("checkpoint-5", set())
    assert not plan.incomplete_at_end("ckpt/step-8", {"ckpt/step-8"})   # a rotation is deleting it


def test_restore_takes_an_incomplete_dir_only_when_asked_for_it_by_name():
    m = {"0": manifest(entry("checkpoint-5/model.safetensors"), entry("log.txt"))}
    assert sorted(plan.for_restore(m, MARKERS).files) == ["log.txt"]
    for pattern, expected in [("checkpoint-5", ["checkpoint-5/model.safetensors"]),
                              ("checkpoint-5/**", ["checkpoint-5/model.safetensors"]),
                              ("checkpoint-*", []), ("**", ["log.txt"])]:
        p = plan.for_restore(m, MARKERS, (Glob(pattern),))
        assert sorted(p.files) == expected, pattern
        assert "checkpoint-5" in p.incomplete or pattern == "checkpoint-*"


def test_restore_takes_one_file_of_a_complete_dir_when_asked_for_it_alone():
    """The marker is judged among every stored file, not only the asked ones (issue 16)."""
    m = {"0": manifest(entry("ckpt/step-3/__0_0.distcp"), entry("ckpt/step-3/__1_0.distcp"),
                       entry("ckpt/step-3/.metadata"), entry("ckpt/step-4/__0_0.distcp"))}
    for pattern in (Literal("ckpt/step-3/__0_0.distcp"), Glob("ckpt/step-3/__0_*")):
        p = plan.for_restore(m, MARKERS, (pattern,))
        assert (sorted(p.files), p.groups, p.incomplete) == (
            ["ckpt/step-3/__0_0.distcp"], {"ckpt/step-3": ("ckpt/step-3/__0_0.distcp",)}, ()), pattern
    p = plan.for_restore(m, MARKERS, (Glob("ckpt/*/__0_0.distcp"),))  # step-4 has no marker
    assert (sorted(p.files), p.incomplete) == (["ckpt/step-3/__0_0.distcp"], ("ckpt/step-4",))
