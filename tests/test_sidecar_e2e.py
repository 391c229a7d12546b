"""The sidecar as a real process on a real run dir, uploading to a real SeaweedFS."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path

import pytest

from harness import describes, uploaded_files, wait_for, write_slowly
from runsync import contract

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SAVE = contract.SAVE
IGNORE = contract.IGNORE


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_live_rewrites_are_never_torn_and_the_last_version_lands(sidecars, store):
    sc = sidecars({SAVE: "model.pt:live"}).start()
    path = sc.run_dir / "model.pt"
    versions = [os.urandom(3 * 1024 * 1024 + i) for i in range(5)]
    complete = {sha(v) for v in versions}
    seen: dict[str, str] = {}
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            for key in store.keys():
                if "/objects/" in key and key not in seen:
                    seen[key] = sha(store.read(key))
            for m in store.manifests():
                for entry in m.files.values():
                    assert describes(entry, store.read(entry.key))
            time.sleep(0.05)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for data in versions:
            write_slowly(path, data, chunks=10, pause=0.03)  # rewritten in place, slowly
            time.sleep(0.2)
        sc.flush()
    finally:
        stop.set()
        thread.join()
    assert seen and set(seen.values()) <= complete, "an object held bytes of no complete version"
    assert describes(store.files()["model.pt"], versions[-1])
    assert sha(store.read(store.files()["model.pt"].key)) == sha(versions[-1])


def test_policies_now_end_unnamed_ignored_and_outside_symlinks(sidecars, store, tmp_path):
    outside = tmp_path / "outside-secret.txt"
    outside.write_text("never upload me")
    sc = sidecars({SAVE: "config.yaml:now, ckpt/*.pt:live, final/*:end", IGNORE: "**/*.tmp"}).start()
    d = sc.run_dir
    (d / "ckpt").mkdir()
    (d / "final").mkdir()
    (d / "config.yaml").write_text("v1")
    (d / "ckpt/a.pt").write_bytes(b"a")
    (d / "final/report.json").write_text("{}")
    (d / "unnamed.log").write_text("log")
    (d / "scratch.tmp").write_text("tmp")
    (d / "ckpt/link.pt").symlink_to(outside)
    (d / "escape").symlink_to(tmp_path)
    sc.flush()
    files = store.files()
    assert set(files) == {"config.yaml", "ckpt/a.pt"}, "end and unnamed files wait for the end"

    (d / "config.yaml").write_text("v2, changed after its upload")
    sc.flush()
    time.sleep(1.0)  # a settle period: nothing may pick the change up later either
    sc.flush()
    assert describes(store.files()["config.yaml"], b"v1")

    code, _ = sc.terminate()
    assert code == 0
    final = store.latest()
    assert final.final
    assert set(final.files) == {"config.yaml", "ckpt/a.pt", "final/report.json", "unnamed.log"}
    assert describes(final.files["config.yaml"], b"v1")
    assert final.files["final/report.json"].policy == "end"
    assert not [k for k in store.keys() if "outside-secret" in k or "link.pt" in k or "escape" in k
                or k.endswith(".tmp") or ".tmp~" in k]


def test_a_socket_moved_into_the_run_dir_is_passed_over_not_retried(sidecars, store):
    """A unix socket renamed into the run dir arrives as a complete file's event; opening it is
    refused (ENXIO). It is not a file to save: passed over as a symlink or a directory would be,
    not failed and retried forever (a flush would wait on it until its timeout)."""
    import socket
    import tempfile

    sc = sidecars({SAVE: "**:live"}).start()
    where = Path(tempfile.mkdtemp(dir=sc.run_dir.parent))  # same filesystem: the rename is one event
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(where / "s"))
        os.rename(where / "s", sc.run_dir / "trainer.sock")
        (sc.run_dir / "after.txt").write_text("saved")
        doc = sc.flush(timeout=20)
        assert doc["durable"] is True, doc
    finally:
        listener.close()
    assert set(store.files()) == {"after.txt"}
    assert not [r for r in sc.log_records() if r.get("level") in ("WARNING", "ERROR")], sc.logs()[-3000:]


def test_write_patterns_and_read_only_opens(sidecars, store, tmp_path):
    sc = sidecars({SAVE: "**:live"}).start()
    d = sc.run_dir
    data = {"chunked.bin": os.urandom(500_000), "renamed.bin": os.urandom(100_000),
            "moved-in.bin": os.urandom(50_000)}
    write_slowly(d / "chunked.bin", data["chunked.bin"], chunks=20, pause=0.02)
    (d / ".renamed.bin.partial").write_bytes(data["renamed.bin"])
    os.replace(d / ".renamed.bin.partial", d / "renamed.bin")
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "moved-in.bin").write_bytes(data["moved-in.bin"])
    os.replace(staging / "moved-in.bin", d / "moved-in.bin")
    sc.flush()
    files = store.files()
    for name, content in data.items():
        assert describes(files[name], content), name
    assert ".renamed.bin.partial" not in files, "a temp file renamed away stays in the manifest"

    before = sc.metric("runsync_skipped_bytes_total", reason="unchanged")
    uploads = sc.metric("runsync_uploaded_files_total", policy="live")
    manifests = sc.metric("runsync_manifests_committed_total")
    for _ in range(5):
        for name in data:
            with open(d / name, "rb") as f:
                f.read()
    time.sleep(1.0)
    sc.flush()
    assert sc.metric("runsync_skipped_bytes_total", reason="unchanged") == before, "a read triggered work"
    assert sc.metric("runsync_uploaded_files_total", policy="live") == uploads
    assert sc.metric("runsync_manifests_committed_total") == manifests


def test_checkpoint_directory_is_committed_whole_marker_last(sidecars, store):
    sc = sidecars({SAVE: "ckpt/**:live"}).start()
    step = sc.run_dir / "ckpt/step-100"
    step.mkdir(parents=True)
    shards = {f"__{r}_0.distcp": os.urandom(200_000) for r in range(4)}
    for name, data in shards.items():
        (step / name).write_bytes(data)
    sc.flush()
    assert not [n for n in store.files() if n.startswith("ckpt/step-100/")], "shards without their marker"
    (step / ".metadata.tmp").write_bytes(b"index")
    os.replace(step / ".metadata.tmp", step / ".metadata")
    sc.flush()
    whole = {f"ckpt/step-100/{n}" for n in [*shards, ".metadata"]}
    assert {n for n in store.files() if n.startswith("ckpt/step-100/")} == whole
    for m in store.manifests():  # no manifest ever named a part of the directory without the rest
        assert {n for n in m.files if n.startswith("ckpt/step-100/")} in (set(), whole)
    # The marker went up last.
    records = [r for r in sc.log_records() if r.get("msg") == "uploaded" and "step-100" in r["file"]]
    assert records[-1]["file"].endswith(".metadata")

    # The next checkpoint of the same shape waits for its own marker too.
    nxt = sc.run_dir / "ckpt/step-200"
    nxt.mkdir()
    (nxt / "weights.bin").write_bytes(b"w" * 1000)
    sc.flush()
    assert "ckpt/step-200/weights.bin" not in store.files()


def test_flush_returns_only_when_objects_are_readable(sidecars, store):
    sc = sidecars({SAVE: "**:live"}).start()
    blobs = {f"f{i}.bin": os.urandom(100_000 + i) for i in range(20)}
    for name, data in blobs.items():
        (sc.run_dir / name).write_bytes(data)
    result = sc.flush()
    assert result["durable"] is True
    files = store.files()  # read at once, no waiting
    for name, data in blobs.items():
        assert store.read(files[name].key) == data


def test_head_names_each_commit_after_its_flush_answered(sidecars, store):
    """head.json is written after a commit's answer (a flush never waits on the hint), and before
    the next commit: it comes to name every commit, the last included."""
    sc = sidecars({SAVE: "**:live"}).start()
    for i in range(3):
        (sc.run_dir / f"f{i}.bin").write_bytes(os.urandom(1000 + i))
        assert sc.flush()["durable"] is True
        seq = store.latest().seq
        wait_for(lambda: json.loads(store.read(store.layout.head_key))["seq"] == seq, timeout=60,
                 what=f"head.json naming commit {seq}")
    assert set(store.files()) == {"f0.bin", "f1.bin", "f2.bin"}


def test_metrics_match_what_was_written(sidecars, store):
    sc = sidecars({SAVE: "a/**:live, b/**:now"}).start()
    (sc.run_dir / "a").mkdir()
    (sc.run_dir / "b").mkdir()
    sizes = {"a/1": 1000, "a/2": 2000, "b/1": 3000}
    for name, size in sizes.items():
        (sc.run_dir / name).write_bytes(os.urandom(size))
    sc.flush()
    (sc.run_dir / "a/1").write_bytes(os.urandom(1500))  # a second live version
    sc.flush()
    assert sc.metric("runsync_uploaded_files_total", policy="live") == 3
    assert sc.metric("runsync_uploaded_bytes_total", policy="live") == 1000 + 2000 + 1500
    assert sc.metric("runsync_uploaded_files_total", policy="now") == 1
    assert sc.metric("runsync_uploaded_bytes_total", policy="now") == 3000
    assert sc.metric("runsync_close_to_durable_seconds_count") >= 3
    assert sc.metric("runsync_last_sync_timestamp_seconds") > time.time() - 60
    assert sc.metric("runsync_queue_files") == 0


def test_the_queue_gauges_show_the_files_and_bytes_in_flight(sidecars, s3_env):
    """Over a slow link (1 MiB/s), three files of 4 MiB are in flight at once (4 s each): the gauges say
    so while they go, and nothing once they are durable."""
    from harness import LinkProxy

    uplink = LinkProxy(s3_env["AWS_ENDPOINT_URL_S3"], up_rate=1024 * 1024)
    try:
        sc = sidecars({SAVE: "*.bin:live"}, extra_env={"AWS_ENDPOINT_URL_S3": uplink.endpoint}).start()
        for i in range(3):
            (sc.run_dir / f"f{i}.bin").write_bytes(os.urandom(4 * 1024 * 1024 + i))
        wait_for(lambda: sc.metric("runsync_queue_files") == 3, timeout=30, what="three files queued")
        assert sc.metric("runsync_queue_bytes") == 3 * 4 * 1024 * 1024 + 3
        assert sc.flush(timeout=120)["durable"]
        wait_for(lambda: sc.metric("runsync_queue_files") == 0, timeout=30, what="the queue empty")
        assert sc.metric("runsync_queue_bytes") == 0
    finally:
        uplink.close()


def test_new_save_glob_in_annotations_takes_effect_without_restart(sidecars, store):
    sc = sidecars({SAVE: "logs/*:live"}).start()
    (sc.run_dir / "extra").mkdir()
    (sc.run_dir / "extra/data.bin").write_bytes(b"d" * 5000)
    sc.flush()
    assert "extra/data.bin" not in store.files()
    sc.set_annotations({SAVE: "logs/*:live, foo/*:livee"})  # a bad value: logged, old config kept
    time.sleep(3)
    assert sc.proc.poll() is None
    assert any("livee" in r.get("error", "") for r in sc.log_records() if r.get("level") == "error")
    sc.set_annotations({SAVE: "logs/*:live\nextra/**:live"})
    wait_for(lambda: "extra/data.bin" in store.files(), timeout=20, what="the new glob's file")
    (sc.run_dir / "extra/more.bin").write_bytes(b"m")
    sc.flush()
    assert "extra/more.bin" in store.files()


def test_sdk_save_api_adds_a_glob(sidecars, store):
    sc = sidecars({}).start()
    code, doc = sc.save("results/*.csv", policy="live")
    assert code == 200 and {"glob": "results/*.csv", "policy": "live"} in doc["rules"]
    code, doc = sc.save("../etc/*")
    assert code == 400 and "outside the run dir" in doc["error"]
    (sc.run_dir / "results").mkdir()
    (sc.run_dir / "results/acc.csv").write_text("0.9")
    sc.flush()
    assert "results/acc.csv" in store.files()


def test_save_over_existing_files_reads_and_sends_each_once(sidecars, store):
    """save() names files the trainer wrote a while ago (no rule named them: owed to the end):
    each is read and sent once, not once by a rescan and again by the save's own send."""
    sc = sidecars({}).start()
    (sc.run_dir / "results").mkdir()
    for i in range(3):
        path = sc.run_dir / f"results/r{i}.csv"
        path.write_text(f"{i}" * 100)
        os.utime(path, (time.time() - 3600,) * 2)  # older than settle: a rescan takes it as complete
    sc.flush()
    code, doc = sc.save("results/*.csv")
    assert code == 200 and doc["names"] == ["results/r0.csv", "results/r1.csv", "results/r2.csv"]
    sc.flush()
    assert sorted(uploaded_files(sc.log_records())) == ["results/r0.csv", "results/r1.csv", "results/r2.csv"]
    assert sc.metric("runsync_uploaded_files_total", policy="live") == 3
    assert sc.metric("runsync_skipped_bytes_total", reason="unchanged") == 0, "a file was read twice"


