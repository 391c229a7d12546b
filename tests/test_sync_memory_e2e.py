"""A first `runsync sync` of many small files in bounded memory (issue 18): its peak RSS stays
near that of a sync of a few files, where it once grew by about 4 KiB a file (a future, a lock
and a condition per file submitted at once, then per-file records kept to the end). The commit
still names every file, and `--json` still lists every name uploaded. A sync that changes
nothing in a run whose latest commit names 100,000 files looks its files up there without
holding that commit in memory (it held about 0.7 KiB a file)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness import Store, measured
from runsync import manifest

pytestmark = [pytest.mark.s3, pytest.mark.slow]

MiB = 1024 * 1024
MANY = 10_000
SLACK_MIB = 16
"""What MANY files may add over a sync of a few: their names, keys and part CRCs until the
commit (a few hundred bytes a file). About 4 KiB a file (40 MiB) is what it took before."""


def _small_files(root: Path, count: int) -> list[str]:
    names = []
    for i in range(count):
        d = root / f"d{i // 1000:03d}"  # 1,000 a dir, as a dataset cache lays them out
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:06d}.bin").write_bytes(f"file {i}\n".encode())
        names.append(f"d{i // 1000:03d}/f{i:06d}.bin")
    return names


@pytest.mark.timeout(900)
def test_a_first_sync_of_many_small_files_stays_in_bounded_memory(s3_env, store, tmp_path):
    few, many = tmp_path / "few", tmp_path / "many"
    _small_files(few, 3)
    names = _small_files(many, MANY)

    code, out, err, few_peak = measured(tmp_path, s3_env, "sync", str(few), "--run", "team-a/proj/few", "--json")
    assert code == 0, err
    code, out, err, peak = measured(tmp_path, s3_env, "sync", str(many), "--run", "team-a/proj/run-1", "--json")
    assert code == 0, err

    report = json.loads(out)
    assert sorted(report["uploaded"]) == names and report["failed"] == [] and report["manifest"] == 1
    files = store.files()
    assert sorted(files) == names
    assert store.read(files["d009/f009999.bin"].key) == b"file 9999\n"
    print(f"peak RSS {peak // MiB} MiB for {MANY} files, {few_peak // MiB} MiB for 3")
    assert peak < few_peak + SLACK_MIB * MiB, \
        f"sync of {MANY} files peaked at {peak // MiB} MiB (3 files: {few_peak // MiB} MiB)"


NOOP_SLACK_MIB = 16
"""What 100,000 committed entries may add to a sync that changes nothing, over a run of 3: the
index's sqlite pages. Holding them as a dict took about 67 MiB."""


@pytest.mark.timeout(600)
def test_a_sync_that_changes_nothing_does_not_hold_the_latest_commit_in_memory(s3_env, tmp_path):
    few = tmp_path / "few"
    names = _small_files(few, 3)
    big = Store(s3_env, run="team-a/proj/big")
    for run in ("team-a/proj/big", "team-a/proj/small"):
        code, out, err, _ = measured(tmp_path, s3_env, "sync", str(few), "--run", run, "--json")
        assert code == 0, err
    # the big run's latest commit: these 3 files beside 100,000 others (committed elsewhere)
    latest = big.latest()
    mine = next(iter(latest.files.values()))
    others = [dataclasses.replace(mine, name=f"elsewhere/{i // 1000:03d}/f{i:06d}.bin") for i in range(100_000)]
    manifest.commit(big.client, big.layout, latest, others, final=True, writer="test", epoch=latest.epoch)
    del others, latest

    code, out, err, small_peak = measured(tmp_path, s3_env, "sync", str(few), "--run", "team-a/proj/small", "--json")
    assert code == 0, err
    code, out, err, big_peak = measured(tmp_path, s3_env, "sync", str(few), "--run", "team-a/proj/big", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["uploaded"] == [] and report["unchanged"] == 3 and report["manifest"] == 2  # nothing committed
    assert sorted(big.files())[:3] == sorted(names) and len(big.files()) == 100_003
    print(f"no-op sync: peak RSS {big_peak // MiB} MiB beside 100,003 committed files, {small_peak // MiB} MiB beside 3")
    assert big_peak < small_peak + NOOP_SLACK_MIB * MiB, \
        f"a no-op sync beside 100,003 committed files peaked at {big_peak // MiB} MiB (3: {small_peak // MiB} MiB)"
