"""A bucket in another region than the one requests are signed for.

S3 refuses such a request and (mostly) names the bucket's region. botocore follows it on its own
(utils.S3RegionRedirectorv2); the CRT's S3 client, which restores and small uploads go through,
signs for the one region it was given and does not. So runsync says so in one line, and the
operator's Store check looks for the refusal botocore hid (stores.check_health).
"""

from __future__ import annotations

import re

_CONSTRAINT = re.compile(r"The (\S+) location constraint is incompatible")


def refused_for(response: dict, signed: str | None) -> str | None:
    """When `response` (botocore's parsed response, or a ClientError's) is S3 refusing a request
    for having been signed for `signed` rather than the bucket's region: that region ("" when
    S3 did not name it). Else None. The same answers botocore follows, and no other: a 400 for
    another reason may carry x-amz-bucket-region too (MinIO sends it on every response)."""
    error = response.get("Error", {})
    meta = response.get("ResponseMetadata", {})
    code, status = error.get("Code", ""), meta.get("HTTPStatusCode")
    region = error.get("Region") or meta.get("HTTPHeaders", {}).get("x-amz-bucket-region") or ""
    if code == "IllegalLocationConstraintException":  # an opt-in region: named only in the message
        found = _CONSTRAINT.search(error.get("Message", ""))
        region = region or (found.group(1) if found else "")
    elif status == 400 and code == "400":  # a HEAD's refusal has no body: the header alone says it
        if not region:
            return None
    elif not (code in ("AuthorizationHeaderMalformed", "PermanentRedirect") or status in (301, 302, 307)):
        return None
    return None if region and region == signed else region


def wrong(bucket: str, region: str, signed: str | None, fix: str) -> str:
    """The line for a bucket found in `region` ("" unknown) by a request signed for `signed`."""
    where = f"is in region {region}, not {signed}" if region else f"is not in region {signed}"
    return (f"bucket {bucket!r} {where} (the region requests are signed for); fix: "
            + fix.format(region=region or "the bucket's region"))
