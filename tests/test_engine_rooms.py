"""The end of a run (sidecar/ending.py), the upload bookkeeping (sidecar/uploads.py) and the
status reply (sidecar/status.py): the loop's rooms on their own, times passed in, no sleeps."""

from __future__ import annotations

import types

from hypothesis import given, settings, strategies as st
from prometheus_client import CollectorRegistry

from runsync import config, keys, messages, status, tasks, transfer
from runsync.ending import Ending
from runsync.flushes import Flushes, Waiter
from runsync.ledger import Ledger
from runsync.metrics import Metrics
from runsync.uploads import Uploads

Policy = config.Policy


def ending(grace=30.0, margin=3.0):
    registry = CollectorRegistry()
    return Ending(grace, margin, Metrics(registry)), registry


def test_prestop_starts_the_deadline_and_sends_what_end_owes_newest_first():
    end, _ = ending()
    end.owed.update({"logs/a.txt": 10.0, messages.dir_key("ckpt/step-2"): 30.0, "logs/b.txt": 20.0})
    assert end.begin(100.0) == [(messages.dir_key("ckpt/step-2"), 30.0), ("logs/b.txt", 20.0), ("logs/a.txt", 10.0)]
    assert (end.mode, end.deadline) == ("ending", 130.0)
    assert end.begin(105.0) == []  # SIGTERM after preStop: the deadline stays, nothing goes twice
    assert end.deadline == 130.0
    end.final(105.0)
    assert end.mode == "final"


def test_the_last_commit_goes_at_once_when_nothing_is_busy():
    end, registry = ending()
    end.begin(100.0)
    cancelled = []
    assert end.due(101.0, (), False, 0.0, lambda: 1 / 0, lambda: cancelled.append(True))
    assert cancelled == [] and registry.get_sample_value("runsync_unsynced_files_total") == 0


def test_uploads_that_can_finish_are_waited_for_and_ones_that_cannot_are_given_up():
    end, registry = ending(grace=30.0, margin=3.0)
    end.begin(100.0)  # deadline 130; 127 is kept free for the commit
    cancelled = []
    cancel = lambda: cancelled.append(True)  # noqa: E731
    assert not end.due(101.0, ("a.bin",), False, 0.0, lambda: 10.0, cancel)  # done by 111
    assert not end.due(101.0, ("a.bin",), False, 0.0, lambda: None, cancel)  # no estimate yet: wait
    assert not end.due(101.0, (), True, 0.0, lambda: None, cancel)  # a commit in flight: wait
    assert cancelled == []
    assert end.due(101.0, ("b.bin", "a.bin", messages.dir_key("ckpt/s")), False, 0.0, lambda: 60.0, cancel)
    assert cancelled == [True] and registry.get_sample_value("runsync_unsynced_files_total") == 3


def test_an_upload_the_estimate_barely_doubts_is_not_given_up_early():
    """Seen under load (load average 7-11): 11 s into a 30 s grace period a 150 MB upload was
    estimated at 16.0 s with 15.9 s left and cancelled, losing a file that had time to finish. A
    rate that swings by 2x under load is no reason to give up early; the deadline still is."""
    end, registry = ending(grace=30.0, margin=3.0)
    end.begin(100.0)  # deadline 130; 127 is kept free for the commit
    cancelled = []
    assert not end.due(111.1, ("final/model.pt",), False, 0.0, lambda: 16.0, lambda: cancelled.append(1))
    assert cancelled == [] and registry.get_sample_value("runsync_unsynced_files_total") == 0
    assert end.due(127.0, ("final/model.pt",), False, 0.0, lambda: 1.0, lambda: cancelled.append(1))
    assert cancelled == [1]  # at the time kept for the commit it goes, whatever the estimate


