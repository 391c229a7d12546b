"""The operator's imports: only the sidecar package's shared vocabulary, and no I/O where pure.

import-linter checks the `runsync` package's layers (scripts/test); it cannot load
`runsync_operator`, a folder without __init__.py, so this test reads the operator's imports
itself, against the list in pyproject.toml (`[tool.runsync.operator]`).
"""

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
OPERATOR = ROOT / "operator"
ALLOWED = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["runsync"]["operator"]
SHARED = set(ALLOWED["shared"])
PURE = set(ALLOWED["pure"])
ALSO = {name: set(mods) for name, mods in ALLOWED["also"].items()}


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {f"{node.module}.{a.name}" if node.module == "runsync" else node.module for a in node.names}
    return found


@pytest.mark.parametrize("path", sorted(OPERATOR.glob("*.py")), ids=lambda p: p.name)
def test_operator_imports_only_the_shared_vocabulary(path):
    used = {m for m in imports(path) if m == "runsync" or m.startswith("runsync.")}
    allowed = SHARED | ALSO.get(path.name, set())
    assert used <= allowed, f"{path.name} reaches into {sorted(used - allowed)}"
    if path.name in PURE:
        assert not {m.split(".")[0] for m in imports(path)} & {"boto3", "botocore", "kubernetes", "kopf"}


def test_nothing_is_importable_as_operator():
    import operator

    assert hasattr(operator, "itemgetter"), "the standard library's operator is shadowed"
    assert not (OPERATOR / "__init__.py").exists()
