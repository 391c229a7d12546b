"""botocore's S3 model without its documentation, made at install time, so a new process builds its
first S3 client sooner (issue 17: restore-init's start-up).

botocore parses `s3/2006-03-01/service-2.json.gz` (1.3 MB of JSON, four fifths of it
documentation strings only docstrings and `help()` read) for the first client of every process.
`build()` (run by scripts/setup and the Dockerfile after the install) writes the same model with
every `documentation` string emptied, uncompressed, under DIR, beside the version of botocore it
came from. `use()` puts DIR on a botocore session's data path (botocore's own `data_path`
setting, what AWS_DATA_PATH sets: searched before its bundled data) only when that version is
the installed one; else the session reads botocore's full model as before. Only S3's
`service-2` is trimmed: every other file (endpoints, rule sets, STS for workload identity) still
comes from botocore's own data dir, so which endpoint and signer a client resolves is unchanged.

    python -m runsync.botodata build [DIR]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import botocore
import botocore.loaders

DIR = Path(sys.prefix) / "share" / "runsync" / "botocore-data"
"""Where `build` writes and `use` looks: beside the environment runsync is installed in."""
VERSION_FILE = "botocore-version"
SERVICE = "s3"
_DROPPED = frozenset({"documentation", "documentationUrl"})


def build(target: Path = DIR) -> Path:
    """Write S3's service model of the installed botocore, its documentation emptied, under
    `target` (replaced whole, so a reader never sees half of it)."""
    loader = botocore.loaders.Loader()
    version = loader.determine_latest_version(SERVICE, "service-2")
    model, source = loader.load_data_with_path(f"{SERVICE}/{version}/service-2")
    if not loader.is_builtin_path(source):
        raise SystemExit(f"runsync: error: botocore's S3 model was read from {source}, not from botocore's own "
                         "data; fix: unset AWS_DATA_PATH (and move ~/.aws/models/s3) while building")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        out = staging / SERVICE / version
        out.mkdir(parents=True)
        (out / "service-2.json").write_text(json.dumps(_undocumented(model), separators=(",", ":")))
        (staging / VERSION_FILE).write_text(botocore.__version__)
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide it from the pod's other UIDs
        old = target.with_name(f".{target.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            target.rename(old)
        staging.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _undocumented(node):
    """`node` with every documentation string empty (kept as a key: botocore reads some, e.g. the
    client context parameters', with `[]`)."""
    if isinstance(node, dict):
        return {k: "" if k in _DROPPED and isinstance(v, str) else _undocumented(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_undocumented(v) for v in node]
    return node


def current(target: Path = DIR) -> bool:
    """Whether `target` holds a model built from the installed botocore."""
    try:
        return (target / VERSION_FILE).read_text() == botocore.__version__
    except OSError:
        return False


def use(session, target: Path = DIR) -> bool:
    """Make `session` (a botocore session whose data loader is not made yet) read S3's model from
    `target` when it was built from this botocore; paths the user set (AWS_DATA_PATH) still come
    first. False, and botocore's full model, otherwise."""
    if not current(target):
        return False
    user = session.get_config_variable("data_path")
    session.set_config_variable("data_path", os.pathsep.join(p for p in (user, str(target)) if p))
    return True


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "build" or len(args) > 2:
        print("usage: python -m runsync.botodata build [DIR]", file=sys.stderr)
        return 2
    print(build(Path(args[1]) if len(args) == 2 else DIR))
    return 0


if __name__ == "__main__":
    sys.exit(main())
