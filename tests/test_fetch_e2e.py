"""The download data path (fetch.py) through `runsync restore`, against a real SeaweedFS: format-2
entries checked part by part, format-1 entries by their SHA-256, and nothing placed (no file, no
temp file) when a byte is wrong or a transfer is cut midway."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from harness import LinkProxy, sha, tree
from runsync import hashing, manifest

pytestmark = pytest.mark.s3
RUN = "team-a/proj/run-1"
MiB = 1024 * 1024


def commit(store, files: dict[str, bytes], part_size: int | None = 4 * MiB) -> dict[str, manifest.FileEntry]:
    """Store `files` and commit them as a manifest (format 2 with `part_size`, format 1 with None)."""
    entries = []
    for name, data in files.items():
        key = store.layout.file_key(name, sha(data))
        store.client.put_object(Bucket=store.layout.store.bucket, Key=key, Body=data)
        parts: dict = {}
        if part_size:
            path = store.scratch / name.replace("/", "_")
            path.write_bytes(data)
            fd = os.open(path, os.O_RDONLY)
            try:
                parts = {"part_size": part_size, "crc64nvme": hashing.of_fd(fd, len(data), part_size).crc64nvme}
            finally:
                os.close(fd)
        entries.append(manifest.FileEntry(name=name, key=key, size=len(data), mtime_ns=1_000_000_000,
                                          sha256=sha(data), policy="end", **parts))
    manifest.commit(store.client, store.layout, store.latest(), entries, final=True, writer="test")
    return store.files()


def everything(root) -> list[str]:
    """Every name under `root`, hidden temp files included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


@pytest.fixture
def scratch_store(store, tmp_path):
    store.scratch = tmp_path / "scratch"
    store.scratch.mkdir()
    return store


def test_format_2_entries_restore_checked_part_by_part(cli, tmp_path, scratch_store):
    files = {"ckpt/model.pt": os.urandom(37 * MiB + 123),  # several ranges of whole parts, the last short
             "small.bin": os.urandom(300_000), "empty.txt": b""}
    entries = commit(scratch_store, files)
    assert entries["ckpt/model.pt"].part_size == 4 * MiB and len(entries["ckpt/model.pt"].crc64nvme) == 10
    dest = tmp_path / "dest"
    done = cli("restore", RUN, "--to", str(dest))
    assert done.returncode == 0, done.stderr
    assert tree(dest) == files
    assert (dest / "ckpt/model.pt").stat().st_mtime_ns == 1_000_000_000
    assert everything(dest) == ["ckpt", "ckpt/model.pt", "empty.txt", "small.bin"]


@pytest.mark.parametrize("part_size", [4 * MiB, None], ids=["format 2", "format 1"])
@pytest.mark.parametrize("size", [37 * MiB, 3 * MiB], ids=["ranged", "one GET"])
def test_one_byte_changed_behind_the_manifest_fails_and_places_nothing(cli, tmp_path, scratch_store, part_size, size):
    data = os.urandom(size)
    entry = commit(scratch_store, {"ckpt/model.pt": data}, part_size)["ckpt/model.pt"]
    middle = size // 2 + 5  # inside a middle part
    bad = data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:]
    scratch_store.client.put_object(Bucket=scratch_store.layout.store.bucket, Key=entry.key, Body=bad)
    dest = tmp_path / "dest"
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr and "ckpt/model.pt" in result.stderr and entry.key in result.stderr
    assert "fix:" in result.stderr
    if part_size:
        part = middle // part_size
        assert f"part {part} " in result.stderr
    assert everything(dest) in ([], ["ckpt"])  # neither the file nor a temp file


@pytest.mark.parametrize("part_size", [4 * MiB, None], ids=["format 2", "format 1"])
def test_many_small_files_each_checked_one_damaged_is_not_placed_the_rest_are(cli, tmp_path, scratch_store, part_size):
    # Small files download on their unit's own thread and botocore checks no body: runsync's
    # own CRC64NVME / SHA-256 is what must catch a damaged one among many.
    files = {f"data/{i:03d}.bin": os.urandom(4096 + i) for i in range(60)}
    entries = commit(scratch_store, files, part_size)
    damaged = "data/017.bin"
    data = files[damaged]
    scratch_store.client.put_object(Bucket=scratch_store.layout.store.bucket, Key=entries[damaged].key,
                                    Body=data[:100] + bytes([data[100] ^ 1]) + data[101:])
    dest = tmp_path / "dest"
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr and damaged in result.stderr and "fix:" in result.stderr
    good = {name: body for name, body in files.items() if name != damaged}
    assert tree(dest) == good
    assert everything(dest) == sorted(["data", *good])  # no temp file of any download
    assert {(dest / name).stat().st_mtime_ns for name in good} == {1_000_000_000}


