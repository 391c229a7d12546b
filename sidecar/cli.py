"""`runsync`: the command line. A thin layer: parse options, call one module, print the result.

Exit codes: 0 on success; 1 when the store or a transfer failed; 2 for bad input (options,
annotations-style specs, URLs, run paths). A failure prints one line on stderr that names the
thing, the value and the fix.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

# Each command imports what only it needs (catalog, sync, rich's tables and bars): a command's
# start-up pays for its own modules, not every command's (issue 18, "CLI start-up").
from . import config, contract, keys, logs, manifest, transfer
from . import retention  # gc's defaults
from .errors import InputError, RunsyncError

app = typer.Typer(
    help="Save and restore training-run files in S3 (W&B-style), for pods and laptops alike.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
# Off a terminal (pipes, CI logs) tables get room instead of wrapping at 80 columns.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _print_json(doc) -> None:
    """`--json` output: rich's colours at a terminal; off one, plain text (rich renders and
    highlights every token: 3.7 s of `runsync runs --json` over 1,000 runs, bench/README.md)."""
    if out.is_terminal:
        out.print_json(data=doc)
    else:
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


class _State:
    store: str = ""


@app.callback()
def main(
    store: Annotated[str, typer.Option(
        "--store", envvar=contract.ENV_STORE, show_envvar=True,
        help="s3://BUCKET/PREFIX of the store. Endpoint and keys come from the AWS_* variables.",
    )] = "",
    log_level: Annotated[str, typer.Option(help="Level of the JSON-lines log on stderr.")] = "warning",
    sse: Annotated[Optional[str], typer.Option(envvar=contract.ENV_SSE, show_envvar=True, help="Server-side "
                   "encryption of what is written: AES256 or aws:kms.")] = None,
    sse_kms_key_id: Annotated[Optional[str], typer.Option(envvar=contract.ENV_SSE_KMS_KEY_ID, show_envvar=True,
                              help="The KMS key of aws:kms (id, ARN or alias).")] = None,
) -> None:
    _State.store = store
    # Every S3 client of this process reads these (encryption.py): the flags become the variables.
    os.environ.update({k: v for k, v in ((contract.ENV_SSE, sse), (contract.ENV_SSE_KMS_KEY_ID, sse_kms_key_id)) if v})
    logs.setup(sys.stderr, log_level.upper())


@app.command("sync")
def sync_cmd(
    run_dir: Annotated[Path, typer.Argument(help="The local run dir to upload.")],
    run: Annotated[str, typer.Option("--run", help="NAMESPACE/PROJECT/RUN to store it as.")],
    replica: Annotated[str, typer.Option(help="Replica name within the run.")] = contract.DEFAULT_REPLICA,
    save: Annotated[Optional[str], typer.Option(
        help="What to upload and how, as the runsync.dev/save annotation: GLOB[:POLICY],...")] = None,
    ignore: Annotated[Optional[str], typer.Option(
        help="Comma-separated globs never uploaded (runsync.dev/ignore).")] = None,
    clean: Annotated[bool, typer.Option(
        "--clean", help="Then delete the local files that are durable in the store.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Upload a local run dir once: changed files only, then commit a manifest."""
    from . import sync as syncing

    def go():
        store, run_path = _store(), keys.RunPath.parse(run)
        rules = config.parse_save(save, "--save") if save else ()
        ignores = config.parse_globs(ignore, "--ignore") if ignore else ()
        with _progress("uploading") as hooks:
            return syncing.sync(run_dir, store, run_path, keys.check_replica(replica), rules, ignores,
                                clean=clean, hooks=hooks)
    report = _run(go)
    if as_json:
        _print_json({
            "uploaded": [e.name for e in report.uploaded], "uploaded_bytes": report.uploaded_bytes,
            "unchanged": report.unchanged, "ignored": report.ignored,
            "skipped": [{"path": p, "why": w} for p, w in report.skipped],
            "failed": [{"path": p, "error": e} for p, e in report.failed],
            "manifest": report.committed.seq if report.committed else None,
            "cleaned": report.cleaned,
        })
    else:
        m = report.committed
        note = ": nothing changed" if not report.uploaded else ""
        out.print(f"uploaded {_files(len(report.uploaded))} ({_size(report.uploaded_bytes)}){note}; "
                  f"{report.unchanged} unchanged, {report.ignored} ignored")
        for path, why in report.skipped:
            out.print(f"skipped {path}: {why}")
        if m is not None:
            out.print(f"manifest {m.seq} of {run} replica {replica}: {_files(len(m.files))}, {_size(m.size)}")
        if clean:
            out.print(f"cleaned {_files(len(report.cleaned))}")
    for path, error in report.failed:
        err.print(f"runsync: error: {path}: {error}", markup=False, highlight=False)
    from . import runner

    runner.exit_now(1 if report.failed else 0)  # committed and reported: no teardown to wait for


