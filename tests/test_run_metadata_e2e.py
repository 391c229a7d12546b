"""Run metadata, as a user finds it in the bucket and through the CLI: each replica's
`replica.json` (pod, node, images with digests, start, end, status, last commit) and the run's
`run.json` (created, updated, ended, status, replicas, code state), written by the sidecar and by
the SDK's embedded engine; `runsync runs` and `runsync ls` read them. Real SeaweedFS throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import urllib.parse

import pytest

from harness import Store, git, wait_for
from runsync import contract, keys, runmeta, runsindex

pytestmark = [pytest.mark.s3, pytest.mark.slow]

RUN = "team-a/proj/run-1"
POD = {contract.ENV_POD_NAME: "bert-0-x7k2p", contract.ENV_POD_NAMESPACE: "team-a",
       contract.ENV_POD_UID: "5f0c7a1e-0000-4000-8000-000000000001", contract.ENV_NODE_NAME: "gpu-node-7"}
IMAGES = {"trainer": "docker.io/library/python@sha256:" + "ab" * 32,
          "runsync-sidecar": "ghcr.io/runsync/runsync@sha256:" + "cd" * 32}


def doc(store: Store, key: str) -> dict | None:
    try:
        return json.loads(store.read(key))
    except store.client.exceptions.NoSuchKey:
        return None


def run_json(store: Store) -> dict | None:
    return doc(store, store.layout.run_metadata_key)


def replica_json(store: Store, replica: str = "0") -> dict | None:
    return doc(store, f"{store.layout.run_prefix}{replica}/replica.json")


def test_the_sidecar_records_the_replica_and_the_run_from_start_to_end(sidecars, store):
    sc = sidecars({contract.SAVE: "ckpt/*:live"}, extra_env=POD).start()
    started = wait_for(lambda: run_json(store), timeout=30, what="run.json at start")
    assert started["status"] == "running" and started["ended"] is None
    assert started["replicas"]["0"]["status"] == "running" and started["replicas"]["0"]["pod"] == POD[
        contract.ENV_POD_NAME]
    me = replica_json(store)
    assert me["pod"] == {"name": "bert-0-x7k2p", "namespace": "team-a", "uid": POD[contract.ENV_POD_UID],
                         "node": "gpu-node-7"}
    assert me["status"] == "running" and me["started"] == started["created"]

    (sc.run_dir / "ckpt").mkdir()
    (sc.run_dir / "ckpt" / "last.pt").write_bytes(b"w" * 1000)
    sc.flush()
    assert sc.terminate()[0] == 0
    final = store.latest()
    assert final.final
    ended = run_json(store)
    assert ended["status"] == "ended" and ended["ended"] >= ended["created"]
    assert ended["replicas"]["0"] | {"seq": final.seq, "files": 1, "size": 1000, "status": "ended"} == \
        ended["replicas"]["0"]
    me = replica_json(store)
    assert me["status"] == "ended" and me["ended"] == ended["ended"]
    assert me["manifest"]["seq"] == final.seq and me["manifest"]["committed"] == final.created


def test_image_digests_the_operator_annotated_reach_the_replica(sidecars, store):
    """The operator annotates the pod once the kubelet reports imageIDs; the kubelet rewrites
    the annotations file; the sidecar records them without a restart and without a commit."""
    sc = sidecars({}, extra_env=POD).start()
    wait_for(lambda: replica_json(store), timeout=30, what="replica.json at start")
    assert replica_json(store)["images"] == {}
    sc.set_annotations({contract.IMAGES: json.dumps(IMAGES)})
    wait_for(lambda: replica_json(store)["images"] == IMAGES, timeout=30, what="the images in replica.json")
    assert sc.terminate()[0] == 0
    assert replica_json(store)["images"] == IMAGES
    assert not [r for r in sc.log_records() if r.get("level") in ("warning", "error")
                and "annotation" in json.dumps(r)], "the images annotation is not configuration"


def test_replicas_of_one_run_never_lose_each_others_entries(sidecars, store, tmp_path):
    """Three sidecars of one run start and end together: each has its own replica.json, and
    run.json (conditional writes on its ETag) lists all three; ended once all three ended."""
    made = []
    for r in ("0", "1", "2"):
        run_dir = tmp_path / f"rank-{r}"
        run_dir.mkdir()
        made.append(sidecars({}, run_dir=run_dir, replica=r, extra_env=POD))
    for sc in made:
        sc.start(wait=False)
    wait_for(lambda: len((run_json(store) or {}).get("replicas", {})) == 3, timeout=60, what="3 replicas")
    assert run_json(store)["status"] == "running"
    results = {}
    threads = [threading.Thread(target=lambda s=sc: results.setdefault(s.replica, s.terminate()[0])) for sc in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {"0": 0, "1": 0, "2": 0}
    final = run_json(store)
    assert {r: e["status"] for r, e in final["replicas"].items()} == {"0": "ended", "1": "ended", "2": "ended"}
    assert final["status"] == "ended"
    for r in ("0", "1", "2"):
        assert replica_json(store, r)["status"] == "ended"


def test_conditional_writes_keep_every_update_under_contention(store):
    """24 writers update run.json at once (real SeaweedFS, If-Match on the ETag): none is lost."""
    def one(i: int) -> None:
        layout = keys.Layout(store.layout.store, store.layout.run, str(i))

        def change(d: dict) -> dict:
            d["replicas"][str(i)] = {"status": "ended", "ended": float(i), "started": 0.0}
            return d
        assert runmeta.update_run(store.client, layout, change, attempts=60) is not None

    threads = [threading.Thread(target=one, args=(i,)) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = run_json(store)
    assert sorted(final["replicas"], key=int) == [str(i) for i in range(24)]
    assert final["status"] == "ended" and final["ended"] == 23.0


EMBEDDED = textwrap.dedent('''
    import sys, runsync
    run = runsync.init(dir=sys.argv[1], run="team-a/proj/laptop", store=sys.argv[2])
    with open(run.dir + "/result.json", "w") as f:
        f.write("{}")
    runsync.flush(timeout=60)
    print("flushed", flush=True)
    sys.stdin.readline()
    runsync.finish()
''')


def test_the_sdks_embedded_engine_writes_run_json_with_the_code_state(tmp_path, s3_env):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "train.py").write_text("print(1)\n")
    git(repo, "add", "train.py")
    git(repo, "commit", "-q", "-m", "one")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSYNC_")}
    env.update(s3_env)
    proc = subprocess.Popen([sys.executable, "-c", EMBEDDED, str(tmp_path / "laptop"), s3_env["RUNSYNC_STORE"]],
                            env=env, cwd=repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    store = Store(s3_env, run="team-a/proj/laptop")
    try:
        assert proc.stdout.readline().strip() == "flushed", proc.stderr.read()
        running = wait_for(lambda: (d := run_json(store)) and d.get("code") and d, timeout=30,
                           what="run.json with the code state")
        assert running["status"] == "running"
        assert running["code"]["commit"] == commit
        assert running["code"]["patch"] == store.layout.code_key("diff.patch")
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    ended = run_json(store)
    assert ended["status"] == "ended" and ended["replicas"]["0"]["files"] == 1
    assert ended["code"]["commit"] == commit
    me = replica_json(store)
    assert me["writer"].startswith("sdk@") and me["status"] == "ended"


# ----------------------------------------------------------------------------- through the operator

OP_NS, OP_BUCKET = "team-a", "runsync-meta"


@pytest.fixture(scope="module")
def operator(tmp_path_factory, s3_server):
    from runsync_testing.localkube import Operator, store as store_object

    op = Operator(tmp_path_factory.mktemp("operator"), [store_object(OP_NS, "default", OP_BUCKET, s3_server.endpoint)])
    yield op
    op.stop()


def injected(operator, name: str) -> dict:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": name, "namespace": OP_NS, "uid": "6b1e2c3d-0000-4000-8000-00000000000a",
        "labels": {contract.INJECT_LABEL: "true"}, "annotations": {contract.RUN: "meta-run"}},
        "spec": {"containers": [{"name": "trainer", "image": "python:3.11", "command": ["python", "train.py"],
                                 "securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}],
                 "restartPolicy": "Never", "terminationGracePeriodSeconds": 60, "nodeName": "gpu-node-3"}}
    patched, _ = operator.patched(pod)
    return patched


def started(pod: dict) -> dict:
    """The pod as the kubelet reports it once its containers started: imageIDs with digests."""
    ids = {"runsync-restore": IMAGES["runsync-sidecar"], "runsync-sidecar": IMAGES["runsync-sidecar"],
           "trainer": IMAGES["trainer"]}
    status = {"phase": "Running",
              "initContainerStatuses": [{"name": c["name"], "image": c["image"], "imageID": ids[c["name"]]}
                                        for c in pod["spec"]["initContainers"]],
              "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": ids[c["name"]]}
                                    for c in pod["spec"]["containers"]]}
    return {**pod, "status": status}


def test_the_operator_annotates_injected_pods_with_their_image_digests(operator, s3_server, s3_client, pod_root):
    """The real operator watches injected pods (the API server filters them by label), patches
    `runsync.dev/images` once the kubelet reports imageIDs; the kubelet rewrites the annotations
    file, and the sidecar of that pod records pod, node and images in replica.json."""
    if OP_BUCKET not in [b["Name"] for b in s3_client.list_buckets()["Buckets"]]:
        s3_client.create_bucket(Bucket=OP_BUCKET)
    from runsync_testing.localpod import LocalPod

    patched = injected(operator, "meta-pod-aaaaa")
    local = LocalPod(patched, pod_root / "meta", {"s3-keys": {
        "AWS_ACCESS_KEY_ID": s3_server.credentials.access_key, "AWS_SECRET_ACCESS_KEY": s3_server.credentials.secret_key}})
    restore, sidecar = local.container("runsync-restore"), local.container("runsync-sidecar")
    init = subprocess.run(local.argv(restore), env=local.env(restore), capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    side = subprocess.Popen(local.argv(sidecar), env=local.env(sidecar), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    env = local.env(sidecar)
    store = Store({"AWS_ENDPOINT_URL_S3": s3_server.endpoint, "AWS_ACCESS_KEY_ID": s3_server.credentials.access_key,
                   "AWS_SECRET_ACCESS_KEY": s3_server.credentials.secret_key,
                   "RUNSYNC_STORE": env[contract.ENV_STORE]}, run=env[contract.ENV_RUN_PATH])
    try:
        first = wait_for(lambda: replica_json(store), timeout=60, what="replica.json at start")
        assert first["pod"] == {"name": "meta-pod-aaaaa", "namespace": OP_NS,
                                "uid": patched["metadata"]["uid"], "node": "gpu-node-3"}
        assert first["images"] == {}

        other = {**started(patched), "metadata": {**patched["metadata"], "name": "not-ours", "labels": {}}}
        operator.stub.put_pod(other)  # not labelled: the API server never sends it to the operator
        operator.stub.put_pod(started(patched))
        key = (OP_NS, "meta-pod-aaaaa")
        annotated = wait_for(lambda: operator.stub.pods[key]["metadata"]["annotations"].get(contract.IMAGES),
                             timeout=60, what="the operator's runsync.dev/images")
        assert json.loads(annotated) == {"runsync-restore": IMAGES["runsync-sidecar"],
                                         "runsync-sidecar": IMAGES["runsync-sidecar"], "trainer": IMAGES["trainer"]}
        assert contract.IMAGES not in operator.stub.pods[(OP_NS, "not-ours")]["metadata"].get("annotations", {})
        watched = [p for m, p, _ in operator.stub.requests if m == "GET" and p.startswith("/api/v1/pods")]
        assert watched and all(urllib.parse.parse_qs(urllib.parse.urlsplit(p).query).get("labelSelector") ==
                               [f"{contract.INJECT_LABEL}=true"] for p in watched), watched

        local.update_annotations(operator.stub.pods[key]["metadata"]["annotations"])  # the kubelet's part
        wait_for(lambda: replica_json(store)["images"] == json.loads(annotated), timeout=60,
                 what="the images in replica.json")
        side.send_signal(15)
        assert side.wait(60) == 0
    finally:
        if side.poll() is None:
            side.kill()
    assert replica_json(store)["status"] == "ended" and run_json(store)["status"] == "ended"


# ----------------------------------------------------------------------------- runsync runs / ls

def test_runs_and_ls_answer_from_run_json_and_older_runs_still_show(sidecars, store, cli, tmp_path):
    sc = sidecars({}, extra_env=POD).start()
    (sc.run_dir / "model.pt").write_bytes(b"m" * 2048)
    sc.flush()
    assert sc.terminate()[0] == 0
    meta = run_json(store)
    old_dir = tmp_path / "old"
    old_dir.mkdir()
    (old_dir / "a.txt").write_text("a")
    assert cli("sync", str(old_dir), "--run", "team-a/proj/old-run").returncode == 0
    old_store = Store(cli.env, run="team-a/proj/old-run")
    synced = run_json(old_store)  # runsync sync writes the metadata too: started and ended at once
    assert synced["status"] == "ended" and synced["replicas"]["0"]["files"] == 1
    bucket = old_store.layout.store.bucket
    marker_prefix = runsindex.run_prefix(old_store.layout.store, old_store.layout.run)
    markers = [o["Key"] for o in old_store.client.list_objects_v2(Bucket=bucket, Prefix=marker_prefix)["Contents"]]
    assert len(markers) == 1, markers  # its line in the runs index
    for key in [old_store.layout.run_metadata_key, *markers]:
        old_store.client.delete_object(Bucket=bucket, Key=key)
    # ...deleted: now it is a run written before run.json (and the runs index) existed

    result = cli("runs", "team-a", "--json")
    assert result.returncode == 0, result.stderr
    found = {r["run"]: r for r in json.loads(result.stdout)}
    assert found["team-a/proj/run-1"] == {
        "run": "team-a/proj/run-1", "replicas": 1, "files": 1, "size": 2048, "state": "ended",
        "started": meta["created"], "updated": meta["updated"], "ended": meta["ended"]}
    old = found["team-a/proj/old-run"]
    assert (old["state"], old["replicas"], old["files"], old["size"], old["started"]) == ("ended", 1, 1, 1, None)

    table = cli("runs", "team-a/proj")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["run", "replicas", "files", "size", "started", "(UTC)", "updated", "(UTC)", "ended",
                              "(UTC)", "state"]
    assert any(r.split()[0] == "team-a/proj/run-1" and r.split()[-1] == "ended" for r in rows), rows

    listing = cli("ls", "team-a/proj/run-1")
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split()[:3] == ["run", "team-a/proj/run-1:", "ended"], lines
    assert any(line.split()[:2] == ["replica", "0:"] and "bert-0-x7k2p" in line and "gpu-node-7" in line
               for line in lines), lines
    assert any("model.pt" in line for line in lines)
    old_listing = cli("ls", "team-a/proj/old-run")
    assert old_listing.returncode == 0 and "a.txt" in old_listing.stdout
    assert "no run.json" in old_listing.stdout.splitlines()[0]


# ----------------------------------------------------------------------------- what it costs, who may write

class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def writes(s3) -> list[str]:
    """The keys of every PUT this client makes (botocore's events), as a list to inspect."""
    seen: list[str] = []
    s3.meta.events.register("provide-client-params.s3.PutObject", lambda params, **_: seen.append(params["Key"]))
    return seen


def test_commits_refresh_metadata_at_most_once_a_minute_and_run_json_once_for_all_replicas(store):
    from runsync import manifest

    clock = Clock()
    put = writes(store.client)
    recorders = [runmeta.Recorder(store.client, keys.Layout(store.layout.store, store.layout.run, r),
                                  runmeta.Facts(writer=f"sidecar@pod-{r}"), clock=clock) for r in ("0", "1")]
    for r in recorders:
        r.started(None)
    # each run.json write puts its line in the runs index (an empty object; the old one deleted)
    index = runsindex.run_prefix(store.layout.store, store.layout.run)
    assert [k[len(index):].split("_")[-1] for k in put if k.startswith(index)] == ["1", "2"]
    put[:] = [k for k in put if not k.startswith(index)]
    assert sorted(put) == sorted([store.layout.run_metadata_key] * 2 + [
        f"{store.layout.run_prefix}{r}/replica.json" for r in ("0", "1")])
    m = manifest.Manifest(run=RUN, replica="0", seq=7, created=clock.now, files={})
    put.clear()
    for _ in range(30):  # 30 commits within the minute: nothing written
        clock.now += 1
        for r in recorders:
            r.committed(m)
    assert put == []
    clock.now += 31
    for r in recorders:
        r.committed(m)
    # both replica.json files, but run.json once: the second replica found it fresh
    assert [k[len(index):].split("_")[-1] for k in put if k.startswith(index)] == ["3"]
    put[:] = [k for k in put if not k.startswith(index)]
    assert sorted(put) == sorted([store.layout.run_metadata_key] + [
        f"{store.layout.run_prefix}{r}/replica.json" for r in ("0", "1")])
    assert run_json(store)["updated"] == clock.now
    assert replica_json(store, "1")["manifest"]["seq"] == 7
    marks = store.client.list_objects_v2(Bucket=store.layout.store.bucket, Prefix=index).get("Contents", [])
    assert [o["Key"][len(index):].split("_")[-1] for o in marks] == ["3"]  # the older two are gone


def test_a_failed_end_and_a_fenced_off_pod(store):
    """A replica whose final manifest could not be committed makes the run `failed`; a pod that
    lost its replica to a newer pod can no longer write that replica's metadata."""
    layout = store.layout
    old = runmeta.Recorder(store.client, layout, runmeta.Facts(writer="sidecar@old", pod="old"))
    old.started(None)
    new = runmeta.Recorder(store.client, layout, runmeta.Facts(writer="sidecar@new", pod="new"))
    new.started(None)  # the new pod took the lease and wrote first
    old.ended(None)    # the wedged old pod wakes up
    assert replica_json(store)["pod"]["name"] == "new" and replica_json(store)["status"] == "running"
    assert run_json(store)["replicas"]["0"]["pod"] == "new"
    new.ended(None, failed="final manifest not committed: bucket gone")
    assert replica_json(store)["status"] == "failed" and "bucket gone" in replica_json(store)["reason"]
    assert run_json(store)["status"] == "failed"


def test_an_end_that_lost_every_race_for_run_json_still_shows_through_its_replica(store, cli):
    """Replica 1 ended (its replica.json says so) but its run.json update never landed (1,000
    replicas ending at once): once its entry is stale, `runsync runs` and `ls` read replica.json."""
    long_ago = Clock(__import__("time").time() - 3600)
    made = [runmeta.Recorder(store.client, keys.Layout(store.layout.store, store.layout.run, r),
                             runmeta.Facts(writer=f"sidecar@pod-{r}", pod=f"pod-{r}"), clock=long_ago) for r in "01"]
    for r in made:
        r.started(None)
    made[0].ended(None)
    lost = made[1]
    lost.doc.update(status="ended", ended=long_ago.now + 5)
    lost._write(long_ago.now + 5, run_too=False)  # replica.json only: every run.json attempt lost
    assert run_json(store)["status"] == "running"

    (found,) = json.loads(cli("runs", "team-a", "--json").stdout)
    assert found["state"] == "ended" and found["ended"] == long_ago.now + 5
    assert "run team-a/proj/run-1: ended" in cli("ls", RUN).stdout


CONTENDER = textwrap.dedent('''
    # Replicas ending at once, as fast as one process can: run.json rewritten in a loop by 4
    # threads, each write a new ETag. Prints "busy" once it is, runs until stdin closes.
    import json, sys, threading, boto3
    bucket, key, me = sys.argv[1:4]
    s3 = boto3.client("s3")
    def write(t):
        n = 0
        while True:
            n += 1
            doc = {"format": 1, "run": "x", "replicas": {f"{me}-{t}": {"status": "running", "n": n}}}
            s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc).encode())
            if n == 5 and t == 0:
                print("busy", flush=True)
    for t in range(4):
        threading.Thread(target=write, args=(t,), daemon=True).start()
    sys.stdin.read()
''')


def test_an_end_racing_many_replicas_for_run_json_still_releases_the_lease_in_the_grace_period(sidecars, store,
                                                                                                    s3_env):
    """1,000 replicas ending at once keep run.json's ETag moving (here: writer processes in a
    loop): the sidecar's end, whose run.json update loses race after race, still exits within
    its grace period (the kubelet kills it then) and releases its lease, so the next pod need
    not wait for it to expire. run.json is best effort; the lease is not."""
    from runsync import lease

    grace = 8.0
    sc = sidecars({contract.SAVE: "*.pt:live"}, grace=grace, extra_env=POD).start()
    wait_for(lambda: (run_json(store) or {}).get("replicas", {}).get("0"), timeout=30, what="run.json at start")
    (sc.run_dir / "last.pt").write_bytes(b"w" * 1000)
    sc.flush()
    env = {**os.environ, **s3_env}
    others = [subprocess.Popen([sys.executable, "-c", CONTENDER, store.layout.store.bucket,
                                store.layout.run_metadata_key, f"other-{i}"], env=env, text=True,
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE) for i in range(6)]
    try:
        for p in others:
            assert p.stdout.readline().strip() == "busy"
        sc.proc.send_signal(15)
        try:
            code = sc.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            sc.kill()  # what the kubelet does when the grace period is over
            code = None
    finally:
        for p in others:
            p.kill()
            p.wait()
    held, _ = lease.read(store.client, store.layout)
    assert held.state == "released", f"lease {held.state} (sidecar exit code {code}): the next pod waits for it"
    assert code == 0
    assert store.latest().final
    assert replica_json(store)["status"] == "ended"  # run.json's entry is best effort; replica.json is its own


def test_run_json_retries_stop_at_their_deadline(store):
    """The end's run.json update loses every race (another replica writes between its read and
    its write: a real 412 each time): it stops retrying at its deadline, not after all 12
    attempts (~15 s), since the lease release waits behind it on the committer's thread."""
    clock = Clock(0.0)
    other = keys.Layout(store.layout.store, store.layout.run, "1")
    put = writes(store.client)

    def change(doc: dict) -> dict:
        runmeta.update_run(store.client, other, lambda d: {**d, "updated": clock.now})  # wins the race
        doc["replicas"]["0"] = {"status": "ended", "started": 0.0, "ended": clock.now}
        return doc

    def sleep(seconds: float) -> None:
        assert seconds <= 3.0 - clock.now, "slept past the deadline"
        clock.now += max(seconds, 1.0)  # each lost round costs at least a second here
    assert runmeta.update_run(store.client, store.layout, change, sleep=sleep, deadline=3.0, clock=clock) is None
    mine = [k for k in put if k == store.layout.run_metadata_key]
    assert len(mine) == 2 * 3, put  # three rounds (at 0, 1 and 2 s), each the other's write and ours
    assert "0" not in run_json(store)["replicas"]
