"""The Helm chart, linted and rendered by the real helm binary (pinned in scripts/fetch_helm.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

import structural
from harness import CHART, HELM, render_chart
from prometheus_client import CollectorRegistry

from runsync import contract
from runsync import metrics as sidecar_metrics
from runsync_operator import containers, leader, readiness
from runsync_operator import metrics as operator_metrics
from runsync_operator.values import WEBHOOK_ID, Values

NAMESPACE = "runsync-system"
CRD = yaml.safe_load((Path(CHART) / "crds" / "stores.runsync.dev.yaml").read_text())

VALUE_SETS = {
    "default": [],
    "cert-manager": ["--set", "tls.mode=cert-manager"],
    "cert-manager with an issuer": ["--set", "tls.mode=cert-manager", "--set", "tls.certManager.issuerRef.name=corp-ca",
                                    "--set", "tls.certManager.issuerRef.kind=ClusterIssuer"],
    "service monitor": ["--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.labels.release=prom"],
    "default store": ["--set", "defaultStore.enabled=true", "--set", "defaultStore.namespace=team-a",
                      "--set", "defaultStore.bucket=ml-runs", "--set", "defaultStore.credentialsSecret=s3-keys",
                      "--set", "defaultStore.endpoint=https://s3.example.internal"],
    "one replica, raised grace, no secret access": ["--set", "operator.replicas=1", "--set", "sidecar.raiseGrace=true",
                                                     "--set", "storeHealth.readSecrets=false"],
    "secrets in two namespaces": ["--set", "storeHealth.secretNamespaces={team-a,team-b}"],
    "secrets everywhere": ["--set", "storeHealth.readSecrets=true"],
    "pod monitor and dashboard": ["--set", "metrics.podMonitor.enabled=true", "--set", "metrics.podMonitor.labels.release=prom",
                                  "--set", "metrics.dashboard.enabled=true", "--set", "metrics.dashboard.namespace=monitoring",
                                  "--set", "metrics.dashboard.annotations.grafana_folder=ML"],
    "no network policy, own priority and spread": [
        "--set", "networkPolicy.enabled=false", "--set", "operator.priorityClassName=",
        "--set-json", 'operator.topologySpreadConstraints=[{"maxSkew":2,"topologyKey":"kubernetes.io/hostname",'
                      '"whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"app":"x"}}}]'],
    "scrapers only": ["--set-json", 'networkPolicy.metricsFrom=[{"namespaceSelector":{"matchLabels":'
                                    '{"kubernetes.io/metadata.name":"monitoring"}}}]'],
}


@pytest.fixture(scope="module")
def helm():
    if not Path(HELM).exists():
        pytest.fail(f"helm is not at {HELM}; run scripts/setup (it installs the pinned binary)")
    return HELM


def render(helm, args) -> list[dict]:
    return render_chart(args, NAMESPACE)


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_lint_and_render_valid_manifests(helm, name):
    args = VALUE_SETS[name]
    lint = subprocess.run([helm, "lint", CHART, "--strict", *args], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    docs = render(helm, args)
    for doc in docs:
        if doc["apiVersion"].startswith(("cert-manager.io/", "monitoring.coreos.com/", "runsync.dev/")):
            continue  # not Kubernetes' own kinds: checked below
        for version in ("1.29", "1.33"):
            kubernetes_validate.validate(doc, version, strict=True)
    crds = by_kind(docs, "CustomResourceDefinition")
    assert crds, "helm template --include-crds rendered no CRD"
    for crd in crds:  # what the apiserver checks and kubernetes-validate does not
        assert structural.problems(crd) == [], crd["metadata"]["name"]
    for store in by_kind(docs, "Store"):
        structural.validate(store, CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
        assert store["metadata"]["namespace"] == "team-a"
    for doc in docs:
        labels = doc["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "runsync", doc["kind"]
        assert labels.get("app.kubernetes.io/instance") == "rs" or doc["kind"] == "CustomResourceDefinition"
    if name.startswith("cert-manager"):
        (cert,) = [c for c in by_kind(docs, "Certificate") if not c["spec"].get("isCA")]
        assert cert["spec"]["secretName"] == "rs-runsync-webhook-tls"
        assert "rs-runsync.runsync-system.svc" in cert["spec"]["dnsNames"]
        (hook,) = by_kind(docs, "MutatingWebhookConfiguration")
        # the caBundle comes from the CA: the chart's CA Certificate, or, with your issuer, the
        # ca.crt cert-manager puts beside the serving certificate
        source = "rs-runsync-webhook" if "issuer" in name else "rs-runsync-ca"
        assert hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"runsync-system/{source}"
        assert "caBundle" not in hook["webhooks"][0]["clientConfig"]
        assert bool(by_kind(docs, "Issuer")) == ("issuer" not in name)
    else:  # the operator keeps the CA and sets the caBundle: no key material in the chart
        assert not by_kind(docs, "Secret")
        (hook,) = by_kind(docs, "MutatingWebhookConfiguration")
        assert "caBundle" not in hook["webhooks"][0]["clientConfig"]
    if name == "service monitor":
        (sm,) = by_kind(docs, "ServiceMonitor")
        assert sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["metadata"]["labels"]["release"] == "prom"
    assert bool(by_kind(docs, "PodDisruptionBudget")) == ("one replica" not in name)
    assert bool(by_kind(docs, "NetworkPolicy")) == ("no network policy" not in name)
    assert bool(by_kind(docs, "PodMonitor")) == bool(by_kind(docs, "ConfigMap")) == ("pod monitor" in name)


def test_operator_ingress_is_the_webhook_and_metrics_only(helm):
    docs = render(helm, [])
    (policy,) = by_kind(docs, "NetworkPolicy")
    (deployment,) = by_kind(docs, "Deployment")
    pod = deployment["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert policy["spec"]["policyTypes"] == ["Ingress"]         # egress: the apiserver and S3 endpoints
    ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {"webhook", "metrics"}
    named = {p["name"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports <= named                                       # named ports that the container has
    assert all("from" not in rule for rule in policy["spec"]["ingress"])
    (scrapers,) = by_kind(render(helm, VALUE_SETS["scrapers only"]), "NetworkPolicy")
    webhook, metrics = scrapers["spec"]["ingress"]
    assert "from" not in webhook and metrics["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"}


def test_operator_is_prioritized_and_spread_across_zones(helm):
    (deployment,) = by_kind(render(helm, []), "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    assert spec["priorityClassName"] == "system-cluster-critical"
    (spread,) = spec["topologySpreadConstraints"]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone" and spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (own,) = by_kind(render(helm, VALUE_SETS["no network policy, own priority and spread"]), "Deployment")
    spec = own["spec"]["template"]["spec"]
    assert "priorityClassName" not in spec
    assert [c["topologyKey"] for c in spec["topologySpreadConstraints"]] == ["kubernetes.io/hostname"]


def _metric_names() -> set[str]:
    """Every series name the sidecar and the operator can export (counters end in _total)."""
    suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
    registry = CollectorRegistry()
    sidecar_metrics.Metrics(registry)
    families = list(registry.collect()) + list(operator_metrics.METRICS.registry.collect())
    return {f.name + s for f in families for s in suffixes[f.type]}


def test_pod_monitor_and_dashboard_watch_the_metrics_that_exist(helm):
    docs = render(helm, VALUE_SETS["pod monitor and dashboard"])
    (monitor,) = by_kind(docs, "PodMonitor")
    assert monitor["spec"]["selector"] == {"matchLabels": {contract.INJECT_LABEL: "true"}}  # every injected pod
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == containers.METRICS_PORT_NAME and endpoint["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    (configmap,) = by_kind(docs, "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "ML"}
    (text,) = configmap["data"].values()
    dashboard = json.loads(text)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"\brunsync_[a-z_]+", " ".join(exprs)))
    known = _metric_names()
    assert used and used <= known, sorted(used - known)
    sidecar = {n for n in known if not n.startswith("runsync_admission")}
    assert len(used & sidecar) >= 8, "the dashboard shows the sidecars' metrics"
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_webhook_path_port_and_service_match_what_the_operator_serves(helm):
    docs = render(helm, [])
    (hook,) = by_kind(docs, "MutatingWebhookConfiguration")
    (service,) = by_kind(docs, "Service")
    (deployment,) = by_kind(docs, "Deployment")
    webhook = hook["webhooks"][0]
    target = webhook["clientConfig"]["service"]
    assert target["path"] == f"/{WEBHOOK_ID}"           # kopf serves the handler at /<id>
    assert target["name"] == service["metadata"]["name"] and target["namespace"] == NAMESPACE
    port = next(p for p in service["spec"]["ports"] if p["port"] == target["port"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    values = Values.from_env(env)                       # what `runsync operator` will read
    assert named[port["targetPort"]] == values.webhook_port
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert container["args"][0] == "operator"
    assert values.certfile.startswith(container["volumeMounts"][0]["mountPath"])
    # Every RUNSYNC_OPERATOR_ variable the chart sets is a setting the operator knows.
    known = {"RUNSYNC_OPERATOR_" + f.upper() for f in Values.__dataclass_fields__}
    assert set(env) <= known, set(env) - known
    assert values.namespace == NAMESPACE and values.api_port == 7070 and values.grace_floor == 60
    assert values.sidecar_resources["limits"]["memory"] == "512Mi"
    # Only opted-in pods, never the release namespace or kube-system.
    assert webhook["objectSelector"] == {"matchLabels": {contract.INJECT_LABEL: "true"}}
    excluded = webhook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn" and {NAMESPACE, "kube-system"} <= set(excluded["values"])
    assert webhook["sideEffects"] == "None" and webhook["failurePolicy"] == "Fail"
    assert webhook["rules"][0]["operations"] == ["CREATE"]


def test_readiness_waits_for_the_store_index(helm):
    """The Service sends admissions only to ready pods: ready is the operator's /readyz (Store
    index filled), not an open port; liveness stays kopf's /healthz."""
    (deployment,) = by_kind(render(helm, []), "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    values = Values.from_env({e["name"]: e["value"] for e in container["env"]})
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == readiness.READY_PATH
    assert named[ready["port"]] == int(values.metrics_addr.rpartition(":")[2])   # where /readyz is served
    live = container["livenessProbe"]["httpGet"]
    assert live["path"] == "/healthz" and f":{named[live['port']]}/healthz" in " ".join(container["args"])


def test_cert_manager_issues_the_serving_cert_from_a_separate_ca(helm):
    """selfSigned Issuer → CA Certificate → CA Issuer → serving Certificate: renewing the serving
    certificate does not change the caBundle, which cainjector takes from the CA."""
    docs = render(helm, VALUE_SETS["cert-manager"])
    issuers = {i["metadata"]["name"]: i["spec"] for i in by_kind(docs, "Issuer")}
    certs = {c["metadata"]["name"]: c["spec"] for c in by_kind(docs, "Certificate")}
    ca, serving = certs["rs-runsync-ca"], certs["rs-runsync-webhook"]
    assert ca["isCA"] is True and "selfSigned" in issuers[ca["issuerRef"]["name"]]
    assert ca["privateKey"]["rotationPolicy"] == "Never"    # a renewed CA still verifies issued leaves
    assert issuers[serving["issuerRef"]["name"]] == {"ca": {"secretName": ca["secretName"]}}
    assert not serving.get("isCA") and serving["issuerRef"]["kind"] == "Issuer"
    assert serving["secretName"] != ca["secretName"]
    hours = {n: int(c["duration"].rstrip("h")) for n, c in certs.items()}
    assert hours["rs-runsync-webhook"] < hours["rs-runsync-ca"]   # the leaf renews many times per CA
    (hook,) = by_kind(docs, "MutatingWebhookConfiguration")
    assert hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "runsync-system/rs-runsync-ca"
    assert render(helm, VALUE_SETS["cert-manager"]) == docs        # nothing changes from render to render


def test_the_charts_own_tls_is_kept_by_the_operator_and_renders_the_same_twice(helm):
    """No genCA: a render (helm template, a GitOps sync, an upgrade) changes nothing, so neither
    the caBundle nor the operator's pods churn. The operator keeps its CA in a Secret it may
    read and write by name, and may set the caBundle of this webhook configuration only."""
    docs = render(helm, [])
    assert render(helm, []) == docs
    (deployment,) = by_kind(docs, "Deployment")
    assert "checksum/tls" not in deployment["spec"]["template"]["metadata"].get("annotations", {})
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    values = Values.from_env({e["name"]: e["value"] for e in container["env"]})
    (hook,) = by_kind(docs, "MutatingWebhookConfiguration")
    assert values.tls_secret == "rs-runsync-webhook-ca" and values.webhook_config == hook["metadata"]["name"]
    assert "rs-runsync.runsync-system.svc" in values.webhook_hosts.split(",")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]] and values.certfile.startswith("/tmp/")   # written, not mounted
    grants = {}
    for role in by_kind(docs, "Role") + by_kind(docs, "ClusterRole"):
        for rule in role["rules"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    grants[(role["metadata"].get("namespace"), resource, verb)] = tuple(rule.get("resourceNames", ()))
    assert grants[(NAMESPACE, "secrets", "get")] == grants[(NAMESPACE, "secrets", "update")] == (values.tls_secret,)
    assert grants[(NAMESPACE, "secrets", "create")] == ()
    assert grants[(None, "mutatingwebhookconfigurations", "get")] == (hook["metadata"]["name"],)
    assert grants[(None, "mutatingwebhookconfigurations", "patch")] == (hook["metadata"]["name"],)
    cert_manager = render(helm, VALUE_SETS["cert-manager"])
    assert not [r for d in cert_manager if d["kind"] in ("Role", "ClusterRole") for r in d["rules"]
                if "mutatingwebhookconfigurations" in r["resources"]]


def test_operator_runs_restricted_and_rbac_is_least_privilege(helm):
    docs = render(helm, [])
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    for c in deployment["spec"]["template"]["spec"]["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
        assert sc["capabilities"] == {"drop": ["ALL"]} and isinstance(sc["runAsUser"], int)
    (role,) = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == "rs-runsync"]
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    needed = {("runsync.dev", "stores", v) for v in ("get", "list", "watch", "patch")} | \
        {("runsync.dev", "stores/status", "get"), ("runsync.dev", "stores/status", "patch"),
         ("", "events", "create"), ("events.k8s.io", "events", "create")} | \
        {("batch", "cronjobs", v) for v in ("get", "create", "update", "delete")} | \
        {("", "pods", v) for v in ("list", "watch", "patch")}  # gc CronJobs; injected pods' image digests
    assert granted == needed
    no_secrets = render(helm, ["--set", "storeHealth.readSecrets=false"])
    (role,) = [r for r in by_kind(no_secrets, "ClusterRole") if r["metadata"]["name"] == "rs-runsync"]
    assert not [r for r in role["rules"] if "secrets" in r["resources"]]


def _secret_grants(docs) -> dict[str, set]:
    """namespace ('*' for all) → the verbs on Secrets the operator's ServiceAccount is bound to."""
    roles = {(d["kind"], d["metadata"].get("namespace"), d["metadata"]["name"]): d for d in docs
             if d["kind"] in ("Role", "ClusterRole")}
    grants: dict[str, set] = {}
    for binding in by_kind(docs, "RoleBinding") + by_kind(docs, "ClusterRoleBinding"):
        assert {"kind": "ServiceAccount", "name": "rs-runsync", "namespace": NAMESPACE} in binding["subjects"]
        namespace = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        role = roles[(ref["kind"], namespace if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:  # by name: the webhook's own TLS Secret, not the Stores'
            if "secrets" in rule["resources"] and "" in rule["apiGroups"] and not rule.get("resourceNames") \
                    and rule["verbs"] != ["create"]:
                grants.setdefault(namespace or "*", set()).update(rule["verbs"])
    return grants


def test_the_store_handlers_lease_is_granted_in_the_release_namespace_only(helm):
    docs = render(helm, [])
    (role,) = [d for d in by_kind(docs, "Role") if "leases" in d["rules"][0]["resources"]]
    assert role["metadata"]["namespace"] == NAMESPACE
    granted = {(v, tuple(r.get("resourceNames", ()))) for r in role["rules"] for v in r["verbs"]}
    # create cannot be limited by name (the name is in the body); get and update only this Lease
    assert granted == {("create", ()), ("get", (leader.LEASE_NAME,)), ("update", (leader.LEASE_NAME,))}
    (binding,) = [b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert binding["metadata"]["namespace"] == NAMESPACE
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "rs-runsync", "namespace": NAMESPACE}]


def test_secret_access_is_off_by_default_and_granted_per_namespace(helm):
    assert _secret_grants(render(helm, [])) == {}      # no Secret of any namespace by default
    per_namespace = _secret_grants(render(helm, VALUE_SETS["secrets in two namespaces"]))
    assert per_namespace == {"team-a": {"get"}, "team-b": {"get"}}
    assert _secret_grants(render(helm, VALUE_SETS["secrets everywhere"])) == {"*": {"get"}}


@pytest.mark.parametrize("args,fragment", [
    (["--set", "operator.replicas=0"], "replicas"),
    (["--set", "webhook.failurePolicy=Sometimes"], "failurePolicy"),
    (["--set", "tls.mode=vault"], "mode"),
    (["--set", "sidecar.apiPort=70000"], "apiPort"),
    (["--set", "webhook.timeoutSeconds=60"], "timeoutSeconds"),
    (["--set", "metrics.podMonitor.interval=soon"], "interval"),
    (["--set", "operator.priorityClassName=Not_Valid"], "priorityClassName"),
    (["--set", "networkPolicy.enable=true"], "enable"),
    (["--set", "operator.replica=3"], "replica"),
    (["--set", "defaultStore.enabled=true", "--set", "defaultStore.bucket=ml-runs"], "/defaultStore/namespace"),
    (["--set", "defaultStore.enabled=true", "--set", "defaultStore.namespace=team-a", "--set", "defaultStore.bucket=Bad_Bucket"],
     "bucket"),
])
def test_bad_values_are_rejected_with_a_message_naming_them(helm, args, fragment):
    result = subprocess.run([helm, "template", "rs", CHART, "--namespace", NAMESPACE, *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert fragment in result.stderr, result.stderr
