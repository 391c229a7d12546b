"""Hostile input: generated annotation sets through the real webhook; manifests whose names or keys
try to leave the run dir or the run; truncated and corrupted objects and manifests. The promise:
a clear answer (allowed, or denied naming the annotation), every hostile name refused, nothing
written outside the run dir, nothing half-restored."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import jsonpatch
import kubernetes_validate
import pytest
from conftest import SEED, count
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from harness import listing, put_manifest, sha
from runsync import contract
from runsync_testing import localkube

pytestmark = [pytest.mark.s3, pytest.mark.slow]
RUN = "team-a/proj/run-1"


# ---------------------------------------------------------------------------- the webhook

FRAGMENTS = ["ckpt/**", "**/*.pt", "*.json", "../etc/passwd", "/abs/path", "~/x", "a" * 3000, "**", "",
             ":live", ":now", ":end", ":sometimes", "live", "all", "none", "true", "false", "1e9", "-5",
             "team-b/proj/run", "proj/run", "../team-b/x", "s3://bucket/x", "default", "Store-B",
             "- glob: ckpt/**\n  policy: live", "[1, 2", "{a: b}", "\x00", "\n", "\u202e", "ü", "\ud7ff"]
PLAUSIBLE = ["ckpt/**:live", "**/*.pt:now,logs/**:end", "ckpt/**", "*.json:end", "- glob: ckpt/**\n  policy: live",
             "all", "none", "own", "true", "false", "proj", "run-7", "default", "proj/run-7", "120", "**/*.tmp",
             "ckpt/**:live\nlogs/**:end", ".metadata,COMPLETE"]
VALUES = st.one_of(
    st.sampled_from(PLAUSIBLE),
    st.sampled_from(PLAUSIBLE),
    st.text(max_size=60),
    st.lists(st.sampled_from(FRAGMENTS), max_size=4).map(",".join),
    st.lists(st.sampled_from(FRAGMENTS), max_size=3).map("".join),
)
KEYS = st.sampled_from(list(contract.ANNOTATIONS) + ["runsync.dev/x", "runsync.dev/", "example.com/y",
                                                     "runsync.dev/save-", "RUNSYNC.DEV/save"])


@pytest.fixture(scope="module")
def operator(tmp_path_factory, s3_server):
    op = localkube.Operator(tmp_path_factory.mktemp("op"), [
        localkube.store("team-a", "default", "bucket-a", s3_server.endpoint),
        localkube.store("team-b", "default", "bucket-b", s3_server.endpoint),
        localkube.store("team-b", "store-b", "bucket-b", s3_server.endpoint)])
    yield op
    op.stop()


def test_generated_annotation_sets_get_an_answer_never_an_error(operator, tally):
    scenario = "generated annotation sets"
    outcome = {"allowed": 0, "denied": 0, "errors": []}

    @seed(SEED)
    @settings(max_examples=count(scenario), deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.dictionaries(KEYS, VALUES, max_size=6))
    def one(annotations):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "p", "namespace": "team-a", "labels": {contract.INJECT_LABEL: "true"}, "annotations": annotations,
            "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "1", "controller": True}]},
            "spec": {"containers": [{"name": "t", "image": "python:3.11"}]}}
        try:
            response = operator.review(pod)["response"]
        except OSError as err:
            outcome["errors"].append(f"{annotations!r}: {err}")
            return
        if response["allowed"]:
            if "patch" in response:  # an allowed pod is a valid pod, still in its own namespace
                patched = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
                try:
                    kubernetes_validate.validate(patched, "1.33", strict=True)
                except kubernetes_validate.ValidationError as err:  # allowed, yet the API server would refuse it
                    outcome["errors"].append(f"{annotations!r}: invalid patched pod: {err}")
                    return
                env = {e["name"]: e.get("value") for c in patched["spec"]["initContainers"] for e in c.get("env", [])}
                assert env[contract.ENV_RUN_PATH].startswith("team-a/"), env
            outcome["allowed"] += 1
        else:
            outcome["denied"] += 1
            status = response.get("status", {})
            message = status.get("message", "")
            if status.get("code") != 400 or not (message.startswith("runsync.dev/") or "Store" in message):
                outcome["errors"].append(f"{annotations!r}: unclear denial {status!r}")

    try:
        one()
    finally:
        tally.record(scenario, "0 webhook errors other than clear denials", outcome["allowed"] + outcome["denied"]
                     + len(outcome["errors"]), len(outcome["errors"]),
                     f"{outcome['allowed']} allowed, {outcome['denied']} denied")
    assert not outcome["errors"], "\n".join(outcome["errors"][:10])


# ---------------------------------------------------------------------------- manifests

HOSTILE = {
    "parent": "../escaped.txt",
    "absolute": "/tmp/escaped.txt",
    "deep parent": "a/../../escaped.txt",
    "dot segment": "./x/./escaped.txt",
    "empty segment": "a//escaped.txt",
    "trailing slash": "escaped/",
    "backslash parent": "..\\escaped.txt",
    "NUL": "ok\x00/../../escaped.txt",
    "long segment": "x" * 300,
    "long path": "/".join(["d" * 200] * 5),
    "the state dir": ".runsync/restore.json",
    "state dir below": ".runsync/x/escaped.txt",
    "newline": "a\nb.txt",
    "control character": "a\x1b[2Jb.txt",
}


@pytest.mark.parametrize("label", list(HOSTILE))
def test_a_hostile_name_is_refused_and_nothing_is_written(cli, tmp_path, store, tally, label):
    put_manifest(store, {"ok.txt": b"fine", HOSTILE[label]: b"evil"})
    before = listing(tmp_path)
    dest = tmp_path / "deep" / "dest"
    result = cli("restore", RUN, "--to", str(dest))
    refused = result.returncode == 1 and "stored name" in result.stderr
    written = listing(tmp_path) - before - {"deep", "deep/dest"}
    tally.record("hostile names in a manifest", "every one refused, nothing written", 1,
                 0 if refused and not written else 1)
    assert refused, (result.returncode, result.stderr)
    assert not written, sorted(written)
    assert not Path("/tmp/escaped.txt").exists()


@pytest.mark.parametrize("name", ["e\u0301t\u00e9.txt", "模型/检查点.pt", "emoji-\U0001f525.bin", "rtl-\u202egnp.exe",
                                  "fullwidth-\uff0e\uff0e\uff0fx", "spaces and 'quotes'.txt"])
def test_odd_but_harmless_unicode_names_restore_inside_the_dir(cli, tmp_path, store, name):
    put_manifest(store, {name: b"data"})
    dest = tmp_path / "dest"
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 0, result.stderr
    assert listing(tmp_path) == {"dest"} | {f"dest/{p}" for p in listing(dest)}
    assert (dest / name).read_bytes() == b"data"


def test_a_key_outside_the_run_is_refused(cli, tmp_path, store, s3_env, tally):
    """A manifest may name only objects under its own replica's files/: not another namespace's."""
    other = store.layout.store.key("team-b", "proj", "secret") + "/0/files/model~0000"
    store.client.put_object(Bucket=store.layout.store.bucket, Key=other, Body=b"team-b's weights")
    put_manifest(store, {"stolen.pt": b"team-b's weights"}, key_for=lambda n: other)
    result = cli("restore", RUN, "--to", str(tmp_path / "dest"))
    ok = result.returncode == 1 and "outside the replica" in result.stderr
    tally.record("cross-namespace attempts", "every one refused", 1, 0 if ok else 1)
    assert ok, result.stderr
    assert not (tmp_path / "dest" / "stolen.pt").exists()


def test_a_name_through_a_symlinked_dir_is_refused(cli, tmp_path, store, tally):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside)
    put_manifest(store, {"link/payload.txt": b"evil", "safe.txt": b"ok"},
                 key_for=lambda n: store.layout.file_key(n, sha(b"evil" if "link" in n else b"ok")))
    result = cli("restore", RUN, "--to", str(dest))
    ok = result.returncode == 1 and "symlink" in result.stderr and "link" in result.stderr
    tally.record("hostile names in a manifest", "every one refused, nothing written", 1, 0 if ok else 1)
    assert ok, result.stderr
    assert list(outside.iterdir()) == []
    assert not [p for p in dest.rglob("*") if ".runsync-" in p.name]


@pytest.mark.parametrize("damage", ["truncated", "not json", "wrong types", "another format"])
def test_a_damaged_manifest_fails_clearly_and_writes_nothing(cli, tmp_path, store, damage):
    put_manifest(store, {"a.txt": b"good"}, seq=1)
    good = json.loads(store.client.get_object(Bucket=store.layout.store.bucket,
                                              Key=store.layout.manifest_key(1))["Body"].read())
    body = {"truncated": json.dumps(good)[:40].encode(), "not json": b"\x89PNG\r\n",
            "wrong types": json.dumps({**good, "seq": 2, "files": [{"name": 5, "key": [], "size": "x"}]}).encode(),
            "another format": json.dumps({**good, "seq": 2, "format": 99}).encode()}[damage]
    store.client.put_object(Bucket=store.layout.store.bucket, Key=store.layout.manifest_key(2), Body=body)
    dest = tmp_path / "dest"
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 1, result.stdout
    assert store.layout.manifest_key(2) in result.stderr and "fix" in result.stderr.lower(), result.stderr
    assert not dest.exists() or not list(dest.rglob("*"))


@pytest.mark.parametrize("damage", ["truncated", "bit flip", "empty", "longer"])
def test_a_damaged_object_fails_clearly_and_places_nothing(cli, tmp_path, store, damage):
    src = tmp_path / "src"
    (src / "ckpt/step-1").mkdir(parents=True)
    shard = os.urandom(100_000)
    (src / "ckpt/step-1/__0_0.distcp").write_bytes(shard)
    (src / "ckpt/step-1/.metadata").write_bytes(b"m")
    assert cli("sync", str(src), "--run", RUN).returncode == 0
    entry = store.files()["ckpt/step-1/__0_0.distcp"]
    body = {"truncated": shard[:50_000], "bit flip": shard[:10] + bytes([shard[10] ^ 1]) + shard[11:],
            "empty": b"", "longer": shard + b"x"}[damage]
    store.client.put_object(Bucket=store.layout.store.bucket, Key=entry.key, Body=body)
    dest = tmp_path / "dest"
    result = cli("restore", RUN, "--to", str(dest))
    assert result.returncode == 1
    assert entry.key in result.stderr, result.stderr
    # The checkpoint directory is placed whole or not at all: not even its good marker.
    assert [p for p in dest.rglob("*") if p.is_file()] == []
