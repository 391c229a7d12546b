"""The API's requests that do I/O of their own, run on a worker thread so the engine's loop
never waits on them: storing the run's code state, and restoring files into the run dir."""

from __future__ import annotations

import concurrent.futures
import json
import os
from collections.abc import Callable

from . import globs, keys, restorer, runmeta, statedir, transfer


def answer(reply: concurrent.futures.Future, fn: Callable[[], dict]) -> None:
    """Run `fn` and hand its result, or its error, to the caller waiting on `reply`."""
    try:
        reply.set_result(fn())
    except Exception as err:  # noqa: BLE001 - the caller gets the message
        reply.set_exception(err)


def store_code(s3, layout: keys.Layout, state: statedir.StateDir, payload: dict) -> dict:
    """Store the run's code state (the SDK captured it; the trainer holds no credentials). The
    patch comes as bytes (embedded), as a file the SDK put in the state dir (`diff_file`, in a
    pod), or as text (the body of an SDK of before)."""
    diff = payload.get("diff") or b""
    if payload.get("diff_file"):
        diff = state.take_code_patch(str(payload["diff_file"]))
    elif isinstance(diff, str):
        diff = diff.encode()
    try:
        info = json.dumps(payload["git"], indent=1).encode()
        for name, body in (("git.json", info), ("diff.patch", diff)):
            s3.put_object(Bucket=layout.store.bucket, Key=layout.code_key(name), Body=body)
    except Exception as err:  # noqa: BLE001 - every failure becomes one StoreError
        raise transfer.describe(err, layout.store, s3) from None
    if payload.get("diff_file"):
        state.drop_code_patch(str(payload["diff_file"]))  # only once stored: a store error keeps it for a retry
    runmeta.record_code(s3, layout, payload["git"])  # run.json names the commit and the patch's key
    return {"stored": True}


def restore(s3, layout: keys.Layout, root: str, markers: tuple[globs.Glob, ...], payload: dict) -> dict:
    """One stored name (a file, or every file of a directory) of this run, or of another run of
    the namespace, into the run dir (`root`), or into the payload's `root` below it."""
    run = layout.run
    if payload.get("run_path"):
        project, _, name = str(payload["run_path"]).rpartition("/")
        run = keys.RunPath.parse(f"{run.namespace}/{project}/{name}")
    dest = os.path.join(root, keys.check_stored_name(str(payload["root"]))) if payload.get("root") else root
    report = restorer.restore(s3, layout.store, run, dest, replica=layout.replica,
                              patterns=(globs.Literal(str(payload["name"])),), markers=markers,
                              replace=bool(payload.get("replace")))
    found = report.written + report.up_to_date + report.kept_newer
    return {"run": str(run), "files": found, "paths": [os.path.join(dest, n) for n in found],
            "looked_back": restorer.describe_looked_back(report)}
