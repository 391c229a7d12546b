"""The annotation parser: (annotation, value) → config, or one ConfigError naming all three parts."""

import pytest
from hypothesis import given, settings, strategies as st

from runsync import config, contract
from runsync.config import Policy, RestoreSpec, RunRef, SaveRule
from runsync.errors import ConfigError
from runsync.globs import Glob
from runsync_testing import downward


def rules(*items):
    return tuple(SaveRule(Glob(g), Policy(p), b) for g, p, b in items)


# (annotation, value, field of RunConfig, expected value)
VALID = [
    (contract.SAVE, "ckpt/*.pt", "save", rules(("ckpt/*.pt", "live", None))),
    (contract.SAVE, "ckpt/*.pt:now", "save", rules(("ckpt/*.pt", "now", None))),
    (contract.SAVE, "ckpt/*.pt:end, logs/**:live", "save",
     rules(("ckpt/*.pt", "end", None), ("logs/**", "live", None))),
    (contract.SAVE, "a.txt\nb.txt:now\n\n", "save", rules(("a.txt", "live", None), ("b.txt", "now", None))),
    (contract.SAVE, "a.txt,", "save", rules(("a.txt", "live", None))),
    (contract.SAVE, "", "save", ()),
    (contract.SAVE, "a:b/c.txt", "save", rules(("a:b/c.txt", "live", None))),  # a colon inside a glob
    (contract.SAVE, "- ckpt/*.pt:end\n- glob: out/ckpt/**\n  policy: now\n  base_path: out\n", "save",
     rules(("ckpt/*.pt", "end", None), ("out/ckpt/**", "now", "out"))),
    (contract.SAVE, "- {glob: 'x,y.txt'}", "save", rules(("x,y.txt", "live", None))),
    (contract.IGNORE, "*.tmp, **/__pycache__", "ignore", (Glob("*.tmp"), Glob("**/__pycache__"))),
    (contract.IGNORE, "", "ignore", ()),
    (contract.RUN, "bert-large_v2.1", "run", "bert-large_v2.1"),
    (contract.PROJECT, "nlp", "project", "nlp"),
    (contract.REPLICA, "worker-3", "replica", "worker-3"),
    (contract.RESTORE, "auto", "restore", RestoreSpec("auto")),
    (contract.RESTORE, "none", "restore", RestoreSpec("none")),
    (contract.RESTORE, "ckpt/**, config.yaml", "restore",
     RestoreSpec("globs", (Glob("ckpt/**"), Glob("config.yaml")))),
    (contract.RESTORE_FROM, "pretrain/base-7", "restore_from", RunRef("pretrain", "base-7")),
    (contract.RESTORE_STRICT, "true", "restore_strict", True),
    (contract.RESTORE_STRICT, "false", "restore_strict", False),
    (contract.RESTORE_REPLICAS, "all", "restore_replicas", "all"),
    (contract.RESTORE_REPLICAS, "own", "restore_replicas", "own"),
    (contract.STORE, "team-a.s3", "store", "team-a.s3"),
    (contract.RUN_DIR, "/mnt/run", "run_dir", "/mnt/run"),
    (contract.RUN_DIR, "/mnt/run/", "run_dir", "/mnt/run"),
    (contract.VOLUME, "scratch-nvme", "volume", "scratch-nvme"),
    (contract.CONTAINERS, "trainer, logger", "containers", ("trainer", "logger")),
    (contract.COMPLETE_MARKER, "*.done, COMMIT", "complete_markers", (Glob("*.done"), Glob("COMMIT"))),
    (contract.TEMP_NAMES, "none", "temp_names", ()),
    (contract.TEMP_NAMES, "*.tmp, *.writing", "temp_names", (Glob("*.tmp"), Glob("*.writing"))),
]


@pytest.mark.parametrize("annotation,value,field,expected", VALID)
def test_valid(annotation, value, field, expected):
    cfg = config.parse({annotation: value})
    assert getattr(cfg, field) == expected


def test_defaults_are_specs():
    cfg = config.parse({"kubectl.kubernetes.io/last-applied-configuration": "{}"})
    assert cfg == config.RunConfig()
    assert cfg.project == "default" and cfg.store == "default" and cfg.run_dir == "/runsync"
    assert cfg.restore == RestoreSpec("auto") and cfg.restore_replicas == "own"
    assert cfg.restore_strict is False and cfg.run is None and cfg.containers is None
    assert [m.pattern for m in cfg.complete_markers] == [".metadata", "trainer_state.json", "commit_success.txt"]


