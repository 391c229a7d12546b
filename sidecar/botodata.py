"""What botocore works out from its data files at every process's first client, worked out once at
install time (issue 17: restore-init's start-up).

For the first S3 client of a process botocore parses `s3/2006-03-01/service-2.json.gz` (1.3 MB
of JSON, four fifths of it documentation strings only docstrings and `help()` read), and lists
its ~450 service dirs (about 2,800 stats) once per kind of model it loads, only to check that
`s3` is among them. `build()` (run by scripts/setup and the Dockerfile after the install)
writes under DIR, beside the version of botocore it came from:
- S3's model with every `documentation` string emptied, uncompressed;
- botocore's list of the services in its own data dir, per kind of model.
`use()` gives a botocore session a loader that reads both, only when that version is the
installed one; else the session is botocore's own, as before. Every other file (endpoints, rule
sets, STS for workload identity) still comes from botocore's data dir, so which endpoint and
signer a client resolves is unchanged; paths the user set (AWS_DATA_PATH) come first and are
listed as botocore lists them.

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
LISTED_FILE = "services.json"
SERVICE = "s3"
LISTED_KINDS = ("service-2", "endpoint-rule-set-1", "paginators-1", "waiters-2")
"""The kinds of model whose services are listed at build time (what an S3 client loads)."""
_DROPPED = frozenset({"documentation", "documentationUrl"})


def build(target: Path = DIR) -> Path:
    """Write S3's service model of the installed botocore, its documentation emptied, and
    botocore's list of its own services per kind in LISTED_KINDS, under `target` (replaced
    whole, so a reader never sees half of it)."""
    loader = botocore.loaders.Loader()
    own = botocore.loaders.Loader(extra_search_paths=[loader.BUILTIN_DATA_PATH], include_default_search_paths=False)
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
        (staging / LISTED_FILE).write_text(json.dumps({k: own.list_available_services(k) for k in LISTED_KINDS}))
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
    """Give `session` (a botocore session whose data loader is not made yet) a loader that reads
    what `target` holds, when it was built from this botocore. False, and botocore's own loader,
    otherwise."""
    if not current(target):
        return False
    try:
        listed = json.loads((target / LISTED_FILE).read_text())
    except (OSError, ValueError):
        return False
    # As botocore.loaders.create_loader makes it from the data path, with `target` after the user's.
    user = session.get_config_variable("data_path")
    paths = [os.path.expanduser(os.path.expandvars(p)) for p in user.split(os.pathsep)] if user else []
    session.register_component("data_loader", _Loader(listed, [*paths, str(target)]))
    return True


class _Loader(botocore.loaders.Loader):
    """botocore's loader, the services of botocore's own data dir listed at build time (botocore
    lists them for each kind of model it loads; boto/botocore#3687 would stop that upstream)."""

    def __init__(self, listed: dict[str, list[str]], search_paths: list[str]):
        super().__init__(extra_search_paths=list(search_paths))  # then ~/.aws/models and botocore's own
        self._listed = listed
        self._others = botocore.loaders.Loader(
            extra_search_paths=[p for p in self.search_paths if p != self.BUILTIN_DATA_PATH],
            include_default_search_paths=False)

    def list_available_services(self, type_name):
        if type_name not in self._listed:
            return super().list_available_services(type_name)
        return sorted({*self._listed[type_name], *self._others.list_available_services(type_name)})


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] != "build" or len(args) > 2:
        print("usage: python -m runsync.botodata build [DIR]", file=sys.stderr)
        return 2
    print(build(Path(args[1]) if len(args) == 2 else DIR))
    return 0


if __name__ == "__main__":
    sys.exit(main())
