"""Storage layout: store URLs, run paths, stored names and keys (format 2 writes, format 1 reads)."""

import subprocess
import sys

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
                                  "a\\..\\b", "x" * 800,
                                  # at the edges of the plain-name fast path: the state dir, NAME_MAX, 768 bytes
                                  ".runsync", ".runsync/fence-1", "a" * 256, "a/" + "b" * 256, "x/" * 384 + "x",
                                  "a/b\n", "a/\x7f"])
def test_stored_names_that_escape_are_refused(name):
    with pytest.raises(RunPathError, match="stored name"):
        keys.check_stored_name(name)
    layout = keys.Layout(keys.StoreURL.parse("s3://bkt"), keys.RunPath.parse("ns/p/r"), "0")
    with pytest.raises(RunPathError):
        layout.file_key(name, "00" * 32)


@pytest.mark.parametrize("name", ["a", "ckpt/step-1/.metadata", "dir with spaces/ünïcode ✓.txt", "a..b"])
def test_ordinary_stored_names(name):
    assert keys.check_stored_name(name) == name


# Format-2 keys hold no name: a name has only the run dir's limits (a file system's NAME_MAX),
# not the 238 bytes that format 1's `files/<name>~<hash>` left under SeaweedFS's 255-byte segment.
LONG_DIRS = "/".join(["d" * 200] * 3) + "/x"  # 604 bytes: long directories are fine


@pytest.mark.parametrize("prefix, name", [
    ("pre", "a" * 255),
    ("pre", "d/" + "é" * 127),                                  # 254 bytes in UTF-8
    ("p" * 390, LONG_DIRS),
])
def test_long_names_are_storable(prefix, name):
    layout = keys.Layout(keys.StoreURL.parse(f"s3://bkt/{prefix}"), keys.RunPath.parse("ns/p/r"), "0")
    assert layout.check_storable(name) == name
    with pytest.raises(RunPathError, match="stored name"):  # NAME_MAX, or the 768 bytes left under S3's 1024
        layout.check_storable(name + "a" * 256)


def test_object_keys_are_never_reused():
    layout = keys.Layout(keys.StoreURL.parse("s3://bkt/pre"), keys.RunPath.parse("ns/p/r"), "0")
    first, second = keys.ObjectKeys(layout, 7), keys.ObjectKeys(layout, 7)  # a restart in one epoch
    made = [first.next(), second.next(), first.next()]
    assert len(set(made)) == 3
    assert all(k.startswith("pre/ns/p/r/0/objects/00000007/") and layout.holds(k) for k in made)
    # another process (a restarted sidecar keeping its epoch) draws its own 64-bit part
    other = subprocess.run([sys.executable, "-c", "from runsync import keys; print(keys.ObjectKeys("
                            "keys.Layout(keys.StoreURL.parse('s3://bkt/pre'), keys.RunPath.parse('ns/p/r'), '0'), 7).next())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert other.startswith("pre/ns/p/r/0/objects/00000007/") and other not in made


def test_a_forked_worker_never_writes_its_parents_next_key():
    """multiprocessing forks on Linux: a child inherits the parent's process part and counter."""
    import os

    layout = keys.Layout(keys.StoreURL.parse("s3://bkt/pre"), keys.RunPath.parse("ns/p/r"), "0")
    made = keys.ObjectKeys(layout, 7)
    made.next()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: the key it would write next, through the parent's own object
        os.write(write, made.next().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 1000).decode()
    os.close(read)
    assert child and child != made.next()
