"""Storage layout format 1: store URLs, run paths, stored names and keys."""

import pytest

from runsync import keys
from runsync.errors import RunPathError, StoreURLError


@pytest.mark.parametrize("url,bucket,prefix", [
    ("s3://runs", "runs", ""),
    ("s3://runs/", "runs", ""),
    ("s3://my.bucket-1/team/a/", "my.bucket-1", "team/a"),
    ("s3://runs//x//y", "runs", "x/y"),
])
def test_store_url(url, bucket, prefix):
    store = keys.StoreURL.parse(url)
    assert (store.bucket, store.prefix) == (bucket, prefix)


@pytest.mark.parametrize("url,fragment", [
    ("", "empty"),
    ("runs/x", "does not start with s3://"),
    ("http://runs", "does not start with s3://"),
    ("s3://", "invalid bucket name ''"),
    ("s3://Runs", "invalid bucket name 'Runs'"),
    ("s3://ab", "invalid bucket name 'ab'"),
    ("s3://a..b", "invalid bucket name"),
    ("s3://runs/../other", "'..'"),
])
def test_bad_store_url(url, fragment):
    with pytest.raises(StoreURLError, match=fragment.replace("(", r"\(")) as info:
        keys.StoreURL.parse(url)
    assert "s3://BUCKET" in str(info.value) or "bucket" in str(info.value)


@pytest.mark.parametrize("text,fragment", [
    ("a/b", "not NAMESPACE/PROJECT/RUN"),
    ("a/b/c/d", "not NAMESPACE/PROJECT/RUN"),
    ("Team/p/r", "namespace 'Team'"),
    ("ns/../r", "project '..'"),
    ("ns/p/", "run ''"),
    ("ns/p/r r", "run 'r r'"),
])
def test_bad_run_path(text, fragment):
    with pytest.raises(RunPathError, match=fragment):
        keys.RunPath.parse(text)


def test_layout_keys():
    layout = keys.Layout(keys.StoreURL.parse("s3://bkt/pre"), keys.RunPath.parse("ns/proj/run-1"), "worker-2")
    assert layout.run_prefix == "pre/ns/proj/run-1/"
    assert layout.manifest_key(7) == "pre/ns/proj/run-1/worker-2/manifests/000000000007.json"
    assert layout.manifest_seq(layout.manifest_key(7)) == 7
    assert layout.manifest_seq("pre/ns/proj/run-1/worker-2/manifests/x.json") is None
    assert layout.lease_key == "pre/ns/proj/run-1/worker-2/lease.json"
    assert layout.run_metadata_key == "pre/ns/proj/run-1/run.json"
    sha = "ab" * 32
    assert layout.file_key("ckpt/a.pt", sha) == "pre/ns/proj/run-1/worker-2/files/ckpt/a.pt~" + "ab" * 8


def test_no_prefix_layout():
    layout = keys.Layout(keys.StoreURL.parse("s3://bkt"), keys.RunPath.parse("ns/p/r"), "0")
    assert layout.run_prefix == "ns/p/r/"


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../x", "a/../../x", "a//b", "./a", "a/.", "a\x00b",
                                  "a\\..\\b", "x" * 800])
def test_stored_names_that_escape_are_refused(name):
    with pytest.raises(RunPathError, match="stored name"):
        keys.check_stored_name(name)
    layout = keys.Layout(keys.StoreURL.parse("s3://bkt"), keys.RunPath.parse("ns/p/r"), "0")
    with pytest.raises(RunPathError):
        layout.file_key(name, "00" * 32)


@pytest.mark.parametrize("name", ["a", "ckpt/step-1/.metadata", "dir with spaces/ünïcode ✓.txt", "a..b"])
def test_ordinary_stored_names(name):
    assert keys.check_stored_name(name) == name


# The limits SeaweedFS answers KeyTooLongError beyond (tried: a last key segment of 256 bytes,
# a key of 1025): refused before any upload, by name, with the limit and the fix.
LONG_DIRS = "/".join(["d" * 200] * 3) + "/x"  # 604 bytes: long directories are fine


@pytest.mark.parametrize("prefix, name, fragment", [
    ("pre", "a" * 238, None),
    ("pre", "d/" + "é" * 119, None),                          # 238 bytes in UTF-8
    ("pre", "a" * 239, "255-byte limit.*at most 238 bytes"),
    ("pre", "d/" + "é" * 119 + "x", "255-byte limit"),
    ("p" * 380, LONG_DIRS, None),                              # a key of 1017 bytes
    ("p" * 390, LONG_DIRS, "1024-byte limit; fix: shorten the name to at most 601 bytes"),
])
def test_names_the_store_cannot_hold(prefix, name, fragment):
    layout = keys.Layout(keys.StoreURL.parse(f"s3://bkt/{prefix}"), keys.RunPath.parse("ns/p/r"), "0")
    if fragment is None:
        assert layout.check_storable(name) == name
        assert len(layout.file_key(name, "00" * 32).encode()) <= keys.MAX_KEY_BYTES
    else:
        with pytest.raises(keys.NameTooLong, match=fragment):
            layout.file_key(name, "00" * 32)
