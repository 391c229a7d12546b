"""Whole-object GETs and PUTs through the AWS CRT's S3 client (`awscrt.s3`).

A small file's restore and upload were mostly botocore: about 1 ms of CPU per request to build,
sign, send and parse it, where the CRT does the same request in C for about 0.26 ms
(bench/small_gets.py). A GET's body still comes to Python, chunk by chunk with its offset, so
fetch.py checks every byte against the manifest as it writes it (the CRT's own `recv_filepath`
would write a file no one checked); a PUT's body is read from the file straight into the CRT's
buffer and CRC'd there (`hashing.Reading`), and the CRT sends that buffer's CRC64NVME for S3 to
check: the manifest's CRCs name the very bytes sent. `awscrt.s3` directly rather than
s3transfer's `CRTTransferManager`: that one builds every request through botocore's serializer,
the cost this module is here to avoid.

Failures leave as the botocore path's do, so `transfer.describe` words them the same: an error
response as a `ClientError` with S3's code and message; a request that stalls as botocore's
`ReadTimeoutError`; no connection as the CRT's own error (`crt.is_crt_error`).
"""

from __future__ import annotations

import concurrent.futures
import io
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable

from botocore.exceptions import ClientError, ReadTimeoutError, SSLError

MiB = 1024 * 1024
PART = 8 * MiB
"""The CRT's ranged GET size: a larger object comes as several, delivered in order, but one of
up to two parts in one GET (`Objects.get`). A PUT's threshold for multipart is set apart: never
reached by the small files sent here."""


