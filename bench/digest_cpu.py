"""CPU seconds per GiB of the digest read beside a multipart upload (`hashing.of_fd`), the pass a
commit's CPU on 2 cores competes with. A CPU count, so it holds steady on a loaded machine.

    .venv/bin/python bench/digest_cpu.py [--mib 512] [--passes 3]
    PYTHONPATH=<dir with a `runsync` symlink to an older tree's sidecar/> .venv/bin/python bench/digest_cpu.py

The file is written once and read once first, so the page cache serves every timed pass (as it
serves the digest thread beside the CRT's reads of the same file).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from runsync import hashing

MiB = 1024 * 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--passes", type=int, default=3)
    args = ap.parse_args()
    size = args.mib * MiB
    with tempfile.NamedTemporaryFile(prefix="digest-cpu-") as f:
        for _ in range(args.mib):
            f.write(os.urandom(MiB))
        f.flush()
        hashing.of_fd(f.fileno(), size, 16 * MiB)  # into the page cache
        runs = []
        for _ in range(args.passes):
            cpu = time.process_time()
            hashing.of_fd(f.fileno(), size, 16 * MiB)
            runs.append((time.process_time() - cpu) / (size / (1024 * MiB)))
    print(f"{hashing.__file__}: {' '.join(f'{r:.3f}' for r in runs)} CPU-s/GiB (load {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
