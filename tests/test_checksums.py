"""The format-2 part checksums: what S3 computes, and what a manifest accepts."""

import os

import pytest

from runsync import checksums, hashing, keys, manifest
from runsync.errors import StoreError


def test_part_crcs_combine_to_the_whole_files_crc(tmp_path):
    data = os.urandom(5 * 1024 * 1024 + 123)
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        parts = hashing.of_fd(fd, len(data), 2 * 1024 * 1024).crc64nvme
        assert hashing.of_fd(fd, 0, 2 * 1024 * 1024).crc64nvme == ()  # an empty file has no part
    finally:
        os.close(fd)
    assert len(parts) == 3
    whole = 0
    for i, crc in enumerate(parts):
        _, length = checksums.part_range(i, len(data), 2 * 1024 * 1024)
        whole = checksums.combine(whole, checksums.decode(crc), length)
    assert whole == checksums.crc64nvme(data)


def _manifest(entry: manifest.FileEntry, layout: keys.Layout) -> manifest.Manifest:
    return manifest.Manifest(run=str(layout.run), replica=layout.replica, seq=1, created=0.0,
                             files={entry.name: entry})


def test_a_manifest_keeps_part_checksums_and_refuses_a_wrong_count():
    layout = keys.Layout(keys.StoreURL("b"), keys.RunPath.parse("ns/p/r"), "0")
    crcs = (checksums.encode(1), checksums.encode(2))
    good = manifest.FileEntry("a", layout.replica_prefix + "files/a~0", 20, 0, "0" * 64, "live", 16, crcs)
    back = manifest.Manifest.from_json(_manifest(good, layout).to_json(), layout, "m")
    assert back.files["a"] == good
    old = manifest.FileEntry("b", layout.replica_prefix + "files/b~0", 20, 0, "0" * 64)
    assert b"crc64nvme" not in _manifest(old, layout).to_json()  # format 1 entries unchanged
    bad = manifest.FileEntry("a", good.key, 40, 0, "0" * 64, "live", 16, crcs)
    with pytest.raises(StoreError, match="2 part checksums for 40 bytes"):
        manifest.Manifest.from_json(_manifest(bad, layout).to_json(), layout, "m")
