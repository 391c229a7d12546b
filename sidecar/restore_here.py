"""`runsync.restore(name)` done in this process, with no sidecar and no engine: before `init`
(W&B's `wandb.restore(name, run_path=...)`), or into a `root` outside an embedded run's dir.

The store comes from `RUNSYNC_STORE` (or the embedded run's), the endpoint and keys from the
AWS variables, as for the CLI. The same steps as the sidecar's restore (services.restore).
"""

from __future__ import annotations

import os
from pathlib import Path

from . import config, contract, globs, keys, services, transfer
from .errors import InputError


def resolve(name: str, run, run_path: str | None, root: str | None) -> tuple[str, str | None, Path]:
    """Check the name and `run_path` before anything is read (as W&B's `api.run`), and say where
    the file goes: (the stored name; `PROJECT/RUN` within the run's namespace, or the whole path
    before init; the root dir). `run` is the current `sdk.Run`, None before `init` outside a pod."""
    try:
        name = keys.check_stored_name(globs.normalize(name))  # a name, not a glob
    except globs.GlobError as err:
        raise InputError(f"restore name {name!r}: {err}") from None
    if run is None:
        if run_path is None:
            raise InputError(f"run_path required when calling runsync.restore({name!r}) before runsync.init "
                             "(outside a pod): pass run_path='NAMESPACE/PROJECT/RUN'")
        if run_path.count("/") != 2:
            raise InputError(f"run_path {run_path!r}: runsync.restore before runsync.init (outside a pod) needs "
                             "the whole run path NAMESPACE/PROJECT/RUN, e.g. team-a/bert/run-7")
        keys.RunPath.parse(run_path)
        return name, run_path, Path(os.path.abspath(root if root is not None else "."))
    if run_path is not None and run_path.count("/") == 2:
        namespace = run.path.split("/")[0]
        if run_path.split("/")[0] != namespace:
            raise InputError(f"run_path {run_path!r} is in another namespace than {namespace!r}; "
                             "a run can restore only from its own namespace")
        run_path = run_path.split("/", 1)[1]
    return name, run_path, Path(os.path.abspath(root if root is not None else run.dir))


def restore(name: str, run_path: str, dest: str, replace: bool, store: keys.StoreURL | None = None,
            replica: str = contract.DEFAULT_REPLICA) -> dict:
    """Restore the stored name `name` of `run_path` (`NAMESPACE/PROJECT/RUN`) into `dest`; the
    result of services.restore (`files` is empty when the run never committed that name)."""
    if store is None:
        text = os.environ.get(contract.ENV_STORE)
        if not text:
            raise InputError(f"runsync.restore({name!r}, run_path={run_path!r}) needs a store: set "
                             f"{contract.ENV_STORE}=s3://BUCKET/PREFIX (and the AWS variables), or call runsync.init first")
        store = keys.StoreURL.parse(text)
    layout = keys.Layout(store, keys.RunPath.parse(run_path), replica)
    return services.restore(transfer.client(), layout, dest, config.RunConfig().complete_markers,
                            {"name": name, "replace": replace})
