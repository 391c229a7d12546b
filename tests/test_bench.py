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


@pytest.mark.slow
@pytest.mark.timeout(900)  # eight processes that import torch: minutes on two busy cores
def test_bench_checkpoint_peer_times_both_formats_against_s3torchconnector(tmp_path):
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "main.py"), "--smoke", "--out", str(out),
                           "--tools", "s3torchconnector", "--only", "checkpoints"],
                          capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    with open(out / "summary.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("vs_connector") or "s3torchconnector" in r["tool"]]
    cells = {(r["direction"], r["tool"]) for r in rows}
    assert cells == {(d, t) for d in ("save", "load") for t in (
        "s3torchconnector S3Checkpoint", "runsync torch.save + flush", "s3torchconnector DCP", "runsync DCP + flush")}
    for r in rows:
        assert float(r["seconds"]) > 0, r
        if r["tool"].startswith("runsync"):
            assert float(r["vs_connector"]) > 0, r
    assert "Checkpoints against s3torchconnector" in (out / "results.md").read_text()


@pytest.mark.slow
def test_bench_scale_prints_every_curve_with_requests_by_kind(tmp_path):
    out = tmp_path / "scale.md"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "scale.py"), "--scale", "R,M,F,N,H", "--R", "2",
                           "--M", "3", "--F", "20", "--N", "3", "--H", "6", "--repeat", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    md = out.read_text()
    sections = {part[0]: part for part in md.split("\n## ")[1:]}
    assert set(sections) == set("RMFNH"), md

    def rows(curve: str) -> list[list[str]]:  # this code's rows, cells stripped
        return [[c.strip() for c in line.strip("|").split("|")] for line in sections[curve].splitlines()
                if line.startswith("| ") and "| after |" in line]

    assert rows("R")[0][-1] == "5", md  # R=2: both logs, both shards and the marker restored
    assert "PutObject" in rows("M")[0][2] and int(rows("M")[0][-1]) > 0, md  # a commit writes
    assert [r[2] for r in rows("F")] == ["first sync", "no-op sync", "sync of 1 changed", "restore-init"], md
    assert "PutObject" not in rows("F")[1][3], md  # a no-op sync writes nothing
    assert "ListObjectsV2" in rows("N")[0][2] and "GetObject" not in rows("N")[0][2], md  # the runs index
    history = rows("H")[0]  # M=6: gc keeps 3 manifests (and what they need), a commit and restore still work
    before, after = (int(history[i].split(" ")[0]) for i in (2, 5))
    assert "DeleteObjects" in history[3] and after < before and history[-1] == "latest", md