def test_the_time_kept_for_the_commit_grows_with_the_slowest_commit():
    end, _ = ending(grace=30.0, margin=3.0)
    end.begin(100.0)
    cancelled = []
    assert not end.due(120.0, ("a.bin",), False, 1.0, lambda: None, lambda: cancelled.append(1))
    assert end.due(120.0, ("a.bin",), False, 6.0, lambda: None, lambda: cancelled.append(1))  # 130 - 12 < 120
    assert cancelled == [1]


class FakeWorker:
    root = "/nonexistent-run-dir"  # no file there to stat: a rescan would hand on what is in flight

    def __init__(self):
        self.started: list[messages.Task] = []

    def start(self, task):
        self.started.append(task)


def uploads(clock=lambda: 0.0):
    worker, flushes = FakeWorker(), Flushes()
    rules = types.SimpleNamespace(cfg=config.RunConfig(), extra=())
    up = Uploads(worker, tasks.Retries(transfer.Backoff(1.0, 30.0), recheck=2.0), flushes, Ledger(None), rules,
                 Metrics(CollectorRegistry()), clock)
    return up, worker, flushes


def test_a_newer_version_waits_for_the_one_in_flight():
    up, worker, flushes = uploads()
    flushes.accept("a.bin")
    up.start("a.bin", "a.bin", Policy.LIVE, 1.0, True)
    up.dirty["a.bin"] = ("a.bin", Policy.LIVE, 2.0, True)
    assert "a.bin" in up and up.unsent() == ("a.bin", "a.bin") and up.waiting() == 1
    up.finished(messages.Done(worker.started[0], "uploaded"))
    up.next("a.bin")
    assert [t.ready_at for t in worker.started] == [1.0, 2.0] and not up.dirty
    up.next("a.bin")  # nothing newer: nothing goes
    assert len(worker.started) == 2


def test_a_failed_upload_goes_again_when_its_retry_is_due_as_its_newest_version():
    now = [0.0]
    up, worker, flushes = uploads(lambda: now[0])
    flushes.accept("a.bin")
    up.start("a.bin", "a.bin", Policy.LIVE, 1.0, True)
    task = worker.started[0]
    up.finished(messages.Done(task, "failed", error="boom"))
    up.failed(task, "boom")
    assert "a.bin" in up.retries and up.unsent() == ("a.bin",)
    newest = flushes.accept("a.bin")
    up.retry_due(0.1)
    assert len(worker.started) == 1  # its backoff (at least half a second) has not passed
    up.retry_due(60.0)
    assert worker.started[-1] is task and task.gen == newest and task.attempt == 1 and "a.bin" in up


def test_status_lists_are_cut_short_but_counts_are_whole():
    layout = keys.Layout(keys.StoreURL.parse("s3://bucket/prefix"), keys.RunPath.parse("team-a/p/r"), "0")
    inflight = {f"f{i:04}": None for i in range(status.STATUS_LIST + 5)}
    flushes = Flushes()
    flushes.accept(messages.dir_key("ckpt/step-1"))
    reply = status.report(layout, "running", Ledger(None), inflight, flushes, {"logs/a.txt": 1.0}, [], True)
    assert len(reply["uploading"]) == status.STATUS_LIST and reply["uploading_count"] == status.STATUS_LIST + 5
    assert reply["pending"] == ["ckpt/step-1/"] and reply["owed_at_end"] == ["logs/a.txt"]
    assert (reply["manifest"], reply["durable_files"], reply["mode"], reply["loaded"]) == (None, 0, "running", True)


