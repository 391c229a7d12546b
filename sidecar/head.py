"""`head.json`: a replica's latest commit number, so a reader needs one GET, not a LIST of
every manifest key (a LIST per commit grows with history: issue 18).

The head is a hint, never the fence: the conditional PUT of the manifest decides who commits
a number (manifest.py, lease.py). It is written after each commit, so it can lag behind one (a
writer stopped between the two PUTs, or a fenced-off writer's late write put an older number
back). A reader therefore probes the numbers after it until one is free: manifest numbers
have no gaps above the oldest kept one (gc never removes the latest), so the probe ends at the
true latest. A replica without a head (written by format 1) is listed as before.
"""

from __future__ import annotations

import dataclasses
import json

from botocore.exceptions import BotoCoreError, ClientError

from . import keys
from .logs import log

FORMAT = 2


@dataclasses.dataclass(frozen=True)
class Head:
    seq: int
    epoch: int

    def to_json(self) -> bytes:
        return json.dumps({"format": FORMAT, "seq": self.seq, "epoch": self.epoch}).encode()


def write(s3, layout: keys.Layout, seq: int, epoch: int) -> None:
    """After commit `seq`: best effort, the commit already holds (a missed head costs readers a probe)."""
    try:
        s3.put_object(Bucket=layout.store.bucket, Key=layout.head_key, Body=Head(seq, epoch).to_json(),
                      ContentType="application/json")
    except (ClientError, BotoCoreError) as err:
        log.warning("head not written; readers probe past it", extra={"fields": {
            "key": layout.head_key, "seq": seq, "error": str(err)}})


def read(s3, layout: keys.Layout) -> Head | None:
    """The stored head, or None (no head: a format-1 replica, or one that never committed)."""
    try:
        body = s3.get_object(Bucket=layout.store.bucket, Key=layout.head_key)["Body"].read()
    except ClientError as err:
        if _missing(err):
            return None
        raise
    try:
        doc = json.loads(body)
        return Head(seq=int(doc["seq"]), epoch=int(doc.get("epoch", 0)))
    except (ValueError, KeyError, TypeError) as err:
        # A hint: a damaged one is not trusted, the manifests are listed instead.
        log.warning("head unreadable; listing the manifests instead", extra={"fields": {
            "key": layout.head_key, "error": str(err), "fix": "delete it; the next commit writes it again"}})
        return None


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
