"""A pod's QoS class, computed as the kubelet does, and resources that keep a Guaranteed pod so.

The kubelet's rule (pkg/apis/core/helper/qos): Guaranteed when every container, init containers
included, has CPU and memory limits and the pod's summed requests equal its summed limits;
BestEffort when nothing requests or limits CPU or memory; Burstable otherwise. A container's
unset requests default to its limits. Injecting a container without a CPU limit into a
Guaranteed pod would make it Burstable: another eviction order, no exclusive CPUs.
"""

from __future__ import annotations

import copy
import re
from fractions import Fraction

COMPUTE = ("cpu", "memory")
_SUFFIX = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 10**3), "": 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}
_QUANTITY = re.compile(r"([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))(?:[eE]([+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE])?)")


def quantity(value) -> Fraction:
    """A Kubernetes quantity (`500m`, `16Gi`, `1e3`, `2`) as an exact number; ValueError if not one."""
    found = _QUANTITY.fullmatch(str(value).strip())
    if not found:
        raise ValueError(f"not a quantity: {value!r}")
    number, exponent, suffix = found.groups()
    scale = Fraction(10) ** int(exponent) if exponent else _SUFFIX[suffix or ""]
    return Fraction(number) * scale


def qos_class(spec: dict) -> str:
    """`Guaranteed`, `Burstable` or `BestEffort` for a pod spec (pod-level resources win)."""
    if (spec.get("resources") or {}).get("limits") or (spec.get("resources") or {}).get("requests"):
        return _class([spec["resources"]])
    return _class([c.get("resources") or {} for c in (spec.get("containers") or []) + (spec.get("initContainers") or [])])


def _class(resources: list[dict]) -> str:
    requests: dict[str, Fraction] = {}
    limits: dict[str, Fraction] = {}
    guaranteed = True
    for res in resources:
        try:
            lim = {k: quantity(v) for k, v in (res.get("limits") or {}).items() if k in COMPUTE}
            req = {**lim, **{k: quantity(v) for k, v in (res.get("requests") or {}).items() if k in COMPUTE}}
        except ValueError:
            return "Burstable"  # the API server refuses such a pod anyway; never claim Guaranteed
        for k, v in req.items():
            if v > 0:
                requests[k] = requests.get(k, 0) + v
        found = {k for k, v in lim.items() if v > 0}
        for k in found:
            limits[k] = limits.get(k, 0) + lim[k]
        guaranteed = guaranteed and found >= set(COMPUTE)
    if not requests and not limits:
        return "BestEffort"
    return "Guaranteed" if guaranteed and requests == limits else "Burstable"


def guaranteed(resources: dict, cpu: str) -> dict:
    """`resources` with requests == limits for CPU (`cpu`) and memory (its memory limit, else its
    request), so that the container keeps its pod Guaranteed."""
    out = copy.deepcopy(resources)
    limits = out.setdefault("limits", {})
    requests = out.setdefault("requests", {})
    limits["cpu"] = cpu
    limits.setdefault("memory", requests.get("memory", "512Mi"))
    requests.update({"cpu": limits["cpu"], "memory": limits["memory"]})
    return out
