"""Glob semantics, as written in runsync.globs' docstring."""

import warnings

import pytest
from hypothesis import given, settings, strategies as st

from runsync.globs import Glob, GlobError, Literal, sqlite_superset

MATCHES = [
    # pattern, path, matches
    ("*.pt", "model.pt", True),
    ("*.pt", "ckpt/model.pt", False),          # * does not cross /
    ("ckpt/*.pt", "ckpt/model.pt", True),
    ("ckpt/*.pt", "ckpt/sub/model.pt", False),
    ("**/*.pt", "model.pt", True),             # ** matches zero directories
    ("**/*.pt", "a/b/c/model.pt", True),       # ... or many
    ("ckpt/**/shard-*", "ckpt/shard-0", True),
    ("ckpt/**/shard-*", "ckpt/step-1/rank-0/shard-0", True),
    ("ckpt/**", "ckpt/a/b", True),
    ("**", "anything/at/all", True),
    ("ckpt/step-*", "ckpt/step-10/.metadata", True),   # a directory names the files below it
    ("ckpt/step-*", "ckpt/step-10", True),
    ("ckpt/step-*", "ckpt/other/step-10", False),
    ("*", ".metadata", True),                  # dotfiles are matched
    ("step-?", "step-1", True),
    ("step-?", "step-10", False),
    ("?", "/", False),
    ("step-[0-4]", "step-3", True),
    ("step-[0-4]", "step-7", False),
    ("step-[!0-4]", "step-7", True),
    ("step-[!0-4]", "step-3", False),
    ("a[/]b", "a/b", False),                   # a class never matches /
    ("[a", "[a", True),                        # an unclosed [ is literal
    ("a**b", "axxb", True),                    # ** inside a segment is *
    ("a**b", "ax/xb", False),
    ("./logs/*.txt", "logs/x.txt", True),      # ./ is dropped
    ("logs//x.txt", "logs/x.txt", True),
    ("model.pt", "model-pt", False),           # . is literal
    ("a+b(c)", "a+b(c)", True),                # regex characters are literal
    ("ckpt", "ckpt2/x", False),
]


@pytest.mark.parametrize("pattern,path,expected", MATCHES)
def test_matches(pattern, path, expected):
    assert Glob(pattern).matches(path) is expected


@pytest.mark.parametrize("pattern,reason", [
    ("", "empty"),
    ("  ", "empty"),
    ("/etc/passwd", "absolute"),
    ("../x", "outside"),
    ("a/../../x", "outside"),
    ("ckpt/..", "outside"),
    (".", "run dir itself"),
    ("./", "run dir itself"),
    ("[z-a]", "class"),
    (" a", "whitespace"),
])
def test_refused(pattern, reason):
    with pytest.raises(GlobError, match=reason):
        Glob(pattern)


GLOB_CHARS = st.sampled_from(list("ab/.*?[]!-^\\&~|{},: ") + ["**", "..", "[a-z]", "[!"])


@settings(max_examples=500)
@given(st.lists(GLOB_CHARS, max_size=12).map("".join), st.text(alphabet="ab/.-|&~^\\[]", max_size=12))
def test_any_pattern_is_a_glob_or_a_glob_error(pattern, path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # re's FutureWarnings about set syntax too
        try:
            glob = Glob(pattern)
        except GlobError:
            return
        assert glob.matches(path) in (True, False)
        if "/" not in path and not any(c in pattern for c in "*?["):
            assert glob.matches(path) == (glob.pattern == path)


@pytest.mark.parametrize("name, path, expected", [
    # `restore(name)` takes a stored name as it is (W&B's restore): glob characters are characters.
    ("weights[1].pt", "weights[1].pt", True),
    ("weights[1].pt", "weights1.pt", False),
    ("*.pt", "a.pt", False),
    ("ckpt/step-3", "ckpt/step-3/.metadata", True),     # a directory names the files below it
    ("ckpt/step-3", "ckpt/step-30/.metadata", False),
    ("./ckpt//a.pt", "ckpt/a.pt", True),
])
def test_a_literal_is_a_name(name, path, expected):
    assert Literal(name).matches(path) is expected


def test_the_sqlite_superset_matches_every_path_the_glob_matches():
    """`sqlite_superset` is a first cut made inside sqlite (durable.Index.named_like): a path the
    glob names that it missed would be a checkpoint dir taken for a plain one."""
    import sqlite3

    db = sqlite3.connect(":memory:")
    patterns = ["*.pt", "ckpt/**/shard-*", "**/x.pt", "a/**/b", "step-?.ok", "[!x]ready", "w[1].pt", "a[", "[]]x",
                "[!]]y", ".metadata", "ckpt", "d*/e?/[a-c]*", "**", "é/*.bin", "a**b"]
    paths = ["x.pt", "d/x.pt", "ckpt/shard-1", "ckpt/a/b/shard-2", "a/b", "a/c/d/b", "step-1.ok", "step-12.ok",
             "aready", "xready", "w1.pt", "w[1].pt", "a[", "]x", "zy", "]y", ".metadata", "ckpt/sub/f", "d1/e2/b9",
             "é/f.bin", "aXYb", "a/b/c", "ready", "A.PT"]
    for pattern in patterns:
        loose = sqlite_superset(pattern)
        for path in paths:
            if Glob(pattern).matches(path):
                assert db.execute("SELECT ? GLOB ?", (path, loose)).fetchone()[0], (pattern, loose, path)
    assert not db.execute("SELECT ? GLOB ?", ("A.PT", sqlite_superset("*.pt"))).fetchone()[0]  # case kept


@settings(deadline=None)
@given(st.lists(GLOB_CHARS, max_size=12).map("".join), st.text(alphabet="ab/.-|&~^\\[]!*?", max_size=12))
def test_the_sqlite_superset_of_any_glob_misses_nothing_it_names(pattern, path):
    import sqlite3

    try:
        glob = Glob(pattern)
    except GlobError:
        return
    if glob.matches(path):
        loose = sqlite_superset(glob.pattern)
        assert sqlite3.connect(":memory:").execute("SELECT ? GLOB ?", (path, loose)).fetchone()[0], (glob, loose, path)