@pytest.mark.parametrize("part_size", [4 * MiB, None], ids=["format 2", "format 1"])
def test_a_download_cut_midway_places_nothing_and_the_next_attempt_succeeds(cli, tmp_path, scratch_store, s3_env,
                                                                           part_size):
    files = {"ckpt/model.pt": os.urandom(40 * MiB), "ckpt/.metadata": b"m" * 1000, "notes.txt": os.urandom(2 * MiB)}
    commit(scratch_store, files, part_size)
    proxy = LinkProxy(s3_env["AWS_ENDPOINT_URL_S3"], cut_after=MiB + 7)
    try:
        dest = tmp_path / "dest"
        env = {**s3_env, "AWS_ENDPOINT_URL_S3": proxy.endpoint}
        cut = cli("restore", RUN, "--to", str(dest), env=env)
        assert cut.returncode == 1 and proxy.cuts > 0
        assert "ckpt/model.pt" in cut.stderr or "notes.txt" in cut.stderr
        assert everything(dest) in ([], ["ckpt"])  # nothing placed, no temp file
        proxy.cut = False
        again = cli("restore", RUN, "--to", str(dest), env=env)
        assert again.returncode == 0, again.stderr
        assert tree(dest) == files
        assert everything(dest) == ["ckpt", "ckpt/.metadata", "ckpt/model.pt", "notes.txt"]
    finally:
        proxy.close()


@pytest.mark.parametrize("part_size", [4 * MiB, None], ids=["format 2", "format 1"])
def test_a_ranged_get_that_stalls_mid_body_times_out_naming_the_file_and_places_nothing(s3_env, scratch_store,
                                                                                       tmp_path, monkeypatch, part_size):
    # (from wip/bigrestore's a43bc85, without its 64 MiB ranges: 40 MiB is several ranged GETs here)
    from runsync import transfer
    data = os.urandom(40 * MiB)
    entry = commit(scratch_store, {"ckpt/model.pt": data}, part_size)["ckpt/model.pt"]
    proxy = LinkProxy(s3_env["AWS_ENDPOINT_URL_S3"], stall_after=3 * MiB + 11)
    (tmp_path / "dest").mkdir()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        settings = transfer.Settings(max_attempts=2, connect_timeout=1.0, read_timeout=1.0)
        with transfer.Transfers(transfer.client(settings), scratch_store.layout.store, settings) as transfers:
            with pytest.raises(transfer.StoreError) as failed:
                transfers.fetch(entry, tmp_path / "dest" / ".model.pt.part")
    finally:
        proxy.close()
    assert proxy.stalls > 0
    assert "model.pt not restored" in str(failed.value) and "Read timeout" in str(failed.value)
    assert everything(tmp_path / "dest") == []  # no temp file left


@pytest.mark.parametrize("part_size", [4 * MiB, None], ids=["format 2", "format 1"])
def test_ranged_gets_give_their_connections_back_a_second_restore_opens_none(s3_env, scratch_store, tmp_path,
                                                                             monkeypatch, part_size):
    # fetch.py reads a range's body from http.client itself, past botocore's and urllib3's
    # wrappers; the connection must still go back to urllib3's pool when the range is whole.
    from runsync import transfer
    data = os.urandom(40 * MiB)  # three ranged GETs
    entry = commit(scratch_store, {"ckpt/model.pt": data}, part_size)["ckpt/model.pt"]
    proxy = LinkProxy(s3_env["AWS_ENDPOINT_URL_S3"])
    (tmp_path / "dest").mkdir()
    try:
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.endpoint)
        settings = transfer.Settings()
        with transfer.Transfers(transfer.client(settings), scratch_store.layout.store, settings) as transfers:
            for i in range(2):
                transfers.fetch(entry, tmp_path / "dest" / f"model-{i}.pt")
                assert (tmp_path / "dest" / f"model-{i}.pt").read_bytes() == data
                if i == 0:
                    first = proxy.connections
    finally:
        proxy.close()
    assert 1 <= first <= 3 and proxy.connections == first



