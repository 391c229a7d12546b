"""`head.json`: a replica's latest commit number, so a reader needs one GET, not a LIST of
every manifest key (a LIST per commit grows with history: issue 18).

The head is a hint, never the fence: the conditional PUT of the manifest decides who commits
a number (manifest.py, lease.py). It is written after each commit, so it can lag behind one (a
writer stopped between the two PUTs). A reader therefore probes the numbers after it until one
is free. It never moves back: each PUT is conditional on the head this process last saw (its
ETag and number), so a fenced-off writer's late write of an older number is refused. That
matters because gc leaves holes below the latest (the deltas a summary folded, records.py): a
probe from a head moved back below one would stop short, and a writer taking over there would
fence off the commits above it. A replica without a head (written by format 1) is listed.
"""

from __future__ import annotations

import dataclasses
import json
import threading

from botocore.exceptions import BotoCoreError, ClientError

from . import errors, keys
from .logs import log

FORMAT = 2


@dataclasses.dataclass(frozen=True)
class Head:
    seq: int
    epoch: int

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "seq": self.seq, "epoch": self.epoch}).encode()


_seen: dict[tuple[str, str], tuple[str | None, int]] = {}
"""(bucket, head key) → (ETag, number) of the head as this process last read or wrote it; None:
there was none. A writer reads the head when it takes the lease (max_seq), so it has one."""
_seen_lock = threading.Lock()


def write(s3, layout: keys.Layout, seq: int, epoch: int) -> None:
    """After commit `seq`: best effort, the commit already holds (a missed head costs readers a
    probe). Only forward: a head at `seq` or above (a newer writer's) is left as it is."""
    where = (layout.store.bucket, layout.head_key)
    looked = False
    try:
        for _ in range(3):
            with _seen_lock:
                seen = _seen.get(where)
            if seen is None or (seen[1] >= seq and not looked):  # not read here yet, or to be sure
                read(s3, layout)
                looked = True
                with _seen_lock:
                    seen = _seen.get(where, (None, 0))
            etag, at = seen
            if at >= seq:
                return  # moved past us meanwhile (we were fenced off): never back
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                put = s3.put_object(Bucket=layout.store.bucket, Key=layout.head_key, Body=Head(seq, epoch).to_json(),
                                    ContentType="application/json", **condition)
            except ClientError as err:
                if not errors.precondition_failed(err):
                    raise
                read(s3, layout)  # someone wrote it since we looked: look again
                looked = True
                continue
            with _seen_lock:
                _seen[where] = (put.get("ETag"), seq)
            return
    except (ClientError, BotoCoreError) as err:
        log.warning("head not written; readers probe past it", extra={"fields": {
            "key": layout.head_key, "seq": seq, "error": str(err)}})


def read(s3, layout: keys.Layout) -> Head | None:
    """The stored head, or None (no head: a format-1 replica, or one that never committed)."""
    where = (layout.store.bucket, layout.head_key)
    try:
        got = s3.get_object(Bucket=layout.store.bucket, Key=layout.head_key)
    except ClientError as err:
        if _missing(err):
            with _seen_lock:
                _seen[where] = (None, 0)
            return None
        raise
    try:
        doc = json.loads(got["Body"].read())
        head = Head(seq=int(doc["seq"]), epoch=int(doc.get("epoch", 0)))
    except (ValueError, KeyError, TypeError) as err:
        # A hint: a damaged one is not trusted, the manifests are listed instead.
        log.warning("head unreadable; listing the manifests instead", extra={"fields": {
            "key": layout.head_key, "error": str(err), "fix": "delete it; the next commit writes it again"}})
        with _seen_lock:
            _seen[where] = (got.get("ETag"), 0)  # replaced by the next commit's
        return None
    with _seen_lock:
        _seen[where] = (got.get("ETag"), head.seq)
    return head


def latest_seq(s3, layout: keys.Layout) -> int | None:
    """The highest manifest number written (valid or not), from the head and a probe past it;
    None when the replica has no head."""
    head = read(s3, layout)
    if head is None:
        return None
    if not _exists(s3, layout.store.bucket, layout.manifest_key(head.seq)):
        # A head that lagged, then lost its commit to gc: the numbers above it may have holes
        # (gc dropped old or fenced commits), so a probe could stop short. Listed instead.
        log.warning("head names a commit that is gone; listing the manifests instead", extra={"fields": {
            "key": layout.head_key, "seq": head.seq}})
        return None
    seq = head.seq
    while _exists(s3, layout.store.bucket, layout.manifest_key(seq + 1)):
        seq += 1
    return seq


def _exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as err:
        if _missing(err):
            return False
        raise


def _missing(err: ClientError) -> bool:
    return err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound")
