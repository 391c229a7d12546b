"""Run metadata (SPEC: "the run holds its metadata"): who ran each replica, where, on which
images, when, how it ended; and the run's summary that `runsync runs` reads in one GET.

Two kinds of object, so that the replicas of a run never contend on one key in the hot path:

    <run>/<replica>/replica.json   one replica's facts. Written only by the holder of that
                                   replica's lease: plainly when it takes the lease, then with
                                   If-Match on its own last ETag (a fenced-off pod's write fails).
    <run>/run.json                 the run's summary: status, created, updated, ended, one small
                                   entry per replica, the code state's keys. Read-modify-write with
                                   If-Match on the ETag read (If-None-Match: * to create); a 412
                                   means another replica wrote in between: read again, retry with
                                   jitter. SeaweedFS and S3 both honour both conditions.

When: at start (lease taken), at the end (`ended`, or `failed` when the final manifest could not
be committed), and on a commit at most once a minute: replica.json then, but run.json only when
its `updated` is older than a minute, so a run of 1,000 replicas gets about one such write a
minute, not 1,000. Start and end are one conditional write per replica each.

Metadata never holds up files: every write here is best effort, logged when it fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import socket
import time
from collections.abc import Callable, Mapping

from botocore.exceptions import ClientError

from . import config, contract, errors, keys, runsindex
from .logs import log

FORMAT = 1
REFRESH_SECONDS = 60.0
"""A commit refreshes the metadata at most this often (requests cost money)."""
CAS_ATTEMPTS = 12
STALE_SECONDS = 3 * REFRESH_SECONDS
"""A `running` entry of run.json not updated for this long is checked against its replica.json
(its end may have lost every race for run.json)."""
RUNNING, ENDED, FAILED = "running", "ended", "failed"


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the replica knows of itself: the pod (downward API env the operator sets) and the
    images the operator found (`runsync.dev/images`, through the annotations file)."""

    writer: str
    pod: str | None = None
    namespace: str | None = None
    uid: str | None = None
    node: str | None = None
    annotations: str | None = None
    """The annotations file, re-read for `runsync.dev/images`."""

    @classmethod
    def from_env(cls, env: Mapping[str, str], writer: str) -> "Facts":
        return cls(writer=writer, pod=env.get(contract.ENV_POD_NAME) or None,
                   namespace=env.get(contract.ENV_POD_NAMESPACE) or None,
                   uid=env.get(contract.ENV_POD_UID) or None, node=env.get(contract.ENV_NODE_NAME) or None,
                   annotations=env.get(contract.ENV_ANNOTATIONS) or None)

    def images(self) -> dict[str, str]:
        """Container name → imageID (with its digest), as the operator annotated the pod; {}
        until it has (the kubelet reports imageIDs once containers start)."""
        if not self.annotations:
            return {}
        try:
            raw = config.read_annotations_file(self.annotations).get(contract.IMAGES)
            doc = json.loads(raw) if raw else {}
        except (OSError, ValueError):
            return {}
        return {str(k): str(v) for k, v in doc.items()} if isinstance(doc, dict) else {}


# ----------------------------------------------------------------------------- run.json

def read_run(s3, store: keys.StoreURL, run: keys.RunPath) -> tuple[dict | None, str | None]:
    """(run.json, its ETag), or (None, None) when the run has none (written before run.json)."""
    key = keys.Layout(store, run, contract.DEFAULT_REPLICA).run_metadata_key
    try:
        obj = s3.get_object(Bucket=store.bucket, Key=key)
    except ClientError as err:
        if err.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None, None
        raise
    try:
        doc = json.loads(obj["Body"].read())
    except ValueError:
        doc = None  # damaged: the next update rewrites it whole
    return (doc if isinstance(doc, dict) else None), obj["ETag"]


def update_run(s3, layout: keys.Layout, change: Callable[[dict], dict | None], attempts: int = CAS_ATTEMPTS,
               sleep: Callable[[float], None] = time.sleep, deadline: float | None = None,
               clock: Callable[[], float] = time.monotonic) -> dict | None:
    """Apply `change` (run.json → the new run.json, or None when nothing needs writing) as a
    conditional write; on a 412 read again and retry, up to `attempts` times with jitter, and
    no attempt after `deadline` (a `clock()` time: the end's lease release must not wait).
    Returns what is stored now (None when every attempt lost the race)."""
    tried = 0
    for attempt in range(attempts):
        if attempt and deadline is not None and clock() >= deadline:
            break
        tried += 1
        doc, etag = read_run(s3, layout.store, layout.run)
        base = doc or {"format": FORMAT, "run": str(layout.run), "replicas": {}}
        new = change(json.loads(json.dumps(base)))
        if new is None:
            return doc
        new["status"], new["ended"] = _run_status(new.get("replicas") or {})
        new["generation"] = int(base.get("generation") or 0) + 1  # names the runs index's marker
        condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
        try:
            s3.put_object(Bucket=layout.store.bucket, Key=layout.run_metadata_key, ContentType="application/json",
                          Body=json.dumps(new, indent=1, sort_keys=True).encode(), **condition)
        except ClientError as err:
            if not errors.precondition_failed(err):
                raise
        else:
            runsindex.publish(s3, layout, doc, new, damaged=doc is None and etag is not None, deadline=deadline,
                              clock=clock)
            return new
        pause = random.uniform(0, min(2.0, 0.05 * 2 ** attempt))  # another replica wrote in between
        sleep(pause if deadline is None else max(0.0, min(pause, deadline - clock())))
    log.warning("run.json not updated: other replicas kept writing it", extra={"fields": {
        "run": str(layout.run), "replica": layout.replica, "attempts": tried,
        "deadline_passed": tried < attempts}})
    return None


