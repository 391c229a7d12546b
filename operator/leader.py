"""Which replica runs the Store handlers: the holder of a coordination.k8s.io/v1 Lease.

Every replica serves the admission webhook from its own Store index, so every replica must keep
watching Stores. kopf's peering cannot give that: a paused peer stops all its watches (kopf
`_cogs/clients/watching.py`, `streaming_block`), so its index would freeze while it still serves
admissions. The Store health check (S3 calls, status patches, events) is what must run once:
its handlers ask `Election.leading` and return at once elsewhere.

The rules are client-go's leader election: take the Lease when it is absent, released, or not
renewed for `duration` seconds *as observed locally* (no clock shared with other pods); renew it
every `duration / 3` seconds; a replace carries the resourceVersion read, so of two replicas
racing for it one gets a 409 and stays a follower. A holder that cannot renew for `duration`
seconds stops leading on its own.
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
import threading
import time
import uuid
from typing import Callable

LEASE_NAME = "runsync-store-handlers"
TIMEOUT = 5
"""Seconds for one Lease call: a slow API must not hold kopf's startup or a round."""


def coordination_api():
    """A Leases client of its own: the election starts in kopf's startup, before kopf logs in."""
    import kubernetes

    from .kubeclient import api_client

    return kubernetes.client.CoordinationV1Api(api_client())


@dataclasses.dataclass
class Election:
    api: object
    """A kubernetes.client.CoordinationV1Api."""
    namespace: str
    name: str = LEASE_NAME
    duration: int = 15
    """Seconds without renewal after which another replica may take the Lease."""
    identity: str = dataclasses.field(default_factory=lambda: f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}")
    """The pod's name (its hostname) and a random suffix: two processes never share one."""
    clock: Callable[[], float] = time.monotonic
    _renewed: float | None = dataclasses.field(default=None, init=False)
    _observed: tuple | None = dataclasses.field(default=None, init=False)
    _observed_at: float = dataclasses.field(default=0.0, init=False)
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event, init=False)

    @property
    def leading(self) -> bool:
        return self._renewed is not None and self.clock() - self._renewed < self.duration

    def holder(self) -> str | None:
        return self._observed[0] if self._observed else None

    def round(self) -> bool:
        """One attempt to take or renew the Lease; True when this replica holds it now."""
        import kubernetes

        now_wall = datetime.datetime.now(datetime.timezone.utc)
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=TIMEOUT)
        except kubernetes.client.ApiException as err:
            if err.status != 404:
                return self.leading
            body = kubernetes.client.V1Lease(
                metadata=kubernetes.client.V1ObjectMeta(name=self.name, namespace=self.namespace),
                spec=self._spec(now_wall, transitions=0, acquired=now_wall))
            return self._write(lambda: self.api.create_namespaced_lease(self.namespace, body, _request_timeout=TIMEOUT))
        spec = lease.spec or kubernetes.client.V1LeaseSpec()
        record = (spec.holder_identity, spec.renew_time, spec.lease_duration_seconds)
        if record != self._observed:  # someone renewed (or released): the clock restarts here
            self._observed, self._observed_at = record, self.clock()
        if spec.holder_identity == self.identity:
            lease.spec = self._spec(now_wall, transitions=spec.lease_transitions or 0,
                                    acquired=spec.acquire_time or now_wall)
        elif not spec.holder_identity or self.clock() - self._observed_at >= (spec.lease_duration_seconds or
                                                                                self.duration):
            lease.spec = self._spec(now_wall, transitions=(spec.lease_transitions or 0) + 1, acquired=now_wall)
        else:
            self._renewed = None
            return False
        return self._write(lambda: self.api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=TIMEOUT))

    def _spec(self, now, transitions: int, acquired):
        import kubernetes

        return kubernetes.client.V1LeaseSpec(holder_identity=self.identity, lease_duration_seconds=self.duration,
                                             acquire_time=acquired, renew_time=now, lease_transitions=transitions)

    def _write(self, call) -> bool:
        import kubernetes

        started = self.clock()
        try:
            written = call()
        except kubernetes.client.ApiException as err:
            if err.status == 409:  # another replica wrote first
                self._renewed = None
                return False
            return self.leading
        self._renewed = started
        spec = written.spec
        self._observed = (spec.holder_identity, spec.renew_time, spec.lease_duration_seconds)
        self._observed_at = started
        return True

    def release(self) -> None:
        """Give the Lease up (on shutdown), so another replica takes it at its next round."""
        self._stop.set()
        if not self.leading:
            return
        self._renewed = None
        try:
            lease = self.api.read_namespaced_lease(self.name, self.namespace, _request_timeout=TIMEOUT)
            if lease.spec and lease.spec.holder_identity == self.identity:
                lease.spec.holder_identity = None
                lease.spec.lease_duration_seconds = 1
                self.api.replace_namespaced_lease(self.name, self.namespace, lease, _request_timeout=TIMEOUT)
        except Exception:  # noqa: BLE001 - best effort on the way out: it expires by itself
            pass

    def run(self, on_change: Callable[[bool], None] = lambda leading: None) -> threading.Thread:
        """Rounds every duration / 3 seconds in a daemon thread, until `release()`."""

        def loop() -> None:
            was = self.leading
            while not self._stop.wait(self.duration / 3):
                try:
                    now = self.round()
                except Exception:  # noqa: BLE001 - an unreachable API: try again next round
                    now = self.leading
                if now != was:
                    on_change(now)
                    was = now

        thread = threading.Thread(target=loop, name="store-handlers-lease", daemon=True)
        thread.start()
        return thread
