"""scripts/setup makes a venv every UID can use: the local pod runs containers as 65532 and 1000."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="switching UIDs needs root and setpriv (util-linux)")


@needs_root
@pytest.mark.parametrize("uid", [65532, 1000])
def test_another_uid_can_run_runsync_and_its_tooling_from_the_venv(uid):
    # Through sh: setpriv keeps root's capabilities until its own exec, which would hide a
    # python under a 0700 home; a kubelet's container has none at any exec.
    result = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--",
                             "/bin/sh", "-c", 'exec "$@"', "sh",
                             sys.executable, "-c", "import runsync.cli, runsync_testing.localpod"],
                            capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, f"{sys.executable} as UID {uid}: {result.stderr[-2000:]}"


@needs_root
def test_setup_keeps_a_venv_every_uid_can_run():
    result = subprocess.run([str(ROOT / "scripts" / "setup")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "making .venv again" not in result.stderr


@pytest.mark.slow
def test_setup_leaves_our_modules_compiled_as_the_image_does():
    # The image's `pip install` writes every module's bytecode; an editable install writes none,
    # and where PYTHONDONTWRITEBYTECODE is set each runsync process compiled them all again.
    result = subprocess.run([str(ROOT / "scripts" / "setup")], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    stale = []
    for package in ("sidecar", "operator", "testing/runsync_testing"):
        for source in sorted((ROOT / package).glob("*.py")):
            cached = Path(importlib.util.cache_from_source(str(source)))
            header = cached.read_bytes()[:16] if cached.is_file() else b""
            st = source.stat()  # (a pyc records its source's mtime and size, as importlib checks them)
            if header[8:16] != (int(st.st_mtime) & 0xFFFFFFFF).to_bytes(4, "little") + \
                    (st.st_size & 0xFFFFFFFF).to_bytes(4, "little"):
                stale.append(str(source.relative_to(ROOT)))
    assert not stale, f"no bytecode, or stale, after scripts/setup: {stale}"
