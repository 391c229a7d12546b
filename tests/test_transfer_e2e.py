"""What is hashed is what is uploaded, and only a regular file inside the run dir: a name swapped
for a symlink (to a file outside, of the same size and mtime) between hashing and upload is
never followed. Real files, a real SeaweedFS. And the CRT's buffers by memory limit."""

from __future__ import annotations

import errno
import os
import random
import threading

import pytest

from runsync import checksums, hashing, keys, stored, transfer
from runsync.errors import StoreError

pytestmark = [pytest.mark.s3]

MiB = 1024 * 1024


@pytest.fixture
def tree(tmp_path):
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    return run, outside


def swap_for_link(path, target) -> None:
    """Replace `path` by a symlink to `target`, atomically, with `path`'s size and mtime on the target."""
    st = os.stat(path)
    os.truncate(target, st.st_size)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.symlink(target, str(path) + ".swap")
    os.replace(str(path) + ".swap", path)


def test_hashing_never_follows_a_symlink_or_leaves_the_run_dir(tree):
    run, outside = tree
    (outside / "secret").write_bytes(b"s" * 100)
    os.symlink(outside / "secret", run / "ckpt" / "link.pt")
    os.symlink(outside, run / "linked-dir")
    os.mkfifo(run / "fifo.pt")
    for name in ("ckpt/link.pt", "linked-dir/secret", "fifo.pt", "ckpt"):
        with pytest.raises(transfer.NotRegular):
            transfer.hash_file(run / name, root=run)
    (run / "ckpt" / "ok.pt").write_bytes(b"x" * 10)
    assert transfer.hash_file(run / "ckpt" / "ok.pt", root=run).size == 10


@pytest.mark.parametrize("size", [3 * MiB, 20 * MiB], ids=["one put", "multipart"])
@pytest.mark.parametrize("crt", [True, False], ids=["crt", "python"])
def test_a_file_swapped_for_a_symlink_after_hashing_is_not_uploaded(tree, s3_env, s3_client, bucket, size, crt):
    run, outside = tree
    path = run / "ckpt" / "model.pt"
    path.write_bytes(os.urandom(size))
    digest = transfer.hash_file(path, root=run)
    (outside / "secret").write_bytes(b"S" * size)
    swap_for_link(path, outside / "secret")
    store = keys.StoreURL.parse(f"s3://{bucket}/runs")
    with transfer.Transfers(transfer.client(), store, transfer.Settings(crt=crt)) as transfers:
        ((_, error),) = transfers.upload([transfer.Upload(str(path), "runs/model.pt", digest)])
        assert isinstance(error, transfer.FileChanged)
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_a_file_renamed_over_after_hashing_uploads_the_bytes_hashed(tree, s3_env, s3_client, bucket):
    """The trainer's next checkpoint renamed into place while the last one uploads: the object is
    the version that was hashed, never a mix."""
    run, _ = tree
    path = run / "ckpt" / "model.pt"
    first = os.urandom(20 * MiB)
    path.write_bytes(first)
    digest = transfer.hash_file(path, root=run)
    store = keys.StoreURL.parse(f"s3://{bucket}/runs")
    with transfer.Transfers(transfer.client(), store) as transfers:
        up = transfer.Upload(str(path), "runs/model.pt", digest)
        (run / "ckpt" / "next.tmp").write_bytes(os.urandom(20 * MiB))
        os.replace(run / "ckpt" / "next.tmp", path)
        ((_, error),) = transfers.upload([up])
        # refusing (FileChanged) is fine too; storing other bytes under this digest's key is not
        assert error is None or isinstance(error, transfer.FileChanged)
    objects = s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])
    for obj in objects:
        assert s3_client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read() == first


