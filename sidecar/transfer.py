"""Upload and download intents through boto3's transfer manager (multipart, concurrency).

Credentials, region and endpoint come from the standard AWS variables, which boto3 reads
itself (`AWS_ENDPOINT_URL_S3` for S3-compatible services). Every botocore failure leaves this
module as a `StoreError` whose message names the store, the problem and the fix.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime
import email.utils
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from botocore.exceptions import (
    BotoCoreError, ClientError, ConnectionError as BotoConnectionError, NoCredentialsError,
    NoRegionError, PartialCredentialsError, SSLError,
)

# boto3, s3transfer and botocore's client are imported where they are used: restore-init asks
# its questions through the CRT (crtclient.py) and starts without them (issue 17).
from . import checksums, contract, crt, crtobjects, encryption, fetch, hashing, keys, progress, regions, stored
from .hashing import _FD_PATH, Digest, FileChanged, NotRegular, hash_file, look, open_regular  # noqa: F401 - callers' names
from .errors import StoreError

MiB = 1024 * 1024
_LARGE_BODIES = 4
"""Small files over 1 MiB read into memory at once: at most 4 x 16 MiB beside the 1 MiB ones."""
_CRT_MEMORY = crt.MEMORY_LIMIT  # the field `crt` below hides the module inside the class body


@dataclasses.dataclass(frozen=True)
class Settings:
    """Knobs of the S3 client and the transfer manager."""

    multipart_threshold: int = 16 * MiB
    """Files at least this large go multipart; smaller ones are read whole, hashed, and sent as
    one PUT that S3 checks against our CRC64NVME."""
    multipart_chunksize: int = 16 * MiB
    """Part size, and the part size of an entry's CRC64NVMEs. Memory in flight is about
    `max_concurrency` x this."""
    max_concurrency: int = 10
    """Parallel requests of one transfer manager (parts and files together)."""
    connect_timeout: float = 3.0
    """Seconds to open a connection: an unreachable endpoint fails fast, then is retried."""
    read_timeout: float = 60.0
    max_attempts: int = 4
    """Attempts per request, with botocore's standard backoff between them."""
    crt: bool = True
    """Multipart uploads through the AWS CRT when it is installed (see crt.py)."""
    crt_memory: int = _CRT_MEMORY
    """The CRT's buffer cap, in bytes (`within` derives it from the container's memory limit)."""

    @property
    def pool_connections(self) -> int:
        """Connections a client keeps: a restore's files and their ranges at once."""
        return max(self.max_concurrency * 2, 2 * fetch.WORKERS, 10)

    def within(self, memory_limit: int | None) -> "Settings":
        """These settings for a process that must stay under `memory_limit` bytes (the
        container's limit; None: none known): the CRT's buffers fit beside the rest, or the CRT
        is off."""
        budget = crt.memory_limit(memory_limit)
        if budget is None:
            return dataclasses.replace(self, crt=False)
        return dataclasses.replace(self, crt_memory=min(self.crt_memory, budget))


def endpoint_override() -> str | None:
    """The S3-compatible endpoint the standard AWS variables name, if any (else AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def env_region() -> str | None:
    """The region the standard AWS variables name, if any (a profile's is botocore's to read)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def client(settings: Settings = Settings()):
    """A new S3 client from the standard AWS environment; every object it writes is encrypted as
    RUNSYNC_SSE says (encryption.py). A caller may register its own events on it; `shared()`
    hands out one client per process instead."""
    import botocore.config

    endpoint = endpoint_override()
    region = env_region() or contract.DEFAULT_REGION
    config = botocore.config.Config(
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
        retries={"mode": "standard", "max_attempts": settings.max_attempts},
        max_pool_connections=settings.pool_connections,
        # S3-compatible servers on an IP or a plain host name need path-style URLs.
        s3={"addressing_style": "path" if endpoint else "auto"},
        # runsync checks every body it reads itself (fetch.py: each part's CRC64NVME, or the
        # SHA-256 as it is written) and sends its own CRC64NVME with every file it PUTs; botocore's
        # default checksums of the same bytes would be a second pass per file, per request.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    environment = _environment()
    with _lock:  # a boto3 Session is not thread-safe; its clients are
        session = _sessions.pop(environment, None) or _session()
        _sessions[environment] = session  # the newest last: the oldest is dropped first
        while len(_sessions) > _KEEP:
            _sessions.popitem(last=False)
        s3 = session.client("s3", region_name=region, config=config)
    encryption.install(s3.meta.events, encryption.from_env())
    if os.environ.get(BENCH_PROBE):
        s3.meta.events.register("before-send.s3", _note_first_request)
    return s3


def _session() -> boto3.session.Session:
    """A boto3 session whose responses' timestamps are parsed by the standard library: botocore's
    default (dateutil) took 0.4 ms of CPU per response here against 0.03 ms, about a tenth of a
    small file's GET (bench/README.md), for a `LastModified` runsync rarely reads."""
    import boto3.session
    import botocore.session

    from . import botodata

    core = botocore.session.get_session()
    botodata.use(core)  # S3's model without its documentation, when built for this botocore
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_timestamp)
    return boto3.session.Session(botocore_session=core)


