"""The lease's pure part: what a would-be writer does on finding each kind of lease
(keep it, wait for its final flush, give up, or take it with the next epoch)."""

from __future__ import annotations

import pytest

from runsync import lease

NOW = 1_000_000.0


def held(state: str, age: float, holder: str = "pod-a", ttl: float | None = None) -> lease.Lease:
    ttl = ttl if ttl is not None else (lease.IDLE_TTL if state == "idle" else lease.DEFAULT_TTL)
    return lease.Lease(holder=holder, epoch=3, heartbeat=NOW - age, state=state, ttl=ttl)


@pytest.mark.parametrize("found, expected", [
    (None, "take"),                                 # a new replica
    (held("active", 1), "wait"),                    # flushing: its final manifest is owed
    (held("active", lease.DEFAULT_TTL + 1), "take"),  # its pod is gone without releasing
    (held("idle", 1), "take"),                      # an idle holder owes nothing: no wait
    (held("idle", lease.IDLE_TTL + 1), "take"),
    (held("released", 1), "take"),
])
def test_a_successor_waits_only_for_a_live_active_holder(found, expected):
    assert lease.decide(found, "pod-b", NOW, deadline=NOW + 30, take_live=True) == expected


def test_once_the_wait_is_over_a_live_active_lease_is_taken_or_refused():
    busy = held("active", 1)
    assert lease.decide(busy, "pod-b", NOW, deadline=NOW, take_live=True) == "take"
    assert lease.decide(busy, "pod-b", NOW, deadline=NOW, take_live=False) == "busy"
    # `sync` refuses a live writer, idle or not: it would fence a running sidecar.
    assert lease.decide(held("idle", 1), "pod-b", NOW, deadline=NOW, take_live=False) == "busy"


@pytest.mark.parametrize("state", ["active", "idle"])
def test_the_holder_keeps_its_own_lease(state):
    assert lease.decide(held(state, 1, holder="pod-b"), "pod-b", NOW, deadline=NOW + 30, take_live=True) == "keep"


def test_idle_and_active_leases_are_alive_for_their_own_ttl():
    assert held("idle", lease.DEFAULT_TTL * 10).alive(NOW)          # gc, `runs`, status: a live writer
    assert not held("idle", lease.IDLE_TTL + 1).alive(NOW)
    assert not held("active", lease.DEFAULT_TTL + 1).alive(NOW)
    assert not held("released", 0).alive(NOW)


def test_an_old_lease_without_a_state_reads_as_active():
    old = lease.Lease.from_json(b'{"holder": "pod-a", "epoch": 2, "heartbeat": 5.0}')
    assert old.state == "active" and old.ttl == lease.DEFAULT_TTL
