"""`import runsync`: W&B's save / restore / flush for training scripts, in a pod or on a laptop.

- In a pod (the operator set `RUNSYNC_API`), every call asks the sidecar over loopback: the
  trainer holds no credentials, and a script that calls nothing still works through the
  annotations.
- Elsewhere, `runsync.init(dir=..., run=..., store=...)` runs the sidecar's engine in this
  process (a background thread, flushed at exit), against any S3 store the AWS variables name.

Paths follow W&B: globs and `base_path` are relative to the working directory, or absolute;
stored names are W&B's (`saving`). A file must be in the run dir for the sidecar to see it:
`save(..., policy="now")` of a file outside copies it in (again at each call); `live` and `end`
of a file outside raise `SaveError` (write it under `runsync.run.dir` instead), because a copy
would miss later changes.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import shutil
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from . import codestate, config, contract, embedded, globs, keys, saving
from .errors import InputError, RunsyncError, SaveError  # noqa: F401 - SaveError is the SDK's


class RestoreNotFound(RunsyncError, FileNotFoundError, ValueError):
    """The run has no committed file of that name (a ValueError too, as W&B's)."""


@dataclasses.dataclass(frozen=True)
class Run:
    dir: str
    """The run dir: files saved from here are uploaded."""
    path: str
    """`NAMESPACE/PROJECT/RUN`."""

    @property
    def id(self) -> str:
        return self.path.rsplit("/", 1)[1]

    @property
    def name(self) -> str:
        return self.id

    @property
    def project(self) -> str:
        return self.path.split("/")[1]

    def restore(self, name: str, run_path: str | None = None, replace: bool = False, root: str | None = None):
        """W&B's `run.restore`: `runsync.restore`, from this run into its dir by default."""
        return restore(name, run_path, replace, root)


class _Pod:
    """Talks to the sidecar of this pod over `RUNSYNC_API`."""

    def __init__(self, api: str, run: Run):
        self.api = api
        self.run = run

    def call(self, path: str, body: dict, timeout: float = 600) -> dict:
        req = urllib.request.Request(f"http://{self.api}{contract.API_PREFIX}{path}", data=json.dumps(body).encode(),
                                     method="POST", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            doc = json.loads(err.read() or b"{}")
            if err.code == 504:
                return doc
            raise (InputError if err.code == 400 else RunsyncError)(doc.get("error") or f"sidecar: HTTP {err.code}") from None
        except OSError as err:
            raise RunsyncError(f"cannot reach the runsync sidecar at {self.api} ({err}); is the pod injected?") from None

    def save(self, rule: dict) -> dict:
        return self.call("/save", rule, timeout=30)

    def layout(self) -> keys.Layout:
        """Where the sidecar stores this run (from its status): names are checked against it."""
        try:
            with urllib.request.urlopen(f"http://{self.api}{contract.API_PREFIX}/status", timeout=30) as resp:
                doc = json.loads(resp.read())
        except OSError as err:
            raise RunsyncError(f"cannot reach the runsync sidecar at {self.api} ({err}); is the pod injected?") from None
        return keys.Layout(keys.StoreURL.parse(doc["store"]), keys.RunPath.parse(doc["run"]), doc["replica"])

    def flush(self, timeout: float) -> dict:
        return self.call("/flush", {"timeout": timeout}, timeout=timeout + 15)

    def restore(self, name: str, run_path: str | None, replace: bool, root: str | None = None) -> dict:
        return self.call("/restore", {"name": name, "run_path": run_path, "replace": replace, "root": root})

    def code(self, state: codestate.CodeState) -> None:
        from . import statedir

        # The patch can be megabytes and any bytes: it goes through the shared run dir, not the API's body.
        try:
            name = statedir.StateDir(self.run.dir).put_code_patch(state.diff)
        except OSError as err:
            raise RunsyncError(f"cannot write the code patch under {self.run.dir}/{keys.STATE_DIR} ({err.strerror}); "
                               "fix: make the run dir writable for the trainer, or runsync.init(code=False)") from None
        self.call("/code", {"git": json.loads(state.info_json()), "diff_file": name}, timeout=60)


class _Embedded:
    """The engine in this process (no sidecar): same behaviour, same objects in the store."""

    def __init__(self, run: Run, store: keys.StoreURL, replica: str, cfg: config.RunConfig):
        from . import runner, transfer
        from .settings import Settings

        self.run = run
        self.store = store
        self.layout = keys.Layout(store, keys.RunPath.parse(run.path), replica)
        embedded.setup_logging()
        embedded.check_store(transfer.client(), store)
        self.core = runner.Embedded(run.dir, self.layout, Settings(settle=1.0),
                                    holder=f"sdk@{socket.gethostname()}:{os.getpid()}", base=cfg)
        # The final flush needs the engine's thread pools, which concurrent.futures shuts down
        # before plain atexit handlers run; threading's own exit hooks run before that (it is
        # how concurrent.futures registers itself), so the flush goes there.
        register = getattr(threading, "_register_atexit", atexit.register)
        register(self.core.stop)

    def save(self, rule: dict) -> dict:
        return self.core.ask("save", rule)

    def flush(self, timeout: float) -> dict:
        return embedded.flush(self.core.fence, self.core.flush, self.core.wired.engine.s3, self.store, timeout)

    def restore(self, name: str, run_path: str | None, replace: bool, root: str | None = None) -> dict:
        return self.core.ask("restore", {"name": name, "run_path": run_path, "replace": replace, "root": root}, 3600)

    def code(self, state: codestate.CodeState) -> None:
        self.core.ask("code", {"git": json.loads(state.info_json()), "diff": state.diff})  # bytes, in-process

    def finish(self, timeout: float = 120) -> None:
        """Wait until the store has been read (a finish right after `init` comes before it),
        then the final flush; raise unless a final manifest was committed."""
        engine = self.core.wired.engine
        deadline = time.monotonic() + timeout
        checked = False
        while not self.core.ask("status", {}, 30).get("loaded"):
            if time.monotonic() > deadline:
                self.core.stop()
                raise RunsyncError(f"runsync.finish: could not read {self.store} within {timeout:.0f} s; "
                                   "nothing was committed; check the store and the AWS variables, then rerun")
            if not checked:  # once: the committer's own load keeps retrying with backoff
                checked = True
                try:
                    embedded.check_store(engine.s3, self.store)  # a store that cannot work: say why, now
                except RunsyncError:
                    self.core.stop()
                    raise
            time.sleep(0.1)
        self.core.stop()
        if engine.books.durable is None or not engine.books.durable.final:
            raise RunsyncError(f"runsync.finish: the final manifest of {self.run.path} was not committed; "
                               "the log above names what failed")


class _Session:
    """What `init` (or the first call in a pod) set up; one per process, as `wandb.run` is."""

    backend: _Pod | _Embedded | None = None


def init(dir: str | os.PathLike | None = None, run: str | None = None, store: str | None = None,
         project: str = contract.DEFAULT_PROJECT, replica: str = contract.DEFAULT_REPLICA,
         code: bool = True, ignore_globs: embedded.IgnoreGlobs = None) -> Run:
    """Start syncing. In a pod the sidecar already runs: this only records the code state.
    Elsewhere `dir`, `run` (`NAMESPACE/PROJECT/RUN`, or a name in `local/<project>/`) and `store`
    (`s3://BUCKET/PREFIX`, or `RUNSYNC_STORE`) are required; `ignore_globs` (or
    `RUNSYNC_IGNORE_GLOBS`, comma-separated) names files never uploaded, even when saved."""
    if _Session.backend is not None:
        return _Session.backend.run
    if (pod := _pod_here()) is not None:
        embedded.refuse_ignore_in_pod(ignore_globs)
        _Session.backend, the_run = pod, pod.run
    else:
        store_url = store or os.environ.get(contract.ENV_STORE)
        if not (dir and run and store_url):
            raise InputError("runsync.init outside a pod needs dir=, run= and store= (or RUNSYNC_STORE); "
                             "e.g. runsync.init(dir='runs/7', run='me/bert/run-7', store='s3://bucket/prefix')")
        path = run if run.count("/") == 2 else f"local/{project}/{run}"
        keys.RunPath.parse(path)
        cfg = config.RunConfig(ignore=embedded.ignore_globs(ignore_globs))
        Path(dir).mkdir(parents=True, exist_ok=True)
        the_run = Run(os.path.abspath(dir), path)
        _Session.backend = _Embedded(the_run, keys.StoreURL.parse(store_url), replica, cfg)
    if code:
        state = codestate.capture()
        if state is not None:
            _Session.backend.code(state)
    return the_run


def _pod_here() -> _Pod | None:
    """This pod's sidecar, when the SDK runs in an injected pod."""
    api = os.environ.get(contract.ENV_API)
    if api and os.environ.get(contract.ENV_DIR) and os.environ.get(contract.ENV_RUN_PATH):
        return _Pod(api, Run(os.environ[contract.ENV_DIR], os.environ[contract.ENV_RUN_PATH]))
    return None


def _backend() -> _Pod | _Embedded:
    if _Session.backend is None:
        init()  # in a pod this needs nothing; elsewhere it says what is missing
    return _Session.backend


def finish() -> None:
    """Final flush and stop (embedded mode; called at exit anyway): returns once the final
    manifest is committed, `RunsyncError` if it cannot be. A no-op in a pod."""
    backend = _Session.backend
    _Session.backend = None
    if isinstance(backend, _Embedded):
        backend.finish()


def save(glob_str: str | bytes | os.PathLike, base_path: str | os.PathLike | None = None, policy: str = "live",
         glob: bool = True) -> list[str]:
    """Upload files matching `glob_str` under `policy` (live, now, end), named as W&B names them
    (see `saving`); `glob=False` takes `glob_str` literally. A glob registered before its files
    exist catches them as they appear. Files that match now go at once, even a `now` file sent
    before (W&B forces them). Returns the stored names of the files that match now."""
    backend = _backend()
    asked = saving.resolve(glob_str, base_path, policy, not glob, backend.run.dir)
    for line in asked.warnings:
        print(f"runsync: {line}", file=sys.stderr)
    try:
        if asked.rule is not None:
            return backend.save(asked.rule).get("names", [])
        return _copy_in(backend, asked.copies)
    except SaveError:
        raise
    except InputError as err:  # a name the store cannot hold, a bad glob
        raise SaveError(str(err)) from None


def _copy_in(backend: _Pod | _Embedded, copies: tuple[tuple[str, str], ...]) -> list[str]:
    """Copy files from outside into the run dir, each renamed into place, then save each: the
    sidecar sends the version just copied."""
    layout = backend.layout() if isinstance(backend, _Pod) else backend.layout
    for src, name in copies:  # every name checked before anything is copied
        try:
            layout.check_storable(name)
        except InputError as err:
            raise SaveError(f"cannot save {src}: {err}") from None
    run_dir = Path(backend.run.dir)
    for src, name in copies:
        dest = run_dir / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name[:100]}.runsync-copy")  # a long name plus a suffix passes NAME_MAX
        shutil.copy2(src, tmp)
        os.replace(tmp, dest)  # renamed into place: complete when the sidecar sees it
        backend.save({"glob": globs.escape(name), "policy": "now"})
    return sorted(name for _, name in copies)


def flush(timeout: float | None = None) -> int | None:
    """Return once everything complete so far (`live` and `now` files) is durable; the committed
    manifest's number. `TimeoutError` (naming what is pending) if not within `timeout` seconds."""
    result = _backend().flush(float(timeout or 600))
    if not result.get("durable"):
        raise TimeoutError(f"runsync.flush: not durable within {timeout} s; pending: {result.get('pending')}")
    return result.get("manifest")


def restore(name: str, run_path: str | None = None, replace: bool = False, root: str | None = None):
    """W&B's `restore`: the stored file (or directory) `name` of this run, or of `run_path`
    (`PROJECT/RUN` of this namespace, or `NAMESPACE/PROJECT/RUN`), into `root` (default: the
    run dir; before `init` outside a pod, the working directory). Returns it opened for reading,
    binary; `.name` is its local path. A file already at `root/name` is returned untouched unless
    `replace`. Before `init` (outside a pod) `run_path` is required, and the store comes from
    RUNSYNC_STORE and the AWS variables. `RestoreNotFound` if the run never committed `name`."""
    from . import restore_here

    # In a pod the sidecar is there without init; init itself (and its code state) is left to the trainer.
    backend = _Session.backend or _pod_here()
    name, run_path, base = restore_here.resolve(name, backend.run if backend else None, run_path, root)
    local = base / name
    if local.is_file() and not replace:
        return open(local, "rb")  # as W&B: an existing file is the answer, the store is not asked
    if backend is None:
        result = restore_here.restore(name, run_path, str(base), replace)
    elif base.is_relative_to(backend.run.dir):
        sub = str(base.relative_to(backend.run.dir))
        result = backend.restore(name, run_path, replace, None if sub == "." else sub)
    elif isinstance(backend, _Pod):
        raise InputError(f"root {root!r} is outside the run dir {backend.run.dir}: in a pod the sidecar restores, "
                         "and it writes only into the run dir (the trainer holds no credentials); "
                         "pass a root under runsync.run.dir")
    else:  # embedded: this process holds the credentials, so it writes anywhere
        namespace, _, own = backend.run.path.partition("/")
        result = restore_here.restore(name, f"{namespace}/{run_path or own}", str(base), replace, store=backend.store,
                                      replica=backend.layout.replica)
    if not result.get("files"):
        raise RestoreNotFound(f"{name!r} is not among the committed files of {result.get('run', run_path)}")
    for line in result.get("looked_back", ()):  # say which manifest an older version came from
        print(f"runsync: {line}", file=sys.stderr)
    if not local.is_file():  # a directory's name: its first file (the sidecar's paths may be mounted elsewhere)
        local = base / result["files"][0]
    return open(local, "rb")


def restore_code(run_path: str, repo: str | os.PathLike = ".", s3=None,
                 store: keys.StoreURL | None = None) -> codestate.Recreated:
    """`runsync restore RUN --code`: a branch at the run's commit with its diff applied (from the
    root of the repository around `repo`)."""
    from . import transfer

    store = store or keys.StoreURL.parse(os.environ.get(contract.ENV_STORE, ""))
    s3 = s3 or transfer.client()
    layout = keys.Layout(store, keys.RunPath.parse(run_path), contract.DEFAULT_REPLICA)
    try:
        info = s3.get_object(Bucket=store.bucket, Key=layout.code_key("git.json"))["Body"].read()
        diff = s3.get_object(Bucket=store.bucket, Key=layout.code_key("diff.patch"))["Body"].read()
    except Exception as err:  # noqa: BLE001
        if "NoSuchKey" in str(err) or "404" in str(err):
            raise RestoreNotFound(f"{run_path} recorded no code state (it did not run in a git repository, "
                                  "or did not call runsync.init)") from None
        raise transfer.describe(err, store, s3) from None
    state = codestate.CodeState.from_stored(info, diff)
    return codestate.recreate(state, repo, f"runsync/{layout.run.run}")


def __getattr__(name: str):
    if name == "run":
        return _backend().run
    raise AttributeError(name)
