"""The one image: hadolint finds nothing, and it is built the way the chart expects it."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent
HADOLINT = Path(sys.executable).with_name("hadolint")


def test_hadolint_finds_nothing():
    result = subprocess.run([str(HADOLINT), "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_is_non_root_with_runsync_as_entrypoint_at_the_packaged_version():
    text = (ROOT / "Dockerfile").read_text()
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f'"runsync=={version}"' in text
    stages = text.split("\nFROM ")
    final = stages[-1]
    assert "USER 65532:65532" in final and 'ENTRYPOINT ["runsync"]' in final
    assert "gcc" not in final and "build-essential" not in final
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
