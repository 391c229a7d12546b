"""Why a format-2 restore of large files measured slower than format 1 (issue 17): the runs are
built four ways over the same bytes, so the entry's format and the object's origin vary apart.

    .venv/bin/python bench/f2cause.py [--repeat 3] [--sets "1 x 1 GiB,8 x 128 MiB"] [--profile DIR]
                                      [--before WORKTREE] [--only "f2 sync,f1 put,..."]

- `f2 sync`: `runsync sync` of the data set (what new runs write: format 2, part CRCs, objects
  under `objects/` uploaded by the CRT, multipart, a CRC64NVME per part checked by S3);
- `f1 sync-obj`: a format-1 manifest (SHA-256 entries, no part CRCs) naming those same objects;
- `f1 put`: format 1 as it was written before format 2 (tests/test_format1_compat.py):
  boto3 `upload_file` to `files/<name>~<sha16>` (s3transfer multipart, 16 MiB parts), a
  format-1 manifest;
- `f2 copy`: bench/down.py's "f2" until 2026-12-04: `copy_object` of the `f1 put` objects, format-2 entries with
  part CRCs computed here (16 MiB);
- `s5cmd`: `cp` of the `f2 sync` objects (`s5cmd sync-obj`) and of objects s5cmd put itself.
With `--before`, also `f2 sync before` and `f1 put before`: that worktree's code restoring the
same runs. Each repetition runs every variant once, interleaved. Per sample: wall s, the client's CPU-s
per GiB (children's rusage) and the SeaweedFS server's CPU-s per GiB (/proc), and the load.
No test asserts a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import boto3

from runsync import checksums, contract, keys, manifest
from runsync_testing import locals3

sys.path.insert(0, str(Path(__file__).resolve().parent))
import down  # noqa: E402  (its format-1 writer and SHA-256 of a file)
import main as bench_main  # noqa: E402
import startup  # noqa: E402
import tools  # noqa: E402

BIN = Path(sys.executable).parent
MiB = 1024 * 1024
SETS = {"1 x 1 GiB": (1, 1024 * MiB), "8 x 128 MiB": (8, 128 * MiB), "1 x 2 GiB": (1, 2048 * MiB),
        "16 x 128 MiB": (16, 128 * MiB), "2 x 48 MiB": (2, 48 * MiB)}


def summary(raw: Path, n: int = 14) -> str:
    """py-spy's raw samples (`--native --threads`) by thread, then by the Python frame nearest the
    leaf with the leaf's library (a native leaf shows where the bytes are: libc's copies and
    syscalls, libcrypto's SHA-256, awscrt's CRC)."""
    by_thread: dict[str, int] = {}
    by_frame: dict[str, int] = {}
    total = idle = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames, c = stack.split(";"), int(count)
        if len(frames) <= 2 and not any(".py:" in f for f in frames):  # a thread parked in a syscall, no
            idle += c                                                    # Python frame py-spy could merge
            continue
        total += c
        thread = re.sub(r"\(?0x[0-9a-f]+\)?|\d+", "", frames[0]).strip() or frames[0]
        by_thread[thread] = by_thread.get(thread, 0) + c
        leaf = frames[-1]
        lib = m.group(1) if (m := re.search(r"\(([^()]*\.so[^()]*)\)", leaf)) else "python"
        py = next((re.sub(r":\d+\)", ")", f) for f in reversed(frames[1:]) if ".py:" in f or "<frozen" in f), "(no Python frame)")
        key = f"{py} [{lib}]"
        by_frame[key] = by_frame.get(key, 0) + c
    total = total or 1
    out = [f"{total} samples ({idle} more parked: one native frame, left out); by thread: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in
                                                     sorted(by_thread.items(), key=lambda x: -x[1])[:6])]
    out += [f"{100 * v / total:5.1f}%  {k}" for k, v in sorted(by_frame.items(), key=lambda x: -x[1])[:n]]
    return "\n".join(out) + "\n"


def copy_format_2(s3, store: keys.StoreURL, src: str, dst: str) -> None:
    """Run `dst` names `copy_object` copies of `src`'s objects with format-2 entries (part CRCs
    computed here, and the SHA-256): how bench/down.py built its "f2" run until 2026-12-04."""
    latest = manifest.latest(s3, keys.Layout(store, keys.RunPath.parse(src), "0"))
    layout = keys.Layout(store, keys.RunPath.parse(dst), "0")
    entries = []
    for e in latest.files.values():
        data = s3.get_object(Bucket=store.bucket, Key=e.key)["Body"].read()
        crcs = []
        for i in range(checksums.part_count(e.size, checksums.PART_SIZE)):
            off, n = checksums.part_range(i, e.size, checksums.PART_SIZE)
            crcs.append(checksums.encode(checksums.crc64nvme(memoryview(data)[off:off + n])))
        sha = e.sha256 or hashlib.sha256(data).hexdigest()
        key = layout.file_key(e.name, sha)
        s3.copy_object(Bucket=store.bucket, Key=key, CopySource={"Bucket": store.bucket, "Key": e.key})
        entries.append(manifest.FileEntry(e.name, key, e.size, e.mtime_ns, sha, e.policy,
                                          checksums.PART_SIZE if e.size else 0, tuple(crcs)))
        del data
    manifest.commit(s3, layout, None, entries, final=True, writer="bench")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sets", default="1 x 1 GiB,8 x 128 MiB")
    ap.add_argument("--profile", type=Path)
    ap.add_argument("--before", type=Path)
    ap.add_argument("--code", action="append", default=[], metavar="LABEL=WORKTREE",
                    help="also `f2 sync LABEL`: that worktree's code restoring the format-2 run (repeatable)")
    ap.add_argument("--perf", type=Path, help="also `perf record` one restore per timed variant of the first set, "
                    "its busiest symbols (kernel and native included) written to DIR")
    ap.add_argument("--only", default="", help="comma-separated variant labels to time (default: all)")
    args = ap.parse_args()
    chosen = {k: SETS[k] for k in args.sets.split(",")}
    tmp = Path(tempfile.mkdtemp(prefix="f2cause-", dir=os.environ.get("F2CAUSE_TMP")))
    server = locals3.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))} | server.env()
        s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                          aws_access_key_id=server.credentials.access_key,
                          aws_secret_access_key=server.credentials.secret_key)
        bucket = f"cause-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=bucket)
        store = keys.StoreURL.parse(f"s3://{bucket}/runs")
        env[contract.ENV_STORE] = str(store)
        sets = bench_main.make_sets(tmp / "data", chosen)
        s5 = tools.S5cmd()
        for i, (name, src) in enumerate(sets.items()):
            run = f"bench/c/set{i}"
            subprocess.run([str(BIN / "runsync"), "sync", str(src), "--run", run], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            latest = manifest.latest(s3, keys.Layout(store, keys.RunPath.parse(run), "0"))
            e0 = next(iter(latest.files.values()))
            print(f"{name}: sync wrote format {json.loads(s3.get_object(Bucket=bucket, Key=keys.Layout(store, keys.RunPath.parse(run), '0').manifest_key(latest.seq))['Body'].read()).get('format')}, "
                  f"key {e0.key}, part_size {e0.part_size}, parts {len(e0.crc64nvme)}, sha256 {e0.sha256!r}", flush=True)
            shas = {p.name: down.sha256_of(p) for p in sorted(src.iterdir())}
            # f1 over objects runsync uploaded: a second sync, its format-2 records replaced by a format-1 manifest
            subprocess.run([str(BIN / "runsync"), "sync", str(src), "--run", run + "-f1obj"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            layout = keys.Layout(store, keys.RunPath.parse(run + "-f1obj"), "0")
            mine = manifest.latest(s3, layout)
            for o in s3.list_objects_v2(Bucket=bucket, Prefix=layout.replica_prefix).get("Contents", []):
                if not o["Key"].startswith(layout.objects_prefix):
                    s3.delete_object(Bucket=bucket, Key=o["Key"])
            down.commit_format_1(s3, store, run + "-f1obj", [
                {"name": e.name, "key": e.key, "size": e.size, "mtime_ns": e.mtime_ns, "sha256": shas[e.name],
                 "policy": "end"} for e in mine.files.values()])
            # f1 as written before format 2: boto3 multipart puts at files/<name>~<sha16>
            down.write_format_1(s3, store, src, run + "-f1put", shas)
            copy_format_2(s3, store, run + "-f1put", run + "-f2copy")
            subprocess.run(s5._cmd(env) + [f"{src}/*", f"s3://{bucket}/s5/{i}/"], env=env, check=True,
                           stdout=subprocess.DEVNULL)
            obj = latest.files
            for e in obj.values():  # where SeaweedFS keeps each kind: chunk counts tell the layouts apart
                h = s3.head_object(Bucket=bucket, Key=e.key, ChecksumMode="ENABLED")
                print(f"  sync obj {e.name}: parts-count {h.get('PartsCount')} etag {h['ETag']} "
                      f"crc64 {h.get('ChecksumCRC64NVME')} type {h.get('ChecksumType')}", flush=True)
                break
        shutil.rmtree(tmp / "data")
        dest = tmp / "dest"
        variants = ["s5cmd s5-put", "s5cmd sync-obj", "f2 sync", "f1 sync-obj", "f1 put", "f2 copy"]
        after = startup.Code("after")
        before = startup.Code.checkout("before", args.before, tmp / "before") if args.before else None
        if before:
            variants[2:2] = ["f2 sync before"]
            variants[5:5] = ["f1 put before"]
        others = {label: startup.Code.checkout(label, Path(tree), tmp / f"code-{label}")
                  for label, tree in (c.split("=", 1) for c in args.code)}
        variants[3:3] = [f"f2 sync {label}" for label in others]
        if args.only:
            variants = [v for v in variants if v in args.only.split(",") or v.removeprefix("f2 sync ") in others]
        rows: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        cmds_of: list[dict] = []
        envs_of: list[dict] = []
        for rep in range(args.repeat):
            for i, (name, src) in enumerate(sets.items()):
                count, size = chosen[name]
                gib = count * size / 2**30
                run = f"bench/c/set{i}"
                envs = {"f2 sync before": before.env(env) if before else env,
                        "f1 put before": before.env(env) if before else env}
                cmds = {
                    "s5cmd s5-put": s5._cmd(env) + [f"s3://{bucket}/s5/{i}/*", f"{dest}/"],
                    "s5cmd sync-obj": s5._cmd(env) + [
                        f"s3://{bucket}/{keys.Layout(store, keys.RunPath.parse(run), '0').objects_prefix}*", f"{dest}/"],
                    "f2 sync": [str(BIN / "runsync"), "restore", run, "--to", str(dest)],
                    "f1 sync-obj": [str(BIN / "runsync"), "restore", run + "-f1obj", "--to", str(dest)],
                    "f1 put": [str(BIN / "runsync"), "restore", run + "-f1put", "--to", str(dest)],
                    "f2 copy": [str(BIN / "runsync"), "restore", run + "-f2copy", "--to", str(dest)],
                }
                for label, code in others.items():
                    cmds[f"f2 sync {label}"] = code.command("restore", run, "--to", str(dest))
                    envs[f"f2 sync {label}"] = code.env(env)
                if before:
                    cmds["f2 sync before"] = before.command("restore", run, "--to", str(dest))
                    cmds["f1 put before"] = before.command("restore", run + "-f1put", "--to", str(dest))
                if rep == 0:
                    cmds_of.append(cmds)
                    envs_of.append(envs)
                for label in variants:
                    shutil.rmtree(dest, ignore_errors=True)
                    subprocess.run(["sync"])
                    w0 = tools.proc_cpu(server.process.pid)
                    sample = tools.run_timed(cmds[label], envs.get(label, env))
                    w = tools.proc_cpu(server.process.pid) - w0
                    load = os.getloadavg()[0]
                    rows.setdefault((name, label), []).append((sample.seconds, sample.cpu / gib, w / gib))
                    print(f"rep {rep} {name:>12} {label:>15} {sample.seconds:7.2f} s  client {sample.cpu / gib:5.2f} "
                          f"CPU-s/GiB  server {w / gib:5.2f} CPU-s/GiB  load {load:.1f}", flush=True)
        if args.perf:  # CPU by symbol, kernel and libc included: where py-spy sees only "native"
            args.perf.mkdir(parents=True, exist_ok=True)
            for label in variants:
                data = args.perf / f"{label.replace(' ', '-')}.data"
                shutil.rmtree(dest, ignore_errors=True)
                subprocess.run(["perf", "record", "-q", "-F", "997", "-o", str(data), "--", *cmds_of[0][label]],
                               env=envs_of[0].get(label, env), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                report = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children", "--sort", "dso,sym"],
                                        capture_output=True, text=True).stdout
                lines = [ln for ln in report.splitlines() if ln.strip() and not ln.startswith("#")][:25]
                (args.perf / f"{label.replace(' ', '-')}.txt").write_text("\n".join(lines) + "\n")
                print(f"perf {label} load {os.getloadavg()[0]:.1f}", flush=True)
        if args.profile:
            args.profile.mkdir(parents=True, exist_ok=True)
            for i, name in enumerate(sets):
                run = f"bench/c/set{i}"
                for code in [after] + ([before] if before else []):
                    for label, r in (("f2sync", run), ("f1put", run + "-f1put"), ("f2copy", run + "-f2copy")):
                        raw = args.profile / f"{name.replace(' ', '')}-{label}-{code.label}.raw"
                        shutil.rmtree(dest, ignore_errors=True)
                        subprocess.run([str(BIN / "py-spy"), "record", "-f", "raw", "-r", "200", "--native", "--threads",
                                        "-o", str(raw), "--", *code.command("restore", r, "--to", str(dest))],
                                       env=code.env(env), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                        (args.profile / f"{raw.stem}.txt").write_text(summary(raw))
                        print(f"profile {raw} load {os.getloadavg()[0]:.1f}", flush=True)
        print("\n| set | variant | median s | MB/s | client CPU-s/GiB | server CPU-s/GiB | vs s5cmd (same objects) |")
        print("|---|---|---|---|---|---|---|")
        for (name, label), xs in rows.items():
            count, size = chosen[name]
            med = statistics.median(x[0] for x in xs)
            base = rows.get((name, "s5cmd sync-obj"))
            ratio = f"{statistics.median(x[0] for x in base) / med:.2f}x" if base else "-"
            print(f"| {name} | {label} | {med:.2f} | {count * size / med / MiB:.0f} | "
                  f"{statistics.median(x[1] for x in xs):.2f} | {statistics.median(x[2] for x in xs):.2f} | {ratio} |")
        print(f"\nload average {os.getloadavg()}")
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
