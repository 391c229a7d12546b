"""What a `runsync.save(...)` call names, as W&B's `Run.save` names it (wandb/sdk/wandb_run.py
`save` and `_save`, wandb/sdk/lib/filesystem.py `validate_glob_path`). Decided here, once, for
the SDK in a pod and on a laptop alike.

- Outside the run dir a file is named as W&B names it: below `base_path`; without one, below
  the working directory for a relative glob (`results/eval/*` stores `results/eval/acc.json`),
  or keeping one directory level for an absolute one (`/data/run123/*.txt` stores
  `run123/a.txt`). A glob that climbs above its base path is refused with W&B's words.
- Inside the run dir a file keeps its path relative to the run dir (or to `base_path`, inside
  it): the sidecar sees the run dir itself, and W&B's own watcher names its run dir's files so.
  The call becomes a save rule, which also catches files that appear later.
- `glob=False` takes the path literally (`weights[1].pt`); `glob_str` may be bytes (UTF-8).
"""

from __future__ import annotations

import dataclasses
import glob as globmod
import os
from pathlib import PurePath, PurePosixPath

from . import globs, keys
from .errors import SaveError

POLICIES = ("live", "now", "end")
CLOUD_URLS = ("gs://", "s3://")


@dataclasses.dataclass(frozen=True)
class Saving:
    """What one `save()` call asks for."""

    rule: dict | None = None
    """Inside the run dir: the save rule for the sidecar, `{glob, policy, base_path?}`."""
    copies: tuple[tuple[str, str], ...] = ()
    """Outside the run dir: (source file, stored name), copied into the run dir once."""
    warnings: tuple[str, ...] = ()
    """Said on stderr, as W&B says them."""


def resolve(glob_str: str | bytes | os.PathLike, base_path: str | os.PathLike | None, policy: str,
            literal: bool, run_dir: str) -> Saving:
    if isinstance(glob_str, bytes):
        glob_str = glob_str.decode("utf-8")  # W&B keeps accepting bytes
    glob_str = os.fspath(glob_str)
    if glob_str.startswith(CLOUD_URLS):
        return Saving(warnings=(f"{glob_str} is a cloud storage url, can't save it: runsync.save saves local "
                                "files; download it into the run dir first",))
    if policy not in POLICIES:
        raise SaveError(f"save policy {policy!r} is not supported; expected live, now or end")
    root = PurePath(os.path.abspath(run_dir))
    pattern = PurePath(os.path.abspath(glob_str))  # also folds `..` away, as W&B does
    inside = pattern.is_relative_to(root)
    if base_path is not None:
        base = PurePath(os.path.abspath(base_path))
    elif inside:
        base = root
    elif not PurePath(glob_str).is_absolute():
        base = PurePath(os.path.abspath("."))
    else:
        base = pattern.parent.parent  # W&B: an absolute glob keeps one directory level
    _validate(glob_str, pattern, base)
    if inside:
        return _rule(glob_str, pattern, base, root, policy, literal)
    if policy != "now":
        raise SaveError(f"{glob_str!r} is outside the run dir {root}, where the sidecar cannot see it; "
                        f"policy {policy!r} would miss its later changes. Write the file under runsync.run.dir, "
                        "or save it with policy='now' (copied in once)")
    return _copies(glob_str, pattern, base, literal)


def _rule(glob_str: str, pattern: PurePath, base: PurePath, root: PurePath, policy: str, literal: bool) -> Saving:
    if not base.is_relative_to(root):
        raise SaveError(f"base_path {str(base)!r} is outside the run dir {root}; pass one inside it, or none")
    relative = PurePosixPath(*pattern.parts[len(root.parts):]).as_posix()
    rule = {"glob": globs.escape(relative) if literal else relative, "policy": policy}
    if base != root:
        rule["base_path"] = PurePosixPath(*base.parts[len(root.parts):]).as_posix()
    warnings = ()
    exists = os.path.lexists(pattern)
    if literal and not exists and globmod.has_magic(glob_str):
        warnings = (_MEANT_GLOB.format(path=str(pattern)),)
    elif not literal and exists and not globs.Glob(relative).matches(relative):
        warnings = (_MEANT_LITERAL.format(glob=relative),)
    return Saving(rule=rule, warnings=warnings)


def _copies(glob_str: str, pattern: PurePath, base: PurePath, literal: bool) -> Saving:
    if literal:
        sources = [str(pattern)] if os.path.isfile(pattern) else []
    else:
        sources = [p for p in sorted(globmod.glob(str(pattern), recursive=True)) if os.path.isfile(p)]
    warnings = ()
    if literal and not sources and globmod.has_magic(glob_str):
        warnings = (_MEANT_GLOB.format(path=str(pattern)),)
    elif not literal and not sources and os.path.lexists(pattern):
        warnings = (_MEANT_LITERAL.format(glob=glob_str),)
    # W&B's rule: the path below base_path's number of parts (a base_path may hold a `*`).
    copies = tuple((src, keys.check_stored_name(PurePosixPath(*PurePath(src).parts[len(base.parts):]).as_posix()))
                   for src in sources)
    return Saving(copies=copies, warnings=warnings)


_MEANT_GLOB = ("no file found at the literal path {path!r}, and it contains glob metacharacters "
               "('*', '?' or '[]'); to use it as a glob pattern, call save() with glob=True (the default)")
_MEANT_LITERAL = ("no files match the glob pattern {glob!r}, but a file exists at that literal path; to save it, "
                  "call save() with glob=False (or escape it with glob.escape())")


def _validate(glob_str: str, pattern: PurePath, base: PurePath) -> None:
    """W&B's `validate_glob_path`, with its words (scripts match on them) and the fix."""
    if pattern.parts[:len(base.parts)] != base.parts:
        raise SaveError(f"save({glob_str!r}): Glob may not walk above the base path {str(base)!r}; "
                        "fix: pass a base_path that contains the files")
    if pattern == base:
        raise SaveError(f"save({glob_str!r}): Glob cannot be the same as the base path; "
                        "fix: name the files below it (e.g. 'dir/*')")
    if pattern.parts[len(base.parts)] == "*":
        raise SaveError(f"save({glob_str!r}): Glob may not start with '*' relative to the base path "
                        f"{str(base)!r}; fix: pass a base_path below the '*', or name that directory")
