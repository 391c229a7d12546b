"""restore-init's S3 requests through the AWS CRT's S3 client, without building a botocore client.

A new process spent 0.2 s of CPU making its first botocore client (imports, S3's model, the
endpoint rules) before it could ask anything (issue 17, bench/startup.py). `Client` answers the
calls restore-init makes (the store check, the lease, HEADs, LISTs, manifests, the encryption
check, whole small GETs) as botocore's S3 client does: the same dicts, and the same exceptions
(`ClientError` with S3's code, `EndpointConnectionError`, `NoCredentialsError`,
`ReadTimeoutError`), so callers and `transfer.describe` word failures as before. Anything else (a
ranged GET of a large file, a paginator but LIST's) goes to a botocore client built on first use.

Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) when set, else the
CRT's default chain (profile files, web identity, ECS, IMDS). AWS_CA_BUNDLE is honoured.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from types import SimpleNamespace

from botocore.exceptions import ClientError, EndpointConnectionError, FlexibleChecksumError, NoCredentialsError, SSLError

from . import contract, crtobjects, encryption
from .errors import StoreError

_HEADERS = {  # response header → botocore's name for it (HEAD / GET)
    "content-length": "ContentLength", "etag": "ETag", "content-type": "ContentType",
    "content-range": "ContentRange", "accept-ranges": "AcceptRanges", "last-modified": "LastModified",
    "x-amz-server-side-encryption": "ServerSideEncryption",
    "x-amz-server-side-encryption-aws-kms-key-id": "SSEKMSKeyId",
    "x-amz-checksum-sha256": "ChecksumSHA256", "x-amz-checksum-crc64nvme": "ChecksumCRC64NVME",
    "x-amz-checksum-type": "ChecksumType", "x-amz-version-id": "VersionId",
}


def available() -> bool:
    """The CRT is installed and not turned off (RUNSYNC_CRT=0): crt.available."""
    from . import crt

    return crt.available()


class Client:
    """The subset of botocore's S3 client restore-init uses, on one `awscrt.s3.S3Client`."""

    def __init__(self, settings, endpoint: str | None, region: str, on_first_request=None):
        self.settings, self.endpoint, self.region = settings, endpoint, region
        self.meta = SimpleNamespace(
            region_name=region, endpoint_url=endpoint or f"https://s3.{region}.amazonaws.com",
            config=SimpleNamespace(max_pool_connections=settings.pool_connections))
        self._crt, self._credentials = _s3_client(settings, endpoint, region)
        self._write_headers = encryption.from_env().headers()
        self._objects: dict[str, crtobjects.Objects] = {}
        self._boto = None
        self._lock = threading.Lock()
        self._on_first = on_first_request

    def access_key_id(self) -> str:
        """The access key id the CRT signs with: the environment's, or its chain's (a profile,
        a container's or a web identity's), for an error line that names it."""
        return self._credentials.get_credentials().result(timeout=5).access_key_id

    # ------------------------------------------------------------------ botocore's calls

    def get_object(self, Bucket: str, Key: str, ChecksumMode: str | None = None, **rest):  # noqa: N803
        if rest:  # a Range: fetch.py's ranged path, which checks every part itself
            return self.botocore().get_object(Bucket=Bucket, Key=Key, **_given(ChecksumMode=ChecksumMode), **rest)
        headers = [("x-amz-checksum-mode", "ENABLED")] if ChecksumMode else []
        status, got, body = self._call("GetObject", "GET", Bucket, Key, headers=headers)
        out = _described(status, got)
        out["Body"] = io.BytesIO(body)
        if ChecksumMode and "ChecksumSHA256" in out:  # as botocore: the body against the SHA-256 S3 holds
            actual = base64.b64encode(hashlib.sha256(body).digest()).decode()
            if actual != out["ChecksumSHA256"]:
                raise FlexibleChecksumError(error_msg=f"Expected checksum {out['ChecksumSHA256']} did not match "
                                            f"calculated checksum: {actual}")
        return out

    def head_object(self, Bucket: str, Key: str, ChecksumMode: str | None = None):  # noqa: N803
        headers = [("x-amz-checksum-mode", "ENABLED")] if ChecksumMode else []
        status, got, _ = self._call("HeadObject", "HEAD", Bucket, Key, headers=headers)
        return _described(status, got)

    def put_object(self, Bucket: str, Key: str, Body=b"", ContentType: str | None = None,  # noqa: N803
                   IfMatch: str | None = None, IfNoneMatch: str | None = None, **rest):
        if rest:
            return self.botocore().put_object(Bucket=Bucket, Key=Key, Body=Body, **_given(
                ContentType=ContentType, IfMatch=IfMatch, IfNoneMatch=IfNoneMatch), **rest)
        body = Body.encode() if isinstance(Body, str) else bytes(Body)
        headers = [("Content-Length", str(len(body))), *self._write_headers.items()]
        for name, value in (("Content-Type", ContentType), ("If-Match", IfMatch), ("If-None-Match", IfNoneMatch)):
            if value is not None:
                headers.append((name, value))
        status, got, _ = self._call("PutObject", "PUT", Bucket, Key, headers=headers, body=body)
        return _described(status, got)

    def delete_object(self, Bucket: str, Key: str):  # noqa: N803
        status, got, _ = self._call("DeleteObject", "DELETE", Bucket, Key)
        return {"ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": got}}

    def list_objects_v2(self, Bucket: str, Prefix: str = "", Delimiter: str | None = None,  # noqa: N803
                        MaxKeys: int | None = None, ContinuationToken: str | None = None,
                        StartAfter: str | None = None):
        query = {"list-type": "2", "prefix": Prefix, "encoding-type": "url", **_given(
            delimiter=Delimiter, **{"max-keys": MaxKeys, "continuation-token": ContinuationToken,
                                    "start-after": StartAfter})}
        status, got, body = self._call("ListObjectsV2", "GET", Bucket, None, query=query)
        return _listed(body, status, got)

    def get_paginator(self, name: str):
        if name != "list_objects_v2":
            return self.botocore().get_paginator(name)
        return _ListPaginator(self)

    def __getattr__(self, name: str):
        """Any other call of botocore's client: made by one built now."""
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.botocore(), name)

    # ------------------------------------------------------------------ the rest

    def botocore(self):
        """The botocore client for what this one does not do (large files' ranged GETs)."""
        with self._lock:
            if self._boto is None:
                from . import transfer

                self._boto = transfer.client(self.settings)
            return self._boto

    def objects(self, bucket: str) -> crtobjects.Objects:
        """Whole-object GETs and PUTs of `bucket` on this client's connections (fetch.py)."""
        with self._lock:
            found = self._objects.get(bucket)
            if found is None:
                found = self._objects[bucket] = crtobjects.Objects(
                    self._crt, bucket, self.endpoint, self.region, self.settings.read_timeout, self._write_headers)
            return found

    def _call(self, operation: str, method: str, bucket: str, key: str | None, query: dict | None = None,
              headers=(), body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request; (status, headers in lower case, body), or the exception botocore would raise."""
        from awscrt.exceptions import AwsCrtError
        from awscrt.http import HttpHeaders, HttpRequest
        from awscrt.s3 import S3RequestType

        if self._on_first is not None:
            self._on_first()
        where = self.objects(bucket)
        path = where._path(key) if key is not None else where.prefix
        if query:
            path += "?" + "&".join(f"{k}={urllib.parse.quote(str(v), safe='-_.~')}" for k, v in query.items())
        answer: dict = {}
        chunks: list[bytes] = []
        alive = [time.monotonic()]

        def on_headers(status_code: int, headers, **_) -> None:
            alive[0] = time.monotonic()
            answer["status"], answer["headers"] = status_code, {k.lower(): v for k, v in headers}

        def on_body(chunk, **_) -> None:
            alive[0] = time.monotonic()
            chunks.append(bytes(chunk))

        request = HttpRequest(method, path, HttpHeaders([("Host", where.host), *headers]),
                              io.BytesIO(body) if body is not None else None)
        try:
            made = self._crt.make_request(type=S3RequestType.DEFAULT, operation_name=operation, request=request,
                                          on_headers=on_headers, on_body=on_body)
            where._wait(made, key or "", alive)
        except ClientError as err:
            if err.operation_name != operation:  # crtobjects names GETs only
                raise ClientError(err.response, operation) from None
            raise
        except AwsCrtError as err:
            raise _botocore_error(err, self.meta.endpoint_url) from None
        return answer.get("status", 200), answer.get("headers", {}), b"".join(chunks)


class _ListPaginator:
    def __init__(self, client: Client):
        self.client = client

    def paginate(self, **kwargs):
        while True:
            page = self.client.list_objects_v2(**kwargs)
            yield page
            if not page.get("IsTruncated") or not page.get("NextContinuationToken"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]


def for_restore(settings):
    """The client a restore asks through: a `Client` when the CRT is on (no botocore client to
    build: about half of a new process's CPU before its first request), else botocore's. Also
    botocore's when no variable names the region (a laptop's profile may, which only botocore
    reads) and the store is AWS itself: botocore follows S3's redirect to a bucket's region, the
    CRT signs for the one region it was given. Pods always have AWS_REGION (the operator sets it)."""
    from . import transfer

    region_known = bool(transfer.env_region() or transfer.endpoint_override())
    return client(settings) if available() and region_known else transfer.client(settings)


def client(settings) -> Client:
    """A `Client` from the standard AWS environment (as transfer.client reads it)."""
    from . import transfer

    endpoint = transfer.endpoint_override()
    region = transfer.env_region() or contract.DEFAULT_REGION
    probe = transfer._note_first_request if os.environ.get(transfer.BENCH_PROBE) else None
    return Client(settings, endpoint, region, probe)


def _s3_client(settings, endpoint: str | None, region: str) -> tuple:
    from awscrt.auth import AwsCredentialsProvider
    from awscrt.io import ClientBootstrap, ClientTlsContext, DefaultHostResolver, EventLoopGroup, TlsContextOptions
    from awscrt.s3 import S3Client, S3RequestTlsMode, S3RetryConfig

    loop = EventLoopGroup(2)
    bootstrap = ClientBootstrap(loop, DefaultHostResolver(loop))
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        credentials = AwsCredentialsProvider.new_static(key, secret, os.environ.get("AWS_SESSION_TOKEN") or None)
    else:
        credentials = AwsCredentialsProvider.new_default_chain(bootstrap)
    plain = bool(endpoint and endpoint.startswith("http://"))
    tls = None
    bundle = os.environ.get("AWS_CA_BUNDLE")
    if bundle and not plain:  # a private CA, as botocore honours it
        options = TlsContextOptions()
        try:
            options.override_default_trust_store_from_path(None, bundle)
            tls = ClientTlsContext(options).new_connection_options()
        except Exception as err:  # noqa: BLE001 - a missing file (OSError) or a bad PEM (the CRT's error)
            raise StoreError(f"AWS_CA_BUNDLE={bundle} cannot be read as a CA bundle ({err}); fix: point "
                             "AWS_CA_BUNDLE at the PEM file of the CA that signed the S3 endpoint's "
                             "certificate, or unset it") from None
    return S3Client(
        bootstrap=bootstrap, region=region, credential_provider=credentials,
        tls_mode=S3RequestTlsMode.DISABLED if plain else S3RequestTlsMode.ENABLED, tls_connection_options=tls,
        part_size=crtobjects.PART, multipart_upload_threshold=settings.multipart_threshold,
        memory_limit=256 * 1024 * 1024,  # the CRT's least: restore-init's whole GETs are small (<= 16 MiB)
        retry_config=S3RetryConfig(max_retries=settings.max_attempts - 1) if settings.max_attempts > 1 else None,
        connect_timeout_ms=int(settings.connect_timeout * 1000)), credentials


def _botocore_error(err, endpoint: str) -> Exception:
    """A CRT failure as botocore's: no credentials found, a certificate refused, else no
    connection (DNS, refused). The CRT names no reason for a failed handshake (it gives up on
    one after its retries, sooner than our read timeout on a busy machine): asked as botocore
    would, so an untrusted certificate is named as one either way."""
    if err.name.startswith("AWS_AUTH_") or "CREDENTIALS" in err.name:
        return NoCredentialsError()
    refused = crtobjects.refused_certificate(err, endpoint)
    if refused:
        return SSLError(endpoint_url=endpoint, error=refused)
    return EndpointConnectionError(endpoint_url=endpoint, error=err.name)


def _given(**values) -> dict:
    return {k: v for k, v in values.items() if v is not None}


def _described(status: int, headers: dict[str, str]) -> dict:
    out: dict = {"ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers}}
    for header, name in _HEADERS.items():
        if header in headers:
            out[name] = headers[header]
    if "ContentLength" in out:
        out["ContentLength"] = int(out["ContentLength"])
    if "LastModified" in out:
        import email.utils

        out["LastModified"] = email.utils.parsedate_to_datetime(out["LastModified"])
    meta = {k[len("x-amz-meta-"):]: v for k, v in headers.items() if k.startswith("x-amz-meta-")}
    out["Metadata"] = meta
    return out


def _listed(body: bytes, status: int, headers: dict[str, str]) -> dict:
    """A ListObjectsV2 result as botocore parses it (the fields runsync reads)."""
    import datetime

    root = ElementTree.fromstring(body)
    for node in root.iter():  # with or without S3's namespace (servers differ)
        node.tag = node.tag.rpartition("}")[2]
    url = (root.findtext("EncodingType") or "") == "url"

    def text(node, name: str) -> str | None:
        value = node.findtext(name)
        return urllib.parse.unquote(value) if url and value is not None and name in ("Key", "Prefix") else value

    out: dict = {"ResponseMetadata": {"HTTPStatusCode": status, "HTTPHeaders": headers},
                 "IsTruncated": (root.findtext("IsTruncated") or "false") == "true",
                 "Name": root.findtext("Name"), "Prefix": text(root, "Prefix") or "",
                 "KeyCount": int(root.findtext("KeyCount") or 0)}
    token = root.findtext("NextContinuationToken")
    if token:
        out["NextContinuationToken"] = token
    contents = []
    for node in root.findall("Contents"):
        item = {"Key": text(node, "Key"), "Size": int(node.findtext("Size") or 0),
                "ETag": node.findtext("ETag")}
        modified = node.findtext("LastModified")
        if modified:
            item["LastModified"] = datetime.datetime.fromisoformat(modified.replace("Z", "+00:00"))
        contents.append(item)
    if contents:
        out["Contents"] = contents
    prefixes = [{"Prefix": text(node, "Prefix")} for node in root.findall("CommonPrefixes")]
    if prefixes:
        out["CommonPrefixes"] = prefixes
    return out
