"""The errors runsync raises on purpose. Each message names the thing, the value and the fix."""

from __future__ import annotations


class RunsyncError(Exception):
    """Base of every error that runsync reports to a user as one line."""


class InputError(RunsyncError, ValueError):
    """Bad input from the user (exit code 2): an annotation, an option, a URL, a run path."""


class ConfigError(InputError):
    """A bad annotation (or CLI option in the same syntax).

    `str(err)` reads `runsync.dev/save: unknown policy "livee" in "ckpt/*.pt:livee"; expected
    live, now or end`: the annotation, the problem with the value, and what is allowed.
    """

    def __init__(self, annotation: str, problem: str, allowed: str):
        self.annotation = annotation
        self.problem = problem
        self.allowed = allowed
        super().__init__(f"{annotation}: {problem}; {allowed}")


class StoreError(RunsyncError):
    """The S3 store cannot be used as asked: bad URL, credentials, bucket, endpoint."""


class StoreUnreachable(StoreError):
    """The store did not answer (no connection, a timeout): waiting may cure it; a refusal won't."""


class RunPathError(InputError):
    """A malformed run path (`NAMESPACE/PROJECT/RUN`), replica or stored name."""


class SaveError(InputError):
    """A `runsync.save` that cannot be honoured as asked."""


class StoreURLError(InputError, StoreError):
    """A malformed `s3://BUCKET/PREFIX`."""


def precondition_failed(err) -> bool:
    """A conditional write (If-Match, If-None-Match) lost (`err`, botocore's ClientError): someone else wrote first. SeaweedFS and
    S3 spell it differently; the lease, head.json, run.json (runmeta) and the commit ask here."""
    return err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412") or \
        err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 412
