"""The `Store` CRD (runsync.dev/v1alpha1): where a namespace's runs live, and whether it works.

An index of Stores lets admission find a pod's Store without an API call. A handler checks
each Store (bucket reachable with its credentials; with `serverSideEncryption`, an object
written as its pods write is stored encrypted so) and reports a `Ready` condition, with an
event when it changes.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime

import kopf

from runsync import contract

GROUP, VERSION, PLURAL = "runsync.dev", "v1alpha1", "stores"


@dataclasses.dataclass(frozen=True)
class StoreSpec:
    bucket: str
    prefix: str = ""
    endpoint: str | None = None
    region: str = contract.DEFAULT_REGION
    secret: str | None = None
    """Secret with the access keys; None for workload identity (IRSA, GKE WI, Pod Identity)."""
    access_key_id_key: str = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: str = "AWS_SECRET_ACCESS_KEY"
    sse: str | None = None
    kms_key_id: str | None = None

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    @classmethod
    def parse(cls, spec: dict) -> "StoreSpec":
        creds = spec.get("credentialsSecret") or {}
        sse = spec.get("serverSideEncryption") or {}
        return cls(
            bucket=spec["bucket"], prefix=(spec.get("prefix") or "").strip("/"),
            endpoint=spec.get("endpoint") or None, region=spec.get("region") or contract.DEFAULT_REGION,
            secret=creds.get("name") or None,
            access_key_id_key=creds.get("accessKeyIdKey") or "AWS_ACCESS_KEY_ID",
            secret_access_key_key=creds.get("secretAccessKeyKey") or "AWS_SECRET_ACCESS_KEY",
            sse=sse.get("type") or None, kms_key_id=sse.get("kmsKeyId") or None,
        )


@kopf.index(GROUP, VERSION, PLURAL)
def stores_by_name(namespace: str, name: str, spec: dict, **_):
    """(namespace, name) → spec: admission looks Stores up here, never in the API."""
    return {(namespace, name): dict(spec)}


def check_health(spec: StoreSpec, credentials: tuple[str, str] | None, now: datetime.datetime | None = None,
                 namespace: str = "default") -> dict:
    """A `Ready` condition: can these credentials list the store's bucket, is it in the Store's
    region, and does S3 apply the Store's server-side encryption (a PUT and a HEAD under the
    namespace, as its pods will)?"""
    import boto3
    import botocore.config

    from runsync import encryption, keys, transfer

    kwargs = {}
    if credentials:
        kwargs = {"aws_access_key_id": credentials[0], "aws_secret_access_key": credentials[1]}
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=spec.endpoint, region_name=spec.region,
        config=botocore.config.Config(connect_timeout=3, read_timeout=10, retries={"max_attempts": 2},
                                      s3={"addressing_style": "path" if spec.endpoint else "auto"}),
        **kwargs)
    stamp = (now or datetime.datetime.now(datetime.timezone.utc)).isoformat(timespec="seconds")
    store = keys.StoreURL.parse(spec.url)
    sse = encryption.Encryption.parse(spec.sse, spec.kms_key_id)  # the CRD's enum and rule keep it valid
    encryption.install(s3.meta.events, sse)
    refusals = _region_refusals(s3)
    for reason, check in (("StoreUnreachable", lambda: transfer.check_store(s3, store)),
                          ("WrongRegion", lambda: check_region(spec, refusals)),
                          ("EncryptionNotApplied", lambda: encryption.check(
                              s3, store.bucket, keys.store_sse_check_key(store, namespace), sse, spec.url))):
        try:
            check()
        except Exception as err:  # noqa: BLE001 - every failure is a condition, not a crash
            message = str(err).replace(f"at {s3.meta.endpoint_url}", f"at {spec.endpoint or 'AWS S3'}")
            return {"type": "Ready", "status": "False", "reason": reason, "message": message,
                    "lastTransitionTime": stamp}
    encrypted = f"; objects written there are stored with server-side encryption {sse}" if sse.mode else ""
    return {"type": "Ready", "status": "True", "reason": "BucketReachable",
            "message": f"{spec.url} can be listed with the configured credentials{encrypted}",
            "lastTransitionTime": stamp}


def _region_refusals(s3) -> list[str]:
    """The regions S3 named while refusing this client's requests for being signed for its own
    (filled as responses arrive, before botocore follows them to the bucket's region)."""
    from runsync import regions

    found: list[str] = []

    def seen(parsed_response=None, **_) -> None:
        if parsed_response is not None:
            region = regions.refused_for(parsed_response, s3.meta.region_name)
            if region is not None:
                found.append(region)

    s3.meta.events.register("response-received.s3", seen)
    return found


def check_region(spec: StoreSpec, refusals: list[str]) -> None:
    """The bucket answers requests signed for the Store's region. botocore followed S3 to the
    bucket's region on its own, so the listing passed either way; a pod's restore-init and small
    uploads sign for spec.region through the CRT, which does not follow: they would fail. A
    server that names another region but answers anyway (MinIO's `US`) passes."""
    if refusals:
        from runsync import regions

        raise ValueError(regions.wrong(spec.bucket, refusals[0], spec.region,
                                       "set the Store's spec.region: {region}"))


class CredentialsUnavailable(Exception):
    """The Store's Secret cannot be used; `condition` says why, the same words on every check."""

    def __init__(self, status: str, reason: str, message: str):
        super().__init__(message)
        self.condition = {"type": "Ready", "status": status, "reason": reason, "message": message}


def read_credentials(namespace: str, spec: StoreSpec) -> tuple[str, str] | None:
    if spec.secret is None:
        return None
    import kubernetes

    try:
        secret = kubernetes.client.CoreV1Api().read_namespaced_secret(spec.secret, namespace)
    except kubernetes.client.ApiException as err:
        # The chart grants no Secret by default: that is a setting, not a failure of the Store.
        if err.status == 403:
            raise CredentialsUnavailable(
                "Unknown", "SecretAccessNotGranted",
                f"the operator may not read Secret {spec.secret!r} in namespace {namespace!r}, so the bucket "
                "is not checked (pods still get the keys); to check it, install the chart with "
                f"storeHealth.secretNamespaces={{{namespace}}} or storeHealth.readSecrets=true") from None
        if err.status == 404:
            raise CredentialsUnavailable(
                "False", "CredentialsUnreadable",
                f"Secret {spec.secret!r} does not exist in namespace {namespace!r}; create it with the keys "
                f"{spec.access_key_id_key} and {spec.secret_access_key_key}, or fix spec.credentialsSecret.name"
            ) from None
        raise CredentialsUnavailable(  # no headers or bodies: they change on every call
            "False", "CredentialsUnreadable",
            f"cannot read Secret {spec.secret!r} in namespace {namespace!r}: {err.status} {err.reason}") from None
    data = secret.data or {}
    missing = [k for k in (spec.access_key_id_key, spec.secret_access_key_key) if k not in data]
    if missing:
        raise CredentialsUnavailable(
            "False", "CredentialsUnreadable",
            f"Secret {spec.secret!r} in namespace {namespace!r} has no key {', '.join(map(repr, missing))}; add it, "
            "or name the keys in spec.credentialsSecret.accessKeyIdKey / secretAccessKeyKey")
    return (base64.b64decode(data[spec.access_key_id_key]).decode(),
            base64.b64decode(data[spec.secret_access_key_key]).decode())


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL, field="spec")
@kopf.timer(GROUP, VERSION, PLURAL, interval=300, initial_delay=60)
def report_health(spec: dict, status: dict, namespace: str, name: str, body, patch: kopf.Patch, memo: kopf.Memo,
                  logger, **_) -> None:
    election = memo.get("election")
    if election is not None and not election.leading:  # one replica checks: one S3 call, one event
        logger.debug(f"Store {namespace}/{name}: checked by the replica holding the Lease "
                    f"({election.holder() or 'none yet'}), not this one")
        return
    parsed = StoreSpec.parse(spec)
    try:
        condition = check_health(parsed, read_credentials(namespace, parsed), namespace=namespace)
    except CredentialsUnavailable as err:
        condition = {**err.condition,
                     "lastTransitionTime": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    previous = next((c for c in (status or {}).get("conditions", []) if c.get("type") == "Ready"), {})
    if previous.get("status") == condition["status"] and previous.get("message") == condition["message"]:
        return
    patch.status["conditions"] = [condition]
    kind = "Warning" if condition["status"] == "False" else "Normal"
    kopf.event(body, type=kind, reason=condition["reason"], message=condition["message"])
