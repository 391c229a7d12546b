"""Storage format 2's upload path (issue 17), from the outside: after `runsync sync` or the
sidecar, every committed entry's object is under the replica's `objects/`, and its bytes (read
back with plain boto3) match the entry's SHA-256 and per-part CRC64NVMEs, taken while they went
out. Unchanged content is not sent again; a file rewritten while it uploads is not committed."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from awscrt import checksums as crt_checksums

from harness import Store
from runsync import sync, transfer

pytestmark = pytest.mark.s3

RUN = "team-a/proj/run-1"  # the `store` fixture's run
MiB = 1024 * 1024
PART = 16 * MiB


def crcs(data: bytes, part: int = PART) -> list[str]:
    """What S3 calls each part's CRC64NVME, computed here on its own."""
    return [base64.b64encode(crt_checksums.crc64nvme(data[i:i + part]).to_bytes(8, "big")).decode()
            for i in range(0, len(data), part)]


def check_committed(store: Store, expected: dict[str, bytes]) -> None:
    files = store.files()
    assert sorted(files) == sorted(expected)
    for name, data in expected.items():
        e = files[name]
        assert e.key.startswith(store.layout.objects_prefix), e.key
        body = store.read(e.key)
        assert body == data, name
        assert e.sha256 == "", name  # the part CRCs are its identity: no SHA-256 pass on the way
        assert (e.part_size, list(e.crc64nvme)) == (PART, crcs(body)), name


def sync_json(cli, run_dir: Path) -> dict:
    result = cli("sync", str(run_dir), "--run", RUN, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def test_sync_writes_format_2_objects_with_their_digests(cli, store, tmp_path):
    files = {"small.txt": b"hello\n" * 100, "empty.txt": b"",
             "ckpt/big.pt": os.urandom(2 * PART + 17)}  # multipart: three parts, the last short
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    assert sorted(sync_json(cli, tmp_path)["uploaded"]) == sorted(files)
    check_committed(store, files)
    first = {n: e.key for n, e in store.files().items()}

    # touched, not changed: nothing sent, whatever the size (a small one is hashed, a large one
    # whose size and mtime match is not even read)
    os.utime(tmp_path / "small.txt")
    assert sync_json(cli, tmp_path)["uploaded"] == []
    # changed: a new object under a new key; the old one stays as committed before
    files["small.txt"] = b"changed\n"
    (tmp_path / "small.txt").write_bytes(files["small.txt"])
    assert sync_json(cli, tmp_path)["uploaded"] == ["small.txt"]
    check_committed(store, files)
    assert store.files()["small.txt"].key != first["small.txt"]
    assert store.read(first["small.txt"]) == b"hello\n" * 100
    assert store.files()["ckpt/big.pt"].key == first["ckpt/big.pt"]


def test_sidecar_writes_format_2_objects_with_their_digests(sidecars, store):
    sc = sidecars({"runsync.dev/save": "**:live"}).start()
    files = {"metrics.json": b'{"loss": 1.5}', "ckpt/model.pt": os.urandom(PART + 5)}
    for rel, data in files.items():
        (sc.run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (sc.run_dir / rel).write_bytes(data)
    sc.flush(timeout=120)
    check_committed(store, files)
    assert sc.terminate()[0] == 0
    check_committed(store, files)


def test_a_file_rewritten_while_it_uploads_is_not_committed(s3_env, store, tmp_path):
    big = tmp_path / "big.pt"
    big.write_bytes(os.urandom(4 * PART))
    (tmp_path / "other.txt").write_bytes(b"other")
    rewritten = []

    def rewrite_once(n: int) -> None:  # the first bytes have gone out: the trainer writes again
        if not rewritten:
            rewritten.append(n)
            with open(big, "r+b") as f:
                f.write(os.urandom(PART))

    report = sync.sync(tmp_path, store.layout.store, store.layout.run, hooks=transfer.Hooks(on_bytes=rewrite_once))
    assert rewritten
    assert [p for p, _ in report.skipped] == ["big.pt"]
    assert "big.pt" not in store.files()
    check_committed(store, {"other.txt": b"other"})


def test_small_files_go_through_the_crt_with_their_crc_and_through_botocore_with_runsync_crt_0(cli, store, tmp_path):
    from runsync_testing import s3count
    files = {f"data/{i:02d}.bin": os.urandom(1000 * i + 1) for i in range(20)} | {"empty.txt": b""}
    for rel, data in files.items():
        (tmp_path / "run" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "run" / rel).write_bytes(data)
    puts = {}
    for crt, run in (("1", RUN), ("0", "team-a/proj/run-2")):
        counts = tmp_path / f"counts-{crt}.json"
        result = cli("sync", str(tmp_path / "run"), "--run", run, "--json",
                     env={**cli.env, **s3count.environ(counts, tmp_path), "RUNSYNC_CRT": crt})
        assert result.returncode == 0, result.stdout + result.stderr
        assert sorted(json.loads(result.stdout)["uploaded"]) == sorted(files)
        puts[crt] = s3count.read(counts)
    assert puts["0"]["PutObject"] - puts["1"]["PutObject"] == len(files)  # every file's PUT left botocore
    assert puts["1"]["PutObject (CRT)"] == len(files) and "PutObject (CRT)" not in puts["0"]  # for the CRT
    check_committed(store, files)
    key = store.files()["data/07.bin"].key  # S3 was sent our CRC64NVME and checked the bytes with it
    head = store.client.head_object(Bucket=store.layout.store.bucket, Key=key, ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == crcs(files["data/07.bin"])[0]
