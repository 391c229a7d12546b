"""`runsync gc` as a user runs it, against a real SeaweedFS: what goes, what stays, and that
every restore of what is kept still works, also while a sidecar commits."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time

import pytest

from harness import Store, restore_init, sha, tree, wait_for
from runsync import contract

pytestmark = [pytest.mark.s3, pytest.mark.slow]

RUN = "team-a/nlp/bert-1"


def sync_versions(cli, root, versions: int) -> dict[int, bytes]:
    """`runsync sync` of a run dir `versions` times, `last.pt` new each time: one manifest each."""
    (root / "config.yaml").write_text("lr: 0.1\n")
    content = {}
    for i in range(1, versions + 1):
        content[i] = os.urandom(50_000 + i)
        (root / "last.pt").write_bytes(content[i])
        result = cli("sync", str(root), "--run", RUN)
        assert result.returncode == 0, result.stderr
    return content


def gc(cli, *args: str) -> dict:
    result = cli("gc", *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_gc_keeps_the_newest_manifests_and_what_they_name(cli, tmp_path, s3_env):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    content = sync_versions(cli, run_dir, 4)
    store = Store(s3_env, run=RUN)
    orphan = store.layout.replica_prefix + "files/half-sent.pt~0123456789abcdef"  # uploaded, never committed
    store.client.put_object(Bucket=store.layout.store.bucket, Key=orphan, Body=b"x" * 1000)
    before = set(store.keys())
    version_key = {i: next(m.files["last.pt"].key for m in store.manifests() if m.seq == i) for i in content}

    # Everything is younger than the default safety age (1 h): nothing goes.
    assert gc(cli, RUN, "--keep", "2")["deleted"] == []

    dry = gc(cli, RUN, "--keep", "2", "--min-age", "0s", "--dry-run")
    going = {d["key"]: d["why"] for d in dry["deleted"]}
    assert going == {
        store.layout.manifest_key(1): "manifest 1: older than the newest 2 kept",
        store.layout.manifest_key(2): "manifest 2: older than the newest 2 kept",
        version_key[1]: "named only by dropped manifests 1",
        version_key[2]: "named only by dropped manifests 2",
        orphan: "named by no manifest (an upload never committed)",
    }
    assert dry["bytes"] == sum(d["size"] for d in dry["deleted"]) > 100_000
    assert set(store.keys()) == before, "a dry run deletes nothing"
    human = cli("gc", RUN, "--keep", "2", "--min-age", "0s", "--dry-run")
    assert "would free" in human.stdout and "named only by dropped manifests 1" in human.stdout, human.stdout

    done = gc(cli, RUN, "--keep", "2", "--min-age", "0s")
    assert {d["key"] for d in done["deleted"]} == set(going) and done["bytes"] == dry["bytes"]
    assert set(store.keys()) == before - set(going)

    # The latest state restores, byte for byte, and so does each kept manifest's version.
    dest = tmp_path / "restored"
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 0, result.stderr
    assert tree(dest) == {"config.yaml": b"lr: 0.1\n", "last.pt": content[4]}
    kept = store.manifests()
    assert [m.seq for m in kept] == [3, 4]
    for m in kept:
        assert store.read(m.files["last.pt"].key) == content[m.seq]

    # A second run of gc finds nothing more.
    assert gc(cli, RUN, "--keep", "2", "--min-age", "0s")["deleted"] == []


def test_a_deleted_file_restores_by_name_while_a_kept_manifest_holds_it(sidecars, cli, tmp_path, s3_env):
    sc = sidecars({contract.SAVE: "**:live"}, run=RUN).start()
    (sc.run_dir / "notes.txt").write_text("first thoughts")
    sc.flush()
    (sc.run_dir / "notes.txt").unlink()
    (sc.run_dir / "step.txt").write_text("1")
    sc.flush()
    (sc.run_dir / "step.txt").write_text("2")
    sc.flush()
    assert sc.terminate()[0] == 0
    store = Store(s3_env, run=RUN)
    manifests = store.manifests()
    holding = max(m.seq for m in manifests if "notes.txt" in m.files)
    latest = manifests[-1].seq
    assert "notes.txt" not in manifests[-1].files

    gc(cli, RUN, "--keep", str(latest - holding + 1), "--min-age", "0")
    result = cli("restore", RUN, "notes.txt", "--to", str(tmp_path / "a"))
    assert result.returncode == 0, result.stderr
    assert tree(tmp_path / "a") == {"notes.txt": b"first thoughts"}
    assert f"restored from manifest {holding}" in result.stdout, result.stdout

    done = gc(cli, RUN, "--keep", "1", "--min-age", "0")
    assert any(d["why"].startswith("named only by dropped manifests") for d in done["deleted"])
    result = cli("restore", RUN, "notes.txt", "--to", str(tmp_path / "b"))
    assert not (tmp_path / "b" / "notes.txt").exists()
    assert all("notes.txt" not in m.files for m in store.manifests())
    result = cli("restore", RUN, "--to", str(tmp_path / "c"))
    assert tree(tmp_path / "c") == {"step.txt": b"2"}


def test_gc_of_a_namespace_expires_idle_runs_never_a_live_one(sidecars, cli, tmp_path, s3_env):
    idle_dir = tmp_path / "idle"
    idle_dir.mkdir()
    (idle_dir / "a.txt").write_text("old")
    assert cli("sync", str(idle_dir), "--run", "team-a/nlp/idle").returncode == 0
    live = sidecars({contract.SAVE: "**:live"}, run="team-a/nlp/live").start()
    (live.run_dir / "b.txt").write_text("new")
    live.flush()
    other = cli("sync", str(idle_dir), "--run", "team-b/nlp/idle")  # another namespace: out of scope
    assert other.returncode == 0

    # "Idle for 0.00002 days" (under 2 s): wait until gc says so, then let it act.
    args = ("team-a", "--expire-days", "0.00002", "--min-age", "0", "--keep", "100")
    dry = wait_for(lambda: (r := gc(cli, *args, "--dry-run")) and
                   any(x["run"] == "team-a/nlp/idle" and x["expired"] for x in r["runs"]) and r,
                   timeout=60, what="the idle run to expire")
    assert {x["run"]: bool(x["expired"]) for x in dry["runs"]} == {"team-a/nlp/idle": True, "team-a/nlp/live": False}
    done = gc(cli, *args)
    expired = {d["key"] for d in done["deleted"]}
    assert expired and all(k.startswith(f"runs/team-a/nlp/idle/") for k in expired)
    assert not any(k.startswith("runs/team-a/nlp/idle/") for k in Store(s3_env).keys())
    # and its line in the runs index (`runs/team-a/.runs/nlp/idle/...`) went with it; the live run's stays
    assert not any(k.startswith("runs/team-a/.runs/nlp/idle/") for k in Store(s3_env).keys())
    assert any(k.startswith("runs/team-a/.runs/nlp/live/") for k in Store(s3_env).keys())

    runs = json.loads(cli("runs", "--json").stdout)
    # (SeaweedFS keeps a deleted run's empty folder, which `runs` shows as empty; S3 does not)
    assert [r["run"] for r in runs if r["state"] != "empty"] == ["team-a/nlp/live", "team-b/nlp/idle"]
    assert live.terminate()[0] == 0


def test_gc_while_a_sidecar_commits_never_tears_a_manifest(sidecars, cli, tmp_path, s3_env):
    sc = sidecars({contract.SAVE: "**:live"}, run=RUN).start()
    store = Store(s3_env, run=RUN)
    stop = threading.Event()
    deleted: list[dict] = []
    failures: list[str] = []

    def collect():
        while not stop.is_set():
            result = cli("gc", RUN, "--keep", "1", "--min-age", "0", "--json")
            if result.returncode != 0:
                failures.append(result.stderr)
            else:
                deleted.extend(json.loads(result.stdout)["deleted"])

    collector = threading.Thread(target=collect)
    collector.start()
    try:
        step = 0
        torn: list[tuple[int, str]] = []
        # A DCP-style trainer: each step a dir of shards, `.metadata` last, the older one
        # rotated away; the shards wait in the store for the marker's commit, gc runs meanwhile.
        # Until gc has dropped old manifests underneath several times (at most 200 steps); the
        # writer's objects stay while it lives (it may commit an old version found stored again).
        while step < 6 or sum("/manifests/" in d["key"] for d in deleted) < 8:
            step += 1
            assert step < 200, f"gc deleted only {len(deleted)} objects"
            d = sc.run_dir / "ckpt" / f"step-{step}"
            d.mkdir(parents=True)
            for rank in range(4):
                (d / f"__{rank}_0.distcp").write_bytes(os.urandom(1_000_000))
            (d / ".metadata").write_bytes(f"step {step}".encode())
            if step > 2:
                shutil.rmtree(sc.run_dir / "ckpt" / f"step-{step - 2}")
            (sc.run_dir / "step.txt").write_text(str(step))
            sc.flush()
            # What a restore would read now names only objects that are there (asked while it
            # stays the latest: gc may drop it, rightly, once superseded).
            latest = store.latest()
            present = set(store.keys())
            if latest is not None and store.latest().seq == latest.seq:
                torn += [(latest.seq, e.key) for e in latest.files.values() if e.key not in present]
    finally:
        stop.set()
        collector.join()
    assert failures == []
    assert torn == [], "the latest manifest named deleted objects"
    assert [d["key"] for d in deleted if "/objects/" in d["key"]] == [], "a live writer's objects went"
    assert sc.terminate()[0] == 0

    # The writer is gone: the checkpoints only dropped manifests named go now.
    after = cli("gc", RUN, "--keep", "1", "--min-age", "0", "--json")
    assert after.returncode == 0, after.stderr
    assert sum("/objects/" in d["key"] for d in json.loads(after.stdout)["deleted"]) >= 8
    present = set(store.keys())
    for m in store.manifests():
        missing = [e.key for e in m.files.values() if e.key not in present]
        assert missing == [], f"manifest {m.seq} names deleted objects"
    fresh = tmp_path / "fresh"
    result = restore_init(s3_env, fresh, {contract.SAVE: "**:live"}, tmp_path, run=RUN)
    assert result.returncode == 0, result.stderr
    assert tree(fresh) == tree(sc.run_dir)
    assert {p for p in tree(fresh) if p.endswith(".metadata")} == {
        f"ckpt/step-{step - 1}/.metadata", f"ckpt/step-{step}/.metadata"}


def test_the_operator_keeps_a_gc_cronjob_per_store_whose_pod_collects(cli, s3_env, s3_server, bucket, tmp_path,
                                                                      pod_root):
    """A Store with retention gets a CronJob (through the real operator); its pod spec, run as a
    kubelet would, collects the Store's namespace; a changed retention replaces it, none removes it."""
    import kubernetes_validate

    from runsync_testing.localkube import Operator, store as store_object
    from runsync_testing.localpod import LocalPod

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    content = sync_versions(cli, run_dir, 3)
    st = store_object("team-a", "default", bucket, s3_server.endpoint)
    st["spec"]["retention"] = {"keepManifests": 1, "minAge": "0s"}
    work = tmp_path / "operator"
    work.mkdir()
    op = Operator(work, [st])
    try:
        job = wait_for(lambda: op.stub.cronjobs.get(("team-a", "runsync-gc-default")), timeout=60,
                       what="the operator to make the Store's gc CronJob")
        for version in ("1.29", "1.33"):
            kubernetes_validate.validate(job, version, strict=True)
        assert job["metadata"]["ownerReferences"] == [{
            "apiVersion": "runsync.dev/v1alpha1", "kind": "Store", "name": "default",
            "uid": st["metadata"]["uid"], "controller": True}]
        template = job["spec"]["jobTemplate"]["spec"]["template"]
        (container,) = template["spec"]["containers"]
        assert container["image"] == "registry.example/runsync:test"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
        env = {e["name"]: e for e in container["env"]}
        assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
            "secretKeyRef": {"name": "s3-keys", "key": "AWS_SECRET_ACCESS_KEY"}}
        assert s3_server.credentials.secret_key not in json.dumps(job), "keys are referenced, never copied"

        pod = {"metadata": {"name": "runsync-gc-default-29000000-abcde", "namespace": "team-a"},
               "spec": template["spec"]}
        secrets = {"s3-keys": {"AWS_ACCESS_KEY_ID": s3_server.credentials.access_key,
                               "AWS_SECRET_ACCESS_KEY": s3_server.credentials.secret_key}}
        local = LocalPod(pod, pod_root / "gc", secrets)
        ran = subprocess.run(local.argv(container), env=local.env(container), capture_output=True, text=True,
                             timeout=120)
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "freed" in ran.stdout
        store = Store(s3_env, run=RUN)
        assert [m.seq for m in store.manifests()] == [3]
        dest = tmp_path / "restored"
        assert cli("restore", RUN, "--to", str(dest)).returncode == 0
        assert tree(dest) == {"config.yaml": b"lr: 0.1\n", "last.pt": content[3]}

        st["spec"]["retention"] = {"keepManifests": 2, "days": 30}
        op.stub.set_store(st)
        changed = wait_for(lambda: (j := op.stub.cronjobs.get(("team-a", "runsync-gc-default"))) and
                           "--expire-days" in j["spec"]["jobTemplate"]["spec"]["template"]["spec"]
                           ["containers"][0]["args"] and j, timeout=60, what="the CronJob to follow the Store")
        args = changed["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args[args.index("gc"):] == ["gc", "team-a", "--keep", "2", "--min-age", "1h", "--expire-days", "30"]

        del st["spec"]["retention"]
        op.stub.set_store(st)
        wait_for(lambda: ("team-a", "runsync-gc-default") not in op.stub.cronjobs, timeout=60,
                 what="the CronJob to go with the Store's retention")
    finally:
        op.stop()


def test_a_live_writers_uncommitted_upload_stays_until_the_writer_is_gone(sidecars, cli, s3_env):
    """An object no manifest names yet may be committed any moment while its replica's lease
    is held (a checkpoint dir waiting for its marker): it stays, however old; once the writer
    has ended, it goes."""
    sc = sidecars({contract.SAVE: "**:live"}, run=RUN).start()
    (sc.run_dir / "a.txt").write_text("a")
    sc.flush()
    store = Store(s3_env, run=RUN)
    pending = store.layout.replica_prefix + "files/ckpt/step-9/__0_0.distcp~0123456789abcdef"
    store.client.put_object(Bucket=store.layout.store.bucket, Key=pending, Body=b"shard")
    while_live = gc(cli, RUN, "--keep", "1", "--min-age", "0")
    assert pending not in {d["key"] for d in while_live["deleted"]}
    assert pending in store.keys()
    assert sc.terminate()[0] == 0
    after = gc(cli, RUN, "--keep", "1", "--min-age", "0")
    assert {d["key"]: d["why"] for d in after["deleted"]}[pending] == "named by no manifest (an upload never committed)"
    assert pending not in store.keys()


def test_a_damaged_manifest_leaves_its_replica_alone_and_says_so(cli, tmp_path, s3_env):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sync_versions(cli, run_dir, 3)
    store = Store(s3_env, run=RUN)
    damaged = store.layout.manifest_key(1)
    store.client.put_object(Bucket=store.layout.store.bucket, Key=damaged, Body=b"{not json")
    before = set(store.keys())
    result = cli("gc", RUN, "--keep", "1", "--min-age", "0", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["deleted"] == []
    assert f"runsync: error: {RUN}: replica 0 left alone: manifest s3://{store.layout.store.bucket}/{damaged} " \
           "is unreadable" in result.stderr and "fix:" in result.stderr, result.stderr
    assert set(store.keys()) == before


@pytest.mark.parametrize("args, message", [
    pytest.param(["--min-age", "1w"], "--min-age: '1w' is not a duration; expected", id="min-age"),
    pytest.param(["--keep", "0"], "--keep: 0 keeps no manifest", id="keep"),
])
def test_bad_options_exit_2_naming_the_value(cli, args, message):
    result = cli("gc", RUN, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr


def test_a_bad_scope_exits_2(cli):
    result = cli("gc", "team-a/nlp/bert-1/extra")
    assert result.returncode == 2
    assert "gc scope 'team-a/nlp/bert-1/extra' is not NAMESPACE, NAMESPACE/PROJECT or NAMESPACE/PROJECT/RUN" \
        in result.stderr


def test_a_writer_that_takes_the_lease_while_gc_decides_keeps_what_it_found_uploaded(cli, tmp_path, s3_env):
    """A restarted sidecar finds a file it sent before (HEAD) and commits it without sending it
    again: gc, which saw no live writer when it looked, must not delete it in between."""
    from runsync import gc as collector, lease, retention, transfer

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sync_versions(cli, run_dir, 1)
    store = Store(s3_env, run=RUN)
    sent = store.layout.replica_prefix + "files/ckpt/step-9/__0_0.distcp~0123456789abcdef"
    store.client.put_object(Bucket=store.layout.store.bucket, Key=sent, Body=b"shard")
    s3 = transfer.client()
    decided = collector.decide(s3, store.layout.store, store.layout.run, retention.Policy(keep=1, min_age=0),
                               now=time.time())
    assert [d.key for d in decided.decision.drops] == [sent]
    lease.acquire(s3, store.layout, "pod-b", wait=0, max_seq=lambda: 1)  # the new pod starts now
    collector.apply(s3, store.layout.store, decided)
    assert decided.decision.drops == [] and sent in store.keys()
