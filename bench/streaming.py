"""`runsync ls` and restore-init of a format-2 run of F entries: wall time and peak RSS (issue 18:
stream the listing, do not load it whole).

    .venv/bin/python bench/streaming.py [--files 50000,200000] [--repeat 1] [--before TREE]

One local SeaweedFS. For each F a child process writes the run with the product's own commit
code (manifest.commit_next: a base of F entries in chunks of 10,000, then a delta changing,
adding and removing a few), every entry pointing at one real 12-byte object, so writing takes
seconds. Then, per code (`--before TREE`, e.g. `git worktree add .before d4bb1fc`, interleaved
with this tree so both see the same load): `runsync ls RUN` (stdout to /dev/null) and
`runsync restore-init` with `runsync.dev/restore: f/000010?.txt` (10 files: the listing is read,
planned and walked whole; the downloads are not what is measured). Each process is started by a
small launcher, so wait4's ru_maxrss is the process's own. Prints a Markdown table: numbers of
one machine, not assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BUCKET = "bench-streaming"
PICK = "f/000010?.txt"
LAUNCHER = """
import os, subprocess, sys, time
started = time.perf_counter()
with open(os.devnull, "wb") as sink:
    proc = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.PIPE)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), time.perf_counter() - started, usage.ru_maxrss / 1024, err[-2000:].decode(errors="replace").replace("\\n", " "))
"""


def child(size: int, prefix: str) -> None:
    """Write the run with this tree's code (the writer is the same in both trees)."""
    from runsync import keys, lease, manifest, transfer

    s3 = transfer.client()
    layout = keys.Layout(keys.StoreURL.parse(f"s3://{BUCKET}/{prefix}"), keys.RunPath("team-a", "stream", f"F{size}"), "0")
    body = b"shard bytes\n"
    import hashlib

    sha, key, mtime = hashlib.sha256(body).hexdigest(), layout.objects_prefix + "00000001/shared", time.time_ns()
    s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    entry = lambda name, t=mtime: manifest.FileEntry(name, key, len(body), t, sha, "live")  # noqa: E731
    held = lease.acquire(s3, layout, "seed", wait=0, max_seq=lambda: manifest.max_seq(s3, layout))
    base = manifest.commit_next(s3, layout, None, [entry(f"f/{i:07d}.txt") for i in range(size)], final=False,
                                writer="seed", epoch=held.lease.epoch)
    manifest.commit_next(s3, layout, base, [entry("f/0000005.txt", mtime + 1), entry("z-last.txt")],
                         removed={"f/0000007.txt"}, final=True, writer="seed", epoch=held.lease.epoch)
    lease.renew(s3, layout, held, state="released")


def measured(cmd: list[str], env: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", LAUNCHER, *cmd], env=env, capture_output=True, text=True, check=True)
    code, wall, rss, err = out.stdout.split(" ", 3)
    if int(code):
        raise SystemExit(f"{cmd} failed: {err}")
    return {"wall": float(wall), "rss_mib": float(rss)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", default="50000,200000")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--before", type=Path, help="a checkout of the code to compare with (its repo root)")
    ap.add_argument("--child")
    ap.add_argument("--prefix", default="")
    args = ap.parse_args()
    if args.child:
        child(int(args.child), args.prefix)
        return
    from runsync import contract
    from runsync_testing import downward

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import tools

    server, env = tools.server_with_bucket(BUCKET)
    try:
        runsync = [sys.executable, "-c", "import sys; from runsync.launch import main; sys.argv[0] = 'runsync'; sys.exit(main())"]
        rows = []
        with tempfile.TemporaryDirectory(prefix="runsync-streaming-") as tmp:
            codes = tools.codes(args.before, tmp)
            annotations = Path(tmp) / "annotations"
            annotations.write_text(downward.format_annotations_file({contract.RESTORE: PICK}))
            for size in [int(f) for f in args.files.split(",") if f]:
                prefix = f"runs-{size}"
                subprocess.run([sys.executable, __file__, "--child", str(size), "--prefix", prefix], env=env, check=True)
                store = {"RUNSYNC_STORE": f"s3://{BUCKET}/{prefix}"}
                for rep in range(args.repeat):
                    for label, code in codes:  # interleaved: before and after see the same load
                        cenv = {**env, **store, **({"PYTHONPATH": code} if code else {})}
                        ls = measured([*runsync, "ls", f"team-a/stream/F{size}"], cenv)
                        run_dir = Path(tmp) / f"run-{size}-{label}-{rep}"
                        run_dir.mkdir()
                        init = measured([*runsync, "restore-init"], {
                            **cenv, contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: f"team-a/stream/F{size}",
                            contract.ENV_REPLICA: "0", contract.ENV_ANNOTATIONS: str(annotations),
                            contract.ENV_HOLDER: "pod-b", contract.ENV_GRACE: "5"})
                        restored = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.txt"))
                        assert len(restored) == 10, restored
                        rows.append((size, label, ls, init))
                        print(size, label, json.dumps(ls), json.dumps(init), f"load {os.getloadavg()[0]:.1f}",
                              file=sys.stderr, flush=True)
        print(f"load average: {os.getloadavg()[0]:.2f}")
        print("| F | code | `runsync ls` (s) | its peak RSS (MiB) | restore-init, 10 files picked (s) | its peak RSS (MiB) |")
        print("|---|---|---|---|---|---|")
        for size, label, ls, init in rows:
            print(f"| {size:,} | {label} | {ls['wall']:.1f} | {ls['rss_mib']:.0f} | {init['wall']:.1f} | {init['rss_mib']:.0f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