@pytest.mark.parametrize("part_size", [4 * MiB, 5 * MiB, None], ids=["parts of 4 MiB", "of 5 MiB", "format 1"])
@pytest.mark.parametrize("crt", [True, False], ids=["crt", "botocore"])
def test_restored_bytes_are_written_in_huge_aligned_pages_or_small_pieces(s3_env, scratch_store, tmp_path,
                                                                           monkeypatch, crt, part_size):
    # A write of 256 KiB-1 MiB gets a middle-sized page-cache folio, which costs 10-20x the kernel
    # CPU of a small or a 2 MiB one on VMs that hand free memory back to their host (fetch.HUGE):
    # every write of a restore is whole 2 MiB pages at a 2 MiB boundary, or at most 32 KiB.
    from runsync import fetch, transfer
    files = {"one-get.bin": os.urandom(3 * MiB + 5), "ranged.bin": os.urandom(40 * MiB),
             "small.bin": os.urandom(MiB)}
    entries = commit(scratch_store, files, part_size)
    writes: dict[int, list[tuple[int, int]]] = {}
    pwrite = os.pwrite

    def counted(fd, data, offset):
        writes.setdefault(fd, []).append((offset, len(data)))
        return pwrite(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", counted)
    monkeypatch.setenv("RUNSYNC_CRT", "1" if crt else "0")
    settings = transfer.Settings()
    with transfer.Transfers(transfer.client(settings), scratch_store.layout.store, settings) as transfers:
        for name in files:
            writes.clear()
            transfers.fetch(entries[name], tmp_path / name)
            assert (tmp_path / name).read_bytes() == files[name]
            (written,) = writes.values()
            assert sum(n for _, n in written) == len(files[name])
            for offset, n in written:
                huge = offset % fetch.HUGE == 0 and n % fetch.HUGE == 0
                small = n <= 32 * 1024 and offset // fetch.HUGE == (offset + n - 1) // fetch.HUGE
                assert huge or small, (name, offset, n)
            in_huge = sum(n for _, n in written if n >= fetch.HUGE)
            if name == "ranged.bin":  # ranges of 2 MiB blocks: all of it; of 5 MiB parts, 15 MiB ranges:
                # all but the bytes up to the first boundary in each range and the last page's tail
                assert in_huge == len(files[name]) - (2 * MiB if part_size == 5 * MiB else 0), written
            elif name == "small.bin":  # no whole huge page in it
                assert in_huge == 0
            else:
                assert in_huge == 2 * MiB or crt, written  # botocore's reads are BLOCKs: the first is one


# ---------------------------------------------------------------- objects in one GET: the CRT's path

def restore_counted(cli, tmp_path, dest, crt: bool):
    """`runsync restore` into `dest` with the CRT on or off (RUNSYNC_CRT); its result and the
    GetObject requests botocore sent (runsync_testing.s3count counts the CRT's apart)."""
    from runsync_testing import s3count
    counts = tmp_path / f"counts-{dest.name}.json"
    env = {**cli.env, **s3count.environ(counts, tmp_path), "RUNSYNC_CRT": "1" if crt else "0"}
    result = cli("restore", RUN, "--to", str(dest), env=env)
    return result, s3count.read(counts).get("GetObject", 0)


@pytest.mark.parametrize("part_size", [4 * MiB, None], ids=["format 2", "format 1"])
def test_small_files_come_through_the_crt_and_through_botocore_with_runsync_crt_0(cli, tmp_path, scratch_store,
                                                                                  part_size):
    files = {f"data/{i:02d}.bin": os.urandom(1000 * i + 1) for i in range(20)} | {"ckpt/two-parts": os.urandom(5 * MiB)}
    commit(scratch_store, files, part_size)
    via_crt, crt_gets = restore_counted(cli, tmp_path, tmp_path / "crt", crt=True)
    via_boto, boto_gets = restore_counted(cli, tmp_path, tmp_path / "botocore", crt=False)
    assert via_crt.returncode == 0, via_crt.stderr
    assert via_boto.returncode == 0, via_boto.stderr
    assert tree(tmp_path / "crt") == tree(tmp_path / "botocore") == files
    assert everything(tmp_path / "crt") == everything(tmp_path / "botocore")  # no temp file left
    assert boto_gets - crt_gets == len(files)  # every file's GET left botocore for the CRT


def test_an_object_gone_behind_the_manifest_fails_alike_through_the_crt_and_botocore(cli, tmp_path, scratch_store):
    files = {f"data/{i}.bin": os.urandom(2000) for i in range(5)}
    entries = commit(scratch_store, files)
    scratch_store.client.delete_object(Bucket=scratch_store.layout.store.bucket, Key=entries["data/3.bin"].key)
    via_crt, _ = restore_counted(cli, tmp_path, tmp_path / "crt", crt=True)
    via_boto, _ = restore_counted(cli, tmp_path, tmp_path / "botocore", crt=False)
    assert via_crt.returncode == via_boto.returncode == 1
    assert "data/3.bin not restored" in via_crt.stderr and "NoSuchKey" in via_crt.stderr
    assert via_crt.stderr == via_boto.stderr
    assert "Traceback" not in via_crt.stderr
    good = {n: b for n, b in files.items() if n != "data/3.bin"}
    assert tree(tmp_path / "crt") == tree(tmp_path / "botocore") == good


@pytest.mark.parametrize("crt", [True, False], ids=["crt", "botocore"])
@pytest.mark.parametrize("fault, says", [
    ("wrong secret", ["SignatureDoesNotMatch", "fix: set AWS_SECRET_ACCESS_KEY"]),
    ("unknown key", ["InvalidAccessKeyId", "fix: set AWS_ACCESS_KEY_ID"]),
    ("no bucket", ["NoSuchBucket", "fix: create it"]),
    ("unreachable", ["cannot reach the S3 endpoint", "fix: check AWS_ENDPOINT_URL_S3"]),
    ("stalls", ["Read timeout on endpoint URL", "/objects/one"]),
])
def test_a_get_that_fails_says_what_and_the_fix_through_the_crt_and_botocore(s3_env, scratch_store, tmp_path,
                                                                             monkeypatch, crt, fault, says):
    """Wrong keys, a missing bucket or a dead endpoint only show at the GET here: the restore's
    download alone (`Transfers.download`), as the CLI's restore reaches it after its listing."""
    from runsync import fetch, keys, transfer
    data = os.urandom(3000)
    bucket = scratch_store.layout.store.bucket
    scratch_store.client.put_object(Bucket=bucket, Key="objects/one", Body=data)
    monkeypatch.setenv("RUNSYNC_CRT", "1" if crt else "0")
    if fault == "wrong secret":
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    elif fault == "unknown key":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "NOSUCHKEYID")
    elif fault == "no bucket":
        bucket = bucket + "-gone"
    elif fault == "unreachable":
        closed = socket.create_server(("127.0.0.1", 0))
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{closed.getsockname()[1]}")
        closed.close()  # nothing listens there now: connection refused
    else:  # a server that takes the connection and never answers
        silent = socket.create_server(("127.0.0.1", 0))
        held = []
        threading.Thread(target=lambda: [held.append(silent.accept()) for _ in range(8)], daemon=True).start()
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{silent.getsockname()[1]}")
    settings = transfer.Settings(max_attempts=2, connect_timeout=1.0, read_timeout=1.0)
    s3 = transfer.client(settings)
    with transfer.Transfers(s3, keys.StoreURL.parse(f"s3://{bucket}/runs"), settings) as transfers:
        with pytest.raises(transfer.StoreError) as failed:
            transfers.download("objects/one", tmp_path / "dest" / "one", sha(data), size=len(data))
    assert "one not restored" in str(failed.value)
    for words in says:
        assert words in str(failed.value)
    assert everything(tmp_path / "dest") == []  # neither the file nor its temp file


def test_a_write_that_writes_nothing_is_an_error_not_a_spin(monkeypatch, tmp_path):
    """os.pwrite returning 0 (no regular file does; a broken FUSE one could) fails the restore,
    which then leaves nothing, instead of looping forever; short writes still place every byte."""
    from runsync import fetch
    data = os.urandom(5 * MiB + 3)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda f, d, o: pwrite(f, d[:max(1, len(d) // 3)], o))  # short writes
    fetch._pwrite_all(fd, data, 7)
    assert os.pread(fd, len(data), 7) == data
    monkeypatch.setattr(os, "pwrite", lambda f, d, o: 0)
    with pytest.raises(OSError, match="wrote nothing"):
        fetch._pwrite_all(fd, data, 0)
    os.close(fd)