def test_config_is_immutable():
    cfg = config.parse({contract.SAVE: "a"})
    with pytest.raises(AttributeError):
        cfg.save = ()  # type: ignore[misc]


# (annotation, value, fragments the message must contain besides the annotation)
INVALID = [
    (contract.SAVE, "ckpt/*.pt:livee", ['unknown policy "livee" in "ckpt/*.pt:livee"', "expected live, now or end"]),
    (contract.SAVE, "ckpt/*.pt:", ['unknown policy ""', "live, now or end"]),
    (contract.SAVE, "../secrets/*", ['bad glob "../secrets/*"', "outside the run dir"]),
    (contract.SAVE, "/etc/*:now", ['bad glob "/etc/*" in "/etc/*:now"', "absolute"]),
    (contract.SAVE, "- glob: x\n  policy: sometimes", ['unknown policy "sometimes"']),
    (contract.SAVE, "- glob: ckpt/*\n  base_path: out", ["not below base_path", "leading directory"]),
    (contract.SAVE, "- glob: out/*\n  base_path: ../out", ["base_path", "outside the run dir"]),
    (contract.SAVE, "- glob: out/*\n  colour: red", ["unknown key 'colour'", "glob, policy and base_path"]),
    (contract.SAVE, "- policy: now", ["'glob' is missing"]),
    (contract.SAVE, "- [a, b", ["invalid YAML"]),
    (contract.SAVE, "- 12", ["neither a string nor a mapping"]),
    (contract.IGNORE, "*.tmp, ../x", ['bad glob "../x"']),
    (contract.RUN, "my run", ['invalid name "my run"', "letters, digits"]),
    (contract.RUN, "a/b", ['invalid name "a/b"']),
    (contract.RUN, "x" * 129, ["invalid name"]),
    (contract.PROJECT, "", ['invalid name ""']),
    (contract.REPLICA, "..", ['invalid name ".."']),
    (contract.RESTORE, "", ["empty value", "auto, none or comma-separated globs"]),
    (contract.RESTORE, "../x", ['bad glob "../x"']),
    (contract.RESTORE_FROM, "other-ns/proj/run", ['invalid run "other-ns/proj/run"', "PROJECT/RUN", "own namespace"]),
    (contract.RESTORE_FROM, "justarun", ['invalid run "justarun"']),
    (contract.RESTORE_STRICT, "yes", ['invalid value "yes"', "expected true or false"]),
    (contract.RESTORE_STRICT, "True", ['invalid value "True"']),
    (contract.RESTORE_REPLICAS, "some", ['invalid value "some"', "expected own or all"]),
    (contract.STORE, "My_Store", ['invalid Store name "My_Store"']),
    (contract.RUN_DIR, "relative/dir", ['invalid mount path "relative/dir"', "absolute"]),
    (contract.RUN_DIR, "/", ['invalid mount path "/"']),
    (contract.RUN_DIR, "/a/../b", ['invalid mount path "/a/../b"']),
    (contract.RUN_DIR, "/a:b", ['invalid mount path "/a:b"']),
    (contract.VOLUME, "Scratch", ['invalid volume name "Scratch"', "Kubernetes name"]),
    (contract.CONTAINERS, "trainer, Bad_Name", ['invalid container name "Bad_Name"']),
    (contract.CONTAINERS, " , ", ["invalid container name"]),
    (contract.COMPLETE_MARKER, "ckpt/.metadata", ['marker "ckpt/.metadata" has a \'/\'']),
    (contract.COMPLETE_MARKER, "", ["no marker"]),
    (contract.TEMP_NAMES, "ckpt/*.tmp", ['temp name "ckpt/*.tmp" has a \'/\'', "or none"]),
    (contract.TEMP_NAMES, " , ", ["no name"]),
    ("runsync.dev/saev", "x", ["unknown runsync annotation", "did you mean runsync.dev/save?"]),
]


@pytest.mark.parametrize("annotation,value,fragments", INVALID)
def test_invalid(annotation, value, fragments):
    with pytest.raises(ConfigError) as info:
        config.parse({annotation: value})
    message = str(info.value)
    assert message.startswith(annotation + ": ")
    assert info.value.annotation == annotation
    for fragment in fragments:
        assert fragment in message


