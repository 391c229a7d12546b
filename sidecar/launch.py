"""The `runsync` console script: the in-pod roles start without the interactive CLI.

`runsync restore-init` gates the trainer's start, and the operator runs it (and the sidecar)
with no options. Those exact command lines go straight to runner.py; everything else
(options, --help, the interactive commands) goes to the typer app in cli.py, which loads
typer, rich and click (about 0.3 s on a busy 2-core machine: bench/startup.py). The exit codes
and the error line are cli.py's: 0; 1 when the store or a transfer failed; 2 for bad input.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if args in (["restore-init"], ["sidecar"]):
        from . import runner

        runner.exit_now(_run(runner.restore_init if args == ["restore-init"] else runner.run))
    from .cli import app

    app(args=args)


def _run(fn) -> int:
    """cli._run without rich: a runsync error becomes one line on stderr and an exit code."""
    from .errors import InputError, RunsyncError

    try:
        return fn()
    except InputError as exc:
        print(f"runsync: error: {exc}", file=sys.stderr, flush=True)
        return 2
    except RunsyncError as exc:
        print(f"runsync: error: {exc}", file=sys.stderr, flush=True)
        return 1