def _timestamp(value):
    """S3's two forms (an HTTP date in headers, ISO 8601 in XML) as an aware datetime; anything
    else as botocore parses it."""
    try:
        if isinstance(value, str) and value[-3:] == "GMT":
            return email.utils.parsedate_to_datetime(value)
        if isinstance(value, str) and value[-1:] == "Z":
            return datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        pass
    import botocore.utils

    return botocore.utils.parse_timestamp(value)


def shared(settings: Settings = Settings()):
    """This process's one S3 client for `settings` and the current AWS environment: made on first
    use, then reused by every caller and thread (boto3's clients are thread-safe). A new client
    costs 10-30 ms, a new session 0.15-0.2 s more (bench/startup.py). Register no events on it."""
    key = (settings, _environment())
    with _lock:
        s3 = _clients.get(key)
    if s3 is None:
        s3 = client(settings)
        with _lock:
            s3 = _clients.setdefault(key, s3)
            while len(_clients) > _KEEP:
                _clients.pop(next(iter(_clients)))
    return s3


def _environment() -> tuple[tuple[str, str], ...]:
    """What a session and its clients are made from: credentials, profile, region, endpoint
    (AWS_*, BOTO_*) and the encryption of writes (RUNSYNC_SSE*). Another value, another client."""
    return tuple(sorted((k, v) for k, v in os.environ.items()
                        if k.startswith(("AWS_", "BOTO_", contract.ENV_SSE)) or k == BENCH_PROBE))


_lock = threading.Lock()
_sessions: collections.OrderedDict = collections.OrderedDict()
"""One boto3 Session per environment: botocore's loader keeps the S3 model it parsed (about
0.15 s of JSON) per session, and a session resolves its credentials once."""
_clients: dict = {}
_KEEP = 8
"""Environments remembered; a long test session sees a few (wrong keys, a KMS server)."""

BENCH_PROBE = "RUNSYNC_BENCH_FIRST_REQUEST"
"""A file bench/startup.py names: the wall-clock time of this process's first S3 request and the
CPU seconds it had used by then are appended to it (start-up measured without a profiler's overhead). Unset everywhere else."""
_first_sent = threading.Event()


def _note_first_request(**_) -> None:
    if not _first_sent.is_set():
        _first_sent.set()
        with open(os.environ[BENCH_PROBE], "a") as f:
            f.write(f"{time.time()!r} {time.process_time()!r}\n")  # wall clock, this process's CPU


def masked(key_id: str) -> str:
    """An access key id as `aws configure list` shows it: enough to tell which, not to reuse."""
    return "****" + key_id[-4:] if len(key_id) > 4 else "****"


def signing_key_id(client_) -> str:
    """The access key id `client_` signs with: the environment's, else the one its credential
    chain found (a profile, a container's endpoint, a web identity); "" if none is known."""
    key = os.environ.get("AWS_ACCESS_KEY_ID", "")
    if key or client_ is None:
        return key
    try:
        if hasattr(client_, "access_key_id"):  # crtclient.Client
            return client_.access_key_id()
        found = client_._request_signer._credentials  # botocore keeps its chain's answer there
        return found.get_frozen_credentials().access_key if found else ""
    except Exception:  # noqa: BLE001 - only a detail of an error line
        return ""


