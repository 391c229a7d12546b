"""A format-2 file is durable on its part CRC64NVMEs alone: no whole-file SHA-256 is taken on the
way to the commit (docs/format-2.md, "Content identity"). From the outside: the sidecar as a
process, restore-init and the CLI, against a real SeaweedFS."""

from __future__ import annotations

import json
import os
import time

import pytest

from harness import describes, restore_init, sha, uploaded_files
from runsync import checksums, contract, manifest

pytestmark = pytest.mark.s3
RUN = "team-a/proj/run-1"
MiB = 1024 * 1024
BIG = 2 * checksums.PART_SIZE + 3 * MiB + 5  # multipart through the CRT: three parts, the last short


def test_flush_returns_a_large_file_durable_on_its_crcs_and_restorable(sidecars, store, s3_env, cli, tmp_path):
    sc = sidecars({contract.SAVE: "model.pt:live"}).start()
    data = os.urandom(BIG)
    (sc.run_dir / "model.pt").write_bytes(data)
    assert sc.flush()["durable"] is True
    entry = store.files()["model.pt"]
    assert entry.sha256 == "" and len(entry.crc64nvme) == 3  # no SHA-256 pass on the way
    assert describes(entry, store.read(entry.key))
    # `ls` shows the whole-file CRC64NVME, as S3 reports it for the object
    row = next(r for r in json.loads(cli("ls", RUN, "--json").stdout) if r["name"] == "model.pt")
    head = store.client.head_object(Bucket=store.layout.store.bucket, Key=entry.key, ChecksumMode="ENABLED")
    assert row["crc64nvme"] == head["ChecksumCRC64NVME"] == manifest.whole_crc64nvme(entry)

    fresh = tmp_path / "fresh"
    result = restore_init(s3_env, fresh, {}, tmp_path, holder="pod-b")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sha((fresh / "model.pt").read_bytes()) == sha(data)  # whole, and these very bytes


def test_a_same_size_damaged_object_is_refused_and_nothing_placed(sidecars, store, s3_env, tmp_path):
    sc = sidecars({contract.SAVE: "model.pt:live"}).start()
    data = os.urandom(BIG)
    (sc.run_dir / "model.pt").write_bytes(data)
    assert sc.flush()["durable"] is True
    entry = store.files()["model.pt"]
    assert entry.sha256 == ""
    flipped = bytearray(data)
    flipped[checksums.PART_SIZE + 7] ^= 1  # one bit in the second part; the size is the same
    store.client.put_object(Bucket=store.layout.store.bucket, Key=entry.key, Body=bytes(flipped))

    fresh = tmp_path / "fresh"
    result = restore_init(s3_env, fresh, {}, tmp_path, holder="pod-b")
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "checksum mismatch" in out and entry.key in out and "part 1" in out
    assert not (fresh / "model.pt").exists()
    assert not [p for p in fresh.rglob("*") if p.is_file() and ".runsync" not in p.parts]


def test_unchanged_content_is_not_sent_again_and_a_same_size_change_is(sidecars, store):
    sc = sidecars({contract.SAVE: "notes.txt:live"}).start()
    path = sc.run_dir / "notes.txt"
    path.write_bytes(b"v1" * 1000)
    assert sc.flush()["durable"] is True
    first = store.files()["notes.txt"]

    path.write_bytes(b"v1" * 1000)  # written again, the same bytes: read, same part CRCs, nothing sent
    later = time.time_ns() + 10**9
    os.utime(path, ns=(later, later))  # (a new mtime whatever the file system's clock granularity)
    assert sc.flush()["durable"] is True
    assert store.files()["notes.txt"].key == first.key
    assert uploaded_files(sc.log_records()) == ["notes.txt"]  # the first write only

    path.write_bytes(b"v2" * 1000)  # same size, other bytes: sent again
    assert sc.flush()["durable"] is True
    changed = store.files()["notes.txt"]
    assert changed.key != first.key and describes(changed, b"v2" * 1000)
    assert uploaded_files(sc.log_records()) == ["notes.txt", "notes.txt"]
    assert store.read(first.key) == b"v1" * 1000  # the old object stays as committed


def test_restore_takes_a_touched_local_copy_as_already_here_by_its_crcs(cli, store, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(os.urandom(300_000))
    (src / "b.bin").write_bytes(os.urandom(300_000))
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    assert all(e.sha256 == "" for e in store.files().values())
    dest = tmp_path / "dest"
    assert cli("restore", RUN, "--to", str(dest)).returncode == 0

    old = time.time_ns() - 3600 * 10**9  # older than the entries: restored over unless already here
    for name in ("a.bin", "b.bin"):
        os.utime(dest / name, ns=(old, old))
    damaged = bytearray((dest / "b.bin").read_bytes())
    damaged[5] ^= 1
    (dest / "b.bin").write_bytes(bytes(damaged))
    os.utime(dest / "b.bin", ns=(old, old))
    again = json.loads(cli("restore", RUN, "--to", str(dest), "--json").stdout)
    assert again["written"] == ["b.bin"]  # a.bin holds the entry's bytes: not fetched again
    assert (dest / "b.bin").read_bytes() == (src / "b.bin").read_bytes()
    assert (dest / "a.bin").stat().st_mtime_ns == store.files()["a.bin"].mtime_ns


@pytest.mark.parametrize("raw, problem", [
    ({"sha256": "ab" * 32}, None),                                                    # format 1
    ({"sha256": "ab" * 32, "part_size": 16 * MiB, "crc64nvme": ["AAAAAAAAAAA="]}, None),  # format 2, before
    ({"part_size": 16 * MiB, "crc64nvme": ["AAAAAAAAAAA="]}, None),                   # format 2, CRCs only
    ({}, "bad checksum"),                                                             # no identity at all
    ({"sha256": ""}, "bad checksum"),
    ({"part_size": 16 * MiB, "crc64nvme": []}, "part checksums"),
])
def test_an_entry_needs_a_sha256_or_part_crcs(raw, problem):
    from runsync import keys

    layout = keys.Layout(keys.StoreURL.parse("s3://bucket/runs"), keys.RunPath.parse(RUN), "0")
    doc = {"name": "m.pt", "key": layout.objects_prefix + "00000001/x", "size": 10, "mtime_ns": 1, **raw}
    if problem is None:
        entry = manifest.entry_from_doc(doc, layout)
        assert manifest.entry_from_doc(manifest.entry_doc(entry), layout) == entry  # written as read
    else:
        with pytest.raises(ValueError, match=problem):
            manifest.entry_from_doc(doc, layout)
