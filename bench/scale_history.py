"""M commits on one replica, as a trainer with the SDK's embedded engine leaves them: M times,
change a file and `runsync.flush()` (each flush commits a manifest), then `runsync.finish()`.

    python bench/scale_history.py DIR RUN M      (RUNSYNC_STORE in the environment)

bench/scale.py runs it with the code under test first on PYTHONPATH, so each tree writes its own
format.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import runsync


def main() -> None:
    root, run, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    root.mkdir(parents=True, exist_ok=True)
    os.chdir(root)  # save() names files as W&B does, relative to the working dir
    runsync.init(dir=str(root), run=run, code=False)
    runsync.save("step.txt", policy="live")
    for i in range(count):
        (root / "step.txt").write_text(f"step {i}\n")
        runsync.flush()
    runsync.finish()


if __name__ == "__main__":
    main()
