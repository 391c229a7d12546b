"""One stored object → a temp file, every byte verified before the caller may place it.

A small object comes in one GET, checked as it is written: through the CRT's S3 client when it
is on (crtobjects.py: less CPU per request than botocore), else botocore. A large one comes in
parallel ranged GETs, each written with `pwrite` into a preallocated temp file: no second pass.
- Format 2 (the entry has `part_size` and `crc64nvme`): every range holds whole parts; each
  part's CRC64NVME (native, checksums.py) is checked as its bytes arrive.
- Format 1 (no parts): the whole-file SHA-256, folded in file order while ranges land; a range
  that completes the in-order prefix hashes what follows from the page cache.
A mismatch or a failure removes the temp file and raises; nothing is left to place.

For large objects, our own thread pool of ranged `get_object` rather than the CRT's S3 client:
the CRT's `recv_filepath` writes the file itself and checks no part against our manifest, and
the CRT measured no faster here (docs/format-2.md, bench/README.md); the socket reads and
hashlib/awscrt release the GIL for the bytes. A range's body is received straight into our
buffer by http.client (`_Socket`), not through botocore's and urllib3's per-block copies.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import errno
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from botocore.exceptions import (
    ClientError, ConnectionError as BotoConnectionError, FlexibleChecksumError, IncompleteReadError, ReadTimeoutError,
    ResponseStreamingError,
)

from . import checksums
from .errors import StoreError

if TYPE_CHECKING:  # imported where a socket is read (_Socket): a restore of small files needs none
    import http.client

MiB = 1024 * 1024
RANGE = 16 * MiB
"""Bytes per ranged GET of a format-1 object (a format-2 one: whole parts, about this much)."""
WORKERS = 16
"""Ranged GETs in flight for large objects, across all files (s5cmd's `-c 16` of the bench)."""
HUGE = 2 * MiB
"""A write of whole 2 MiB pages at a 2 MiB boundary: one huge page-cache folio each."""
SMALL = 32 * 1024
"""The most written in one call elsewhere (below 64 KiB: a small folio)."""
BLOCK = HUGE
"""Bytes read from a response per step, up to the next page boundary: then one `pwrite`."""
# Why both (`_pwrite_all`): on VMs whose free memory goes back to the host, a GiB written to a new
# file cost 3-8 s of kernel CPU in 256 KiB or 1 MiB writes, 0.2-0.4 s in writes of 64 KiB or less
# and in writes of 2, 4 or 8 MiB (sequential, and 16 writers of 16 MiB ranges alike; every size
# three times, interleaved: bench/README.md, "Write sizes"). The page cache gives a write a folio
# as large as its length and alignment allow; the middle orders are the costly ones there. s5cmd
# (Go's 32 KiB io.Copy) and the CRT (whole 8 MiB parts) each stay on one cheap side.


class _Short(Exception):
    """A body that ended before its Content-Length said: a cut connection, asked again."""


_RETRY = (ResponseStreamingError, ReadTimeoutError, BotoConnectionError, IncompleteReadError, _Short)
"""A body cut off halfway: botocore retries a request, not a body; the range is asked again."""


class Damaged(StoreError):
    """The stored bytes are not what the manifest committed."""


@dataclasses.dataclass(frozen=True)
class Want:
    """What the manifest says the object holds: a `manifest.FileEntry`'s fields (one serves)."""

    name: str
    key: str
    size: int
    sha256: str
    part_size: int = 0
    crc64nvme: tuple[str, ...] = ()



def _parted(want: Want) -> bool:
    """Format 2: part CRCs that cover the file (else the SHA-256 is what checks it)."""
    return bool(want.part_size) and len(want.crc64nvme) == checksums.part_count(want.size, want.part_size)


class Fetcher:
    """Fetches objects of one bucket; `pool` runs the ranges of large objects; `getter` (a
    `crtobjects.Objects`, or None: botocore) GETs the objects that come in one piece."""

    def __init__(self, s3, bucket: str, threshold: int, attempts: int, pool: concurrent.futures.Executor,
                 getter=None):
        self.s3, self.bucket, self.threshold, self.attempts, self.pool = s3, bucket, threshold, attempts, pool
        self.getter = getter

    def fetch(self, want: Want, tmp: Path, on_bytes: Callable[[int], None] = lambda n: None) -> None:
        """Write `want` to the new file `tmp`, verified; on any failure `tmp` is gone."""
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)  # the umask decides, as for any file the trainer writes
        job = _Job(self, want, fd, tmp, on_bytes)
        try:
            job.run()
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)


