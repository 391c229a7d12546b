"""The operator's QoS class and quantities agree with Kubernetes' own rules (the client's parser as
the oracle), so a Guaranteed pod is recognised and kept Guaranteed."""

import pytest
from kubernetes.utils import parse_quantity

from runsync_operator import qos


@pytest.mark.parametrize("text", ["500m", "2", "0.5", "16Gi", "512Mi", "1e3", "1.5k", "100M", "250u", "3E", "7Ki", 4])
def test_quantities_read_as_kubernetes_reads_them(text):
    assert qos.quantity(text) == parse_quantity(text)


@pytest.mark.parametrize("text", ["", "1x", "Gi", "one"])
def test_a_bad_quantity_is_refused(text):
    with pytest.raises(ValueError):
        qos.quantity(text)


def c(requests=None, limits=None):
    return {"name": "c", "resources": {k: v for k, v in (("requests", requests), ("limits", limits)) if v}}


G = {"cpu": "1", "memory": "1Gi"}
# (case, containers, init containers, pod-level resources, class)
CASES = [
    ("no resources", [c()], [], None, "BestEffort"),
    ("requests == limits", [c(G, G)], [], None, "Guaranteed"),
    ("limits only (requests default to them)", [c(None, G)], [], None, "Guaranteed"),
    ("same amounts, other spelling", [c({"cpu": "1000m", "memory": "1024Mi"}, G)], [], None, "Guaranteed"),
    ("no CPU limit", [c(G, {"memory": "1Gi"})], [], None, "Burstable"),
    ("an init container without limits", [c(G, G)], [c({"cpu": "100m"})], None, "Burstable"),
    ("requests below limits", [c({"cpu": "500m", "memory": "1Gi"}, G)], [], None, "Burstable"),
    ("pod-level resources win", [c()], [], {"requests": G, "limits": G}, "Guaranteed"),
]


@pytest.mark.parametrize("case,apps,init,pod_level,want", CASES, ids=[x[0] for x in CASES])
def test_qos_class_as_the_kubelet_computes_it(case, apps, init, pod_level, want):
    spec = {"containers": apps, "initContainers": init, **({"resources": pod_level} if pod_level else {})}
    assert qos.qos_class(spec) == want


def test_guaranteed_resources_keep_the_class():
    ours = qos.guaranteed({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}}, "500m")
    assert ours == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"cpu": "500m", "memory": "512Mi"}}
    assert qos.qos_class({"containers": [c(G, G), {"name": "x", "resources": ours}]}) == "Guaranteed"