@app.command("ls")
def ls_cmd(
    run: Annotated[str, typer.Argument(help="NAMESPACE/PROJECT/RUN")],
    as_json: JsonOpt = False,
) -> None:
    """The files of the run's latest committed manifest (every replica): name, size, time, checksum."""
    from . import catalog

    def go():
        store, run_path = _store(), keys.RunPath.parse(run)
        s3 = transfer.client()
        transfer.check_store(s3, store)
        return _store_call(lambda: (catalog.metadata(s3, store, run_path), catalog.listings(s3, store, run_path)),
                           store, s3), store, s3
    (meta, found), store, s3 = _run(go)
    # Streamed: each replica's entries in name order, one chunk of the listing in memory at a
    # time, so a run of 1,000,000 files lists in the memory of a small one (listing.py).
    rows = ((replica, listed.seq, e) for replica, listed in found for e in listed.entries())
    if as_json:
        _run(lambda: _store_call(lambda: _ls_json(rows), store, s3))
        return
    for line in _metadata_header(run, meta) if meta or found else ():  # first, even before any file
        out.print(line, markup=False, highlight=False)
    if not found:
        err.print(f"runsync: {run} has no committed files in {_State.store}", markup=False, highlight=False)
        return
    width = max(len("replica"), *(len(r) for r, _ in found))
    _run(lambda: _store_call(lambda: _ls_table(rows, width), store, s3))


LS_BATCH = 1000
"""`runsync ls` rows formatted and written at a time: the name column is as wide as the widest
name so far (the whole listing is never held to measure it)."""


def _ls_json(rows) -> None:
    """One JSON array, written an entry at a time."""
    write = out.file.write
    write("[")
    for i, (r, seq, e) in enumerate(rows):
        write(("\n" if i == 0 else ",\n") + json.dumps({
            "replica": r, "manifest": seq, "name": e.name, "size": e.size, "mtime": e.mtime_ns / 1e9,
            "sha256": e.sha256, "crc64nvme": manifest.whole_crc64nvme(e), "policy": e.policy, "key": e.key},
            ensure_ascii=False))
    write("\n]\n")
    out.file.flush()


def _checksum(e) -> str:
    """The table's checksum column: what identifies the entry's content (docs/format-2.md)."""
    return f"crc64nvme:{manifest.whole_crc64nvme(e)}" if e.part_size else f"sha256:{e.sha256[:16]}"


def _ls_table(rows, replica_width: int) -> None:
    name_width = len("name")
    batch: list = []

    def flush(header: bool = False) -> None:
        nonlocal name_width
        name_width = max(name_width, *(len(e.name) for _, _, e in batch), 0) if batch else name_width
        lines = [f"{'replica':<{replica_width}}  {'name':<{name_width}}  {'size':>10}  {'modified (UTC)':<19}  checksum"] \
            if header else []
        lines += [f"{r:<{replica_width}}  {e.name:<{name_width}}  {_size(e.size):>10}  {_time(e.mtime_ns / 1e9)}  "
                  f"{_checksum(e)}" for r, _, e in batch]
        out.file.write("".join(line.rstrip() + "\n" for line in lines))
        batch.clear()

    first = True
    for row in rows:
        batch.append(row)
        if len(batch) == LS_BATCH:
            flush(first)
            first = False
    flush(first)
    out.file.flush()


@app.command("runs")
def runs_cmd(
    scope: Annotated[Optional[str], typer.Argument(help="NAMESPACE or NAMESPACE/PROJECT")] = None,
    as_json: JsonOpt = False,
) -> None:
    """The runs in the store, with last update, size and state."""
    from rich.table import Table

    from . import catalog

    def go():
        store = _store()
        namespace, _, project = (scope or "").partition("/")
        if scope is not None:
            keys.RunPath.parse(f"{namespace}/{project or 'x'}/x")  # validates both parts
        s3 = transfer.client()
        transfer.check_store(s3, store)
        return _store_call(lambda: catalog.runs(s3, store, namespace or None, project or None), store, s3)
    found = _run(go)
    if as_json:
        _print_json([{
            "run": str(r.path), "replicas": r.replicas, "files": r.files, "size": r.size,
            "started": r.started, "updated": r.updated, "ended": r.ended, "state": r.state} for r in found])
        return
    table = Table("run", "replicas", "files", "size", "started (UTC)", "updated (UTC)", "ended (UTC)", "state",
                  box=None)
    for r in found:
        table.add_row(str(r.path), str(r.replicas), str(r.files), _size(r.size),
                      *(_time(t) if t else "-" for t in (r.started, r.updated, r.ended)), r.state)
    out.print(table)