def describe(err: Exception, store: keys.StoreURL, client_=None) -> StoreError:
    """A botocore failure → one `StoreError` line: what failed, with which value, and the fix."""
    endpoint = getattr(getattr(client_, "meta", None), "endpoint_url", None) or "AWS S3"
    key_id = lambda: masked(signing_key_id(client_))  # noqa: E731 - asked only where a key was refused
    if crt.is_crt_error(err) and (refused := crtobjects.refused_certificate(err, endpoint)):
        err = SSLError(endpoint_url=endpoint, error=refused)  # inside a small file's GET or PUT (crtobjects)
    if isinstance(err, (NoCredentialsError, PartialCredentialsError)):
        return StoreError(f"no AWS credentials for {store}; fix: set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY (or use workload identity)")
    if isinstance(err, NoRegionError):
        return StoreError(f"no AWS region for {store}; fix: set AWS_REGION")
    if isinstance(err, SSLError):
        if "certificate verify failed" not in str(err).lower():
            # no certificate refused (an https:// URL on a plain-HTTP port, a protocol mismatch)
            return StoreError(f"the TLS handshake with the S3 endpoint {endpoint} for {store} failed ({err}); fix: "
                              "check AWS_ENDPOINT_URL_S3: https:// for a server that speaks TLS on that port, "
                              "http:// for one that does not")
        return StoreError(f"the S3 endpoint {endpoint} for {store} presented a certificate this client does not "
                          f"trust ({err}); fix: set AWS_CA_BUNDLE to the CA file that signed it")
    if isinstance(err, BotoConnectionError) or crt.is_crt_error(err):  # the CRT's own: no connection, DNS, TLS
        what = err.name if crt.is_crt_error(err) else type(err).__name__
        return StoreError(f"cannot reach the S3 endpoint {endpoint} for {store} ({what}); "
                          "fix: check AWS_ENDPOINT_URL_S3 and that the server is up")
    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        signed = getattr(getattr(client_, "meta", None), "region_name", None) or env_region()
        region = regions.refused_for(err.response, signed)
        if region is not None:
            return StoreError(regions.wrong(store.bucket, region, signed,
                                            "set AWS_REGION={region} (in a pod: the Store's spec.region)"))
        if code == "SignatureDoesNotMatch":
            return StoreError(f"the secret key for access key {key_id()!r} is wrong at {endpoint} "
                              f"(SignatureDoesNotMatch); fix: set AWS_SECRET_ACCESS_KEY to that key's secret")
        if code == "InvalidAccessKeyId":
            return StoreError(f"access key {key_id()!r} is unknown to {endpoint} (InvalidAccessKeyId); "
                              "fix: set AWS_ACCESS_KEY_ID to a key of that service")
        if code in ("NoSuchBucket",) or (status == 404 and code in ("404", "NotFound")):
            return StoreError(f"bucket {store.bucket!r} does not exist at {endpoint} (NoSuchBucket); "
                              "fix: create it, or correct --store / RUNSYNC_STORE")
        if code in ("AccessDenied", "403", "Forbidden"):
            return StoreError(f"access key {key_id()!r} may not use {store} at {endpoint} (AccessDenied); "
                              "fix: grant it s3:ListBucket, s3:GetObject and s3:PutObject there")
        if code == "BadDigest" or code.startswith("InvalidChecksum"):
            return StoreError(f"{store}: S3 refused an upload whose checksum did not match ({code}); "
                              "the file changed while uploading or the network corrupted it; retry")
        return StoreError(f"S3 error {code or status} on {store} at {endpoint}: "
                          f"{err.response.get('Error', {}).get('Message', err)}")
    if isinstance(err, BotoCoreError):
        return StoreError(f"S3 client error on {store} at {endpoint}: {err}")
    return StoreError(f"{store}: {err}")


def check_store(s3, store: keys.StoreURL) -> None:
    """Fail fast with a clear message when the bucket cannot be listed with these credentials."""
    try:
        s3.list_objects_v2(Bucket=store.bucket, Prefix=store.key() or "", MaxKeys=1)
    except Exception as err:  # noqa: BLE001 - every failure becomes one StoreError
        raise describe(err, store, s3) from None


