"""The writer lease of one replica of a run: who may commit its manifests, with fencing.

`<replica>/lease.json` holds the holder, its epoch, its last heartbeat, its state and the
history of epochs, each with the manifest number it took over from. Every change is a
conditional PUT (`If-None-Match: *` to create, `If-Match: <etag>` to change), so two writers
can never both believe they hold it.

    restore-init of a new pod       acquire(wait): while the old holder is active and its
                                    heartbeat fresh (it is flushing), wait, bounded; an idle
                                    holder owes nothing: taken if unchanged after IDLE_SETTLE
                                    (it may be waking for its final flush). Then take the lease
                                    with epoch + 1, from the highest manifest number
    sidecar                         acquire (same holder: no wait), renew before each commit;
                                    while busy (uploads, commits owed, a flush, the end) every
                                    ttl/3; when idle, once as `idle` with IDLE_TTL, then every
                                    IDLE_TTL/2; back to `active` before the next upload or
                                    commit. A lost lease stops all commits
    final flush                     commit the final manifest, then release

Fencing: a manifest records the epoch of its writer. The epoch that owns number `seq` is
the last one that took over from a number below `seq`; a manifest written by any other epoch
(an old writer that kept going after it was replaced) is ignored by every reader.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Callable

from botocore.exceptions import BotoCoreError, ClientError

from . import keys
from .errors import StoreError, precondition_failed

DEFAULT_TTL = 15.0
"""An active holder's heartbeat is fresh this long: a successor waits for it (its final flush)."""
IDLE_TTL = 3600.0
"""An idle holder's: `alive` (gc, `runs`, status) still means a live writer, renewed every
IDLE_TTL/2, so an idle replica writes its lease twice an hour, not 720 times."""


class LeaseLost(StoreError):
    """Another writer holds the replica's lease now: this one must not commit."""


class LeaseBusy(StoreError):
    """The lease is held by a live writer and waiting did not free it."""


@dataclasses.dataclass(frozen=True)
class Lease:
    holder: str
    epoch: int
    heartbeat: float
    state: str = "active"
    """active (busy: a successor waits) | idle (owes nothing: taken at once) | released"""
    ttl: float = DEFAULT_TTL
    epochs: tuple[tuple[int, int], ...] = ()
    """(epoch, the highest manifest number when it took over)."""

    def owner_of(self, seq: int) -> int:
        """The epoch allowed to write manifest `seq` (0: written before any lease)."""
        owner = 0
        for epoch, from_seq in self.epochs:
            if from_seq < seq:
                owner = epoch
        return owner

    def took_over_from(self) -> int | None:
        """The highest manifest number written when this epoch took the lease (its first commit
        is the next one), or None when the history no longer says."""
        return next((seq for epoch, seq in reversed(self.epochs) if epoch == self.epoch), None)

    def alive(self, now: float) -> bool:
        return self.state in ("active", "idle") and now - self.heartbeat < self.ttl

    def to_json(self) -> bytes:
        doc = dataclasses.asdict(self)
        doc["epochs"] = [list(e) for e in self.epochs]
        return json.dumps(doc).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Lease":
        doc = json.loads(data)
        return cls(holder=str(doc["holder"]), epoch=int(doc["epoch"]), heartbeat=float(doc["heartbeat"]),
                   state=str(doc.get("state", "active")), ttl=float(doc.get("ttl", DEFAULT_TTL)),
                   epochs=tuple((int(e), int(s)) for e, s in doc.get("epochs", ())))


@dataclasses.dataclass
class Held:
    """A lease this process holds, with the ETag that proves it."""

    lease: Lease
    etag: str