@app.command("sidecar")
def sidecar_cmd(
    pre_stop: Annotated[bool, typer.Option(
        "--pre-stop", help="Be the preStop hook: tell the running sidecar to start its final flush.")] = False,
    settle_seconds: Annotated[Optional[float], typer.Option(
        help="A file found by a rescan (not an event) counts as complete after this long unchanged "
             "(default 5).")] = None,
    rescan_seconds: Annotated[Optional[float], typer.Option(
        help="Seconds between safety-net rescans (default 300).")] = None,
) -> None:
    """Watch the run dir and upload under the pod's policies (configured by RUNSYNC_* variables)."""
    from . import runner  # the in-pod roles load their machinery only when used
    from .settings import Settings

    if pre_stop:
        out.print(_run(runner.pre_stop))
        return
    given = {"settle": settle_seconds, "rescan": rescan_seconds}
    settings = Settings(**{k: v for k, v in given.items() if v is not None})  # else the defaults
    runner.exit_now(_run(lambda: runner.run(settings)))  # committed and logged: no teardown


@app.command("restore-init")
def restore_init_cmd() -> None:
    """Restore the run's files into the run dir before the trainer starts (configured by RUNSYNC_*)."""
    from . import runner

    runner.exit_now(_run(runner.restore_init))  # every file placed: the trainer waits on no teardown


