"""A first `runsync sync` of many small files in bounded memory (issue 18): its peak RSS stays
near that of a sync of a few files, where it once grew by about 4 KiB a file (a future, a lock
and a condition per file submitted at once, then per-file records kept to the end). The commit
still names every file, and `--json` still lists every name uploaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import measured

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
