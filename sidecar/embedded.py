"""The SDK's embedded mode (a laptop, CI: no sidecar): what `runsync.init` decides before the
engine runs in the process, and how a store that fails reaches the script.

- Logs are the sidecar's JSON lines (logs.py), on stderr, warnings and errors only, unless the
  script configured the `runsync` logger itself.
- The store is checked once at `init`: wrong keys or an unreachable endpoint raise there,
  naming the cause and the fix, instead of a script training for hours against nothing.
- A `flush` that is not durable yet checks the store every `CHECK_EVERY` seconds: a store
  that broke mid-run raises at once, not when the flush's timeout runs out. It waits on the one
  fence taken when it was called throughout.
- Ignore globs come from `init(ignore_globs=...)`, else `RUNSYNC_IGNORE_GLOBS` (W&B's setting and
  `WANDB_IGNORE_GLOBS`); in a pod the `runsync.dev/ignore` annotation says it, so the SDK there
  refuses them rather than silently upload what the script meant to keep out.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from . import config, contract, globs, keys, logs
from .errors import InputError, StoreError
from .logs import log

CHECK_EVERY = 5.0
"""Seconds a flush waits before it checks the store (again)."""

IgnoreGlobs = str | Sequence[str] | None
"""A list of globs, or one comma-separated string (as `RUNSYNC_IGNORE_GLOBS`)."""


def setup_logging() -> None:
    if not logs.log.handlers:
        logs.setup(sys.stderr, logging.WARNING)


def ignore_globs(given: IgnoreGlobs, env: Mapping[str, str] = os.environ) -> tuple[globs.Glob, ...]:
    """The run's ignore globs: the argument wins over the environment, as W&B's init settings do."""
    if given is None:
        value = env.get(contract.ENV_IGNORE_GLOBS, "")
        return config.parse_globs(value, contract.ENV_IGNORE_GLOBS) if value.strip() else ()
    items = [given] if isinstance(given, str) else list(given)
    return tuple(g for item in items for g in config.parse_globs(str(item), "runsync.init(ignore_globs=...)"))


def refuse_ignore_in_pod(given: IgnoreGlobs, env: Mapping[str, str] = os.environ) -> None:
    value = given if given is not None else env.get(contract.ENV_IGNORE_GLOBS)
    if value:
        shown = value if isinstance(value, str) else ",".join(map(str, value))
        where = "ignore_globs" if given is not None else contract.ENV_IGNORE_GLOBS
        raise InputError(f"{where}={shown!r}: in a pod the sidecar uploads, configured by the pod's annotations; "
                         f"fix: set the annotation {contract.IGNORE}: {shown!r} on the pod template and drop "
                         f"{where} here")


def check_store(s3, store: keys.StoreURL) -> None:
    """`StoreError` naming the cause and the fix when `store` cannot be listed; logged too."""
    from . import transfer  # boto3 only when embedded: `import runsync` in a pod stays light

    try:
        transfer.check_store(s3, store)
    except StoreError as err:
        log.error("cannot use the store", extra={"fields": {"store": str(store), "error": str(err)}})
        raise


def flush(fence: Callable[[], int], wait: Callable[[float, int], dict], s3, store: keys.StoreURL,
          timeout: float) -> dict:
    """`wait(seconds, fence)` (the engine's flush) until durable or `timeout`; in between, a store
    that cannot be used raises (`check_store`). One fence, taken now: a flush waits for what was
    written before it was called, never for what the trainer writes while it waits."""
    deadline = time.monotonic() + timeout
    n = fence()
    while True:
        left = deadline - time.monotonic()
        result = wait(max(0.1, min(left, CHECK_EVERY)), n)
        if result.get("durable") or left <= CHECK_EVERY:
            return result
        check_store(s3, store)