class Objects:
    """GETs and PUTs whole objects of one bucket through `client` (an `awscrt.s3.S3Client`,
    crt.s3_client) at `endpoint` (an S3-compatible server; None for AWS in `region`); a PUT asks
    S3 for `write_headers` too (server-side encryption: encryption.Encryption.headers)."""

    def __init__(self, client, bucket: str, endpoint: str | None, region: str, read_timeout: float,
                 write_headers: dict[str, str] | None = None):
        self.client, self.bucket, self.read_timeout = client, bucket, read_timeout
        self.write_headers = write_headers or {}
        self.endpoint = endpoint or f"https://s3.{region}.amazonaws.com"
        if endpoint:  # an S3-compatible server on an IP or a plain host name: path-style
            self.host, self.prefix = urllib.parse.urlsplit(endpoint).netloc, f"/{bucket}/"
        elif "." in bucket:  # a dotted bucket fails the TLS name check of a virtual host
            self.host, self.prefix = f"s3.{region}.amazonaws.com", f"/{bucket}/"
        else:
            self.host, self.prefix = f"{bucket}.s3.{region}.amazonaws.com", "/"

    def get(self, key: str, on_headers: Callable[[int, dict[str, str]], None],
            on_body: Callable[[memoryview, int], None], size: int = 0) -> None:
        """GET `key`: `on_headers(status, headers)` once, then `on_body(chunk, offset)` in
        order, on the CRT's threads; an exception either raises is raised here, and the request
        is stopped. Returns when the whole body was delivered. `size`, the object's bytes when
        known, makes one of up to two parts one GET: the CRT asks for a second part only once
        its first is in (a 14 MB checkpoint: two GETs, the second a round trip later)."""
        from awscrt.http import HttpHeaders, HttpRequest
        from awscrt.s3 import S3RequestType

        alive = [time.monotonic()]  # the last sign of progress: the read timeout counts from it

        def headers(status_code: int, headers, **_) -> None:
            alive[0] = time.monotonic()
            on_headers(status_code, {k.lower(): v for k, v in headers})

        def body(chunk, offset: int, **_) -> None:
            alive[0] = time.monotonic()
            on_body(memoryview(chunk), offset)

        request = self.client.make_request(
            type=S3RequestType.GET_OBJECT, on_headers=headers, on_body=body,
            # One part that holds it all (in whole MiB), up to 2 x PART = 16 MiB, the most a small
            # file is (fetch.py's threshold): each GET holds its part in the CRT's buffers until
            # delivered, within the client's memory_limit; anything larger keeps 8 MiB parts.
            part_size=-(-size // MiB) * MiB if PART < size <= 2 * PART else None,
            request=HttpRequest("GET", self._path(key), HttpHeaders([("Host", self.host)])))
        self._wait(request, key, alive)

    def put(self, key: str, body: io.RawIOBase, size: int) -> None:
        """PUT the `size` bytes of stream `body` at `key` in one request. The CRT reads the whole
        body into its buffer first and sends the CRC64NVME of that buffer for S3 to check
        (`hashing.Reading` CRCs the same buffer as it fills it, for the manifest)."""
        from awscrt.http import HttpHeaders, HttpRequest
        from awscrt.s3 import S3ChecksumAlgorithm, S3ChecksumConfig, S3ChecksumLocation, S3RequestType

        alive = [time.monotonic()]
        headers = HttpHeaders([("Host", self.host), ("Content-Length", str(size)), *self.write_headers.items()])
        request = self.client.make_request(
            type=S3RequestType.PUT_OBJECT, on_progress=lambda _: alive.__setitem__(0, time.monotonic()),
            checksum_config=S3ChecksumConfig(S3ChecksumAlgorithm.CRC64NVME, S3ChecksumLocation.HEADER),
            request=HttpRequest("PUT", self._path(key), headers, body))
        self._wait(request, key, alive)

    def _path(self, key: str) -> str:
        return self.prefix + urllib.parse.quote(key, safe="/")

    def _wait(self, request, key: str, alive: list[float]) -> None:
        """Until `request` is done; raise as botocore would (module docstring)."""
        from awscrt.s3 import S3ResponseError

        done = request.finished_future
        try:
            while True:
                try:
                    done.result(timeout=max(0.0, alive[0] + self.read_timeout - time.monotonic()))
                    return
                except TimeoutError:  # the CRT has no read timeout of its own: a server may stall
                    if time.monotonic() - alive[0] >= self.read_timeout:
                        request.cancel()
                        concurrent.futures.wait([done])  # its callbacks have run: none writes after this
                        refused = tls_refused(self.endpoint)
                        if refused:  # the CRT retries a refused handshake until our timeout, silently
                            raise SSLError(endpoint_url=self.endpoint, error=refused) from None
                        raise ReadTimeoutError(endpoint_url=f"{self.endpoint}{self.prefix}{key}") from None
        except S3ResponseError as err:
            raise _client_error(err) from None
        finally:
            if not done.done():  # this thread was interrupted
                request.cancel()
                concurrent.futures.wait([done])


def refused_certificate(err, endpoint: str) -> str | None:
    """Why `endpoint`'s certificate was refused, when `err` is one of the CRT's TLS failures
    (it gives up on a refused handshake after its retries and names no reason); else None."""
    return tls_refused(endpoint) if "_TLS_" in getattr(err, "name", "") else None


def tls_refused(endpoint: str) -> str | None:
    """Why `endpoint`'s certificate is refused under the trust botocore would use (AWS_CA_BUNDLE,
    else the system's), or None (plain HTTP, the handshake succeeds, no connection at all, or
    it fails for another reason: a port that speaks plain HTTP is no certificate to trust).
    Asked only after the CRT failed: it does not say a certificate was refused."""
    import os
    import socket
    import ssl

    parts = urllib.parse.urlsplit(endpoint)
    if parts.scheme != "https" or not parts.hostname:
        return None
    try:
        context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
        with socket.create_connection((parts.hostname, parts.port or 443), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname=parts.hostname):
            return None
    except ssl.SSLCertVerificationError as err:
        return str(err)
    except OSError:  # (ssl.SSLError is one)
        return None


def _client_error(err) -> ClientError:
    """S3's error response as botocore raises it: the code and message of its XML body (none for
    a response without one: then the status, as botocore's "404" / "403")."""
    error = {"Code": str(err.status_code), "Message": err.message}
    if err.body:
        try:  # every field, as botocore keeps them (a wrong region's <Region>, a redirect's <Endpoint>)
            error.update({node.tag.rpartition("}")[2]: node.text for node in ElementTree.fromstring(err.body) if node.text})
        except ElementTree.ParseError:
            pass
    headers = {name.lower(): value for name, value in (err.headers or [])}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": err.status_code, "HTTPHeaders": headers}},
                       err.operation_name or "GetObject")