def _run_status(replicas: Mapping[str, dict]) -> tuple[str, float | None]:
    """running while any replica runs; else failed if any failed; else ended (at the last end)."""
    states = [r.get("status") for r in replicas.values()]
    if not states or RUNNING in states:
        return RUNNING, None
    ended = max((r.get("ended") or 0 for r in replicas.values()), default=0) or None
    return (FAILED if FAILED in states else ENDED), ended


def settled(s3, store: keys.StoreURL, run: keys.RunPath, doc: dict, now: float) -> dict:
    """run.json as readers should see it: each `running` entry not updated for `STALE_SECONDS`
    is taken from that replica's own replica.json when it says more (one GET per such entry;
    none for a run whose replicas all ended or refreshed lately). Nothing is written."""
    replicas = doc.get("replicas")
    if not isinstance(replicas, dict):
        return doc
    stale = [name for name, e in replicas.items() if isinstance(e, dict) and e.get("status") == RUNNING
             and now - float(e.get("updated") or 0) >= STALE_SECONDS]
    changed = False
    for name in stale:
        try:
            obj = s3.get_object(Bucket=store.bucket, Key=keys.Layout(store, run, name).replica_metadata_key)
            own = json.loads(obj["Body"].read())
            if own.get("status") != RUNNING and float(own.get("updated") or 0) > float(replicas[name].get("updated") or 0):
                replicas[name] = entry(own)
                changed = True
        except (ClientError, ValueError, TypeError, KeyError, AttributeError, keys.RunPathError):
            continue  # no replica.json, or damaged: run.json's word stands
    if changed:
        doc["status"], doc["ended"] = _run_status(replicas)
        doc["updated"] = max(float(e.get("updated") or 0) for e in replicas.values())
    return doc


def entry(replica: dict) -> dict:
    """A replica.json → its small entry in run.json."""
    m = replica.get("manifest") or {}
    return {"status": replica["status"], "started": replica["started"], "ended": replica["ended"],
            "updated": replica["updated"], "pod": (replica.get("pod") or {}).get("name"),
            "node": (replica.get("pod") or {}).get("node"), "seq": m.get("seq"), "files": m.get("files", 0),
            "size": m.get("size", 0)}


def record_code(s3, layout: keys.Layout, git: Mapping[str, object], now: float | None = None) -> None:
    """The SDK stored the run's code state: run.json names its commit and keys."""
    now = time.time() if now is None else now
    code = {"commit": git.get("commit"), "branch": git.get("branch"), "dirty": git.get("dirty"),
            "info": layout.code_key("git.json"), "patch": layout.code_key("diff.patch")}

    def change(doc: dict) -> dict:
        doc["code"] = code
        doc.setdefault("created", now)
        doc["updated"] = max(doc.get("updated") or 0, now)
        return doc
    try:
        update_run(s3, layout, change)
    except Exception as err:  # noqa: BLE001 - the code state itself is stored; only the summary lacks it
        log.warning("run.json: code state not recorded", extra={"fields": {"run": str(layout.run), "error": str(err)}})


# ----------------------------------------------------------------------------- the replica's recorder

def _best_effort(fn):
    """Metadata never holds up files, nor breaks the committer's thread: a failure is logged."""
    def wrapped(self, *args, **kwargs):
        try:
            return fn(self, *args, **kwargs)
        except Exception as err:  # noqa: BLE001
            log.warning("run metadata not written", extra={"fields": {
                "run": str(self.layout.run), "replica": self.layout.replica, "error": str(err)}})
    return wrapped


