"""The kernel's CPU for writing 1 GiB to a new file, by write size and pattern (bench/README.md,
"Write sizes"). Every case runs REPS times (default 3), interleaved, each right after
`tools.warm_pages`; prints (wall s, sys s) per run.

    .venv/bin/python bench/write_sizes.py DIR ["seq 1M,seq 2M,ranged16 1M sparse,..."]
"""
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tools  # noqa: E402

D = Path(sys.argv[1])
D.mkdir(exist_ok=True)
GiB = 1 << 30; MiB = 1 << 20
buf = os.urandom(8 * MiB)


def _fill(fd, start: int, end: int, step: int) -> None:
    while start < end:
        start += os.pwrite(fd, memoryview(buf)[:step], start)


def seq(fd, step: int, pre: bool) -> None:
    """One writer, in order."""
    if pre:
        os.posix_fallocate(fd, 0, GiB)
    _fill(fd, 0, GiB, step)


def ranged16(fd, step: int, pre: bool) -> None:
    """16 MiB ranges handed to 16 workers in order, as fetch.py does."""
    if pre:
        os.posix_fallocate(fd, 0, GiB)
    else:
        os.ftruncate(fd, GiB)
    ranges = iter(range(0, GiB, 16 * MiB))
    lock = threading.Lock()

    def work():
        while True:
            with lock:
                r = next(ranges, None)
            if r is None:
                return
            _fill(fd, r, r + 16 * MiB, step)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


SIZES = {"32K": 32 << 10, "64K": 64 << 10, "256K": 256 << 10, "1M": MiB, "2M": 2 * MiB, "4M": 4 * MiB, "8M": 8 * MiB}
cases = {f"seq {k}": (lambda fd, n=n: seq(fd, n, False)) for k, n in SIZES.items()}
cases["seq 1M falloc"] = lambda fd: seq(fd, MiB, True)
for k, n in SIZES.items():
    cases[f"ranged16 {k} sparse"] = lambda fd, n=n: ranged16(fd, n, False)
    cases[f"ranged16 {k} falloc"] = lambda fd, n=n: ranged16(fd, n, True)
only = sys.argv[2].split(",") if len(sys.argv) > 2 else list(cases)
res = {k: [] for k in only}
for rep in range(int(os.environ.get("REPS", "3"))):
    for name in (only if rep % 2 == 0 else only[::-1]):
        p = D / "t.bin"
        tools.warm_pages(D, GiB * 3 // 2)
        r0 = resource.getrusage(resource.RUSAGE_SELF); t0 = time.monotonic()
        fd = os.open(p, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
        cases[name](fd); os.close(fd)
        t = time.monotonic() - t0; r1 = resource.getrusage(resource.RUSAGE_SELF)
        res[name].append((round(t, 2), round(r1.ru_stime - r0.ru_stime, 2)))
        os.unlink(p)
for k, v in res.items():
    print(f"{k:22s} wall/sys: {v}")
