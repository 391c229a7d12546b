"""bench/ cannot rot: its smoke run (tiny data, one run, the peers the test extra installs) moves
every data set both ways with each tool, checks the bytes, and writes the table, CSVs and chart."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOOLS = ["runsync sync/restore", "runsync sidecar/restore-init", "s5cmd", "boto3 TM"]


@pytest.mark.slow
def test_bench_smoke_writes_table_csv_and_chart(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "main.py"), "--smoke", "--out", str(out),
                           "--tools", ",".join(TOOLS)], capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    cells = {(r["dataset"], r["direction"], r["tool"]) for r in summary}
    datasets = {r["dataset"] for r in summary}
    assert len(datasets) == 3
    assert cells == {(d, direction, t) for d in datasets for direction in ("up", "down") for t in TOOLS}
    for r in summary:
        assert float(r["MBps"]) > 0 and float(r["client_cpu_s_per_GiB"]) > 0, r
        if r["tool"].startswith("runsync"):
            assert r["best_peer"] in TOOLS and float(r["speed_vs_best"]) > 0, r
    assert (out / "chart.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    for heading in ("Throughput and CPU", "Close-to-durable", "Idle sidecar", "Admission"):
        assert heading in md
    # the latency rows carry measured numbers, not blanks
    rows = [line for line in md.splitlines() if line.startswith("| 1 | 3 |")]
    assert rows and all(float(x) > 0 for x in rows[0].strip("|").split("|")[2:5]), md