def test_sigterm_during_a_1gib_live_upload_exits_in_time_consistently(sidecars, store):
    grace = 8.0
    sc = sidecars({SAVE: "**:live"}, grace=grace).start()
    (sc.run_dir / "small.pt").write_bytes(b"s" * 1000)
    sc.flush()
    big = sc.run_dir / "big.pt"
    with open(big, "wb") as f:
        block = os.urandom(1024 * 1024)
        for _ in range(1024):
            f.write(block)
    wait_for(lambda: sc.status()["uploading"], timeout=30, what="the big upload to start")
    # The kubelet's rule, not a clock in the test: SIGKILL when the grace period is over. On two
    # idle cores the sidecar ends well inside it; on busy ones it may be killed in its final
    # commit, and then what it committed before must still be whole.
    code, killed = sc.terminate_as_kubelet(grace)
    final = store.latest()
    if not killed:
        assert code == 0
        assert final.final
    for entry in final.files.values():  # every file it names is there, whole
        head = store.client.head_object(Bucket=store.layout.store.bucket, Key=entry.key)
        assert head["ContentLength"] == entry.size
    if "big.pt" not in final.files and not killed:
        assert any(r.get("msg") == "not uploaded before the deadline" and r.get("file") == "big.pt"
                   for r in sc.log_records())
    assert "small.pt" in final.files


