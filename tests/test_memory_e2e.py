"""The sidecar stays under its container's memory limit (the kubelet would OOM-kill it) while it
uploads a file much larger than that limit."""

from __future__ import annotations

import re

import pytest

from runsync import contract

pytestmark = [pytest.mark.s3, pytest.mark.slow]

MiB = 1024 * 1024


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM): what a cgroup's memory limit is held against."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024


# 512 MiB: the chart's default, the CRT with smaller buffers; 384 MiB: too little for the CRT's
# least (256 MiB) beside the rest, so the Python transfer manager.
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("limit_mib", [384, 512])
def test_a_2gib_upload_stays_under_the_memory_limit(sidecars, store, limit_mib):
    limit = limit_mib * MiB
    sc = sidecars({contract.SAVE: "big.bin:live"},
                  extra_env={contract.ENV_MEMORY_LIMIT: str(limit)}).start()
    with open(sc.run_dir / "big.bin", "wb") as f:  # sparse: 2 GiB in no time and no disk
        f.truncate(2048 * MiB)
    sc.flush(timeout=900)
    assert store.files()["big.bin"].size == 2048 * MiB
    peak = peak_rss(sc.proc.pid)
    assert peak < limit, f"peak RSS {peak // MiB} MiB over the {limit_mib} MiB limit"
    print(f"peak RSS {peak // MiB} MiB for a 2 GiB upload under a {limit_mib} MiB limit")