@pytest.mark.parametrize("crt", [True, False], ids=["crt", "python"])
def test_a_file_rewritten_in_place_while_its_one_put_goes_is_stored_as_its_digests_say(tree, s3_env, s3_client, bucket, crt):
    """A trainer rewriting a file in place (same size) while it uploads as one PUT: each upload
    either says FileChanged and stores nothing, or S3 holds exactly the bytes whose part CRCs
    it reports (what the manifest records), never other bytes. Parts of 5 MiB in one 12 MiB
    PUT, so a CRC that crosses a part's end is checked too."""
    run, _ = tree
    path = run / "ckpt" / "log.bin"
    size = 12 * MiB + 7
    path.write_bytes(os.urandom(size))
    stop = threading.Event()

    def rewrite() -> None:  # bursts of in-place writes, with quiet gaps an upload may fall into
        fd = os.open(path, os.O_WRONLY)
        try:
            while not stop.is_set():
                for _ in range(4):
                    os.pwrite(fd, os.urandom(64 * 1024), random.randrange(size - 64 * 1024))
                stop.wait(random.uniform(0, 0.03))
        finally:
            os.close(fd)

    store = keys.StoreURL.parse(f"s3://{bucket}/runs")
    settings = transfer.Settings(crt=crt, multipart_chunksize=5 * MiB)
    outcomes = {"stored": 0, "changed": 0}
    writer = threading.Thread(target=rewrite)
    writer.start()
    try:
        with transfer.Transfers(transfer.client(), store, settings) as transfers:
            for i in range(30):
                ((up, error),) = transfers.upload([transfer.Upload(str(path), f"runs/v{i}", transfer.look(path))])
                if error is None:
                    got = s3_client.get_object(Bucket=bucket, Key=f"runs/v{i}")["Body"].read()
                    assert len(got) == size and hashing.of_buffer(got, 5 * MiB) == up.sums, f"v{i}"
                    outcomes["stored"] += 1
                else:
                    assert isinstance(error, transfer.FileChanged), repr(error)
                    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket, Prefix=f"runs/v{i}")
                    outcomes["changed"] += 1
    finally:
        stop.set()
        writer.join()
    assert sum(outcomes.values()) == 30, outcomes


def _put_one(bucket, path, crt=True):
    store = keys.StoreURL.parse(f"s3://{bucket}/runs")
    with transfer.Transfers(transfer.client(), store, transfer.Settings(crt=crt)) as transfers:
        ((up, error),) = transfers.upload([transfer.Upload(str(path), "runs/one", transfer.look(path))])
    return up, error


@pytest.mark.parametrize("size", [0, 3 * MiB])
@pytest.mark.parametrize("crt", [True, False], ids=["crt", "python"])
def test_a_file_written_again_as_its_one_put_reads_it_is_refused_and_nothing_is_stored(
        tree, s3_env, s3_client, bucket, monkeypatch, size, crt):
    """The trainer appends right after the upload opened the file (checked unchanged): the
    upload says FileChanged, naming the file, and stores no object, the CRT's path and
    botocore's alike, an empty file too (which the CRT never reads)."""
    run, _ = tree
    path = run / "ckpt" / "log.txt"
    path.write_bytes(os.urandom(size))
    opened = transfer._open_hashed

    def then_appended(up):
        fd = opened(up)
        with open(path, "ab") as f:
            f.write(b"more")
        return fd

    monkeypatch.setattr(transfer, "_open_hashed", then_appended)
    _, error = _put_one(bucket, path, crt)
    assert isinstance(error, transfer.FileChanged) and str(path) in str(error), repr(error)
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_a_read_error_of_a_small_file_is_named_as_the_disks_not_the_endpoints(tree, s3_env, s3_client, bucket,
                                                                                monkeypatch, capfd):
    """EIO while the CRT reads the file for its one PUT: the upload fails with that OSError (the
    worker's log line names the file and the error), not as the CRT's unknown error that reads
    "cannot reach the S3 endpoint"; nothing is stored, and no traceback lands outside the JSON log."""
    run, _ = tree
    path = run / "ckpt" / "model.pt"
    path.write_bytes(os.urandom(2 * MiB))

    def eio(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "preadv", eio)  # the CRT's path (botocore's reads in C: not patchable)
    _, error = _put_one(bucket, path)
    assert isinstance(error, OSError) and error.errno == errno.EIO, repr(error)  # not the CRT's "unknown error"
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert "Traceback" not in capfd.readouterr().err