class Recorder:
    """One replica's metadata, written on the committer's thread (which holds the lease)."""

    def __init__(self, s3, layout: keys.Layout, facts: Facts, clock: Callable[[], float] = time.time,
                 refresh: float = REFRESH_SECONDS):
        self.s3 = s3
        self.layout = layout
        self.facts = facts
        self.clock = clock
        self.refresh = refresh
        self.doc: dict | None = None
        self._etag: str | None = None
        self._fenced = False
        self._last = 0.0
        self._images_seen: float | None = None
        self._images_checked = 0.0

    @_best_effort
    def started(self, latest) -> None:
        now = self.clock()
        self.doc = self._new(latest, now)
        self._write(now, run_too=True, first=True)

    @_best_effort
    def once(self, m) -> None:
        """A one-shot writer (`runsync sync`): started and ended, in one write of each object."""
        now = self.clock()
        self.doc = {**self._new(m, now), "status": ENDED, "ended": now}
        self._write(now, run_too=True, first=True)

    def _new(self, latest, now: float) -> dict:
        return {
            "format": FORMAT, "run": str(self.layout.run), "replica": self.layout.replica, "status": RUNNING,
            "writer": self.facts.writer, "host": socket.gethostname(),
            "pod": {"name": self.facts.pod, "namespace": self.facts.namespace or self.layout.run.namespace,
                    "uid": self.facts.uid, "node": self.facts.node},
            "images": self.facts.images(), "started": now, "ended": None, "updated": now,
            "manifest": _manifest(latest),
        }

    @_best_effort
    def committed(self, m) -> None:
        """After a commit: refresh when a minute has passed. (The images arriving are written
        by `refresh_images` when `images_due`: a stat, not a read of the annotations a commit.)"""
        if self.doc is None:
            return
        now = self.clock()
        self.doc["manifest"] = _manifest(m)
        if now - self._last < self.refresh:
            return
        self._write(now, run_too=None)

    def images_due(self, now: float) -> bool:
        """Cheap (a stat, every 2 s at most): has the annotations file changed since it was last
        read? The operator's `runsync.dev/images` arrives that way, after the pod started."""
        if self.doc is None or not self.facts.annotations or now - self._images_checked < 2:
            return False
        self._images_checked = now
        try:
            mtime = os.stat(self.facts.annotations).st_mtime
        except OSError:
            return False
        if mtime == self._images_seen:
            return False
        self._images_seen = mtime
        return self.facts.images() != self.doc["images"]

    @_best_effort
    def refresh_images(self) -> None:
        if self.doc is not None:
            self.doc["images"] = self.facts.images()
            self._write(self.clock(), run_too=False)

    @_best_effort
    def ended(self, m, failed: str | None = None, deadline: float | None = None) -> None:
        """The final manifest (or None and why it failed): the replica's last word. run.json's
        update stops retrying at `deadline` (time.monotonic): the lease release waits behind it."""
        if self.doc is None:
            return
        now = self.clock()
        self.doc.update(status=FAILED if failed else ENDED, ended=now, images=self.facts.images() or self.doc["images"])
        if m is not None:
            self.doc["manifest"] = _manifest(m)
        if failed:
            self.doc["reason"] = failed
        self._write(now, run_too=True, deadline=deadline)

    # ---------------------------------------------------------------- writes

    def _write(self, now: float, run_too: bool | None, first: bool = False, deadline: float | None = None) -> None:
        """replica.json; then run.json when `run_too` (None: only when its `updated` is stale)."""
        if self._fenced:
            return
        self._last = now
        self.doc["updated"] = now
        key = self.layout.replica_metadata_key
        condition = {} if first or self._etag is None else {"IfMatch": self._etag}
        try:
            put = self.s3.put_object(Bucket=self.layout.store.bucket, Key=key, ContentType="application/json",
                                     Body=json.dumps(self.doc, indent=1, sort_keys=True).encode(), **condition)
            self._etag = put["ETag"]
        except ClientError as err:
            if errors.precondition_failed(err):
                self._fenced = True  # another pod took this replica: its metadata is its own
                log.warning("replica.json written by another pod; this one stops writing metadata",
                            extra={"fields": {"key": key}})
                return
            log.warning("replica.json not written", extra={"fields": {"key": key, "error": str(err)}})
            return
        except Exception as err:  # noqa: BLE001 - metadata never holds up files
            log.warning("replica.json not written", extra={"fields": {"key": key, "error": str(err)}})
            return
        if run_too is False:
            return
        mine = entry(self.doc)

        def change(doc: dict) -> dict | None:
            replicas = doc.setdefault("replicas", {})
            if run_too is None and now - (doc.get("updated") or 0) < self.refresh \
                    and replicas.get(self.layout.replica, {}).get("status") == mine["status"]:
                return None  # fresh enough: another replica refreshed it within the minute
            replicas[self.layout.replica] = mine
            doc["created"] = min(doc.get("created") or mine["started"], mine["started"])
            doc["updated"] = max(doc.get("updated") or 0, now)
            return doc
        try:
            update_run(self.s3, self.layout, change, deadline=deadline)
        except Exception as err:  # noqa: BLE001 - metadata never holds up files
            log.warning("run.json not written", extra={"fields": {"key": self.layout.run_metadata_key,
                                                                  "error": str(err)}})


def _manifest(m) -> dict:
    if m is None:
        return {"seq": None, "committed": None, "files": 0, "size": 0}
    return {"seq": m.seq, "committed": m.created, "files": len(m.files), "size": m.size}

