"""boto3 as a peer: its transfer manager (defaults, file after file) or s3transfer's CRT manager.

Run as its own process so its CPU is counted apart from the benchmark's; it prints one JSON line
with the seconds and CPU seconds of the transfer alone (a library pays no start-up per call).

    python bench/peer_boto3.py {tm,crt} {up,down} DIR BUCKET PREFIX

Uses the standard AWS_* variables (AWS_ENDPOINT_URL_S3 included).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
import botocore.session


def cpu() -> tuple[float, float]:
    """(user + sys, user) CPU seconds of this process."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_utime


def with_tm(direction: str, root: Path, bucket: str, prefix: str) -> None:
    s3 = boto3.client("s3")
    classic = TransferConfig(preferred_transfer_client="classic")  # defaults, never the CRT
    if direction == "up":
        for p in sorted(root.iterdir()):
            s3.upload_file(str(p), bucket, f"{prefix}/{p.name}", Config=classic)
    else:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/"):
            for obj in page.get("Contents", []):
                s3.download_file(bucket, obj["Key"], str(root / obj["Key"].rsplit("/", 1)[1]), Config=classic)


def with_crt(direction: str, root: Path, bucket: str, prefix: str) -> None:
    # boto3's own CRT switch ignores a custom endpoint (AWS_IO_DNS_INVALID_NAME); s3transfer's CRT
    # manager with a serializer built on that endpoint works.
    from s3transfer.crt import (BotocoreCRTCredentialsWrapper, BotocoreCRTRequestSerializer, CRTTransferManager,
                                create_s3_crt_client)
    session = botocore.session.Session()
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"]
    creds = BotocoreCRTCredentialsWrapper(session.get_credentials()).to_crt_credentials_provider()
    crt = create_s3_crt_client(os.environ.get("AWS_REGION", "us-east-1"), crt_credentials_provider=creds,
                               use_ssl=endpoint.startswith("https"))
    serializer = BotocoreCRTRequestSerializer(session, {"endpoint_url": endpoint,
                                                        "region_name": os.environ.get("AWS_REGION", "us-east-1")})
    with CRTTransferManager(crt, serializer) as tm:
        if direction == "up":
            futures = [tm.upload(str(p), bucket, f"{prefix}/{p.name}") for p in sorted(root.iterdir())]
        else:
            s3 = boto3.client("s3")
            futures = [tm.download(bucket, obj["Key"], str(root / obj["Key"].rsplit("/", 1)[1]))
                       for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/")
                       for obj in page.get("Contents", [])]
        for f in futures:
            f.result()


def main(argv: list[str]) -> None:
    kind, direction, root, bucket, prefix = argv
    Path(root).mkdir(parents=True, exist_ok=True)
    (c0, u0), t0 = cpu(), time.perf_counter()
    (with_crt if kind == "crt" else with_tm)(direction, Path(root), bucket, prefix)
    c1, u1 = cpu()
    print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": c1 - c0, "user": u1 - u0}))


if __name__ == "__main__":
    main(sys.argv[1:])