def test_every_annotation_has_a_table_row():
    covered = {row[0] for row in VALID} | {row[0] for row in INVALID}
    assert set(contract.ANNOTATIONS) - {contract.STATUS, contract.IMAGES} <= covered


def test_status_marker_and_foreign_annotations_are_ignored():
    cfg = config.parse({contract.STATUS: "injected", "example.com/x": "../..", "runsync.dev": "x",
                        contract.IMAGES: '{"trainer": "python@sha256:ab"}'})  # the operator's, not configuration
    assert cfg == config.RunConfig()


def test_base_path_is_stripped_from_stored_name():
    (rule,) = config.parse_save("- {glob: out/ckpt/*.pt, base_path: out}")
    assert rule.stored_name("out/ckpt/a.pt") == "ckpt/a.pt"


def test_huge_values_are_cut_short_in_messages():
    with pytest.raises(ConfigError) as info:
        config.parse({contract.RUN: "x y" * 10_000})
    assert len(str(info.value)) < 400


# ---------------------------------------------------------------- the downward-API file

def test_reads_kubelet_file():
    # What the kubelet writes: sorted `key="value"` lines, values quoted by Go's strconv.Quote.
    text = (
        'kubectl.kubernetes.io/default-container="trainer"\n'
        'runsync.dev/ignore="*.tmp"\n'
        'runsync.dev/save="- glob: ckpt/**\\n  policy: live\\n- logs/*.txt:end\\n"\n'
        'weird="tab\\there \\"quoted\\" back\\\\slash \\x00nul caf\\u00e9 \\U0001f600 caf\xc3\xa9"\n'
    ).encode("latin-1").decode("utf-8")
    found = config.parse_annotations_file(text)
    assert found["runsync.dev/save"] == "- glob: ckpt/**\n  policy: live\n- logs/*.txt:end\n"
    assert found["weird"] == 'tab\there "quoted" back\\slash \x00nul café \U0001f600 café'
    cfg = config.parse(found)
    assert cfg.save == rules(("ckpt/**", "live", None), ("logs/*.txt", "end", None))
    assert cfg.ignore == (Glob("*.tmp"),)


def test_reads_file_from_disk(tmp_path):
    path = tmp_path / "annotations"
    path.write_text(downward.format_annotations_file({contract.SAVE: "a\nb:now", contract.PROJECT: "p"}))
    cfg = config.parse(config.read_annotations_file(path))
    assert cfg.project == "p" and [r.policy for r in cfg.save] == [Policy.LIVE, Policy.NOW]


@pytest.mark.parametrize("line", ['key=unquoted', 'novalue', 'k="open', 'k="bad \\q escape"', 'k="\\x4"',
                                  'k="a"b"', 'k="\\ud800"'])
def test_bad_file_lines(line):
    with pytest.raises(ConfigError) as info:
        config.parse_annotations_file(line + "\n")
    assert str(info.value).startswith(contract.ENV_ANNOTATIONS + ": line 1")


@given(st.dictionaries(st.text(st.characters(blacklist_characters="=\n\r"), min_size=1),
                       st.text(st.characters(blacklist_categories=("Cs",)))))
def test_file_round_trip(annotations):
    text = downward.format_annotations_file(annotations)
    assert config.parse_annotations_file(text) == annotations


# ------------------------------------------------------------- never anything but ConfigError

ANNOTATION_KEYS = st.sampled_from(list(contract.ANNOTATIONS) + ["runsync.dev/x", "other/x"])


@settings(max_examples=400)
@given(st.dictionaries(ANNOTATION_KEYS, st.text(max_size=60)))
def test_any_strings_parse_or_raise_config_error(annotations):
    try:
        cfg = config.parse(annotations)
    except ConfigError as err:
        assert err.annotation in annotations
        assert str(err).startswith(err.annotation + ": ")
    else:
        assert isinstance(cfg, config.RunConfig)


YAMLISH = st.lists(st.sampled_from(["- ", "glob: ", "policy: ", "base_path: ", "{", "}", "[", "]", ":",
                                    ",", "\n", "  ", "*", "**", "/", "..", "a", "live", "now", "!!", "&x",
                                    "*x", "'", '"', "?", "#", "|", ">"]), max_size=25).map("".join)


@settings(max_examples=400)
@given(YAMLISH)
def test_yaml_like_save_values_parse_or_raise_config_error(value):
    try:
        config.parse({contract.SAVE: value})
    except ConfigError as err:
        assert err.annotation == contract.SAVE
