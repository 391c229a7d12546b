"""The code a run ran: git commit, branch, remote and a patch of uncommitted changes (as W&B's
`diff.patch`), captured at `init` and recreated by `runsync restore --code`.

Only tracked files' changes are in the patch (`git diff HEAD`): untracked files and everything
`.gitignore` names are never captured. Outside a git repository nothing is recorded.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path

from .errors import RunsyncError


@dataclasses.dataclass(frozen=True)
class CodeState:
    commit: str
    branch: str
    remote: str
    diff: str

    def info_json(self) -> bytes:
        return json.dumps({"commit": self.commit, "branch": self.branch, "remote": self.remote,
                           "dirty": bool(self.diff)}, indent=1).encode()

    @classmethod
    def from_stored(cls, info: bytes, diff: bytes) -> "CodeState":
        doc = json.loads(info)
        return cls(str(doc["commit"]), str(doc.get("branch", "")), str(doc.get("remote", "")),
                   diff.decode("utf-8", "replace"))


def _git(cwd: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if check and result.returncode != 0:
        raise RunsyncError(f"git {' '.join(args)} failed in {cwd}: {result.stderr.strip()}")
    return result.stdout


def capture(cwd: str | Path = ".") -> CodeState | None:
    """The code state of the git repository around `cwd`, or None outside one."""
    cwd = Path(cwd)
    try:
        top = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=cwd, capture_output=True, text=True,
                             timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None  # no git here
    if top.returncode != 0:
        return None
    root = Path(top.stdout.strip())
    commit = _git(root, "rev-parse", "HEAD", check=False).strip()
    if not commit:
        return None  # a repository without commits
    return CodeState(
        commit=commit,
        branch=_git(root, "rev-parse", "--abbrev-ref", "HEAD").strip(),
        remote=_git(root, "config", "--get", "remote.origin.url", check=False).strip(),
        diff=_git(root, "diff", "HEAD", "--binary"),
    )


def recreate(state: CodeState, repo: str | Path, branch: str) -> str:
    """Make `branch` at the recorded commit in `repo` and apply the recorded patch to it."""
    repo = Path(repo)
    if capture(repo) is None:
        raise RunsyncError(f"{repo} is not a git repository with commits; run this in a clone of the run's code")
    if _git(repo, "cat-file", "-t", state.commit, check=False).strip() != "commit":
        raise RunsyncError(f"commit {state.commit} is not in {repo}; fix: git fetch {state.remote or 'the remote'}")
    if _git(repo, "status", "--porcelain", "--untracked-files=no").strip():
        raise RunsyncError(f"{repo} has uncommitted changes; commit or stash them first")
    _git(repo, "checkout", "-b", branch, state.commit)
    if state.diff:
        result = subprocess.run(["git", "apply", "--whitespace=nowarn", "-"], cwd=repo, input=state.diff,
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RunsyncError(f"the recorded diff.patch does not apply on {state.commit[:12]}: {result.stderr.strip()}")
    return branch
