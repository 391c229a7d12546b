"""The README's first command does what it says: a preempted pod's replacement resumes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DEMO = Path(__file__).parent.parent / "examples" / "demo.py"


@pytest.mark.slow
def test_the_demo_resumes_from_the_last_durable_checkpoint():
    result = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "starting fresh" in out
    durable = int(re.search(r"told step (\d+) was durable", out).group(1))
    resumed = int(re.search(r"resumed from step (\d+)", out).group(1))
    assert resumed >= durable > 0
    assert "done at step 40" in out and "ended" in out
    assert "Traceback" not in out + result.stderr
    if os.geteuid() == 0:  # as root the local pod runs the trainer as its securityContext says
        assert "the trainer runs as UID 1000" in out and "runsync runs as 1000:1000" in out