def test_kill_9_then_restart_uploads_everything_and_resends_nothing_committed(sidecars, store):
    """A sidecar killed mid-run (OOM, kill -9) and restarted: every file lands, and nothing the
    store had committed is sent again. (Format 2's keys hold no hash, so an upload that finished
    but was not committed before the kill cannot be recognised and goes again; its orphan goes
    at the next gc. Format 1 found those by a HEAD of the hashed key.)"""
    sc = sidecars({SAVE: "**:live"}).start()
    blobs = {f"shard-{i:02d}.bin": os.urandom(2 * 1024 * 1024) for i in range(30)}
    blobs["big.bin"] = os.urandom(40 * 1024 * 1024)
    for name, data in blobs.items():
        (sc.run_dir / name).write_bytes(data)
    wait_for(lambda: len(uploaded_files(sc.log_records())) >= 5, timeout=30, what="some uploads")
    sc.kill()
    committed = set(store.files())
    assert len(committed) < len(blobs), "all done before the kill: the test proves nothing"

    again = sidecars({SAVE: "**:live"}, run_dir=sc.run_dir, replica="0")
    again.log_path = sc.log_path.with_name("sidecar-restarted.log")
    again.api, again.metrics_addr = sc.api, sc.metrics_addr
    again.env.update({contract.ENV_API: sc.api, contract.ENV_METRICS: sc.metrics_addr})
    again.start()
    again.flush()
    files = store.files()
    for name, data in blobs.items():
        assert describes(files[name], data)
    resent = set(uploaded_files(again.log_records()))
    assert not resent & committed, f"sent again though committed: {sorted(resent & committed)}"
    assert again.metric("runsync_uploaded_bytes_total", policy="live") == sum(len(blobs[n]) for n in resent)


