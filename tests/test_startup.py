"""What the pod's own command lines load (issue 17): restore-init gates the trainer's start, and
the sidecar idles beside it for the whole run. A list of modules, not a timing: Python's
`-X importtime` (PYTHONPROFILEIMPORTTIME) names every module a process imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import RUNSYNC, Sidecar, sha, wait_for
from runsync import contract

pytestmark = [pytest.mark.s3]

INTERACTIVE = ("rich", "typer", "click", "pydantic", "kopf", "kubernetes")
"""The CLI's and the operator's packages: neither in-pod role needs one."""


def loaded(stderr: str) -> set[str]:
    """The top-level packages a process imported, from its `-X importtime` lines."""
    return {line.split("|")[2].strip().split(".")[0] for line in stderr.splitlines()
            if line.startswith("import time:") and "cumulative" not in line}


def modules(stderr: str) -> set[str]:
    """Every module a process imported, by its full name, from its `-X importtime` lines."""
    return {line.split("|")[2].strip() for line in stderr.splitlines()
            if line.startswith("import time:") and "cumulative" not in line}


def restore_init(cli, tmp_path, s3_env, size: int, **more: str) -> tuple[subprocess.CompletedProcess, bytes, Path]:
    """`runsync restore-init` as the operator's pod runs it (no options), under `-X importtime`,
    of a checkpoint of `size` bytes that `runsync sync` stored first."""
    src = tmp_path / "src"
    (src / "checkpoints").mkdir(parents=True)
    data = os.urandom(size)
    (src / "checkpoints" / "last.pt").write_bytes(data)
    assert cli("sync", str(src), "--run", "team-a/proj/run-1").returncode == 0
    run_dir = tmp_path / "pod"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
    env.update(s3_env, PYTHONPROFILEIMPORTTIME="1", **{
        contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: "team-a/proj/run-1", contract.ENV_HOLDER: "pod-a"},
        **more)
    done = subprocess.run([RUNSYNC, "restore-init"], env=env, capture_output=True, text=True, timeout=120)
    return done, data, run_dir


def test_restore_init_restores_without_the_interactive_cli(cli, tmp_path, s3_env):
    done, data, run_dir = restore_init(cli, tmp_path, s3_env, 3 * 1024 * 1024)

    assert done.returncode == 0, done.stderr[-3000:]
    assert sha((run_dir / "checkpoints" / "last.pt").read_bytes()) == sha(data)
    imported = loaded(done.stderr)
    assert {"awscrt", "runsync"} <= imported  # the list is real
    assert sorted(imported & {*INTERACTIVE, "prometheus_client"}) == []
    assert "yaml" not in imported  # PyYAML only for a save spec written as a YAML list (config.py)
    # Every request went through the CRT (crtclient.py): no botocore client was built, and the
    # API's server module was not loaded either; no socket was read in Python (http.client: a
    # large file's ranges only, fetch.py), no annotation misspelt (difflib: config.py).
    assert sorted(modules(done.stderr) & {"boto3", "s3transfer", "botocore.client", "botocore.session",
                                          "http.server", "http.client", "difflib"}) == []


def test_restore_init_without_the_crt_restores_through_botocore(cli, tmp_path, s3_env):
    done, data, run_dir = restore_init(cli, tmp_path, s3_env, 3 * 1024 * 1024, RUNSYNC_CRT="0")

    assert done.returncode == 0, done.stderr[-3000:]
    assert sha((run_dir / "checkpoints" / "last.pt").read_bytes()) == sha(data)
    assert {"boto3", "botocore.client"} <= modules(done.stderr)


def test_restore_init_errors_keep_their_line_and_exit_code(tmp_path, s3_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
    env.update(s3_env, **{contract.ENV_DIR: str(tmp_path / "missing"), contract.ENV_RUN_PATH: "team-a/proj/run-1"})
    done = subprocess.run([RUNSYNC, "restore-init"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == (f"runsync: error: {contract.ENV_DIR}={str(tmp_path / 'missing')!r} is not a "
                                   "directory; mount the run dir there")


def test_the_idle_sidecar_runs_without_the_interactive_cli(tmp_path, s3_env):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "notes.txt").write_text("hello")
    car = Sidecar(run_dir, s3_env, {contract.SAVE: "**:live"}, tmp_path, extra_env={"PYTHONPROFILEIMPORTTIME": "1"})
    # As the operator's pod runs it: `runsync sidecar`, no options (the harness passes some).
    car.proc = subprocess.Popen([RUNSYNC, "sidecar"], env=car.env, stdout=open(car.log_path, "ab"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def ready() -> bool:
            assert car.proc.poll() is None, car.logs()[-3000:]
            try:
                return bool(car.status().get("loaded"))
            except OSError:
                return False
        wait_for(ready, timeout=120, what="the sidecar's API")
        assert car.flush(timeout=60)["durable"]
        code, _ = car.terminate()
    finally:
        car.stop()
    assert code == 0, car.logs()[-3000:]
    imported = loaded(car.logs())
    assert {"boto3", "prometheus_client"} <= imported  # the list is real; metrics are the sidecar's
    assert sorted(imported & set(INTERACTIVE)) == []


def test_interactive_commands_still_go_through_the_cli(cli):
    done = cli("restore-init", "--help")
    assert done.returncode == 0
    assert "Restore the run's files into the run dir" in done.stdout


SYNC_THRICE = """
import sys
from pathlib import Path
from pathlib import Path
from runsync import keys, sync

reads = []
sys.addaudithook(lambda event, args: event == "open" and "service-2.json" in str(args[0]) and reads.append(args[0]))
run_dir, store = Path(sys.argv[1]), keys.StoreURL.parse(sys.argv[2])
for step in range(3):
    (run_dir / "metrics.json").write_text(str(step))
    report = sync.sync(run_dir, store, keys.RunPath.parse("team-a/proj/script"))
    print(report.committed.seq, len(report.uploaded))
print(len(reads))
"""


def test_sync_called_again_in_one_process_reuses_its_s3_client(tmp_path, s3_env):
    """A script that calls sync() in a loop (the SDK's use): botocore's S3 model, which every new
    session parses again, is read from disk once."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))}
    env.update(s3_env)
    done = subprocess.run([sys.executable, "-c", SYNC_THRICE, str(run_dir), s3_env[contract.ENV_STORE]],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    *commits, reads = done.stdout.split("\n")[:-1]
    assert commits == ["1 1", "2 1", "3 1"]  # three syncs, each a new manifest with the changed file
    assert reads == "1"


def test_the_startup_bench_runs(tmp_path):
    """bench/startup.py, tiny, so it cannot rot (its numbers are in bench/README.md, not asserted)."""
    bench = Path(__file__).resolve().parent.parent / "bench" / "startup.py"
    done = subprocess.run([sys.executable, str(bench), "--repeat", "1", "--size", "1000", "--profile",
                           "--save", str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| restore-init: start → first S3 request" in done.stdout
    assert "cProfile of one restore-init" in done.stdout, done.stdout[-3000:]
    profiled = done.stdout.split("cProfile of one restore-init")[-1]  # it ends in os._exit: stats written there
    assert "runner.py" in profiled and "restore_init" in profiled, done.stdout[-3000:]
    saved = json.loads((tmp_path / "out.json").read_text())
    assert not {"rich", "typer", "prometheus_client"} & set(saved["after"]["imports"]["heavy_loaded"])
