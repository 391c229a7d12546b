"""`runsync restore-init` with `runsync.dev/restore-replicas: all` over runs of R replicas.

    .venv/bin/python bench/scale.py --replicas 1,8,32,128 [--repeat 3]

One local SeaweedFS. For each R a run is written as R sidecars leave it (the product's own
lease and manifest code: take the lease, upload, commit, release): every replica commits its log
file, then its shard of a DCP checkpoint (`ckpt/step-100/__<r>_0.distcp`, replica 0 adds the
`.metadata` marker) and a final manifest. Then a new pod of replica 0 runs `runsync
restore-init` as a process with the environment the operator sets, `--repeat` times into empty
run dirs. Its S3 requests are counted by kind inside that process (runsync_testing.s3count: a
botocore hook the bench's sitecustomize installs; the product has none); wall time and peak RSS
come from the process; `restore` is the seconds its "restore done" log reports (discovery and
downloads). `--latency-ms` adds a round trip to every request (loopback has none; a remote
store has 10-50 ms), which is where a serial chain of requests shows. Every restore is checked to hold all 2R + 1 files. The discovery alone (the latest
manifest of every replica) is also timed in this process. Prints a Markdown table; a number of
one machine, not an assertion.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3

from runsync import contract, keys, lease, manifest, restorer, transfer
from runsync_testing import downward, locals3, s3count

RUNSYNC = str(Path(sys.executable).with_name("runsync"))
BUCKET = "bench-scale"
SHARD_BYTES = 4096


def write_replica(s3, layout: keys.Layout) -> None:
    """What one replica's sidecar leaves: two commits under its lease, then the lease released."""
    held = lease.acquire(s3, layout, f"trainer-{layout.replica}", wait=0,
                         max_seq=lambda: manifest.max_seq(s3, layout))
    r = int(layout.replica)
    commits = [{f"logs/rank-{r:04d}.txt": f"rank {r} step 100\n".encode()},
               {f"ckpt/step-100/__{r}_0.distcp": os.urandom(SHARD_BYTES)}]
    if r == 0:
        commits[1]["ckpt/step-100/.metadata"] = b"dcp metadata"
    previous = None
    for i, files in enumerate(commits):
        entries = []
        for name, data in files.items():
            digest = hashlib.sha256(data).hexdigest()
            key = layout.file_key(name, digest)
            s3.put_object(Bucket=layout.store.bucket, Key=key, Body=data)
            entries.append(manifest.FileEntry(name, key, len(data), time.time_ns(), digest, "live"))
        previous = manifest.commit_next(s3, layout, previous, entries, final=i == len(commits) - 1,
                                        writer=f"sidecar@trainer-{r}", epoch=held.lease.epoch)
        held = lease.renew(s3, layout, held)
    lease.renew(s3, layout, held, state="released")  # the final flush's last step


def populate(s3, store: keys.StoreURL, run: keys.RunPath, replicas: int) -> None:
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda r: write_replica(s3, keys.Layout(store, run, str(r))), range(replicas)))


def restore_init(base_env: dict[str, str], run: keys.RunPath, work: Path, label: str, latency_ms: float) -> dict:
    run_dir, counts = work / f"dir-{label}", work / f"counts-{label}.json"
    run_dir.mkdir()
    annotations = work / f"annotations-{label}"
    annotations.write_text(downward.format_annotations_file({contract.RESTORE_REPLICAS: "all"}))
    env = {**base_env, **s3count.environ(counts, work, latency_ms),
           contract.ENV_DIR: str(run_dir), contract.ENV_RUN_PATH: str(run), contract.ENV_REPLICA: "0",
           contract.ENV_ANNOTATIONS: str(annotations), contract.ENV_HOLDER: f"pod-{label}",
           contract.ENV_GRACE: "5"}
    started = time.perf_counter()
    with open(work / f"out-{label}", "wb") as out, open(work / f"err-{label}", "wb") as err:
        child = subprocess.Popen([RUNSYNC, "restore-init"], env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)  # the child's own peak RSS
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    output = (work / f"out-{label}").read_text()
    if child.returncode:
        raise SystemExit(f"restore-init failed: {output[-2000:]} {(work / f'err-{label}').read_text()[-2000:]}")
    done = [json.loads(line) for line in output.splitlines() if '"restore done"' in line]
    files = [p for p in run_dir.rglob("*") if p.is_file() and keys.STATE_DIR not in p.parts]
    return {"wall": wall, "rss_mib": usage.ru_maxrss / 1024, "cpu": usage.ru_utime + usage.ru_stime,
            "restore_s": done[0].get("seconds") if done else None, "files": len(files),
            "requests": s3count.read(counts)}


