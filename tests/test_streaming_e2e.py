"""`runsync ls` and restores of a format-2 run of many entries, streamed (issue 18: 1,000,000
files in bounded memory): the output is the latest commit's listing exactly (a base in many
chunks with a delta applied), and the process's peak RSS stays near that of a tiny run's, far
below what holding the whole listing takes (~3.7 KB per entry: ~440 MiB at 120,000).

The run is written by the product's own commit code (manifest.commit_next: a base in chunks,
then a delta), its entries pointing at a few real objects, so it takes seconds, not an upload
of 120,000 files."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from runsync import contract, keys, lease, manifest
from runsync_testing import downward

from harness import measured

pytestmark = [pytest.mark.s3, pytest.mark.slow]

MiB = 1024 * 1024
BIG = 120_000
SLACK_MIB = 60
"""What streaming may add over a tiny run's peak: a chunk or two of 10,000 entries and the delta
chain. The whole listing at BIG entries is several times this."""
BODY = b"shard bytes\n"
SHA = hashlib.sha256(BODY).hexdigest()


def _write_run(store, run: str, count: int) -> dict[str, manifest.FileEntry]:
    """A base of `count` entries (many chunks), then a delta changing, removing and adding a few:
    the latest commit's entries, by name. Every entry points at one real object."""
    s3, layout = store.client, keys.Layout(store.layout.store, keys.RunPath.parse(run), "0")
    key = layout.objects_prefix + "00000001/shared"
    s3.put_object(Bucket=layout.store.bucket, Key=key, Body=BODY)
    mtime = time.time_ns()

    def entry(name: str) -> manifest.FileEntry:
        return manifest.FileEntry(name, key, len(BODY), mtime, SHA, "live")

    held = lease.acquire(s3, layout, "writer", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    base = manifest.commit_next(s3, layout, None, [entry(f"f/{i:07d}.txt") for i in range(count)],
                                final=False, writer="writer", epoch=held.lease.epoch)
    changed = [manifest.FileEntry(f"f/{i:07d}.txt", key, len(BODY), mtime + 1, SHA, "end") for i in (5, count - 1)]
    added = [entry("a-first.txt"), entry("f/0000005.txt.new"), entry("z-last.txt")]
    removed = {f"f/{i:07d}.txt" for i in (0, 7, count // 2)}
    top = manifest.commit_next(s3, layout, base, changed + added, removed=removed, final=True, writer="writer",
                               epoch=held.lease.epoch)
    lease.renew(s3, layout, held, state="released")
    if count > 10_000:
        assert (base.chain, top.chain) == (0, 1) and len(base.requires) > 1, "a base in chunks, then a delta"
    return dict(top.files)


@pytest.fixture
def tiny_peak(store, s3_env, tmp_path) -> int:
    """Peak RSS of `runsync ls --json` of a run of 3 entries: the interpreter, boto3, the CLI."""
    _write_run(store, "team-a/proj/tiny", 3)
    code, _, err, peak = measured(tmp_path, s3_env, "ls", "team-a/proj/tiny", "--json")
    assert code == 0, err
    return peak


@pytest.mark.timeout(900)
def test_ls_of_a_big_run_lists_the_latest_commit_in_bounded_memory(store, s3_env, tmp_path, tiny_peak):
    expected = _write_run(store, "team-a/proj/big", BIG)

    code, out, err, peak = measured(tmp_path, s3_env, "ls", "team-a/proj/big", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["name"] for r in rows] == sorted(expected)  # sorted, each once, removals gone
    for name in ("f/0000005.txt", f"f/{BIG - 1:07d}.txt", "a-first.txt", "z-last.txt", "f/0000001.txt"):
        row = next(r for r in rows if r["name"] == name)
        e = expected[name]
        assert (row["policy"], row["mtime"], row["sha256"], row["key"], row["manifest"]) == \
            (e.policy, e.mtime_ns / 1e9, e.sha256, e.key, 2), name
    assert peak < tiny_peak + SLACK_MIB * MiB, f"ls --json peaked at {peak // MiB} MiB (a tiny run: {tiny_peak // MiB})"
    del rows, out

    code, out, err, peak = measured(tmp_path, s3_env, "ls", "team-a/proj/big")
    assert code == 0, err
    table = [line.split() for line in out.splitlines() if line.startswith("0 ")]
    assert [cells[1] for cells in table] == sorted(expected)
    assert peak < tiny_peak + SLACK_MIB * MiB, f"ls peaked at {peak // MiB} MiB (a tiny run: {tiny_peak // MiB})"


PICK = "f/000010?.txt"
PICKED = {f"f/{i:07d}.txt" for i in range(100, 110)}


@pytest.mark.timeout(900)
def test_restore_of_a_few_files_of_a_big_run_streams_its_listing(store, s3_env, tmp_path, tiny_peak):
    expected = _write_run(store, "team-a/proj/big", BIG)
    to = tmp_path / "restored"

    code, out, err, peak = measured(tmp_path, s3_env, "restore", "team-a/proj/big", PICK, "--to", str(to), "--json")
    assert code == 0, err
    assert sorted(json.loads(out)["written"]) == sorted(PICKED)
    assert {str(p.relative_to(to)) for p in to.rglob("*") if p.is_file()} == PICKED
    for name in PICKED:
        assert (to / name).read_bytes() == BODY and (to / name).stat().st_mtime_ns == expected[name].mtime_ns
    assert peak < tiny_peak + SLACK_MIB * MiB, f"restore peaked at {peak // MiB} MiB (a tiny run: {tiny_peak // MiB})"


@pytest.mark.timeout(900)
def test_restore_init_of_a_big_run_streams_its_listing(store, s3_env, tmp_path, tiny_peak):
    _write_run(store, "team-a/proj/big", BIG)
    run_dir, annotations = tmp_path / "run", tmp_path / "annotations"
    run_dir.mkdir()
    annotations.write_text(downward.format_annotations_file({contract.RESTORE: PICK}))
    env = {**s3_env, contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: "team-a/proj/big",
           contract.ENV_REPLICA: "0", contract.ENV_ANNOTATIONS: str(annotations), contract.ENV_HOLDER: "pod-b",
           contract.ENV_GRACE: "5"}

    code, out, err, peak = measured(tmp_path, env, "restore-init")
    assert code == 0, out + err
    assert {str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and ".runsync" not in p.parts} == PICKED
    assert peak < tiny_peak + SLACK_MIB * MiB, f"restore-init peaked at {peak // MiB} MiB (a tiny run: {tiny_peak // MiB})"


def test_a_damaged_chunk_fails_ls_and_restore_clearly_and_restores_nothing(store, cli, tmp_path):
    _write_run(store, "team-a/proj/damaged", 25_000)  # three chunks: the second is damaged
    layout = keys.Layout(store.layout.store, keys.RunPath.parse("team-a/proj/damaged"), "0")
    chunk = sorted(k for k in store.keys() if k.startswith(layout.manifests_prefix) and k.endswith(".jsonl.gz"))[1]
    store.client.put_object(Bucket=layout.store.bucket, Key=chunk, Body=b"not the chunk the record names")

    listing = cli("ls", "team-a/proj/damaged", "--json")
    assert listing.returncode == 1
    assert "unreadable" in listing.stderr and layout.manifest_key(2) in listing.stderr and "fix:" in listing.stderr
    to = tmp_path / "restored"
    restored = cli("restore", "team-a/proj/damaged", "--to", str(to))
    assert restored.returncode == 1 and "unreadable" in restored.stderr, restored.stderr
    assert not any(p.is_file() for p in to.rglob("*"))  # the survey reads every chunk before any download
