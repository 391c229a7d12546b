"""(config, local files, what is durable) → what to upload. Pure: no I/O, no clock.

A file is named by the first `save` rule whose glob matches it (its stored name and policy);
a file that no rule names is uploaded at the end, under its own path, as W&B does. Ignore
globs win over everything. A file whose size and mtime equal its manifest entry is unchanged
and is not read again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from . import config, globs
from .manifest import FileEntry, Manifest
from .watch import LocalFile


@dataclasses.dataclass(frozen=True)
class Intent:
    """Upload `file` under `name` with `policy`."""

    file: LocalFile
    name: str
    policy: config.Policy


@dataclasses.dataclass(frozen=True)
class SyncPlan:
    uploads: tuple[Intent, ...]
    """Files new or changed (by size or mtime) since the manifest: to hash, then upload."""
    unchanged: tuple[tuple[Intent, FileEntry], ...]
    ignored: tuple[LocalFile, ...]
    collisions: tuple[tuple[Intent, Intent], ...]
    """Two files with one stored name (through `base_path`): the first wins, the second is
    reported and not uploaded."""


def name_of(rules: Iterable[config.SaveRule], relpath: str) -> tuple[str, config.Policy]:
    """The stored name and policy of a file: the first matching rule, else its path at `end`."""
    for rule in rules:
        if rule.glob.matches(relpath):
            return rule.stored_name(relpath), rule.policy
    return relpath, config.Policy.END


def for_sync(
    rules: tuple[config.SaveRule, ...],
    ignore: tuple[globs.Glob, ...],
    files: Iterable[LocalFile],
    durable: Manifest | None,
) -> SyncPlan:
    uploads: list[Intent] = []
    unchanged: list[tuple[Intent, FileEntry]] = []
    ignored: list[LocalFile] = []
    collisions: list[tuple[Intent, Intent]] = []
    claimed: dict[str, Intent] = {}
    known = durable.files if durable else {}
    for f in files:
        if globs.matches_any(ignore, f.relpath):
            ignored.append(f)
            continue
        name, policy = name_of(rules, f.relpath)
        intent = Intent(f, name, policy)
        if name in claimed:
            collisions.append((claimed[name], intent))
            continue
        claimed[name] = intent
        entry = known.get(name)
        if entry is not None and (entry.size, entry.mtime_ns) == (f.size, f.mtime_ns):
            unchanged.append((intent, entry))
        else:
            uploads.append(intent)
    return SyncPlan(tuple(uploads), tuple(unchanged), tuple(ignored), tuple(collisions))
