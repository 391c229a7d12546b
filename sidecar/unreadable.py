"""What the sidecar may not read: a trainer writing with umask 077 under another UID.

Each such file or dir is skipped, logged by name once and counted (`runsync_unreadable_total`);
it is never retried with backoff nor waited for by a flush or the final flush (README, "Users and
permissions"). A later event or rescan looks again, so a file made readable is uploaded then.
Thread-safe: the watcher thread and the upload workers report here.
"""

from __future__ import annotations

import errno
import os
import threading

from .logs import log
from .metrics import Metrics

FIX = {
    errno.EACCES: "the trainer writes it readable only by its own user (umask 077?) and the sidecar runs "
                  "as another; fix: umask 022 or 002 in the trainer, or run the trainer and runsync as one "
                  "user (runAsUser on every app container)",
    errno.ENOSPC: "the node is out of inotify watches; fix: raise fs.inotify.max_user_watches",
    errno.ENAMETOOLONG: "the path is longer than the kernel allows; fix: shorten the trainer's dir names",
}


class Unreadable:
    def __init__(self, root: str, metrics: Metrics):
        self._root = root
        self._metrics = metrics
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def report(self, path: str, is_dir: bool, error: OSError | str) -> None:
        """`path` (absolute, or relative to the run dir) could not be read: say so the first time."""
        relpath = os.path.relpath(os.path.join(self._root, path), self._root).replace(os.sep, "/")
        with self._lock:
            if relpath in self._seen:
                return
            self._seen.add(relpath)
        self._metrics.unreadable.labels("dir" if is_dir else "file").inc()
        number = error.errno if isinstance(error, OSError) else errno.EACCES
        fields = {"path": relpath, "kind": "dir" if is_dir else "file",
                  "error": error.strerror if isinstance(error, OSError) else str(error),
                  "fix": FIX.get(number, FIX[errno.EACCES] if number == errno.EPERM else "")}
        try:
            st = os.lstat(os.path.join(self._root, relpath))
            fields.update(mode=oct(st.st_mode & 0o7777), owner=f"{st.st_uid}:{st.st_gid}")
        except OSError:
            pass
        log.warning("cannot read; skipped", extra={"fields": fields})

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._seen)
