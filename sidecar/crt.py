"""The AWS Common Runtime (CRT) path, when `awscrt` is installed.

s3transfer's CRT manager moves, hashes and signs parts in C threads: about 1 CPU-second per GiB
uploaded where the Python transfer manager spends 2.5-3 (bench/). Multipart uploads take it.
Small objects (one PUT, one GET each) go through the CRT's S3 client itself (`s3_client`,
crtobjects.py), where botocore spent about 1 ms of CPU per request. Large downloads stay on
fetch.py's ranged GETs, which check every part against the manifest as it lands.

boto3's own CRT switch ignores a custom endpoint (AWS_IO_DNS_INVALID_NAME against SeaweedFS or
MinIO), so the clients are built here on the client's endpoint, region and credentials.
`RUNSYNC_CRT=0` turns the path off.
"""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING

from . import encryption

if TYPE_CHECKING:  # imported where used: restore-init starts without botocore's client (crtclient.py)
    import botocore.session

MiB = 1024 * 1024
MEMORY_LIMIT = 1024 * MiB
"""The CRT's buffer pool cap where the process has memory to spare. The CRT can fill it when S3
is slower than the disk: 437 MB RSS was seen for one 700 MiB upload under this cap."""
MIN_MEMORY_LIMIT = 256 * MiB
"""The least the CRT accepts (AWS_ERROR_S3_INVALID_MEMORY_LIMIT_CONFIG under it)."""
RESERVE = 192 * MiB
"""What the process holds besides the CRT's buffers: the interpreter and boto3 (about 60 MiB),
16 range workers' 2 MiB blocks, small bodies in flight (20 of up to 1 MiB, 4 of up to 16 MiB:
transfer._LARGE_BODIES), the watcher's state."""


def memory_limit(container_limit: int | None) -> int | None:
    """The CRT's buffer cap that keeps the whole process under `container_limit` bytes (None: no
    limit known), or None when the CRT does not fit: then multipart uploads take the Python
    transfer manager, which reads parts from the file as it sends them (under 100 MiB RSS)."""
    if container_limit is None:
        return MEMORY_LIMIT
    budget = (container_limit - RESERVE) // MiB * MiB
    return min(budget, MEMORY_LIMIT) if budget >= MIN_MEMORY_LIMIT else None


def available() -> bool:
    if os.environ.get("RUNSYNC_CRT", "1") == "0":
        return False
    try:
        import awscrt.s3  # noqa: F401
    except ImportError:
        return False
    # s3transfer's CRT manager (multipart uploads) is looked for, not imported: restore-init,
    # which uploads nothing, starts without s3transfer and botocore's client (crtclient.py).
    return importlib.util.find_spec("s3transfer") is not None


def manager(s3, part_size: int, endpoint: str | None, throughput_gbps: float = 2.0,
            memory_limit: int = MEMORY_LIMIT):
    """A `CRTTransferManager` on client `s3`'s region and credentials, and on `endpoint` (an
    S3-compatible server; None for AWS itself), buffering at most `memory_limit` bytes."""
    import botocore.config
    from s3transfer.crt import BotocoreCRTRequestSerializer, CRTTransferManager

    session = _session()
    client = s3_client(s3, endpoint, part_size=part_size, throughput_gbps=throughput_gbps,
                       memory_limit=memory_limit, session=session)
    kwargs = {"region_name": s3.meta.region_name}
    if endpoint:  # S3-compatible servers on an IP or a plain host name need path-style URLs
        kwargs.update(endpoint_url=endpoint, config=botocore.config.Config(s3={"addressing_style": "path"}))
    return CRTTransferManager(client, BotocoreCRTRequestSerializer(session, kwargs))


def s3_client(s3, endpoint: str | None, part_size: int, throughput_gbps: float = 2.0,
              memory_limit: int = MEMORY_LIMIT, attempts: int | None = None, connect_timeout: float | None = None,
              multipart_threshold: int | None = None, session: botocore.session.Session | None = None):
    """An `awscrt.s3.S3Client` that signs with client `s3`'s region and the AWS environment's
    credentials (refreshed as botocore refreshes them), plain HTTP when `endpoint` is http://.
    `attempts` and `connect_timeout` (s) as the botocore client's settings; None: the CRT's."""
    from awscrt.io import ClientBootstrap, DefaultHostResolver, EventLoopGroup
    from awscrt.s3 import S3Client, S3RequestTlsMode, S3RetryConfig
    from s3transfer.crt import BotocoreCRTCredentialsWrapper

    credentials = (session or _session()).get_credentials()
    loop = EventLoopGroup(2)
    return S3Client(
        bootstrap=ClientBootstrap(loop, DefaultHostResolver(loop)), region=s3.meta.region_name,
        credential_provider=BotocoreCRTCredentialsWrapper(credentials).to_crt_credentials_provider()
        if credentials else None,
        tls_mode=S3RequestTlsMode.DISABLED if endpoint and endpoint.startswith("http://") else S3RequestTlsMode.ENABLED,
        part_size=part_size, multipart_upload_threshold=multipart_threshold,
        throughput_target_gbps=throughput_gbps, memory_limit=memory_limit,
        retry_config=S3RetryConfig(max_retries=attempts - 1) if attempts and attempts > 1 else None,
        connect_timeout_ms=int(connect_timeout * 1000) if connect_timeout else None)


def _session() -> botocore.session.Session:
    import botocore.session

    session = botocore.session.Session()
    encryption.install(session, encryption.from_env())  # the serializer's client inherits these events
    return session


def is_crt_error(err: BaseException) -> bool:
    """A CRT failure that never became a botocore error (no connection, DNS, TLS)."""
    try:
        from awscrt.exceptions import AwsCrtError
    except ImportError:
        return False
    return isinstance(err, AwsCrtError)
