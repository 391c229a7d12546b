"""Client CPU per small-object request (issue 18: <= 1 ms a file): botocore as boto3 ships it,
botocore as runsync configures it (transfer.client), the AWS CRT's S3 client, and runsync's own
download of one object (`Transfers.fetch`: GET, checked against its SHA-256, written to a temp
file) through botocore (`Settings(crt=False)`, as `RUNSYNC_CRT=0`) and through the CRT.

    .venv/bin/python bench/small_gets.py [--objects 1000] [--size 4096] [--repeat 3] [--threads 16]

One SeaweedFS on loopback; `--objects` objects of `--size` bytes PUT once; then each client GETs
all of them with `--threads` requests in flight (botocore: a thread pool; the CRT: that many
requests queued), interleaved per repeat. CPU is this process's user + sys (every thread, the
CRT's native ones included) per request; bodies are read whole and their bytes counted. Not part
of `bench/run`; numbers of one machine, no test asserts them.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
import botocore.config

from runsync import transfer
from runsync_testing import locals3

BUCKET = "small-gets"


def botocore_gets(s3, keys: list[str], threads: int) -> int:
    def one(key: str) -> int:
        return len(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    with ThreadPoolExecutor(threads) as pool:
        return sum(pool.map(one, keys))


def crt_gets(server, keys: list[str], threads: int) -> int:
    from awscrt.auth import AwsCredentialsProvider
    from awscrt.http import HttpHeaders, HttpRequest
    from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
    from awscrt.s3 import S3Client, S3RequestTlsMode, S3RequestType

    loop = EventLoopGroup(2)
    client = S3Client(bootstrap=ClientBootstrap(loop, DefaultHostResolver(loop)), region="us-east-1",
                      credential_provider=AwsCredentialsProvider.new_static(
                          server.credentials.access_key, server.credentials.secret_key),
                      tls_mode=S3RequestTlsMode.DISABLED, part_size=8 * 1024 * 1024)
    host = server.endpoint.removeprefix("http://")
    slots, got, lock, futures = threading.Semaphore(threads), [0], threading.Lock(), []

    def on_body(chunk, **_):
        with lock:
            got[0] += len(chunk)
    for key in keys:
        slots.acquire()
        request = HttpRequest("GET", f"/{BUCKET}/{key}", HttpHeaders([("Host", host)]))
        futures.append(client.make_request(type=S3RequestType.GET_OBJECT, request=request, on_body=on_body,
                                           on_done=lambda **_: slots.release()).finished_future)
    for future in futures:
        future.result()
    return got[0]


def runsync_fetches(s3, keys: list[str], threads: int, size: int, sha256: str, crt: bool) -> int:
    import tempfile
    from pathlib import Path

    from runsync import fetch, keys as store_keys

    settings = transfer.Settings(crt=crt)
    with tempfile.TemporaryDirectory() as tmp, \
            transfer.Transfers(s3, store_keys.StoreURL.parse(f"s3://{BUCKET}/x"), settings) as transfers:
        def one(key: str) -> int:
            target = Path(tmp) / key.replace("/", "_")
            transfers.fetch(fetch.Want(key, key, size, sha256), target)
            n = target.stat().st_size
            target.unlink()
            return n
        with ThreadPoolExecutor(threads) as pool:
            return sum(pool.map(one, keys))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=1000)
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=16)
    args = ap.parse_args()
    with locals3.start() as server:
        os.environ.update(server.env())
        plain = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1",
                             aws_access_key_id=server.credentials.access_key,
                             aws_secret_access_key=server.credentials.secret_key,
                             config=botocore.config.Config(max_pool_connections=args.threads,
                                                           s3={"addressing_style": "path"}))
        plain.create_bucket(Bucket=BUCKET)
        keys = [f"o/{i:06d}" for i in range(args.objects)]
        body = os.urandom(args.size)
        with ThreadPoolExecutor(args.threads) as pool:
            list(pool.map(lambda k: plain.put_object(Bucket=BUCKET, Key=k, Body=body), keys))
        ours = transfer.client()
        sha256 = hashlib.sha256(body).hexdigest()
        clients = {"botocore, boto3's defaults": lambda: botocore_gets(plain, keys, args.threads),
                   "botocore, runsync's client (transfer.client)": lambda: botocore_gets(ours, keys, args.threads),
                   "AWS CRT S3Client (awscrt)": lambda: crt_gets(server, keys, args.threads),
                   "runsync Transfers.fetch, botocore (RUNSYNC_CRT=0)":
                       lambda: runsync_fetches(ours, keys, args.threads, args.size, sha256, crt=False),
                   "runsync Transfers.fetch, CRT": lambda: runsync_fetches(ours, keys, args.threads, args.size,
                                                                          sha256, crt=True)}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        loads = []
        for _ in range(args.repeat):
            for name, run in clients.items():
                loads.append(os.getloadavg()[0])
                cpu, wall = time.process_time(), time.perf_counter()
                if run() != args.size * args.objects:
                    raise SystemExit(f"{name}: not every byte came back")
                results[name].append((time.process_time() - cpu, time.perf_counter() - wall))
        print(f"{args.objects} x {args.size} B GETs, {args.threads} in flight, medians of {args.repeat}, "
              f"load average {min(loads):.1f}-{max(loads):.1f}")
        print("| client | CPU ms per GET | wall s |\n|---|---|---|")
        for name, xs in results.items():
            print(f"| {name} | {1000 * statistics.median(c for c, _ in xs) / args.objects:.2f} "
                  f"| {statistics.median(w for _, w in xs):.2f} |")


if __name__ == "__main__":
    main()
