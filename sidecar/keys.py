"""Where things live in the bucket.

    <prefix>/<namespace>/<project>/<run>/<replica>/objects/<epoch:08d>/<unique>  (format 2)
    <prefix>/<namespace>/<project>/<run>/<replica>/files/<stored name>~<sha256[:16]>  (format 1, read)
    <prefix>/<namespace>/<project>/<run>/<replica>/manifests/<seq:012d>.json
    <prefix>/<namespace>/<project>/<run>/<replica>/lease.json
    <prefix>/<namespace>/<project>/<run>/<replica>/head.json      (the latest commit; head.py)
    <prefix>/<namespace>/<project>/<run>/<replica>/sse-check      (empty; encryption.check)
    <prefix>/<namespace>/.sse-check                              (empty; the operator's Store check)
    <prefix>/<namespace>/<project>/<run>/<replica>/replica.json
    <prefix>/<namespace>/<project>/<run>/run.json
    <prefix>/<namespace>/<project>/<run>/code/git.json, code/diff.patch

Every uploaded version gets a key of its own, never reused (`ObjectKeys`): the writer's epoch, a
random 64-bit number of this process and a counter. So an object is never overwritten (a committed
manifest keeps naming exactly the bytes it was committed with while a newer version uploads), and
no hash is needed before an upload starts: the digests are taken while the bytes go out and
recorded in the manifest. The key holds no name, so a name has only `check_stored_name`'s limits.
Format 1 keys carried the name and the start of the SHA-256; they stay readable.
Manifests are numbered; the highest committed one is the latest.

Stored names are `/`-separated paths relative to the run dir. A name that would land outside
the run dir on restore (`..`, absolute, empty segments, NUL) is refused here, in one place.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import re
import secrets

from .errors import RunPathError, StoreURLError

FORMAT = 1

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SEQ_KEY = re.compile(r"(\d{12})\.json")
_HASH_CHARS = 16
MAX_NAME_BYTES = 768  # S3 keys are at most 1024 bytes; leave room for prefix and layout
MAX_SEGMENT_BYTES = 255  # NAME_MAX of ext4, xfs and most others
STATE_DIR = ".runsync"
"""The sidecar's state dir inside the run dir: never uploaded, never restored into."""