def check_encryption(s3, layout: keys.Layout) -> None:
    """Before a writer's first write: S3 applies the server-side encryption RUNSYNC_SSE asks for,
    or a `StoreError` names the mode and the fix (encryption.check)."""
    encryption.check(s3, layout.store.bucket, layout.sse_check_key, encryption.from_env(), str(layout.store))


# ------------------------------------------------------------------------------ retries

@dataclasses.dataclass(frozen=True)
class Backoff:
    """How long to wait before attempt `n` of a whole upload, a commit or the sidecar's start-up
    read. Each S3 request is retried by botocore first (`Settings.max_attempts`); this is the
    wait after those gave up: doubling, capped, and jittered so replicas do not retry in lockstep."""

    base: float = 1.0
    cap: float = 30.0

    def delay(self, attempt: int, jitter: Callable[[float, float], float] = random.uniform) -> float:
        return min(self.cap, self.base * 2 ** min(attempt, 10)) * jitter(0.5, 1.0)


def failure_kind(error: str) -> str:
    """A short label for a failure message of this module (`describe`), for the failures metric."""
    for marker, kind in (("cannot reach", "unreachable"), ("SignatureDoesNotMatch", "credentials"),
                         ("InvalidAccessKeyId", "credentials"), ("NoSuchBucket", "no_bucket"),
                         ("AccessDenied", "access_denied"), ("Cancelled", "cancelled"),
                         ("checksum", "checksum")):
        if marker in error:
            return kind
    return "s3_error" if "S3" in error else "other"


def _open_hashed(up: "Upload") -> int:
    """A descriptor of the very file `up.digest` was taken of, unchanged; `FileChanged` if the
    name now holds something else (another file, a symlink) or the file changed."""
    try:
        fd = open_regular(up.path)
    except NotRegular:
        raise FileChanged(up.path) from None
    st = os.fstat(fd)
    if hashing.seen(st) != up.digest.seen or \
            (up.digest.inode != (0, 0) and (st.st_dev, st.st_ino) != up.digest.inode):
        os.close(fd)
        raise FileChanged(up.path)
    return fd


