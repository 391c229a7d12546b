"""The code a run ran: git commit, branch, remote and a patch of uncommitted changes (as W&B's
`diff.patch`), captured at `init` and recreated by `runsync restore --code`.

Only tracked files' changes are in the patch (`git diff HEAD --binary`): untracked files and
everything `.gitignore` names are never captured. Outside a git repository (or without git, or
in a deleted working directory) nothing is recorded and nothing fails. The patch is bytes from
git to the store and back (a latin-1 data file, a binary file), never decoded. A remote URL is
recorded without its password, as W&B's `remote_url_without_password` does.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from .errors import RunsyncError

_REPO_OVERRIDE_ENV = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE")
"""Variables that point git at another repository than the one around the directory (git
exports them to hooks and aliases); dropped, as W&B's gitlib does."""

_DIFF = ("diff", "HEAD", "--binary", "--no-color", "--no-ext-diff", "--src-prefix=a/", "--dst-prefix=b/")
"""A patch `git apply` takes whatever the user's diff settings (color, external tools, prefixes)."""


@dataclasses.dataclass(frozen=True)
class CodeState:
    commit: str
    branch: str
    remote: str
    diff: bytes

    def info_json(self) -> bytes:
        return json.dumps({"commit": self.commit, "branch": self.branch, "remote": self.remote,
                           "dirty": bool(self.diff)}, indent=1).encode()

    @classmethod
    def from_stored(cls, info: bytes, diff: bytes) -> "CodeState":
        doc = json.loads(info)
        return cls(str(doc["commit"]), str(doc.get("branch", "")), str(doc.get("remote", "")), diff)


@dataclasses.dataclass(frozen=True)
class Recreated:
    branch: str
    commit: str
    files: tuple[str, ...]
    """The files the recorded patch changed (empty: the run had no uncommitted changes)."""


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REPO_OVERRIDE_ENV}
    env.update(extra)
    return env


def _run(cwd: Path, *args: str, data: bytes | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, input=data, capture_output=True, timeout=120, env=env or _env())


def _git(cwd: Path, *args: str, check: bool = True) -> str:
    result = _run(cwd, *args)
    if check and result.returncode != 0:
        raise RunsyncError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout.decode(errors="replace")


def toplevel(cwd: str | Path | None = None) -> Path | None:
    """The root of the git repository around `cwd` (default: the working directory); None
    outside one, without git, or when the directory is gone."""
    try:
        cwd = Path(cwd if cwd is not None else os.getcwd())
        top = _run(cwd, "rev-parse", "--show-toplevel")
    except (OSError, subprocess.TimeoutExpired):
        return None  # no git executable, or no such directory
    return Path(top.stdout.decode(errors="replace").strip()) if top.returncode == 0 else None


def capture(cwd: str | Path | None = None) -> CodeState | None:
    """The code state of the git repository around `cwd` (default: the working directory), or None."""
    root = toplevel(cwd)
    if root is None:
        return None
    commit = _git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).strip()
    if not commit:
        return None  # a repository without commits
    diff = _run(root, *_DIFF)
    if diff.returncode != 0:
        raise RunsyncError(f"git diff HEAD failed in {root}: {diff.stderr.decode(errors='replace').strip()}")
    return CodeState(
        commit=commit,
        branch=_git(root, "rev-parse", "--abbrev-ref", "HEAD").strip(),
        remote=without_password(_git(root, "config", "--get", "remote.origin.url", check=False).strip()),
        diff=diff.stdout,
    )


def without_password(url: str) -> str:
    """`https://user:secret@host/x` → `https://user:@host/x` (W&B's gitlib does the same)."""
    parsed = urlparse(url)
    if parsed.hostname is None or parsed.password is None:
        return url
    host = f"{parsed.hostname}:{parsed.port}" if parsed.port is not None else parsed.hostname
    return urlunparse(parsed._replace(netloc=f"{parsed.username}:@{host}"))


def recreate(state: CodeState, cwd: str | Path, branch: str) -> Recreated:
    """Make `branch` at the recorded commit in the repository around `cwd` and apply the whole
    recorded patch from the repository's root. Everything is checked first: when anything
    cannot be done (a hunk included), nothing is changed and `RunsyncError` says why."""
    root = toplevel(cwd)
    if root is None or not _git(root, "rev-parse", "--verify", "-q", "HEAD", check=False).strip():
        raise RunsyncError(f"{Path(cwd).resolve()} is not a git repository with commits; "
                           "fix: run this in a clone of the run's code")
    if _git(root, "cat-file", "-t", state.commit, check=False).strip() != "commit":
        raise RunsyncError(f"commit {state.commit} is not in {root}; fix: git fetch "
                           f"{state.remote or 'the remote that has it'}, then rerun")
    if _git(root, "status", "--porcelain", "--untracked-files=no").strip():
        raise RunsyncError(f"{root} has uncommitted changes; fix: commit or stash them, then rerun")
    if _git(root, "rev-parse", "--verify", "-q", f"refs/heads/{branch}", check=False).strip():
        raise RunsyncError(f"branch {branch} already exists in {root}; fix: git branch -D {branch} "
                           "(from another branch), then rerun")
    files = _check_patch(root, state, branch) if state.diff else ()
    _git(root, "checkout", "-q", "-b", branch, state.commit)
    if state.diff:
        applied = _run(root, "apply", "--binary", "--whitespace=nowarn", "-", data=state.diff)
        if applied.returncode != 0:  # checked above: only a filter (.gitattributes) can fail it here
            raise RunsyncError(f"branch {branch} is at {state.commit[:12]}, but the recorded diff did not apply: "
                               f"{applied.stderr.decode(errors='replace').strip()}")
    return Recreated(branch, state.commit, files)


def _check_patch(root: Path, state: CodeState, branch: str) -> tuple[str, ...]:
    """The files the patch changes, once it is known to apply whole on the recorded commit
    (checked in a scratch index: the working tree and the real index are not touched)."""
    with tempfile.TemporaryDirectory(prefix="runsync-apply-") as scratch:
        env = _env(GIT_INDEX_FILE=os.path.join(scratch, "index"))
        check = _run(root, "read-tree", state.commit, env=env)
        if check.returncode == 0:
            check = _run(root, "apply", "--cached", "--check", "--binary", "-", data=state.diff, env=env)
    if check.returncode != 0:
        saved = Path(_git(root, "rev-parse", "--absolute-git-dir").strip()) / f"{branch.replace('/', '-')}.patch"
        saved.write_bytes(state.diff)
        error = " ".join(check.stderr.decode(errors="replace").split())
        raise RunsyncError(f"the recorded diff does not apply on commit {state.commit[:12]} ({error}); nothing was "
                           f"changed; fix: apply what applies on that commit with: cd {root} && git checkout -b {branch} "
                           f"{state.commit[:12]} && git apply --reject {saved}")
    stat = _run(root, "apply", "--numstat", "-", data=state.diff)  # added, deleted, path per file
    return tuple(line.split("\t", 2)[2] for line in stat.stdout.decode(errors="replace").splitlines()
                 if line.count("\t") >= 2)
