"""runsync's own files in the run dir (`.runsync/`, never uploaded): what survives a sidecar
restart and what restore-init tells the sidecar.

    rules.json      save rules added through the API (`runsync.save`), one YAML list
    durable.sqlite  the entries of the replica's latest commit (durable.py), kept while the store agrees;
                    restore-init leaves the commit it restored, so the pod's sidecar starts from it
    restore.json    restore-init's report (bytes, seconds, files), turned into metrics
    checked.json    restore-init's word on which files of that commit it restored or found the same
                    here; the sidecar's first listing takes it (once) instead of looking at them
    fence-N         the watcher's fences (watch.py)
    code/diff-*.patch  a code-state patch the SDK hands to the sidecar (`/v1/code`), removed once stored
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import secrets
from pathlib import Path

from . import config, keys
from .errors import ConfigError, InputError
from .logs import log

RULES = "rules.json"
RESTORE = "restore.json"
CHECKED = "checked.json"
CODE = "code"
_CODE_PATCH = re.compile(r"diff-[0-9a-f]{16}\.patch")


class StateDir:
    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / keys.STATE_DIR
        self.path.mkdir(parents=True, exist_ok=True)

    def load_rules(self) -> tuple[config.SaveRule, ...]:
        path = self.path / RULES
        try:
            return config.parse_save(path.read_text(), "save") if path.exists() else ()
        except (OSError, ConfigError) as err:
            log.warning("ignoring saved API rules", extra={"fields": {"path": str(path), "error": str(err)}})
            return ()

    def store_rules(self, docs: list[dict]) -> None:
        text = "".join(f"- {json.dumps(d)}\n" for d in docs)
        _write_atomic(self.path / RULES, text.encode())

    def write_restore_report(self, nbytes: int, seconds: float, files: int) -> None:
        _write_atomic(self.path / RESTORE, json.dumps({"bytes": nbytes, "seconds": seconds, "files": files}).encode())

    def read_restore_report(self) -> tuple[float, float] | None:
        """(bytes, seconds) of restore-init in this pod; None when none ran."""
        try:
            doc = json.loads((self.path / RESTORE).read_text())
            return float(doc["bytes"]), float(doc["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def write_checked(self, word: "Checked") -> None:
        _write_atomic(self.path / CHECKED, json.dumps(dataclasses.asdict(word)).encode())

    def drop_checked(self) -> None:
        (self.path / CHECKED).unlink(missing_ok=True)

    def take_checked(self) -> "Checked | None":
        """restore-init's word, removed as it is read: it holds only until the pod's other
        containers start, so a sidecar that restarts later (after the trainer ran) must not
        find it. None when there is none, or it is unreadable (then every file is looked at)."""
        path = self.path / CHECKED
        try:
            text = path.read_text()
            path.unlink()
            doc = json.loads(text)
            return Checked(int(doc["seq"]), int(doc["epoch"]), tuple(doc["except_names"]), tuple(doc["except_dirs"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:  # not taken: a restart would find it again
            log.warning("restore-init's word on the files it checked cannot be read or removed; every file is "
                        "looked at", extra={"fields": {"path": str(path), "error": str(err)}})
            with contextlib.suppress(OSError):
                path.unlink()
            return None

    def put_code_patch(self, data: bytes) -> str:
        """The SDK's side: `data` in a new file of the state dir; its name for `/v1/code`."""
        folder = self.path / CODE
        folder.mkdir(exist_ok=True)
        name = f"diff-{secrets.token_hex(8)}.patch"  # one per call: ranks of one pod never collide
        _write_atomic(folder / name, data)
        return name

    def take_code_patch(self, name: str) -> bytes:
        """The sidecar's side: the patch the SDK put there (removed by `drop_code_patch` once
        stored). Only such a file: the API cannot be made to read anything else of the pod."""
        if not _CODE_PATCH.fullmatch(name):
            raise InputError(f"diff_file {name!r} is not a patch the SDK wrote (diff-<16 hex>.patch)")
        path = self.path / CODE / name
        try:
            data = path.read_bytes()
        except OSError as err:
            raise InputError(f"cannot read the code patch {path} ({err.strerror}); fix: the trainer and the "
                             "sidecar must share the run dir and be able to read each other's files") from None
        return data

    def drop_code_patch(self, name: str) -> None:
        if _CODE_PATCH.fullmatch(name):
            (self.path / CODE / name).unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class Checked:
    """restore-init's word: every file of commit `seq` (the one it left in durable.sqlite) is
    here with the commit's size and mtime, but `except_names` and those under `except_dirs`."""

    seq: int
    epoch: int
    except_names: tuple[str, ...] = ()
    """Kept because newer here (restore-init does not overwrite them)."""
    except_dirs: tuple[str, ...] = ()
    """Checkpoint dirs not restored (incomplete in the commit)."""


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
