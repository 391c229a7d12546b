"""The images an injected pod runs, with their digests, for the run's metadata.

The downward API cannot tell a container its image's digest, and the kubelet reports imageIDs
only once containers started. So the operator watches injected pods (a server-side label
selector, set in `startup`) and, once their statuses carry imageIDs, patches the annotation
`runsync.dev/images` (JSON: container name → imageID). The kubelet rewrites the sidecar's
annotations file; the sidecar records the images in the replica's `replica.json`.

A plain event handler: kopf keeps no progress annotation or finalizer on pods for it. Only the
replica holding the Store-handlers Lease patches (one patch per pod, not one per replica).
"""

from __future__ import annotations

import json

import kopf

from runsync import contract


def images_of(status: dict) -> dict[str, str]:
    """Container name → imageID of every container (init ones too) the kubelet has started."""
    found = {}
    for s in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        if s.get("name") and s.get("imageID"):
            found[s["name"]] = s["imageID"]
    return found


def annotation_for(current: str | None, status: dict) -> str | None:
    """The new `runsync.dev/images` value, or None when it already says all there is."""
    try:
        known = json.loads(current) if current else {}
    except ValueError:
        known = {}
    if not isinstance(known, dict):
        known = {}
    found = {**known, **images_of(status)}
    return json.dumps(found, sort_keys=True) if found != known else None


@kopf.on.event("pods", labels={contract.INJECT_LABEL: "true"},
               annotations={contract.STATUS: contract.STATUS_INJECTED})
def record_images(type: str | None, status: dict, meta: dict, patch: kopf.Patch, memo: kopf.Memo, **_) -> None:
    if type == "DELETED":
        return
    election = memo.get("election")
    if election is not None and not election.leading:
        return
    value = annotation_for((meta.get("annotations") or {}).get(contract.IMAGES), status or {})
    if value is not None:
        patch.metadata.annotations[contract.IMAGES] = value