@app.command("restore")
def restore_cmd(
    run: Annotated[str, typer.Argument(help="NAMESPACE/PROJECT/RUN")],
    patterns: Annotated[Optional[list[str]], typer.Argument(help="Only files matching these globs.")] = None,
    to: Annotated[Path, typer.Option("--to", help="Directory to restore into.")] = Path("."),
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite files that are newer locally.")] = False,
    replica: Annotated[str, typer.Option(help="Replica to restore.")] = contract.DEFAULT_REPLICA,
    all_replicas: Annotated[bool, typer.Option("--all-replicas", help="Merge every replica's files.")] = False,
    code: Annotated[bool, typer.Option("--code", help="Recreate the run's code state here instead: a branch at "
                                       "its git commit with its uncommitted diff applied.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Download a run's latest committed files, each verified against its checksum."""
    from . import restorer

    if code:
        from . import sdk

        made = _run(lambda: sdk.restore_code(keys.RunPath.parse(run).__str__(), ".", store=_store()))
        applied = (f"with the recorded diff applied to {_files(len(made.files))}" if made.files
                   else "the run recorded no uncommitted changes")
        out.print(f"created branch {made.branch} at {made.commit[:12]}, {applied}", markup=False, highlight=False)
        return

    def go():
        store, run_path = _store(), keys.RunPath.parse(run)
        globs_ = tuple(config.parse_globs(p, "GLOB")[0] for p in patterns or ())
        from . import crtclient  # here: the other commands start without it

        s3 = crtclient.for_restore(transfer.Settings())  # as restore-init asks: no botocore client to build
        transfer.check_store(s3, store)
        with _progress("downloading") as hooks:
            return _store_call(lambda: restorer.restore(
                s3, store, run_path, to, replica=keys.check_replica(replica), all_replicas=all_replicas,
                patterns=globs_, replace=replace, must_match=True, hooks=hooks,
                keep_names=as_json), store, s3)
    report = _run(go)
    if as_json:
        _print_json({
            "written": report.written, "bytes": report.bytes, "up_to_date": report.up_to_date,
            "kept_newer": report.kept_newer, "incomplete": list(report.incomplete), "manifests": report.manifests,
            "looked_back": report.looked_back})
    elif report.empty:
        err.print(f"runsync: {run} has no committed files in {_State.store}", markup=False, highlight=False)
        raise typer.Exit(1)
    else:
        out.print(f"restored {_files(report.files)} ({_size(report.bytes)}) into {to}; "
                  f"{report.files_up_to_date} up to date, {len(report.kept_newer)} newer locally (kept)")
        for line in restorer.describe_looked_back(report):
            out.print(line, markup=False, highlight=False)
        for d in report.incomplete:
            out.print(f"skipped incomplete checkpoint {d}/ (no marker yet, or a replica's part missing)")
    from . import runner

    runner.exit_now(0)  # every file placed and reported: as restore-init, no teardown to wait for


@app.command("gc")
def gc_cmd(
    scope: Annotated[str, typer.Argument(help="NAMESPACE/PROJECT/RUN, NAMESPACE/PROJECT or NAMESPACE")],
    keep: Annotated[int, typer.Option(help="Manifests kept per replica, newest first.")] = retention.DEFAULT_KEEP,
    min_age: Annotated[str, typer.Option(help="Nothing younger goes (90s, 15m, 1h, 2d).")] = retention.DEFAULT_MIN_AGE,
    expire_days: Annotated[Optional[float], typer.Option(
        help="Delete whole runs idle (no write, no live writer) for this many days.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would go.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete old manifests and the objects only they name; restore of what is kept still works."""
    from . import gc

    def go():
        store = _store()
        policy = retention.Policy(keep, retention.parse_duration(min_age),
                                  expire_days * 86400 if expire_days is not None else None)
        s3 = transfer.client()
        transfer.check_store(s3, store)
        return _store_call(lambda: gc.gc(s3, store, scope, policy, dry_run), store, s3)
    report = _run(go)
    verb = "would free" if dry_run else "freed"
    if as_json:
        _print_json({
            "dry_run": dry_run, "bytes": report.bytes, "problems": report.problems,
            "runs": [{"run": str(r.run), "expired": r.expired, "kept_manifests": r.decision.kept_manifests,
                      "kept_objects": r.decision.kept_objects, "kept_bytes": r.decision.kept_bytes}
                     for r in report.runs],
            "deleted": [{"run": str(run), "key": d.key, "size": d.size, "why": d.why, "kind": d.kind}
                        for run, d in report.drops]})
    else:
        from rich.table import Table

        table = Table("run", "key", "size", "why", box=None, title="would go" if dry_run else "deleted")
        for run, d in report.drops:
            table.add_row(str(run), d.key[len(keys.Layout(_store(), run, "0").run_prefix):], _size(d.size), d.why)
        if report.drops:
            out.print(table)
        n, runs = len(report.drops), len(report.runs)
        out.print(f"{verb} {_size(report.bytes)}: {n} object{'s' * (n != 1)} of {runs} run{'s' * (runs != 1)}")
    for problem in report.problems:
        err.print(f"runsync: error: {problem}", markup=False, highlight=False)
    if report.problems:
        raise typer.Exit(1)


@app.command("operator", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def operator_cmd(ctx: typer.Context) -> None:
    """Run the operator: `kopf run` of runsync's handlers (admission webhook, Store CRD), JSON logs.
    Extra arguments go to kopf run (e.g. --liveness http://0.0.0.0:8081/healthz)."""
    import kopf.cli

    args = ["run", "--standalone", "--all-namespaces", "--log-format", "json",
            "-m", "runsync_operator.handlers", *ctx.args]
    raise typer.Exit(kopf.cli.main.main(args=args, prog_name="runsync operator", standalone_mode=False) or 0)


# ----------------------------------------------------------------------------- helpers

def _store() -> keys.StoreURL:
    return keys.StoreURL.parse(_State.store)


def _store_call(fn, store, s3):
    try:
        return fn()
    except RunsyncError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore failures become one clear line
        raise transfer.describe(exc, store, s3) from None


def _run(fn):
    """Run a verb; a runsync error becomes one line on stderr and an exit code."""
    try:
        return fn()
    except InputError as exc:
        err.print(f"runsync: error: {exc}", markup=False, highlight=False)
        raise typer.Exit(2)
    except RunsyncError as exc:
        err.print(f"runsync: error: {exc}", markup=False, highlight=False)
        raise typer.Exit(1)


class _progress:
    """Rich progress bars on a terminal; nothing otherwise."""

    def __init__(self, what: str):
        self.what = what
        self.bar = None

    def __enter__(self) -> transfer.Hooks:
        if not err.is_terminal:
            return transfer.Hooks()
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn, TimeRemainingColumn

        self.bar = Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                            TransferSpeedColumn(), TimeRemainingColumn(), console=err, transient=True)
        self.bar.start()
        task = self.bar.add_task(self.what, total=None)
        bar = self.bar
        return transfer.Hooks(
            on_plan=lambda files, nbytes: bar.update(task, total=nbytes, description=f"{self.what} {files} files"),
            on_bytes=lambda n: bar.advance(task, n),
        )

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def _metadata_header(run: str, meta: dict | None) -> list[str]:
    """`runsync ls`'s first lines: the run's status, times, replicas and code state (run.json)."""
    if not meta or not meta.get("replicas"):
        return [f"run {run}: no run.json entries (a run written before run metadata); files below"]
    when = lambda t: _time(t) if t else "-"  # noqa: E731
    lines = [f"run {run}: {meta.get('status')}  started {when(meta.get('created'))}  "
             f"updated {when(meta.get('updated'))}  ended {when(meta.get('ended'))}"]
    for name, r in sorted(meta["replicas"].items()):
        lines.append(f"replica {name}: {r.get('status')}  pod {r.get('pod') or '-'}  node {r.get('node') or '-'}  "
                     f"manifest {r.get('seq') or '-'}  started {when(r.get('started'))}  ended {when(r.get('ended'))}")
    code = meta.get("code") or {}
    if code.get("commit"):
        lines.append(f"code: {code['commit'][:12]}{' (dirty)' if code.get('dirty') else ''}  "
                     f"patch {code.get('patch')}")
    return lines


def _files(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _time(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    app()
