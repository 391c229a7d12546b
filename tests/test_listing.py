"""listing.merged: a sorted base with the delta chain's overlay applied, as a stream (rows of
base names, overlay → the names out, in order)."""

from __future__ import annotations

import pytest

from runsync import listing
from runsync.manifest import FileEntry


def e(name: str, sha: str = "0" * 64) -> FileEntry:
    return FileEntry(name, "x/objects/1/" + name, 1, 1, sha)


NEW = "1" * 64
ROWS = [
    ("no overlay", ["a", "b"], {}, ["a", "b"]),
    ("changed keeps its place", ["a", "b", "c"], {"b": e("b", NEW)}, ["a", "b", "c"]),
    ("removed", ["a", "b", "c"], {"a": None, "c": None}, ["b"]),
    ("added before, between and after", ["b", "d"], {"a": e("a"), "c": e("c"), "e": e("e")}, ["a", "b", "c", "d", "e"]),
    ("removed name never in the base", ["a"], {"zz": None}, ["a"]),
    ("empty base", [], {"b": e("b"), "a": e("a")}, ["a", "b"]),
    ("prefixes sort as strings", ["ckpt/step-3.tmp", "ckpt/step-3/a", "ckpt/step-30"], {"ckpt/step-3/b": e("ckpt/step-3/b")},
     ["ckpt/step-3.tmp", "ckpt/step-3/a", "ckpt/step-3/b", "ckpt/step-30"]),
]


@pytest.mark.parametrize("base, overlay, expected", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_merged(base, overlay, expected):
    out = list(listing.merged((e(n) for n in base), overlay))
    assert [x.name for x in out] == expected
    for x in out:
        if x.name in overlay:
            assert x is overlay[x.name]


@pytest.mark.parametrize("base", [["b", "a"], ["a", "a"]], ids=["unsorted", "twice"])
def test_a_base_out_of_order_is_refused(base):
    with pytest.raises(ValueError, match="not sorted"):
        list(listing.merged((e(n) for n in base), {}))