class _Job:
    def __init__(self, fetcher: Fetcher, want: Want, fd: int, tmp: Path, on_bytes):
        self.f, self.want, self.fd, self.tmp, self.on_bytes = fetcher, want, fd, tmp, on_bytes
        self.stop = threading.Event()
        if _parted(want):
            per = max(1, RANGE // want.part_size)
            step = per * want.part_size
        else:
            step = RANGE
        self.ranges = [(o, min(step, want.size - o)) for o in range(0, want.size, step)] or [(0, 0)]
        self.whole = want.size < fetcher.threshold or len(self.ranges) == 1
        self.sha = None if _parted(want) else hashlib.sha256()
        self._done: set[int] = set()
        self._next = 0  # the first range not yet in `sha`
        self._lock = threading.Lock()
        self._hashing = threading.Lock()

    def run(self) -> None:
        if self.whole and self.f.getter is not None and self.want.size:  # (the CRT asks for a range,
            self._crt_whole()                                        # which S3 refuses for no bytes: 416)
        elif self.whole:
            self.ranges = [(0, self.want.size)]
            self._range(0, whole=True)
        else:
            _preallocate(self.fd, self.want.size)
            futures = [self.f.pool.submit(self._range, i) for i in range(len(self.ranges))]
            try:
                for future in concurrent.futures.as_completed(futures):
                    future.result()
            except BaseException:
                self.stop.set()  # the others stop at their next block; none writes after we return
                concurrent.futures.wait(futures)
                raise
            self._fold()
        if self.sha is not None and self.sha.hexdigest() != self.want.sha256:
            raise self._damaged(f"SHA-256 {self.sha.hexdigest()}, the manifest says {self.want.sha256}")

    def _range(self, i: int, whole: bool = False) -> None:
        offset, length = self.ranges[i]
        if self.stop.is_set():  # another range failed: a queued one asks nothing more of the store
            raise StoreError(f"fetch of {self.want.key} stopped: another part failed")
        for attempt in range(self.f.attempts):
            try:
                self._get(i, offset, length, whole)
                break
            except _RETRY as err:
                if attempt + 1 == self.f.attempts or self.stop.is_set():
                    if isinstance(err, _Short):
                        raise StoreError(f"{err} ({attempt + 1} attempts); nothing was placed; fix: check "
                                         "the network to the S3 endpoint and restore again") from None
                    raise
        self.on_bytes(length)  # counted once whole, so a retry never counts twice
        if not whole and self.sha is not None:
            with self._lock:
                self._done.add(i)
            self._fold(blocking=False)

    def _get(self, i: int, offset: int, length: int, whole: bool) -> None:
        args = {"Bucket": self.f.bucket, "Key": self.want.key}
        if not whole:
            args["Range"] = f"bytes={offset}-{offset + length - 1}"
        response = self.f.s3.get_object(**args)
        if whole:
            total = response["ContentLength"]
        elif "ContentRange" in response:
            total = int(response["ContentRange"].rsplit("/", 1)[1])
        else:
            raise StoreError(f"the S3 endpoint ignored the Range of a GET of {self.want.key}; fix: use "
                             "an S3-compatible server that serves ranges")
        if total != self.want.size:
            raise self._damaged(f"{total} bytes, the manifest says {self.want.size}")
        body = response["Body"]
        sha = None
        if whole and not _parted(self.want):  # in one GET the bytes in hand are hashed in order
            from botocore.httpchecksum import StreamingChecksumBody  # here: restore-init starts without it
            if isinstance(body, StreamingChecksumBody) and \
                    response.get("ChecksumSHA256") == base64.b64encode(bytes.fromhex(self.want.sha256)).decode():
                # S3 holds the manifest's SHA-256 for this object and botocore checks these bytes
                # against it as they are read: a second hash would double the CPU.
                self.sha = None
            else:
                sha = self.sha = hashlib.sha256()  # (again from the start when the GET is retried)
        check = _Check(self, offset, offset + length, sha)
        buffer = memoryview(bytearray(min(BLOCK, length) or 1))  # reused: no new bytes per block
        socket = _Socket.under(body, self.want.key)
        read = socket.readinto if socket else body.readinto
        while check.pos < check.end:
            if self.stop.is_set():
                raise StoreError(f"fetch of {self.want.key} stopped: another part failed")
            # Each read ends on a page boundary (BLOCK is HUGE): a range that starts off one, as
            # ranges of parts that are not whole pages do, still writes whole pages after its first.
            n = read(buffer[:min(BLOCK - check.pos % BLOCK, check.end - check.pos)])
            if not n:  # the length was checked above: the connection ended early
                raise _Short(f"a body that ends at byte {check.pos} of {self.want.key}")
            _pwrite_all(self.fd, buffer[:n], check.pos)
            check.update(buffer[:n])
        if socket:
            if not socket.finish():
                raise self._damaged(f"more than the {length} bytes asked for at offset {offset}")
            return
        try:
            if body.read(1):  # also where botocore compares the checksum S3 sent
                raise self._damaged(f"more than the {length} bytes asked for at offset {offset}")
        except FlexibleChecksumError:
            raise self._damaged(f"bytes whose SHA-256 is not {self.want.sha256}, the manifest's") from None

    def _crt_whole(self) -> None:
        """The object in one GET through the CRT (crtobjects.py): each chunk written where its offset
        says and checked as it lands; the CRT delivers them in order, retries what was cut."""
        if not _parted(self.want):
            self.sha = hashlib.sha256()
        check = _Check(self, 0, self.want.size, self.sha)

        def on_headers(status: int, headers: dict[str, str]) -> None:
            total = int(headers["content-range"].rsplit("/", 1)[1]) if "content-range" in headers \
                else int(headers.get("content-length", -1))
            if status in (200, 206) and total != self.want.size:
                raise self._damaged(f"{total} bytes, the manifest says {self.want.size}")

        def on_body(chunk: memoryview, offset: int) -> None:
            if offset != check.pos:  # (the CRT promises order; a gap would be bytes unchecked)
                raise StoreError(f"the CRT delivered bytes at {offset} of {self.want.key}, expected {check.pos}")
            if offset + len(chunk) > self.want.size:
                raise self._damaged(f"more than the {self.want.size} bytes the manifest says")
            _pwrite_all(self.fd, chunk, offset)
            check.update(chunk)

        try:
            self.f.getter.get(self.want.key, on_headers, on_body, self.want.size)
        except ClientError as err:
            if err.response["Error"]["Code"] != "InvalidRange":
                raise
            # the CRT's first GET asks for a range from byte 0, which S3 refuses only when the
            # object is empty
            raise self._damaged(f"0 bytes, the manifest says {self.want.size}") from None
        if check.pos != self.want.size:
            raise self._damaged(f"{check.pos} bytes, the manifest says {self.want.size}")
        self.on_bytes(self.want.size)

    def _fold(self, blocking: bool = True) -> None:
        """Hash the ranges that now continue the in-order prefix, from the page cache. One thread
        hashes at a time; a range landing meanwhile is picked up by the re-check."""
        while self._hashing.acquire(blocking=blocking):
            try:
                buffer = None
                while True:
                    with self._lock:
                        if self._next not in self._done:
                            break
                        i = self._next
                    offset, length = self.ranges[i]
                    buffer = buffer or memoryview(bytearray(4 * MiB))  # one per pass, not a bytes per read
                    at = offset
                    while at < offset + length:
                        n = os.preadv(self.fd, [buffer[:min(4 * MiB, offset + length - at)]], at)
                        if not n:
                            raise StoreError(f"{self.tmp} is shorter than the {at} bytes just written to it")
                        self.sha.update(buffer[:n])
                        at += n
                    with self._lock:
                        self._next += 1
            finally:
                self._hashing.release()
            with self._lock:
                if self._next not in self._done:
                    return

    def _damaged(self, what: str) -> Damaged:
        return Damaged(f"checksum mismatch restoring {self.want.name}: s3://{self.f.bucket}/{self.want.key} "
                       f"holds {what}; the stored object is damaged and nothing was placed; fix: restore "
                       "an earlier checkpoint, or sync the file again from a good copy")


class _Socket:
    """The body's bytes straight from the connection into our buffer. botocore's and urllib3's
    `readinto` read a new bytes object per block and copy it over (urllib3 2.x): on a large
    restore that copy and its allocation cost more CPU than checking the bytes (bench/README.md,
    "Reading past the wrappers"). http.client's own `readinto` receives into the buffer we give.
    Only a plain body: botocore checks no checksum on it and nothing is content-encoded."""

    def __init__(self, raw, response: http.client.HTTPResponse, key: str):
        self.raw, self.response, self.key = raw, response, key

    @classmethod
    def under(cls, body, key: str) -> "_Socket | None":
        import http.client  # here: a restore of small files alone (the CRT's) needs none of it (11 ms)

        from botocore.response import StreamingBody  # (a StreamingChecksumBody is its subclass)

        raw = getattr(body, "_raw_stream", None)
        response = getattr(raw, "_fp", None)
        if type(body) is not StreamingBody or not isinstance(response, http.client.HTTPResponse) \
                or raw.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
            return None
        return cls(raw, response, key)

    def readinto(self, buffer: memoryview) -> int:
        n = self._io(self.response.readinto, buffer)
        if not n:
            self.raw.close()  # ended early: this connection is not reused
        return n

    def finish(self) -> bool:
        """After the last byte asked for: whether the body ended there. http.client counts the
        length and closes its response at the end (a chunked one at its last chunk, read here);
        urllib3's connection then goes back to its pool, as after urllib3's own last read."""
        if self._io(self.response.read, 1) or not self.response.isclosed():  # (an empty body closes here)
            self.raw.close()  # bytes left over: this connection is not reused
            return False
        self.raw.release_conn()
        return True

    def _io(self, call, arg):
        """As botocore's reads: a stall is its ReadTimeoutError (the message names the endpoint), a
        cut or reset connection is asked again; either way this connection is not reused."""
        import http.client  # loaded by now (botocore's connections are its): a lookup per block

        try:
            return call(arg)
        except TimeoutError as err:
            from botocore.exceptions import ReadTimeoutError

            self.raw.close()
            raise ReadTimeoutError(endpoint_url=self.raw.geturl() or self.key, error=err) from None
        except (OSError, http.client.HTTPException) as err:
            self.raw.close()
            raise _Short(f"the connection failed while reading {self.key}: {err}") from None


class _Check:
    """Checks the bytes of one range of `job`'s object as they arrive in order from `offset`:
    format 2, each whole part's CRC64NVME as its last byte lands; format 1, into `sha`."""

    def __init__(self, job: _Job, offset: int, end: int, sha):
        self.job, self.pos, self.end, self.sha = job, offset, end, sha
        self.part_size = job.want.part_size if _parted(job.want) else 0
        self.crc, self.part = 0, offset // self.part_size if self.part_size else 0
        self.part_end = min(offset + self.part_size, end) if self.part_size else end

    def update(self, chunk: memoryview) -> None:
        if self.sha is not None:
            self.sha.update(chunk)
        if not self.part_size:
            self.pos += len(chunk)
            return
        want = self.job.want
        while chunk:  # a chunk may end one part and begin the next
            n = min(len(chunk), self.part_end - self.pos)
            self.crc = checksums.crc64nvme(chunk[:n], self.crc)
            self.pos, chunk = self.pos + n, chunk[n:]
            if self.pos == self.part_end:
                if checksums.encode(self.crc) != want.crc64nvme[self.part]:
                    start = self.part * self.part_size
                    raise self.job._damaged(f"part {self.part} (bytes {start}-{self.pos - 1}) with CRC64NVME "
                                            f"{checksums.encode(self.crc)}, the manifest says {want.crc64nvme[self.part]}")
                self.crc, self.part = 0, self.part + 1
                self.part_end = min(self.pos + self.part_size, self.end)


def _preallocate(fd: int, size: int) -> None:
    """Reserve the blocks up front: a full disk fails before the first GET."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size)


def _pwrite_all(fd: int, data, offset: int) -> None:
    """All of `data` at `offset`: whole 2 MiB pages at a 2 MiB boundary in one call (a huge folio
    each), the rest `SMALL` at a time, never across a boundary (small folios): see `HUGE`."""
    view = memoryview(data)
    while view:
        into = offset % HUGE
        if not into and len(view) >= HUGE:
            n = len(view) - len(view) % HUGE
        else:
            n = min(len(view), SMALL, HUGE - into)
        n = os.pwrite(fd, view[:n], offset)
        if n <= 0:  # (no regular file does this; a broken FUSE one could, and would spin here)
            raise OSError(errno.EIO, f"pwrite wrote nothing at byte {offset}")
        view, offset = view[n:], offset + n