def _run_here(fn: Callable, *args) -> concurrent.futures.Future:
    """`fn(*args)` run now, on this thread, as a finished future (as a pool's would be)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(fn(*args))
    except Exception as err:  # noqa: BLE001 - raised again by `_finish`, as a pool's future would
        future.set_exception(err)
    return future


# ------------------------------------------------------------------------------ transfers

@dataclasses.dataclass(frozen=True)
class Upload:
    """One file to put at `key`, as it was when looked at (`digest`: size, mtime, inode). The
    upload yields it back with `sums` taken from the bytes it sent."""

    path: str
    key: str
    digest: Digest
    sums: hashing.Digests | None = None


@dataclasses.dataclass(frozen=True)
class Hooks:
    """How a caller watches a sync or a restore (the CLI draws bars with these)."""

    on_plan: Callable[[int, int], None] = lambda files, nbytes: None
    on_bytes: Callable[[int], None] = lambda n: None


def _progress(on_bytes: Callable[[int], None]):
    """An s3transfer subscriber that reports the bytes sent to `on_bytes`."""
    from s3transfer.subscribers import BaseSubscriber

    class Progress(BaseSubscriber):
        def on_progress(self, future, bytes_transferred, **kwargs):
            on_bytes(bytes_transferred)

    return Progress()


class _Both:
    """A multipart upload's future and its digests' future as one: the digests when both are done;
    cancelling cancels the upload (the digest read ends by itself)."""

    def __init__(self, sent, digests: concurrent.futures.Future):
        self.sent, self.digests = sent, digests

    def result(self) -> hashing.Digests:
        try:
            self.sent.result()
        finally:
            concurrent.futures.wait([self.digests])  # it reads the descriptor `_finish` closes next
        return self.digests.result()

    def cancel(self) -> None:
        self.sent.cancel()


class Transfers:
    """A transfer manager bound to one store; use as a context manager."""

    def __init__(self, s3, store: keys.StoreURL, settings: Settings = Settings()):
        self.s3 = s3
        self.store = store
        self.settings = settings
        self._lock = threading.Lock()
        self._inflight: set = set()
        self._fds: dict = {}  # multipart future → the descriptor of the file it reads
        self._tokens: dict = {}  # future → its token in `meter`
        self.meter = progress.Meter()
        """Bytes left and the rate of the uploads in flight (the final flush asks it)."""
        self._python = None  # s3transfer's manager: built on the first multipart upload without the CRT
        self._crt = None  # built on the first multipart upload, if the CRT is installed
        self._fetcher = None  # built on the first download, with its pool of ranged GETs
        self._objects = None  # the CRT's small GETs and PUTs, built on first use
        self._objects_lock = threading.Lock()  # (`_lock` is held while the fetcher is built)
        self._parts = None
        self._use_crt = settings.crt and crt.available()
        # Files under the multipart threshold go as one request each, from this pool: the
        # transfer manager's futures and queues cost more CPU per small file than the request.
        self._small = concurrent.futures.ThreadPoolExecutor(settings.max_concurrency * 2,
                                                            thread_name_prefix="s3-small")
        # A small file is read whole into memory: past 1 MiB, only a few at once (crt.RESERVE).
        self._large_bodies = threading.Semaphore(_LARGE_BODIES)
        # Part CRCs of multipart uploads, read beside the manager's own reads: a few threads are
        # plenty (the CRT's CRC64NVME releases the GIL on large buffers).
        self._digesting = concurrent.futures.ThreadPoolExecutor(min(4, os.cpu_count() or 1),
                                                                thread_name_prefix="digest")

    def __enter__(self) -> "Transfers":
        return self

    def __exit__(self, *exc) -> None:
        self._small.shutdown(wait=True, cancel_futures=exc[0] is not None)
        if self._parts is not None:
            self._parts.shutdown(wait=True, cancel_futures=exc[0] is not None)
        self._digesting.shutdown(wait=True, cancel_futures=exc[0] is not None)
        if self._python is not None:
            self._python.shutdown(cancel=exc[0] is not None)
        if self._crt is not None:
            self._crt.shutdown(cancel=exc[0] is not None)

    def _multipart_manager(self):
        if not self._use_crt:
            with self._lock:
                if self._python is None:
                    from s3transfer.manager import TransferConfig, TransferManager

                    self._python = TransferManager(self.s3, TransferConfig(
                        multipart_threshold=self.settings.multipart_threshold,
                        multipart_chunksize=self.settings.multipart_chunksize,
                        max_request_concurrency=self.settings.max_concurrency,
                    ))
                return self._python
        with self._lock:
            if self._crt is None:
                self._crt = crt.manager(self.s3, self.settings.multipart_chunksize, endpoint_override(),
                                        memory_limit=self.settings.crt_memory)
            return self._crt

    def upload(
        self, uploads: Iterable[Upload], on_bytes: Callable[[int], None] = lambda n: None,
        window: int | None = None,
    ) -> Iterator[tuple[Upload, Exception | None]]:
        """Submit the uploads, then yield `(upload, None)` once it is durable, with the part
        CRCs of what it sent (`sums`), or `(upload, error)`, in the order given.

        `window`: at most this many submitted and not yet yielded, `uploads` read as they go (a
        generator is never drained ahead): memory stays flat however many files come. None:
        every upload submitted at once (the meter then knows every byte still to go). One
        small upload given alone (a list of one: the sidecar's file tasks) is sent on the
        caller's thread, which would only wait for it: two thread hand-offs fewer a file."""
        here = isinstance(uploads, (list, tuple)) and len(uploads) == 1
        submitted: collections.deque = collections.deque()
        for up in uploads:
            submitted.append((up, self._submit(up, on_bytes, here)))
            if window is not None and len(submitted) >= window:
                yield self._finished(*submitted.popleft())
        while submitted:
            yield self._finished(*submitted.popleft())

    def _finished(self, up: Upload, future) -> tuple[Upload, Exception | None]:
        try:
            sums = self._finish(up, future)
        except Exception as err:  # noqa: BLE001 - reported per file
            return up, err
        return dataclasses.replace(up, sums=sums), None

    def cancel(self) -> None:
        """Cancel every transfer in flight (their futures raise); multipart uploads are aborted.

        Each future is cancelled on its own: `TransferManager.shutdown(cancel=True)` passes its
        arguments shifted in s3transfer 0.17-0.19 and raises TypeError instead.
        """
        with self._lock:
            inflight = list(self._inflight)
        for future in inflight:
            future.cancel()

    def _submit(self, up: Upload, on_bytes, here: bool = False):
        token = object()
        self.meter.started(token, up.digest.size)

        def counted(n: int, on_bytes=on_bytes) -> None:
            self.meter.sent(token, n)
            on_bytes(n)

        on_bytes = counted
        fd = None
        if up.digest.size < self.settings.multipart_threshold:
            future = _run_here(self._put, up, on_bytes) if here else self._small.submit(self._put, up, on_bytes)
        else:
            try:
                fd = _open_hashed(up)
                # The managers open a file name: name our descriptor, not the path, which may
                # point elsewhere by now.
                sent = self._multipart_manager().upload(
                    _FD_PATH.format(fd) if _FD_PATH else up.path, self.store.bucket, up.key,
                    extra_args={"ChecksumAlgorithm": "CRC64NVME"},  # S3 checks every part
                    subscribers=[_progress(on_bytes)])
                # Our digests come from the same descriptor meanwhile, not from the manager
                # (whose part checksums are not handed out): both read the page cache.
                future = _Both(sent, self._digesting.submit(
                    hashing.of_fd, fd, up.digest.size, self.settings.multipart_chunksize))
            except (OSError, FileChanged) as err:  # reported by `_finish`, like any upload's failure
                if fd is not None:
                    os.close(fd)
                fd, future = None, concurrent.futures.Future()
                future.set_exception(err)
        with self._lock:
            self._inflight.add(future)
            self._tokens[future] = token
            if fd is not None:
                self._fds[future] = fd  # open until `_finish`
        return future

    def _put(self, up: Upload, on_bytes) -> hashing.Digests:
        """One PUT of the file, its part CRCs taken from the very bytes sent, which S3 checks
        against their CRC64NVME: through the CRT when it is on (crtobjects.py), else botocore."""
        with self._large_bodies if up.digest.size > MiB else contextlib.nullcontext():
            objects = self._crt_objects()
            sums = self._put_crt(up, objects) if objects is not None else self._put_read(up)
        on_bytes(up.digest.size)
        return sums

    def _put_crt(self, up: Upload, objects: crtobjects.Objects) -> hashing.Digests:
        """The CRT reads the file into its own buffer, CRC'd as it lands (hashing.Reading)."""
        fd = _open_hashed(up)
        try:
            body = hashing.Reading(fd, up.path, up.digest, self.settings.multipart_chunksize)
            if not up.digest.size:
                body.check()
            try:
                objects.put(up.key, body, up.digest.size)
            except Exception:
                if body.failed is None:
                    raise
                # the stream ended short on purpose, nothing was sent: `finish` says why
            return body.finish()
        finally:
            os.close(fd)

    def _put_read(self, up: Upload) -> hashing.Digests:
        """Read once, CRC that buffer, send it. As bytes, the body goes without
        `Expect: 100-continue` (a round trip a file object costs)."""
        with os.fdopen(_open_hashed(up), "rb") as f:
            body = f.read(up.digest.size + 1)
            st = os.fstat(f.fileno())
        if len(body) != up.digest.size or hashing.seen(st) != up.digest.seen:
            raise FileChanged(up.path)  # written while read: not complete yet
        sums = hashing.of_buffer(body, self.settings.multipart_chunksize)
        # the parts' CRCs combined: the whole body's, with no second pass over it
        whole = checksums.encode(checksums.whole(sums.crc64nvme, len(body), sums.part_size))
        self.s3.put_object(Bucket=self.store.bucket, Key=up.key, Body=body, ChecksumCRC64NVME=whole)
        return sums

    def _finish(self, up: Upload, future) -> hashing.Digests:
        with self._lock:
            fd = self._fds.get(future)
        try:
            sums = self._result(up, future)
            if fd is None:
                return sums  # one PUT of the buffer hashed: S3 verified it against our CRC
            st = os.fstat(fd)  # the file that was sent, whatever its name holds now
        finally:
            with self._lock:
                self._inflight.discard(future)
                self._fds.pop(future, None)
                self.meter.done(self._tokens.pop(future, None))
            if fd is not None:
                os.close(fd)
        try:
            if hashing.seen(st) != up.digest.seen:
                raise FileChanged(up.path)  # the object and our digests may each hold other bytes
            stored.check(self.s3, self.store.bucket, up.key, sums, up.digest.size, up.path)
        except (FileChanged, StoreError):
            self._drop(up.key)  # never committed: no entry will name it
            raise
        except (ClientError, BotoCoreError) as err:
            self._drop(up.key)
            raise describe(err, self.store, self.s3) from None
        return sums

    def _drop(self, key: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.store.bucket, Key=key)
        except (ClientError, BotoCoreError):
            pass  # an orphan object: gc removes what no manifest names

    def _result(self, up: Upload, future) -> hashing.Digests:
        try:
            return future.result()
        except concurrent.futures.CancelledError:  # s3transfer's CancelledError is one
            raise StoreError(f"upload of {up.path} cancelled: out of time") from None
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("BadDigest", "XAmzContentChecksumMismatch"):
                raise FileChanged(up.path) from None  # S3 refused bytes that differ from the hash
            raise describe(err, self.store, self.s3) from None
        except BotoCoreError as err:
            raise describe(err, self.store, self.s3) from None
        except Exception as err:
            if not crt.is_crt_error(err):
                raise
            raise describe(err, self.store, self.s3) from None

    def fetch(self, want, tmp: Path, on_bytes: Callable[[int], None] = lambda n: None) -> None:
        """Download `want` (a `manifest.FileEntry` or a `fetch.Want`) into the new file `tmp`,
        every byte verified (fetch.py); the caller places it. On any failure `tmp` is gone."""
        with self._lock:
            if self._fetcher is None:
                self._parts = concurrent.futures.ThreadPoolExecutor(fetch.WORKERS, thread_name_prefix="s3-range")
                self._fetcher = fetch.Fetcher(self.s3, self.store.bucket, self.settings.multipart_threshold,
                                              self.settings.max_attempts, self._parts, self._crt_objects())
        try:
            self._fetcher.fetch(want, tmp, on_bytes)
        except (ClientError, BotoCoreError) as err:
            raise StoreError(f"{want.name} not restored: {describe(err, self.store, self.s3)}") from None
        except Exception as err:
            if not crt.is_crt_error(err):
                raise
            raise StoreError(f"{want.name} not restored: {describe(err, self.store, self.s3)}") from None

    def _crt_objects(self) -> crtobjects.Objects | None:
        """Small objects' GETs and PUTs through the CRT, when it is on (crtobjects.py); built once."""
        if not self._use_crt:
            return None
        with self._objects_lock:
            if self._objects is None and hasattr(self.s3, "objects"):  # crtclient.Client: its own connections
                self._objects = self.s3.objects(self.store.bucket)
            if self._objects is None:
                endpoint = endpoint_override()
                # Its bodies are the small files in flight (20 of 1 MiB, 4 of 16 MiB at most): the
                # CRT's least cap is plenty, not a second share of the multipart manager's. Its
                # copies of them (about 50 MiB at 1,000 x 1 MiB) are not in crt.RESERVE yet.
                client = crt.s3_client(self.s3, endpoint, part_size=crtobjects.PART,
                                       memory_limit=crt.MIN_MEMORY_LIMIT, attempts=self.settings.max_attempts,
                                       connect_timeout=self.settings.connect_timeout,
                                       multipart_threshold=self.settings.multipart_threshold)
                self._objects = crtobjects.Objects(client, self.store.bucket, endpoint, self.s3.meta.region_name,
                                                   self.settings.read_timeout, encryption.from_env().headers())
            return self._objects

    def download(self, key: str, dest: str | Path, sha256: str,
                 on_bytes: Callable[[int], None] = lambda n: None, size: int | None = None) -> None:
        """Download `key` (format 1: checked against `sha256`) to `dest` through a temp file."""
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if size is None:
            try:
                size = self.s3.head_object(Bucket=self.store.bucket, Key=key)["ContentLength"]
            except (ClientError, BotoCoreError) as err:
                raise describe(err, self.store, self.s3) from None
        tmp = dest.with_name(f".{dest.name[:100]}.runsync-part")  # a 255-byte name leaves no room for more
        tmp.unlink(missing_ok=True)
        self.fetch(fetch.Want(dest.name, key, size, sha256), tmp, on_bytes)
        os.replace(tmp, dest)