def test_a_commit_is_asked_for_at_once_when_it_would_answer_a_waiting_flush():
    """`answerable(staged_upto)`: true exactly when committing what is staged (key → the newest
    event it stands for) clears every key pending at or before a waiter's fence."""
    import concurrent.futures

    flushes = Flushes()
    flushes.accept("a.bin")  # event 1
    flushes.accept("b.bin")  # event 2
    flushes.wait(1, deadline=100.0, reply=concurrent.futures.Future())
    assert not flushes.answerable({"a.bin": 1, "b.bin": 2})  # its fence is not delivered yet
    flushes.fenced(1)  # the fence stands for events up to 2
    assert not flushes.answerable({"a.bin": 1})  # b.bin is still uploading
    assert flushes.answerable({"a.bin": 1, "b.bin": 2})
    flushes.accept("c.bin")  # event 3, after the fence: not waited for
    assert flushes.answerable({"a.bin": 1, "b.bin": 2})
    flushes.accept("b.bin")  # event 4: b.bin's next version is on its way, the one staged is the fence's
    assert flushes.answerable({"a.bin": 1, "b.bin": 2})
    flushes.accept("a.bin")  # event 5, after the fence: a.bin's version of event 1 is the one waited for
    assert flushes.answerable({"a.bin": 1, "b.bin": 2})
    flushes.committed([("a.bin", 1, 0.0), ("b.bin", 2, 0.0)])  # and the commit clears it: pending from 5
    assert flushes.pending == {"c.bin": 3, "b.bin": 4, "a.bin": 5}
    flushes.answer(0.0, loaded=True, seq=1)
    assert not flushes.waiters

    rewritten = Flushes()  # a file rewritten before the fence: its newest version before it is waited for
    rewritten.accept("a.bin")  # event 1, staged
    rewritten.accept("x")  # event 2
    rewritten.accept("a.bin")  # event 3
    rewritten.wait(1, deadline=100.0, reply=concurrent.futures.Future())
    rewritten.fenced(1)
    assert not rewritten.answerable({"a.bin": 1, "x": 2})
    assert rewritten.answerable({"a.bin": 3, "x": 2})
    rewritten.accept("a.bin")  # event 4
    rewritten.accept("a.bin")  # event 5: one with 4 (no fence between them)
    assert rewritten._later["a.bin"] == [3, 5]
    rewritten.committed([("a.bin", 1, 0.0)])
    assert rewritten.pending["a.bin"] == 3 and rewritten._later["a.bin"] == [5]

    retried = Flushes()
    retried.accept("log")  # event 1: its upload failed, a retry of it waits
    retried.accept("x")  # event 2
    retried.wait(1, deadline=100.0, reply=concurrent.futures.Future())
    retried.fenced(1)
    assert retried.answerable({"log": 1, "x": 2})  # staged up to its newest event: the commit clears it
    assert not retried.answerable({"x": 2})


def test_a_found_file_standing_for_the_rescan_keeps_one_number_when_no_fence_parts_them():
    """100,000 files a rescan finds each stand for its event: with no fence delivered between
    the two, no flush tells them apart, and no list of events is kept a file."""
    flushes = Flushes()
    rescan = flushes.accept(messages.RESCAN)  # event 1
    for name in ("a", "b"):
        flushes.accept(name, since=rescan)  # events 2, 3
    assert flushes._later == {} and flushes.pending == {messages.RESCAN: 1, "a": 2, "b": 3}
    flushes.fenced(1)  # a flush's fence after the rescan began: the file found next stands for it
    flushes.accept("c", since=rescan)
    assert flushes.pending["c"] == 1 and flushes._later == {"c": [4]}


def test_flushes_answered_leave_no_fence_behind():
    """A trainer that flushes after every save for weeks: an answered flush leaves nothing
    behind (its fence used to stay, one entry a flush), whether the watcher's fence reached the
    loop before the flush's request or after it."""
    import concurrent.futures

    flushes = Flushes()
    for n in range(1, 201):
        reply = concurrent.futures.Future()
        flushes.accept("ckpt.pt")
        if n % 2:  # the watcher's fence may reach the loop before the flush's request, or after
            flushes.fenced(n)
        flushes.wait(n, deadline=10.0, reply=reply)
        if not n % 2:
            flushes.fenced(n)
        flushes.satisfy("ckpt.pt", flushes.gen)
        flushes.answer(0.0, loaded=True, seq=n)
        assert reply.result(timeout=0)["durable"]
    assert flushes.fences == {} and flushes.waiters == []


