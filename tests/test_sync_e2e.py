"""`runsync sync`, `ls` and `runs` as a user runs them, against a real SeaweedFS."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path

import pytest
from awscrt import checksums as crt_checksums

pytestmark = pytest.mark.s3

RUN = "team-a/nlp/bert-1"


def make_run_dir(root: Path) -> dict[str, bytes]:
    """A nested run dir like a trainer leaves it; returns every file's bytes by relative path."""
    files = {
        "config.yaml": b"lr: 0.001\nepochs: 3\n",
        "logs/train.log": b"step 1 loss 2.3\n" * 100,
        "ckpt/step-100/.metadata": b"dcp metadata",
        "ckpt/step-100/__0_0.distcp": os.urandom(300_000),
        "ckpt/step-100/__1_0.distcp": os.urandom(300_000),
        "ckpt/big.pt": os.urandom(20 * 1024 * 1024 + 17),  # above the multipart threshold
        "deep/a/b/c/d/notes.md": "ünïcode names ✓\n".encode(),
        "empty.txt": b"",
        # ignored:
        "ckpt/step-100/tmp.swp": b"swap",
        "__pycache__/x.pyc": b"pyc",
        "logs/debug.tmp": b"tmp",
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


IGNORE = "**/*.tmp, **/*.swp, __pycache__"  # one semantics: * never crosses /
IGNORED = {"ckpt/step-100/tmp.swp", "__pycache__/x.pyc", "logs/debug.tmp"}


def ls(cli) -> dict[str, dict]:
    result = cli("ls", RUN, "--json")
    assert result.returncode == 0, result.stderr
    return {row["name"]: row for row in json.loads(result.stdout)}


def objects(s3_client, bucket) -> dict[str, tuple]:
    """The stored files' objects (not manifests or the lease, which every sync writes)."""
    found = {}
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", ()):
            if "/objects/" in obj["Key"]:
                found[obj["Key"]] = (obj["ETag"], obj["LastModified"])
    return found


def test_sync_then_ls_shows_exactly_the_files(cli, tmp_path, s3_client, bucket):
    files = make_run_dir(tmp_path)
    result = cli("sync", str(tmp_path), "--run", RUN, "--ignore", IGNORE)
    assert result.returncode == 0, result.stderr
    kept = {k: v for k, v in files.items() if k not in IGNORED}
    assert f"uploaded {len(kept)} files" in result.stdout and f"{len(IGNORED)} ignored" in result.stdout

    listed = ls(cli)
    assert set(listed) == set(kept)
    for name, data in kept.items():
        row = listed[name]
        assert row["size"] == len(data)
        assert row["crc64nvme"] == base64.b64encode(crt_checksums.crc64nvme(data).to_bytes(8, "big")).decode()
        stored = s3_client.get_object(Bucket=bucket, Key=row["key"])["Body"].read()
        assert stored == data, name
        assert row["key"].startswith("runs/team-a/nlp/bert-1/0/objects/")

    # S3 itself checked each single-part upload against our CRC64NVME, the entry's one part.
    small = listed["config.yaml"]
    head = s3_client.head_object(Bucket=bucket, Key=small["key"], ChecksumMode="ENABLED")
    assert head["ChecksumCRC64NVME"] == base64.b64encode(
        crt_checksums.crc64nvme(kept["config.yaml"]).to_bytes(8, "big")).decode()

    table = cli("ls", RUN)
    assert table.returncode == 0
    for name in kept:
        assert name in table.stdout
    assert "tmp.swp" not in table.stdout

    runs = cli("runs", "--json")
    assert runs.returncode == 0, runs.stderr
    (summary,) = json.loads(runs.stdout)
    assert summary["run"] == RUN and summary["state"] == "ended"
    assert summary["files"] == len(kept) and summary["size"] == sum(map(len, kept.values()))
    assert json.loads(cli("runs", "team-a/nlp", "--json").stdout)[0]["run"] == RUN
    assert json.loads(cli("runs", "team-b", "--json").stdout) == []
    assert RUN in cli("runs").stdout


def test_second_sync_uploads_nothing_then_only_the_changed_file(cli, tmp_path, s3_client, bucket):
    make_run_dir(tmp_path)
    assert cli("sync", str(tmp_path), "--run", RUN, "--ignore", IGNORE).returncode == 0
    before = objects(s3_client, bucket)
    time.sleep(1.1)  # S3 times have one-second resolution: a re-upload would show

    again = cli("sync", str(tmp_path), "--run", RUN, "--ignore", IGNORE, "--json")
    assert again.returncode == 0, again.stderr
    report = json.loads(again.stdout)
    assert report["uploaded"] == [] and report["uploaded_bytes"] == 0
    assert objects(s3_client, bucket) == before
    human = cli("sync", str(tmp_path), "--run", RUN, "--ignore", IGNORE)
    assert "uploaded 0 files (0 B): nothing changed" in human.stdout

    # Touching a file without changing it uploads nothing either.
    os.utime(tmp_path / "config.yaml")
    touched = json.loads(cli("sync", str(tmp_path), "--run", RUN, "--ignore", IGNORE, "--json").stdout)
    assert touched["uploaded"] == []

    (tmp_path / "logs/train.log").write_bytes(b"step 2 loss 1.9\n")
    changed = json.loads(cli("sync", str(tmp_path), "--run", RUN, "--ignore", IGNORE, "--json").stdout)
    assert changed["uploaded"] == ["logs/train.log"]
    assert changed["uploaded_bytes"] == len(b"step 2 loss 1.9\n")
    new = set(objects(s3_client, bucket)) - set(before)
    assert list(new) == [ls(cli)["logs/train.log"]["key"]]
    # The older manifest still names the older bytes: nothing was overwritten.
    for key, (etag, modified) in before.items():
        assert objects(s3_client, bucket)[key] == (etag, modified)


def test_clean_deletes_exactly_the_durable_files(cli, tmp_path):
    files = make_run_dir(tmp_path)
    (tmp_path / "link.pt").symlink_to(tmp_path / "ckpt/big.pt")
    result = cli("sync", str(tmp_path), "--run", RUN, "--ignore", IGNORE, "--clean", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    durable = set(ls(cli))
    assert set(report["cleaned"]) == durable == set(files) - IGNORED
    remaining = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file() or p.is_symlink()}
    assert remaining == IGNORED | {"link.pt"}
    assert {s["path"] for s in report["skipped"]} == {"link.pt"}

    # A later sync of the cleaned dir keeps what is durable in the manifest.
    (tmp_path / "new.txt").write_text("new")
    assert cli("sync", str(tmp_path), "--run", RUN, "--ignore", IGNORE).returncode == 0
    assert set(ls(cli)) == durable | {"new.txt"}


def test_save_spec_renames_with_base_path(cli, tmp_path):
    (tmp_path / "out/ckpt").mkdir(parents=True)
    (tmp_path / "out/ckpt/a.pt").write_bytes(b"a")
    (tmp_path / "other.txt").write_bytes(b"o")
    spec = "- {glob: out/ckpt/*.pt, base_path: out, policy: now}"
    result = cli("sync", str(tmp_path), "--run", RUN, "--save", spec)
    assert result.returncode == 0, result.stderr
    listed = ls(cli)
    assert set(listed) == {"ckpt/a.pt", "other.txt"}
    assert listed["ckpt/a.pt"]["policy"] == "now" and listed["other.txt"]["policy"] == "end"


# ----------------------------------------------------------------------- failures

def failing_cases(s3_env, bucket):
    good = dict(s3_env)
    return {
        "wrong secret key": ({**good, "AWS_SECRET_ACCESS_KEY": "not-the-secret"}, [],
                             ["AWS_SECRET_ACCESS_KEY", "SignatureDoesNotMatch"]),
        "unknown access key": ({**good, "AWS_ACCESS_KEY_ID": "nobody"}, [], ["'****body'", "AWS_ACCESS_KEY_ID"]),
        "unknown bucket": ({**good, "RUNSYNC_STORE": "s3://no-such-bucket-here/x"}, [],
                           ["'no-such-bucket-here'", "does not exist", "create it"]),
        "unreachable endpoint": ({**good, "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}, [],
                                 ["http://127.0.0.1:9", "AWS_ENDPOINT_URL_S3"]),
        "malformed store URL": ({**good, "RUNSYNC_STORE": "https://bucket/x"}, [],
                                ["'https://bucket/x'", "s3://BUCKET"]),
        "malformed run path": (good, ["--run", "team-a/bert"], ["'team-a/bert'", "NAMESPACE/PROJECT/RUN"]),
        "bad ignore glob": (good, ["--ignore", "../up"], ['--ignore: bad glob "../up"', "outside the run dir"]),
    }


@pytest.mark.parametrize("case", ["wrong secret key", "unknown access key", "unknown bucket",
                                  "unreachable endpoint", "malformed store URL", "malformed run path",
                                  "bad ignore glob"])
def test_failures_are_one_clear_line_and_delete_nothing(case, cli, s3_env, bucket, tmp_path, s3_client):
    env, extra, fragments = failing_cases(s3_env, bucket)[case]
    files = make_run_dir(tmp_path)
    args = ["sync", str(tmp_path), "--clean", *(extra or ["--run", RUN])]
    if extra and extra[0] == "--ignore":
        args += ["--run", RUN]
    result = cli(*args, env=env, timeout=90)  # gives up, does not hang (no clock: 2 busy cores vary 5x)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("runsync: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()} == set(files)
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    # The same problem on the read-only verbs gives the same kind of line.
    if not extra:
        listing = cli("ls", RUN, env=env)
        assert listing.returncode != 0 and listing.stderr.startswith("runsync: error: ")
        assert len(listing.stderr.strip().splitlines()) == 1


def test_secret_never_printed(cli, s3_env, tmp_path):
    make_run_dir(tmp_path)
    secret = s3_env["AWS_SECRET_ACCESS_KEY"]
    results = [cli("sync", str(tmp_path), "--run", RUN, "--log-level", "debug"),
               cli("ls", RUN, env={**s3_env, "AWS_SECRET_ACCESS_KEY": secret + "x"})]
    for result in results:
        assert secret not in result.stdout + result.stderr


def test_a_sync_beside_a_live_writer_fails_before_it_uploads(cli, tmp_path, s3_client, bucket):
    """A live sidecar holds the replica: `sync` says who, and sends nothing (its objects would
    be named by no commit, and gc could take them before it committed)."""
    files = make_run_dir(tmp_path)
    lease_doc = {"holder": "pod-a", "epoch": 3, "heartbeat": time.time(), "state": "active",
                 "ttl": 600.0, "epochs": [[3, 0]]}
    s3_client.put_object(Bucket=bucket, Key=f"runs/{RUN}/0/lease.json", Body=json.dumps(lease_doc).encode())
    result = cli("sync", str(tmp_path), "--run", RUN, "--ignore", IGNORE)
    assert result.returncode != 0
    assert "being written by pod-a" in result.stderr, result.stderr
    assert objects(s3_client, bucket) == {}
    assert {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()} == set(files)


def test_sync_holds_the_lease_it_names_its_objects_by(cli, tmp_path, s3_client, bucket):
    """Objects go under the epoch of the lease the sync took (objects/<epoch>/...), and the lease
    is released after the commit."""
    make_run_dir(tmp_path)
    assert cli("sync", str(tmp_path), "--run", RUN, "--ignore", IGNORE).returncode == 0
    lease_doc = json.loads(s3_client.get_object(Bucket=bucket, Key=f"runs/{RUN}/0/lease.json")["Body"].read())
    assert lease_doc["state"] == "released" and lease_doc["holder"].startswith("sync@")
    epochs = {key.split("/objects/")[1].split("/")[0] for key in objects(s3_client, bucket)}
    assert epochs == {f"{lease_doc['epoch']:08d}"}