def discover(s3, store: keys.StoreURL, run: keys.RunPath, replicas: int, latency_ms: float) -> tuple[float, int]:
    """restore-init's discovery alone, in this process: seconds and S3 requests."""
    counts = collections.Counter()
    handler = lambda model, **_: counts.update([model.name])  # noqa: E731
    delay = s3count.add_latency(latency_ms)
    s3.meta.events.register("before-call.s3", handler)
    if delay:
        s3.meta.events.register("before-send.s3", delay)
    try:
        started = time.perf_counter()
        found = restorer.latest_manifests(s3, store, run, "0", all_replicas=True)
        seconds = time.perf_counter() - started
    finally:
        s3.meta.events.unregister("before-call.s3", handler)
        if delay:
            s3.meta.events.unregister("before-send.s3", delay)
    assert len(found) == replicas, (replicas, sorted(found))
    return seconds, sum(counts.values())


def release(s3, layout: keys.Layout) -> None:
    """What the pod's sidecar does at its end: the next pod then takes the lease without waiting."""
    current, etag = lease.read(s3, layout)
    lease.renew(s3, layout, lease.Held(current, etag), state="released")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,8,32,128", help="comma-separated replica counts")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0,
                        help="added before each S3 request of restore-init and of the discovery: a remote store's round trip")
    args = parser.parse_args()
    sizes = [int(r) for r in args.replicas.split(",")]
    server = locals3.start()
    try:
        base_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_"))},
                    **server.env(), contract.ENV_STORE: f"s3://{BUCKET}/runs"}
        os.environ.update(server.env())
        boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                     aws_access_key_id=server.credentials.access_key,
                     aws_secret_access_key=server.credentials.secret_key).create_bucket(Bucket=BUCKET)
        s3 = transfer.client()
        store = keys.StoreURL.parse(base_env[contract.ENV_STORE])
        rows = []
        with tempfile.TemporaryDirectory(prefix="runsync-scale-") as tmp:
            for r in sizes:
                run = keys.RunPath("team-a", "scale", f"r{r}")
                populate(s3, store, run, r)
                results = []
                for i in range(args.repeat):
                    results.append(restore_init(base_env, run, Path(tmp), f"{r}-{i}", args.latency_ms))
                    release(s3, keys.Layout(store, run, "0"))
                for res in results:
                    assert res["files"] == 2 * r + 1, (r, res)
                found = [discover(s3, store, run, r, args.latency_ms) for _ in range(args.repeat)]
                requests = results[-1]["requests"]
                total = sum(requests.values())
                rows.append(f"| {r} | {total} | " + ", ".join(f"{k} {v}" for k, v in sorted(requests.items()))
                            + f" | {statistics.median(x['wall'] for x in results):.2f}"
                            + f" | {statistics.median(x['restore_s'] or 0 for x in results):.2f}"
                            + f" | {statistics.median(x['cpu'] for x in results):.2f}"
                            + f" | {max(x['rss_mib'] for x in results):.0f}"
                            + f" | {statistics.median(t for t, _ in found):.2f} | {found[0][1]} |")
                print(rows[-1], file=sys.stderr)
        print(f"latency added per request: {args.latency_ms:g} ms")
        print("| R | requests | by kind | wall (s, median) | restore (s, median) | CPU (s, median) | peak RSS (MiB) "
              "| discovery alone (s, median) | its requests |")
        print("|---|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
