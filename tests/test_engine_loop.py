"""The engine's loop with a fake clock and a fake transfer: the test posts the watcher's events
and the API's requests itself, and sees what would be uploaded and what becomes durable.
Manifests and the lease are real (SeaweedFS); file bytes never leave the fake transfer."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from runsync import engine, hashing, keys, messages, transfer, watch
from runsync.errors import StoreError
from runsync.metrics import Metrics
from runsync.settings import Settings

# The loop runs on a thread of its own: an exception there must fail the test, not just warn.
pytestmark = [pytest.mark.s3, pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")]
ANNOTATIONS = 'runsync.dev/save="ckpt/**:live,logs/*:end,results/*:live"\n'


class FakeTransfers:
    """Records each upload's path (relative to the run dir); can fail, or hold uploads at a gate."""

    def __init__(self, root):
        self.root = str(root)
        self.settings = transfer.Settings()
        self.sent: list[str] = []
        self.attempts = 0
        self.fail = 0
        self.gate = threading.Event()
        self.gate.set()
        self.hold: set[str] | None = None
        """These files wait for a permit each (`permits.release()`) instead of the gate."""
        self.permits = threading.Semaphore(0)
        self.waiting = threading.Event()

    def upload(self, uploads):
        for up in uploads:
            self.attempts += 1
            st = os.stat(up.path)
            if (st.st_size, st.st_mtime_ns) != (up.digest.size, up.digest.mtime_ns):
                yield up, transfer.FileChanged(up.path)  # as a real upload: not the file looked at
                continue
            data = open(up.path, "rb").read()  # a real small upload reads the file, then sends it
            if self.hold is None:
                self.waiting.set()
                self.gate.wait(60)
            elif os.path.relpath(up.path, self.root) in self.hold:
                self.waiting.set()
                self.permits.acquire(timeout=60)
            if self.fail:
                self.fail -= 1
                yield up, StoreError("cannot reach the S3 endpoint (test)")
                continue
            self.sent.append(os.path.relpath(up.path, self.root))
            sums = hashing.of_buffer(data, self.settings.multipart_chunksize)
            yield dataclasses.replace(up, sums=sums), None

    def cancel(self):
        pass


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


class Running:
    def __init__(self, run_dir, s3_env, tmp_path):
        (tmp_path / "annotations").write_text(ANNOTATIONS)
        self.run_dir = run_dir
        self.clock = Clock()
        self.fake = FakeTransfers(run_dir)
        self.registry = CollectorRegistry()
        layout = keys.Layout(keys.StoreURL.parse(s3_env["RUNSYNC_STORE"]), keys.RunPath.parse("team-a/p/r"), "0")
        self.engine = engine.Engine(run_dir, layout, transfer.client(), self.fake, Metrics(self.registry),
                                    Settings(), annotations_file=str(tmp_path / "annotations"),
                                    clock=self.clock, holder="pod-a")
        self.thread = threading.Thread(target=self.engine.loop, daemon=True)
        self.thread.start()
        self.fences = 0
        wait_until(lambda: self.ask("status")["loaded"])

    def ask(self, kind, payload=None):
        reply = concurrent.futures.Future()
        self.engine.post(messages.Request(kind, payload or {}, reply))
        return reply.result(timeout=120)

    def write(self, relpath, data: bytes):
        path = self.run_dir / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.engine.post(watch.FileEvent(relpath, True, self.clock()))

    def flush(self):
        return self.flush_begun().result(timeout=120)

    def flush_begun(self) -> concurrent.futures.Future:
        """A flush asked for; its answer comes in the future returned."""
        self.fences += 1
        self.engine.post(watch.Fence(self.fences))
        reply = concurrent.futures.Future()
        self.engine.post(messages.Request("flush", {"fence": self.fences, "timeout": 600}, reply))
        return reply

    def failures(self):
        return self.registry.get_sample_value("runsync_failures_total", {"kind": "unreachable"}) or 0

    def stop(self):
        self.fake.gate.set()
        self.fake.permits.release(100)
        self.ask("terminate")
        self.thread.join(120)


def wait_until(check, timeout=120):
    """Poll `check` until it holds (the machine is busy: no fixed sleep decides anything)."""
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "condition never held"
        time.sleep(0.05)