# (container limit in MiB, None: none known → the CRT's buffer cap in MiB, None: no CRT)
BUDGETS = [(None, 1024), (64 * 1024, 1024), (1024, 832), (512, 320), (448, 256), (447, None), (384, None), (128, None)]


@pytest.mark.parametrize("limit,cap", BUDGETS)
def test_the_crt_gets_what_the_limit_leaves(limit, cap):
    sizes = transfer.Settings().within(limit * MiB if limit else None)
    assert (sizes.crt_memory // MiB if sizes.crt else None) == cap


@pytest.mark.slow
def test_the_sidecar_never_uploads_through_a_symlink(sidecars, store, tmp_path):
    """Through the real sidecar: a symlink that a save glob names, pointing out of the run dir, and
    one renamed over a regular file right after its close event; neither target is ever stored."""
    from runsync import contract

    secret = os.urandom(2 * MiB)
    (tmp_path / "secret.bin").write_bytes(secret)
    sc = sidecars({contract.SAVE: "ckpt/*.pt:live"}).start()
    ckpt = sc.run_dir / "ckpt"
    ckpt.mkdir()
    os.symlink(tmp_path / "secret.bin", ckpt / "link.pt")
    for i in range(5):  # each close event is handled after, or before, the swap: both must hold
        path = ckpt / f"swapped-{i}.pt"
        path.write_bytes(os.urandom(2 * MiB))
        os.symlink(tmp_path / "secret.bin", ckpt / f".swap-{i}")
        os.replace(ckpt / f".swap-{i}", path)
    (ckpt / "real.pt").write_bytes(b"real")
    sc.flush(timeout=60)
    files = store.files()
    assert "ckpt/real.pt" in files and "ckpt/link.pt" not in files
    for key in store.keys():
        assert store.read(key) != secret, key


@pytest.mark.parametrize("crt", [True, False], ids=["crt", "python"])
def test_a_multipart_upload_is_checked_against_the_object_s3_stored(tree, s3_env, s3_client, bucket, crt):
    """After a multipart upload, S3's full-object CRC64NVME (HeadObject, ChecksumMode) is compared
    with the entry's part CRCs combined: equal for the bytes sent; digests of other bytes under
    that key are an error naming the key, the file and both values."""
    run, _ = tree
    path = run / "ckpt" / "model.pt"
    data = os.urandom(37 * MiB + 5)  # three 16 MiB parts, the last short
    path.write_bytes(data)
    store = keys.StoreURL.parse(f"s3://{bucket}/runs")
    with transfer.Transfers(transfer.client(), store, transfer.Settings(crt=crt)) as transfers:
        ((up, error),) = transfers.upload([transfer.Upload(str(path), "runs/model.pt", transfer.look(path))])
    assert error is None and len(up.sums.crc64nvme) == 3
    stored.check(s3_client, bucket, "runs/model.pt", up.sums, len(data), str(path))
    other = hashing.of_buffer(data[:-1] + bytes([data[-1] ^ 1]), up.sums.part_size)
    with pytest.raises(StoreError, match="checksum") as refused:
        stored.check(s3_client, bucket, "runs/model.pt", other, len(data), str(path))
    ours = checksums.encode(checksums.whole(other.crc64nvme, len(data), other.part_size))
    theirs = s3_client.head_object(Bucket=bucket, Key="runs/model.pt", ChecksumMode="ENABLED")["ChecksumCRC64NVME"]
    for named in (f"s3://{bucket}/runs/model.pt", str(path), ours, theirs):
        assert named in str(refused.value)
