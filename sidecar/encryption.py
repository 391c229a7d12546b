"""Server-side encryption of every object runsync writes: the one place that decides the arguments.

A Store's `serverSideEncryption` reaches the pod as `RUNSYNC_SSE` / `RUNSYNC_SSE_KMS_KEY_ID`
(the CLI's `--sse` / `--sse-kms-key-id` set the same variables). `install` hooks the arguments
into a botocore client's (or session's) events for every request that creates an object
(PutObject, CreateMultipartUpload, CopyObject), so the small PUTs, both multipart paths
(boto3's transfer manager and the CRT), manifests, the lease and the code state all carry them,
and no call site passes them by hand. `check` writes one object and HEADs it, so a server that
cannot apply the mode stops runsync at start instead of leaving checkpoints unencrypted.

Reads need no arguments for SSE-S3 and SSE-KMS. SSE-C (customer-provided keys, sent with every
read and write) is not offered: the key would have to live in every pod and laptop that reads.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping

from botocore.exceptions import BotoCoreError, ClientError

from . import contract
from .errors import InputError, StoreError, StoreUnreachable
from .logs import log

AES256 = "AES256"
KMS = "aws:kms"
MODES = (AES256, KMS)
WRITES = ("PutObject", "CreateMultipartUpload", "CopyObject")
"""The S3 operations that create an object (UploadPart and CompleteMultipartUpload take the
mode from CreateMultipartUpload)."""

_MODE_NAMES = f"--sse / {contract.ENV_SSE}"
_KEY_NAMES = f"--sse-kms-key-id / {contract.ENV_SSE_KMS_KEY_ID}"


@dataclasses.dataclass(frozen=True)
class Encryption:
    """What every write asks S3 for: nothing, SSE-S3, or SSE-KMS (under a key, or the default)."""

    mode: str | None = None
    """None (the bucket's default applies), `AES256` or `aws:kms`."""
    kms_key_id: str | None = None
    """With `aws:kms`: the key's id, ARN or alias; None for the account's default KMS key."""

    @classmethod
    def parse(cls, mode: str | None, kms_key_id: str | None) -> "Encryption":
        mode, kms_key_id = (mode or "").strip() or None, (kms_key_id or "").strip() or None
        if mode is not None and mode not in MODES:
            raise InputError(f"{_MODE_NAMES}: unknown server-side encryption {mode!r}; expected AES256 or "
                             "aws:kms (SSE-C (customer-provided keys) is not offered)")
        if kms_key_id is not None and mode != KMS:
            raise InputError(f"{_KEY_NAMES} is only used with aws:kms, not with {mode or 'no'} encryption; "
                             f"fix: set {_MODE_NAMES} to aws:kms, or unset the key id")
        return cls(mode, kms_key_id)

    def args(self) -> dict[str, str]:
        """The arguments of a write (boto3's names), empty when nothing is asked."""
        args = {"ServerSideEncryption": self.mode} if self.mode else {}
        if self.kms_key_id:
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    def headers(self) -> dict[str, str]:
        """The same as the HTTP headers of a write, for requests not built by botocore (crtobjects)."""
        names = {"ServerSideEncryption": "x-amz-server-side-encryption",
                 "SSEKMSKeyId": "x-amz-server-side-encryption-aws-kms-key-id"}
        return {names[k]: v for k, v in self.args().items()}

    def __str__(self) -> str:
        if self.mode is None:
            return "none"
        return f"{self.mode} (key {self.kms_key_id})" if self.kms_key_id else self.mode


def from_env(env: Mapping[str, str] = os.environ) -> Encryption:
    """What this process's writes ask for (the pod's env, or the CLI's flags)."""
    return Encryption.parse(env.get(contract.ENV_SSE), env.get(contract.ENV_SSE_KMS_KEY_ID))


def install(events, encryption: Encryption) -> None:
    """Make every object-creating request sent through `events` (a client's `meta.events`, or a
    botocore session before it makes clients) carry `encryption`'s arguments."""
    args = encryption.args()
    if not args:
        return

    def add(params: dict, **_) -> None:
        params.update(args)

    for op in WRITES:
        events.register(f"before-parameter-build.s3.{op}", add, unique_id=f"runsync-sse-{op}")


def check(s3, bucket: str, key: str, encryption: Encryption, where: str) -> None:
    """Write a small object at `key` through `s3` (which `install` set up) and HEAD it: a
    `StoreError` naming the mode and the fix unless S3 reports the mode asked for. `where` names
    the store in messages. Nothing asked, nothing checked."""
    if encryption.mode is None:
        return
    endpoint = getattr(s3.meta, "endpoint_url", None) or "AWS S3"
    fix = (f"fix: enable {encryption.mode} on the S3 server" +
           (" (a KMS, and a key these credentials may use: kms:GenerateDataKey, kms:Decrypt)"
            if encryption.mode == KMS else "") +
           ", or change serverSideEncryption of the Store (RUNSYNC_SSE, --sse)")
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"", ContentType="text/plain")
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as err:
        error = err.response.get("Error", {})
        raise StoreError(f"{where}: the S3 server at {endpoint} refused a write with server-side encryption "
                         f"{encryption} ({error.get('Code')}: {error.get('Message')}); {fix}") from None
    except BotoCoreError as err:
        raise StoreUnreachable(f"{where}: cannot check server-side encryption {encryption} at {endpoint} "
                         f"({type(err).__name__}: {err}); fix: check AWS_ENDPOINT_URL_S3 and that the "
                         "server is up") from None
    applied = head.get("ServerSideEncryption")
    if applied != encryption.mode:
        raise StoreError(f"{where}: the S3 server at {endpoint} stored an object written with server-side "
                         f"encryption {encryption} as {applied or 'unencrypted'}; {fix}")
    log.info("server-side encryption confirmed", extra={"fields": {
        "store": where, "sse": applied, "kms_key_id": head.get("SSEKMSKeyId"), "checked": key}})
