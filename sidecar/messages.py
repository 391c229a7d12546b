"""What the engine's loop receives, besides the watcher's events (watch.py): work handed to the
upload workers and their results, the committer's answers, and requests from the API.

Work and answers travel as messages so that only the loop's thread touches the engine's state.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

from . import config, manifest

DIR = "\0dir:"
"""Key prefix of a checkpoint directory (a stored name never starts with NUL)."""
SEEN = "\0seen:"
"""Key prefix of a file seen changing without a completion event (a flush waits for it)."""


RESCAN = "\0rescan"
"""Key of a rescan of the run dir under way (rescans.py): a flush waits for what it finds."""


def dir_key(ckpt_dir: str) -> str:
    return DIR + ckpt_dir


def shown(key: str) -> str:
    """A key as people read it: a stored name, `dir/` for a checkpoint dir, a path when seen."""
    if key.startswith(DIR):
        return key[len(DIR):] + "/"
    if key == RESCAN:
        return "(rescan of the run dir)"
    return key[len(SEEN):] if key.startswith(SEEN) else key


@dataclasses.dataclass
class Task:
    """Upload one file, or one checkpoint directory (its files, markers last), as of event `gen`.

    A single file is a directory of one: the worker hashes, names and uploads both the same way.
    """

    key: str
    """The file's stored name, or `dir_key(relpath)` for a checkpoint directory."""
    relpath: str
    """The file, or the checkpoint directory, relative to the run dir."""
    policy: config.Policy
    gen: int
    ready_at: float
    """When the file was closed (or the marker written): the close-to-durable clock starts here."""
    prev: dict[str, manifest.FileEntry]
    """Entries already durable or staged under the names it may write: unchanged content is not sent."""
    cfg: config.RunConfig
    extra: tuple[config.SaveRule, ...]
    """The rules that name a directory's files, as they were when the directory became ready."""
    require_marker: bool = True
    """False for a replica's part of a directory whose marker another replica writes."""
    attempt: int = 0
    looked: tuple[int, int] | None = None
    """A file's (size, mtime_ns) when its upload was handed out (None: a directory, or gone):
    a rescan that lists it so leaves it to this upload (plan.rescan)."""

    @property
    def is_dir(self) -> bool:
        return self.key.startswith(DIR)


@dataclasses.dataclass
class Done:
    """A worker's result for a Task."""

    task: Task
    outcome: str
    """uploaded | unchanged | gone | changed | failed | incomplete | unreadable"""
    entries: list[tuple[manifest.FileEntry, str, str]] = dataclasses.field(default_factory=list)
    """(entry, relpath, how): how is uploaded, stored (already in the store) or unchanged."""
    error: str = ""


@dataclasses.dataclass
class Committed:
    """The committer's answer to a commit (or a heartbeat that found the lease lost)."""

    manifest: manifest.Manifest | None
    error: str
    names: dict[str, manifest.FileEntry]
    removed: set[str]
    tokens: list[tuple[str, int, float]]
    """(key, gen, ready_at) of the work this manifest makes durable."""


@dataclasses.dataclass
class Loaded:
    """The committer took the lease and read the latest manifest."""

    manifest: manifest.Manifest | None
    error: str


@dataclasses.dataclass
class Request:
    """From the API or a signal: `kind` is save, flush, status, prestop, code, restore or terminate."""

    kind: str
    payload: dict
    reply: concurrent.futures.Future | None = None
