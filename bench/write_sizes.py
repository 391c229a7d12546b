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
def seq(fd, step, pre):
    if pre: os.posix_fallocate(fd, 0, GiB)
    off = 0
    while off < GiB:
        off += os.pwrite(fd, memoryview(buf)[:step], off)
def par(fd, step, pre, n=16):
    if pre: os.posix_fallocate(fd, 0, GiB)
    else: os.ftruncate(fd, GiB)
    rng = GiB // n
    def w(i):
        off = i * rng
        while off < (i + 1) * rng:
            off += os.pwrite(fd, memoryview(buf)[:step], off)
    ts = [threading.Thread(target=w, args=(i,)) for i in range(n)]
    [t.start() for t in ts]; [t.join() for t in ts]
def ranged16(fd, step, pre):
    # 16 MiB ranges handed to 16 workers in order, as fetch.py does
    if pre: os.posix_fallocate(fd, 0, GiB)
    else: os.ftruncate(fd, GiB)
    nxt = [0]; lock = threading.Lock()
    def w():
        while True:
            with lock:
                r = nxt[0]; nxt[0] += 16 * MiB
            if r >= GiB: return
            off = r
            while off < r + 16 * MiB:
                off += os.pwrite(fd, memoryview(buf)[:step], off)
    ts = [threading.Thread(target=w) for _ in range(16)]
    [t.start() for t in ts]; [t.join() for t in ts]
cases = {
 "seq 64K": lambda fd: seq(fd, 64 << 10, False),
 "seq 256K": lambda fd: seq(fd, 256 << 10, False),
 "seq 2M": lambda fd: seq(fd, 2 * MiB, False),
 "seq 4M": lambda fd: seq(fd, 4 * MiB, False),
 "ranged16 8M sparse": lambda fd: ranged16(fd, 8 * MiB, False),
 "ranged16 4M sparse": lambda fd: ranged16(fd, 4 * MiB, False),
 "ranged16 2M falloc": lambda fd: ranged16(fd, 2 * MiB, True),
 "ranged16 8M falloc": lambda fd: ranged16(fd, 8 * MiB, True),
 "seq 8M": lambda fd: seq(fd, 8 * MiB, False),
 "seq 1M": lambda fd: seq(fd, MiB, False),
 "seq 32K": lambda fd: seq(fd, 32 << 10, False),
 "seq 1M falloc": lambda fd: seq(fd, MiB, True),
 "ranged16 1M falloc": lambda fd: ranged16(fd, MiB, True),
 "ranged16 1M sparse": lambda fd: ranged16(fd, MiB, False),
 "ranged16 32K sparse": lambda fd: ranged16(fd, 32 << 10, False),
}
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