def test_s3_outage_of_30_seconds_then_everything_lands(tmp_path):
    from harness import Sidecar, Store
    from runsync_testing import locals3

    server = locals3.start(workdir=tmp_path / "s3")
    try:
        import boto3
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id=server.credentials.access_key,
                     aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket="outage")
        env = {**server.env(), "RUNSYNC_STORE": "s3://outage/x"}
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        sc = Sidecar(run_dir, env, {SAVE: "**:live"}, tmp_path).start()
        try:
            (run_dir / "before.bin").write_bytes(b"b" * 1000)
            sc.flush()
            server.stop(keep_data=True)
            blobs = {f"during-{i}.bin": os.urandom(100_000) for i in range(5)}
            for name, data in blobs.items():
                (run_dir / name).write_bytes(data)
            time.sleep(30)
            assert sum(v for k, v in sc.metrics().items() if k.startswith("runsync_failures_total")) > 0
            server.restart()
            sc.flush(timeout=90)
            files = Store(env).files()
            for name, data in blobs.items():
                assert describes(files[name], data)
            assert "before.bin" in files
        finally:
            sc.stop()
    finally:
        server.stop()


def test_pre_stop_starts_the_final_flush_before_sigterm(sidecars, store):
    import subprocess
    from harness import RUNSYNC

    sc = sidecars({SAVE: "ckpt/*:live, out/*:end"}).start()
    (sc.run_dir / "out").mkdir()
    (sc.run_dir / "out/metrics.json").write_text("{}")
    (sc.run_dir / "unnamed.txt").write_text("u")
    sc.flush()
    assert not {"out/metrics.json", "unnamed.txt"} & set(store.files())
    hook = subprocess.run([RUNSYNC, "sidecar", "--pre-stop"], env=sc.env, capture_output=True, text=True, timeout=30)
    assert hook.returncode == 0, hook.stderr
    # The app containers still run during preStop: what they write now still goes up.
    (sc.run_dir / "out/late.json").write_text("late")
    wait_for(lambda: {"out/metrics.json", "unnamed.txt", "out/late.json"} <= set(store.files()),
             timeout=20, what="end files after preStop")
    assert sc.status()["mode"] == "ending"
    code, _ = sc.terminate()
    assert code == 0 and store.latest().final


