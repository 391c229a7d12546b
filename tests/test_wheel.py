"""The image's wheel ships the product only: the test tooling (runsync_testing) stays out."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
# What only tests, the demo and the benchmarks use: a local S3 server, an API stub, a pod runner.
TOOLING = ("runsync_testing", "locals3", "localkube", "localpod", "seaweedfs", "trustme", "jsonpatch")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    # Built from a copy, as the Dockerfile's build stage does: no build/ or egg-info in the repo.
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "sidecar", "operator"):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                         if (ROOT / name).is_dir() else {}))
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
                             "--no-index", "--quiet", "--wheel-dir", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = out.glob("runsync-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_has_the_product_and_no_test_tooling(wheel):
    names = wheel.namelist()
    assert "runsync/cli.py" in names and "runsync_operator/inject.py" in names
    tooling = [n for n in names if any(t in n.lower() for t in TOOLING)]
    assert tooling == []
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in wheel.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if any(t in r.lower() for t in TOOLING) and "extra ==" not in r]
