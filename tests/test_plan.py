"""The planner: which files a sync uploads, under which names, and which it leaves alone."""

from runsync import config, plan
from runsync.globs import Glob
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