@pytest.fixture
def running(s3_env, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    r = Running(run_dir, s3_env, tmp_path)
    yield r
    r.stop()


def test_a_live_file_is_durable_when_flush_returns(running):
    running.write("results/a.csv", b"1,2\n")
    answer = running.flush()
    assert answer["durable"] is True
    assert running.fake.sent == ["results/a.csv"]
    assert running.ask("status")["durable_files"] == 1


def test_a_burst_coalesces_behind_the_upload_in_flight(running):
    running.fake.gate.clear()
    running.write("results/a.csv", b"v1")
    assert running.fake.waiting.wait(60)
    running.write("results/a.csv", b"v2")
    running.write("results/a.csv", b"v3")
    running.fake.gate.set()
    assert running.flush()["durable"] is True
    assert running.fake.sent == ["results/a.csv", "results/a.csv"]  # v1, then only the newest
    durable = running.engine.books.durable.files["results/a.csv"]
    assert durable.crc64nvme == hashing.of_buffer(b"v3", durable.part_size).crc64nvme


def test_a_waiting_flush_commits_once_for_what_it_waits_for_not_as_each_file_lands(running):
    """A commit is a manifest record, a lease renewal and head.json: while a flush waits on a
    file still uploading, a commit of the others would answer no one. The one that answers it
    goes at once; the others go as the interval comes (the clock stands still here, then moves)."""
    running.write("results/a.csv", b"a")
    first = running.flush()["manifest"]
    running.fake.hold = {"results/b.csv"}
    running.write("results/b.csv", b"b")
    running.write("results/c.csv", b"c")
    flushed = running.flush_begun()
    wait_until(lambda: "results/c.csv" in running.fake.sent
               and running.ask("status")["uploading"] == ["results/b.csv"])
    running.fake.permits.release()
    answer = flushed.result(timeout=120)
    assert answer["durable"] is True
    assert answer["manifest"] == first + 1  # b and c in one commit, not c's first

    running.write("results/b.csv", b"b2")
    running.write("results/d.csv", b"d")
    flushed = running.flush_begun()
    wait_until(lambda: "results/d.csv" in running.fake.sent)
    running.clock.now += Settings().commit_interval  # d goes durable as the interval comes, though b waits
    wait_until(lambda: running.ask("status")["durable_files"] == 4)
    assert not flushed.done()
    running.fake.permits.release()
    assert flushed.result(timeout=120)["durable"] is True


def test_a_flush_is_answered_at_once_while_a_newer_version_of_a_file_it_waited_for_uploads(running):
    """A log written all the time: the version the flush waits for is sent, the next is already
    on its way. The commit of the one sent answers the flush at once (the clock stands still: no
    commit of the interval's can)."""
    running.write("results/a.csv", b"a")
    running.flush()
    running.fake.hold = {"results/log.csv"}
    running.write("results/log.csv", b"1")
    wait_until(lambda: running.ask("status")["uploading"] == ["results/log.csv"])
    flushed = running.flush_begun()
    wait_until(lambda: running.engine.flushes.waiters and running.engine.flushes.waiters[0].gen is not None)
    running.write("results/log.csv", b"1 2")  # after the flush's fence
    running.fake.permits.release()  # the first version only
    answer = flushed.result(timeout=120)
    assert answer["durable"] is True
    assert running.fake.sent.count("results/log.csv") == 1
    running.fake.permits.release()
    assert running.flush()["durable"] is True  # the newer version, before the end


def test_a_flush_does_not_wait_for_a_version_written_after_its_fence(running):
    """A log rewritten after the flush began, other files written between its version the flush
    waits for and the fence: once that version is durable the flush is answered, though the next
    version (written after the fence) is still held."""
    running.write("results/a.csv", b"a")
    running.flush()
    running.fake.hold = {"results/log.csv"}
    running.write("results/log.csv", b"1")
    wait_until(lambda: running.ask("status")["uploading"] == ["results/log.csv"])
    running.write("results/b.csv", b"b")  # an event after the log's, before the fence
    flushed = running.flush_begun()
    wait_until(lambda: running.engine.flushes.waiters and running.engine.flushes.waiters[0].gen is not None)
    running.write("results/log.csv", b"1 2")  # after the flush's fence
    running.fake.permits.release()  # the first version only; the second stays held
    answer = flushed.result(timeout=60)
    assert answer["durable"] is True
    assert running.fake.sent.count("results/log.csv") == 1 and "results/b.csv" in running.fake.sent
    running.fake.permits.release()
    assert running.flush()["durable"] is True  # the newer version, before the end


def test_a_failed_upload_is_retried_after_its_backoff(running):
    running.fake.fail = 1
    running.write("results/a.csv", b"x")
    wait_until(lambda: running.failures() == 1)
    assert running.fake.sent == [] and running.ask("status")["pending"] == ["results/a.csv"]
    running.clock.now += 60  # past any backoff (cap 30 s)
    assert running.flush()["durable"] is True
    assert running.fake.attempts == 2 and running.fake.sent == ["results/a.csv"]


def test_end_files_wait_for_the_end(running):
    running.write("logs/train.log", b"step 1\n")
    status = running.ask("status")
    assert status["owed_at_end"] == ["logs/train.log"] and running.fake.sent == []
    running.ask("prestop")
    assert running.flush()["durable"] is True
    assert running.fake.sent == ["logs/train.log"]


def test_a_checkpoint_dir_waits_for_its_marker_then_goes_whole_marker_last(running):
    running.write("ckpt/step-1/0.distcp", b"shard 0")
    running.write("ckpt/step-1/1.distcp", b"shard 1")
    assert running.flush()["durable"] is True and running.fake.sent == []  # nothing without the marker
    running.write("ckpt/step-1/.metadata", b"meta")
    assert running.flush()["durable"] is True
    assert sorted(running.fake.sent[:2]) == ["ckpt/step-1/0.distcp", "ckpt/step-1/1.distcp"]
    assert running.fake.sent[2:] == ["ckpt/step-1/.metadata"]
    assert set(running.engine.books.durable.files) == {"ckpt/step-1/0.distcp", "ckpt/step-1/1.distcp",
                                                      "ckpt/step-1/.metadata"}