@dataclasses.dataclass(frozen=True)
class StoreURL:
    """`s3://BUCKET/PREFIX`: where a runsync store lives."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str) -> "StoreURL":
        fix = "expected s3://BUCKET or s3://BUCKET/PREFIX (set --store or RUNSYNC_STORE)"
        if not url:
            raise StoreURLError(f"store URL is empty; {fix}")
        if not url.startswith("s3://"):
            raise StoreURLError(f"store URL {url!r} does not start with s3://; {fix}")
        bucket, _, prefix = url[len("s3://"):].partition("/")
        if not _BUCKET.fullmatch(bucket) or ".." in bucket:
            raise StoreURLError(
                f"store URL {url!r} has an invalid bucket name {bucket!r}; expected 3-63 "
                "lowercase letters, digits, '.' or '-' (S3's bucket naming rules)"
            )
        segments = [s for s in prefix.split("/") if s]
        if any(s in (".", "..") for s in segments) or "\x00" in prefix:
            raise StoreURLError(f"store URL {url!r} has '.' or '..' in its prefix; {fix}")
        return cls(bucket, "/".join(segments))

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclasses.dataclass(frozen=True)
class RunPath:
    """`NAMESPACE/PROJECT/RUN`: one run. The namespace is part of every key."""

    namespace: str
    project: str
    run: str

    @classmethod
    def parse(cls, text: str) -> "RunPath":
        parts = text.split("/")
        if len(parts) != 3:
            raise RunPathError(
                f"run path {text!r} is not NAMESPACE/PROJECT/RUN; expected e.g. team-a/default/bert-1"
            )
        namespace, project, run = parts
        if not _NAMESPACE.fullmatch(namespace):
            raise RunPathError(
                f"run path {text!r}: namespace {namespace!r} is not a Kubernetes namespace name "
                "(1-63 lowercase letters, digits or '-')"
            )
        for what, value in (("project", project), ("run", run)):
            if not _NAME.fullmatch(value):
                raise RunPathError(
                    f"run path {text!r}: {what} {value!r} is invalid; expected 1-128 letters, "
                    "digits, '.', '_' or '-', starting with a letter or digit"
                )
        return cls(namespace, project, run)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.project}/{self.run}"


def check_replica(replica: str) -> str:
    if not _NAME.fullmatch(replica) or len(replica) > 63:
        raise RunPathError(f"replica {replica!r} is invalid; expected 1-63 letters, digits, '.', '_' or '-'")
    return replica


_BACKSLASH_OR_CONTROL = re.compile(r"[\\\x00-\x1f\x7f]")


_PLAIN_NAME = re.compile(r"[\w\-+=,@%~][\w.\-+=,@%~]{0,254}(?:/[\w\-+=,@%~][\w.\-+=,@%~]{0,254})*", re.ASCII)
"""Most names, safe at a glance: ASCII, no segment empty or starting with a dot (so no `.`, `..`
or `.runsync`), each at most 255 bytes. One match instead of the checks below: restore and the
durable index check every entry of a 100,000-file commit."""


def check_stored_name(name: str) -> str:
    """`name` if it stays inside the run dir when restored; `RunPathError` otherwise."""
    if len(name) <= MAX_NAME_BYTES and _PLAIN_NAME.fullmatch(name):
        return name
    problem = None
    if not name:
        problem = "is empty"
    elif name.startswith("/"):
        problem = "is absolute"
    elif _BACKSLASH_OR_CONTROL.search(name):
        problem = "contains a backslash or a control character"  # NUL, newline, escapes: no sane file's
    elif any(seg in ("", ".", "..") for seg in name.split("/")):
        problem = "has an empty, '.' or '..' segment"
    elif name.split("/", 1)[0] == STATE_DIR:
        problem = f"is inside {STATE_DIR}/, the sidecar's own state"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    elif any(len(seg.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for seg in name.split("/")):
        problem = f"has a segment longer than {MAX_SEGMENT_BYTES} bytes (a file system's NAME_MAX)"
    if problem:
        raise RunPathError(f"stored name {name!r} {problem}; it would not stay inside the run dir")
    return name


@dataclasses.dataclass(frozen=True)
class Layout:
    """The keys of one replica of one run in one store."""

    store: StoreURL
    run: RunPath
    replica: str

    def __post_init__(self) -> None:
        check_replica(self.replica)

    @functools.cached_property  # asked for each entry of a manifest read (`holds`): 100,000 times
    def run_prefix(self) -> str:
        return self.store.key(self.run.namespace, self.run.project, self.run.run) + "/"

    @functools.cached_property
    def replica_prefix(self) -> str:
        return f"{self.run_prefix}{self.replica}/"

    @property
    def manifests_prefix(self) -> str:
        return f"{self.replica_prefix}manifests/"

    @property
    def lease_key(self) -> str:
        return f"{self.replica_prefix}lease.json"

    @property
    def head_key(self) -> str:
        """The replica's latest commit, a hint (head.py)."""
        return f"{self.replica_prefix}head.json"

    @property
    def sse_check_key(self) -> str:
        """The object a writer puts and HEADs at start to see its server-side encryption applied."""
        return f"{self.replica_prefix}sse-check"

    @property
    def replica_metadata_key(self) -> str:
        """The replica's own metadata (runmeta): pod, node, images, start, end, status."""
        return f"{self.replica_prefix}replica.json"

    @property
    def run_metadata_key(self) -> str:
        return f"{self.run_prefix}run.json"

    def code_key(self, name: str) -> str:
        """The run's code state (`git.json`, `diff.patch`), written by the SDK at `init`."""
        return f"{self.run_prefix}code/{name}"

    def file_key(self, name: str, sha256: str) -> str:
        """Format 1's key of `name` with content `sha256` (written no more; tests write old runs)."""
        return f"{self.files_prefix}{check_stored_name(name)}~{sha256[:_HASH_CHARS]}"

    def check_storable(self, name: str) -> str:
        """`name` if the store can hold it: format-2 keys hold no name, so only
        `check_stored_name`'s rules are left."""
        return check_stored_name(name)

    @functools.cached_property
    def objects_prefix(self) -> str:
        return f"{self.replica_prefix}objects/"

    @functools.cached_property
    def files_prefix(self) -> str:
        """Format 1's objects (keys named by content)."""
        return f"{self.replica_prefix}files/"

    def holds(self, key: str) -> bool:
        """Is `key` one of this replica's data objects (either format)? A manifest names no other."""
        return key.startswith((self.objects_prefix, self.files_prefix))

    def manifest_key(self, seq: int) -> str:
        return f"{self.manifests_prefix}{seq:012d}.json"

    def manifest_seq(self, key: str) -> int | None:
        """The sequence number of a manifest key, or None for any other key."""
        if not key.startswith(self.manifests_prefix):
            return None
        match = _SEQ_KEY.fullmatch(key[len(self.manifests_prefix):])
        return int(match.group(1)) if match else None


class ObjectKeys:
    """The keys of one writer's uploads: `objects/<epoch:08d>/<process><counter>`. The random
    64-bit process part keeps a restarted sidecar of the same epoch (the same holder keeps its
    lease) from reusing a key of its predecessor; the counter, every key of this process."""

    _process = secrets.randbits(64)
    _counter = itertools.count(1)  # next() on a count is atomic in CPython: safe across threads

    def __init__(self, layout: Layout, epoch: int):
        self.prefix = f"{layout.objects_prefix}{epoch:08d}/"

    def next(self) -> str:
        # Read at each key, not at __init__: a forked child draws its own process part (below).
        return f"{self.prefix}{ObjectKeys._process:016x}{next(ObjectKeys._counter):012d}"

    @classmethod
    def _after_fork(cls) -> None:
        cls._process, cls._counter = secrets.randbits(64), itertools.count(1)


# A forked worker (multiprocessing's default on Linux) inherits the parent's process part and
# counter: it would write the parent's next keys. It draws its own instead.
os.register_at_fork(after_in_child=ObjectKeys._after_fork)


def store_sse_check_key(store: StoreURL, namespace: str) -> str:
    """The operator's encryption check object for a Store of `namespace` (never a run: no '/')."""
    return store.key(namespace, ".sse-check")


def namespaces_prefix(store: StoreURL) -> str:
    return store.key() + "/" if store.prefix else ""