def test_a_flush_waited_on_again_after_a_timeout_is_answered_on_the_same_fence():
    """The SDK's embedded mode waits on one fence in slices (embedded.py): a slice that timed
    out must leave the fence for the next one, which answers once the files are committed, and
    names only what came before the fence (review)."""
    import concurrent.futures

    flushes = Flushes()
    flushes.accept("a.log")
    flushes.fenced(1)
    first = concurrent.futures.Future()
    flushes.wait(1, deadline=5.0, reply=first)
    flushes.answer(5.0, loaded=True, seq=1)
    assert first.result(timeout=0) == {"durable": False, "pending": ["a.log"]}
    again = concurrent.futures.Future()
    flushes.wait(1, deadline=10.0, reply=again)
    flushes.satisfy("a.log", flushes.gen)
    flushes.accept("b.log")  # written after the fence: not this flush's
    flushes.answer(6.0, loaded=True, seq=2)
    assert again.result(timeout=0)["durable"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["accept", "accept", "commit", "satisfy", "fence", "ask"]),
                          st.sampled_from(["a", "b"]), st.integers(0, 60), st.booleans()), max_size=40))
def test_flushes_wait_on_exactly_the_events_not_yet_committed(ops):
    """Against a model that keeps every event of a key not yet committed: the same keys pending,
    and for every fence delivered (numbered in any order, and one now) the same keys pending at
    or before it and their newest event at or before it: what a flush waits on and what
    `answerable` asks to be staged; `answerable` says exactly whether committing the staged
    versions (each a past newest event of its key, as a task's) clears a fence."""
    import copy

    flushes, outstanding, latest, fences, newest = Flushes(), {}, {}, [], {}
    for op, key, n, flag in ops:
        if op == "accept":
            since = min(n, flushes.gen) if flag and flushes.gen else None
            gen = flushes.accept(key, since)
            latest[key] = gen
            newest.setdefault(key, []).append(gen)
            outstanding.setdefault(key, set()).update({gen} | ({since} if since is not None else set()))
        elif op in ("commit", "satisfy"):  # a task's version (its key's newest event then), or any
            if op == "commit" and not newest.get(key):
                continue
            gen = newest[key][n % len(newest[key])] if op == "commit" else min(n, flushes.gen)
            flushes.satisfy(key, gen)
            if latest.get(key, 0) <= gen:
                outstanding.pop(key, None)
                latest.pop(key, None)
            elif key in outstanding:
                outstanding[key] = {e for e in outstanding[key] if e > gen}
        elif op == "fence":
            flushes.fenced(10_000 - len(fences) if flag else len(fences) + 1)
            fences.append(flushes.gen)
        elif fences:  # ask: would committing these staged versions answer a waiter at this fence?
            fence = fences[n % len(fences)]
            staged = {k: newest[k][(n + i) % len(newest[k])]
                      for i, k in enumerate(sorted(flushes.pending)) if (n >> i) & 1}
            flushes.waiters, flushes._blocker = [Waiter(-1, 0.0, None, fence)], None
            committed = copy.deepcopy(flushes)
            committed.committed([(k, g, 0.0) for k, g in staged.items()])
            assert flushes.answerable(staged) == (not any(g <= fence for g in committed.pending.values()))
            flushes.waiters = []
        for k, later in flushes._later.items():  # the books: sorted, after pending, ending at latest
            assert later and later == sorted(set(later)) and flushes.pending[k] < later[0]
        assert all(flushes.latest[k] == max(g, *flushes._later.get(k, [g])) for k, g in flushes.pending.items())
        assert set(flushes.pending) == set(flushes.latest) == set(outstanding)
        for fence in (*fences, flushes.gen):  # (events between two fences are one to a flush)
            waited = {k for k, events in outstanding.items() if min(events) <= fence}
            assert {k for k, g in flushes.pending.items() if g <= fence} == waited, fence
            for k in waited:
                assert flushes._last_upto(k, fence) == max(e for e in outstanding[k] if e <= fence), (k, fence)