def read(s3, layout: keys.Layout) -> tuple[Lease | None, str | None]:
    try:
        obj = s3.get_object(Bucket=layout.store.bucket, Key=layout.lease_key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None, None
        raise
    body = obj["Body"].read()
    try:
        return Lease.from_json(body), obj["ETag"]
    except (ValueError, KeyError, TypeError) as err:
        raise StoreError(f"lease s3://{layout.store.bucket}/{layout.lease_key} is unreadable ({err}); "
                         "delete it to start the replica afresh") from None


IDLE_SETTLE = 3.0
"""Seconds a successor gives a live `idle` holder to renew to `active` (a final flush starting)
before it takes the lease: the old pod's end files are not lost to a race with its SIGTERM."""


def acquire(
    s3,
    layout: keys.Layout,
    holder: str,
    wait: float,
    max_seq: Callable[[], int],
    ttl: float = DEFAULT_TTL,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
    on_wait: Callable[[Lease], None] = lambda lease: None,
    take_live: bool = True,
) -> Held:
    """Hold the replica's lease: keep it if ours, wait (up to `wait` s) while another live
    holder flushes, then take it with the next epoch (or, with `take_live=False`, give up
    with `LeaseBusy` while it still beats)."""
    deadline = clock() + wait
    waited = False
    settled = None  # the ETag of a live idle lease already given IDLE_SETTLE to wake
    while True:
        lease, etag = read(s3, layout)
        now = clock()
        step = decide(lease, holder, now, deadline, take_live)
        if step == "take" and lease is not None and lease.state == "idle" and lease.alive(now) and etag != settled:
            # An idle holder owes nothing, unless it is just waking (its pod's preStop or SIGTERM:
            # the final flush renews to `active` first). Taken only if unchanged after a moment.
            settled = etag
            sleep(IDLE_SETTLE)
            continue
        if step == "keep":
            return renew(s3, layout, Held(lease, etag))
        if step == "wait":
            if not waited:
                on_wait(lease)
                waited = True
            sleep(min(0.5, max(0.05, deadline - now)))
            continue
        if step == "busy":
            raise LeaseBusy(f"{layout.run} replica {layout.replica} is being written by {lease.holder} "
                            f"(heartbeat {now - lease.heartbeat:.0f} s ago, {lease.state}); fix: wait until "
                            "it ends, or use another run or --replica")
        epoch = (lease.epoch if lease else 0) + 1
        history = (lease.epochs if lease else ()) + ((epoch, max_seq()),)
        new = Lease(holder=holder, epoch=epoch, heartbeat=now, ttl=ttl, epochs=history[-50:])
        try:
            conditions = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            put = s3.put_object(Bucket=layout.store.bucket, Key=layout.lease_key, Body=new.to_json(),
                                ContentType="application/json", **conditions)
            return Held(new, put["ETag"])
        except ClientError as err:
            if precondition_failed(err):
                continue  # someone changed it meanwhile: look again
            raise


def decide(lease: Lease | None, holder: str, now: float, deadline: float, take_live: bool) -> str:
    """What a would-be writer does on finding `lease`: keep (it is ours), wait (an active
    holder with a fresh heartbeat is flushing; until `deadline`), busy (a live holder and
    `take_live` is off), or take (with the next epoch)."""
    if lease is None:
        return "take"
    if lease.holder == holder and lease.state in ("active", "idle"):
        return "keep"
    if not lease.alive(now):
        return "take"
    if lease.state == "active" and now < deadline:
        return "wait"
    return "take" if take_live else "busy"


def renew(s3, layout: keys.Layout, held: Held, clock: Callable[[], float] = time.time,
          state: str = "active") -> Held:
    """Refresh the heartbeat as `active` (busy), `idle` (with IDLE_TTL) or `released`;
    `LeaseLost` if taken."""
    ttl = IDLE_TTL if state == "idle" else DEFAULT_TTL
    new = dataclasses.replace(held.lease, heartbeat=clock(), state=state, ttl=ttl)
    try:
        put = s3.put_object(Bucket=layout.store.bucket, Key=layout.lease_key, Body=new.to_json(),
                            ContentType="application/json", IfMatch=held.etag)
    except ClientError as err:
        if precondition_failed(err):
            current, etag = read(s3, layout)
            if current == new:  # our own PUT landed, its reply was lost, and botocore's retry met it
                return Held(new, etag)
            who = f"{current.holder} (epoch {current.epoch})" if current else "nobody"
            raise LeaseLost(f"the lease of {layout.run} replica {layout.replica} was taken by {who}; "
                            f"this writer (epoch {held.lease.epoch}) stops committing") from None
        raise
    except BotoCoreError:
        raise
    return Held(new, put["ETag"])


class Beating:
    """Keeps a one-shot writer's lease (`runsync sync`) active while it uploads: renewed every
    ttl/3 on a thread, as the sidecar's committer does while busy. Unnamed objects stay out of
    gc's reach only while their replica's lease is held."""

    def __init__(self, s3, layout: keys.Layout, held: Held):
        self._s3, self._layout, self._held = s3, layout, held
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._beat, name="lease-beat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> Held:
        """Stop beating; the lease as last renewed, or what a renewal met (`LeaseLost`: the
        writer must not commit)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        with self._lock:
            if self._error is not None:
                raise self._error
            return self._held

    def _beat(self) -> None:
        while not self._stop.wait(self._held.lease.ttl / 3):
            try:
                renewed = renew(self._s3, self._layout, self._held)
            except (StoreError, ClientError, BotoCoreError) as err:
                # LeaseLost ends the beat; a failed request is retried next beat (the ttl
                # allows two misses), and the commit's own renewal decides in the end.
                if isinstance(err, LeaseLost):
                    with self._lock:
                        self._error = err
                    return
                continue
            with self._lock:
                self._held = renewed