def test_many_small_files_are_batched_into_few_manifests(sidecars, store):
    sc = sidecars({SAVE: "many/**:live"}).start()
    many = sc.run_dir / "many"
    many.mkdir()
    for i in range(2000):
        (many / f"f{i:04d}.txt").write_text(str(i))
    wait_for(lambda: len(store.files()) == 2000, timeout=120, interval=1, what="2000 files durable")
    committed = sc.metric("runsync_manifests_committed_total")
    assert committed <= 60, f"{committed} manifests for 2000 files"


def test_health_and_readiness_probes(sidecars):
    import urllib.request

    sc = sidecars({}).start()
    for probe in ("healthz", "readyz"):
        with urllib.request.urlopen(f"http://{sc.metrics_addr}/{probe}", timeout=5) as resp:
            assert resp.status == 200


def test_bad_environment_is_one_clear_line(tmp_path, s3_env):
    import subprocess
    from harness import RUNSYNC

    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSYNC_")}
    env.update(s3_env)
    env.update({contract.ENV_DIR: str(tmp_path), contract.ENV_RUN_PATH: "ns/p/r", contract.ENV_API: "0.0.0.0:7070"})
    result = subprocess.run([RUNSYNC, "sidecar"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "runsync: error: RUNSYNC_API '0.0.0.0:7070' is not a loopback address; the SDK API listens on 127.0.0.1 only"]
