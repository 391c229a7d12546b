"""The real operator on one machine, without a cluster (demo and tests).

- `ApiStub`: a tiny aiohttp server on loopback that answers API discovery and list/watch/patch
  of given Store objects: a patch (kopf's finalizer, the Ready status) is applied and sent to
  the watchers, so kopf's index fills and its handlers run as in a cluster. Pods the same way
  (`put_pod` plays the kubelet reporting a pod's status; the label selector is honoured). CronJobs
  (a Store's gc schedule) are kept: create, get, replace, delete. Events are echoed
  and dropped. Every request is recorded (what RBAC must allow). No kube-apiserver can run here.
- `Operator`: `runsync operator` (that is, `kopf run`) as a process, serving real HTTPS
  AdmissionReviews with a trustme certificate.

The pod itself runs in `localpod`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import jsonpatch
import trustme
from aiohttp import web

from . import ports

RUNSYNC = str(Path(sys.executable).with_name("runsync"))
GROUP_VERSION = "runsync.dev/v1alpha1"


class ApiStub:
    def __init__(self, stores: list[dict], secrets: dict[tuple[str, str], dict[str, str]] | None = None):
        self.secrets = secrets or {}
        """(namespace, name) → data of the Secrets Stores name, read by the health check."""
        self.stores = {(s["metadata"]["namespace"], s["metadata"]["name"]): s for s in stores}
        self.version = 1
        self.cronjobs: dict[tuple[str, str], dict] = {}
        """(namespace, name) → the CronJobs the operator made (create, get, replace, delete)."""
        for s in stores:
            s["metadata"].setdefault("resourceVersion", "1")
        self.port = ports.free_ports(1)[0]
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._watches: dict[str, set[asyncio.Queue]] = {"stores": set(), "pods": set()}
        self.pods: dict[tuple[str, str], dict] = {}
        """(namespace, name) → Pod, as `put_pod` left it and the operator patched it."""
        self.requests: list[tuple[str, str, str]] = []
        """(method, path, body) of every request the operator made: what its RBAC must allow."""
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)

    async def _start(self) -> None:
        @web.middleware
        async def record(request: web.Request, handler):
            body = await request.read()
            self.requests.append((request.method, request.path_qs, body.decode("utf-8", "replace")))
            return await handler(request)

        app = web.Application(middlewares=[record])

        def fixed(doc: dict):
            async def handler(request: web.Request):
                return web.json_response(doc)
            return handler

        app.router.add_get("/api", fixed({"kind": "APIVersions", "versions": ["v1"]}))
        app.router.add_get("/api/v1", fixed({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            _res("pods", "Pod", True), _res("namespaces", "Namespace", False), _res("events", "Event", True),
            _res("secrets", "Secret", True)]}))
        app.router.add_get("/apis", fixed({"kind": "APIGroupList", "groups": [{
            "name": "runsync.dev", "versions": [{"groupVersion": GROUP_VERSION, "version": "v1alpha1"}],
            "preferredVersion": {"groupVersion": GROUP_VERSION, "version": "v1alpha1"}}]}))
        app.router.add_get(f"/apis/{GROUP_VERSION}", fixed({
            "kind": "APIResourceList", "groupVersion": GROUP_VERSION,
            "resources": [_res("stores", "Store", True), _res("stores/status", "Store", True)]}))
        app.router.add_get(f"/apis/{GROUP_VERSION}/stores", self._stores)
        app.router.add_get("/api/v1/pods", self._pods)
        app.router.add_patch("/api/v1/namespaces/{ns}/pods/{name}", self._patch_pod)
        app.router.add_get("/api/v1/namespaces/{ns}/secrets/{name}", self._secret)
        app.router.add_patch(f"/apis/{GROUP_VERSION}/namespaces/{{ns}}/stores/{{name}}", self._patch_store)
        app.router.add_patch(f"/apis/{GROUP_VERSION}/namespaces/{{ns}}/stores/{{name}}/status", self._patch_store)
        jobs = "/apis/batch/v1/namespaces/{ns}/cronjobs"
        app.router.add_post(jobs, self._create_cronjob)
        app.router.add_get(jobs + "/{name}", self._cronjob)
        app.router.add_put(jobs + "/{name}", self._cronjob)
        app.router.add_delete(jobs + "/{name}", self._cronjob)
        app.router.add_route("*", "/{tail:.*}", self._echo)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _stores(self, request: web.Request):
        return await self._collection(request, "stores", list(self.stores.values()), GROUP_VERSION, "StoreList")

    async def _pods(self, request: web.Request):
        selector = dict(p.split("=", 1) for p in request.query.get("labelSelector", "").split(",") if "=" in p)
        chosen = [p for p in self.pods.values() if _selected(p, selector)]
        return await self._collection(request, "pods", chosen, "v1", "PodList", selector)

    async def _collection(self, request: web.Request, what: str, items: list[dict], api_version: str, kind: str,
                          selector: dict[str, str] | None = None):
        if request.query.get("watch") in ("true", "1"):
            response = web.StreamResponse()
            await response.prepare(request)
            queue: asyncio.Queue = asyncio.Queue()
            queue.selector = selector or {}
            self._watches[what].add(queue)
            try:
                deadline = self.loop.time() + float(request.query.get("timeoutSeconds", "60"))
                while (left := deadline - self.loop.time()) > 0:
                    try:
                        event = await asyncio.wait_for(queue.get(), left)
                    except asyncio.TimeoutError:
                        break
                    if event is None:  # shutting down
                        break
                    await response.write(json.dumps(event).encode() + b"\n")
            except (asyncio.CancelledError, ConnectionResetError):
                pass
            finally:
                self._watches[what].discard(queue)
            return response
        return web.json_response({"apiVersion": api_version, "kind": kind,
                                  "metadata": {"resourceVersion": str(self.version)}, "items": items})

    def _send(self, what: str, kind: str, obj: dict) -> None:
        for queue in self._watches[what]:
            if _selected(obj, queue.selector):
                queue.put_nowait({"type": kind, "object": json.loads(json.dumps(obj))})

    def put_pod(self, pod: dict) -> None:
        """Add or replace a pod (its status as a kubelet reports it); watchers see it."""
        async def put() -> None:
            key = (pod["metadata"]["namespace"], pod["metadata"]["name"])
            kind = "MODIFIED" if key in self.pods else "ADDED"
            self.version += 1
            obj = json.loads(json.dumps(pod))
            obj["metadata"]["resourceVersion"] = str(self.version)
            obj["metadata"].setdefault("uid", str(uuid.uuid4()))
            self.pods[key] = obj
            self._send("pods", kind, obj)
        asyncio.run_coroutine_threadsafe(put(), self.loop).result(10)

    async def _patch_pod(self, request: web.Request):
        obj = self.pods.get((request.match_info["ns"], request.match_info["name"]))
        if obj is None:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        patched = _merge(obj, json.loads(await request.read() or b"{}"))
        self.version += 1
        patched["metadata"]["resourceVersion"] = str(self.version)
        obj.clear()
        obj.update(patched)
        self._send("pods", "MODIFIED", obj)
        return web.json_response(obj)

    async def _secret(self, request: web.Request):
        data = self.secrets.get((request.match_info["ns"], request.match_info["name"]))
        if data is None:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        return web.json_response({"apiVersion": "v1", "kind": "Secret", "metadata": {
            "namespace": request.match_info["ns"], "name": request.match_info["name"]},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}})

    async def _patch_store(self, request: web.Request):
        obj = self.stores.get((request.match_info["ns"], request.match_info["name"]))
        if obj is None:
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        body = json.loads(await request.read() or b"{}")
        try:
            if request.content_type == "application/json-patch+json":
                patched = jsonpatch.apply_patch(obj, body)
            else:  # merge patch (RFC 7386), what kopf sends for annotations and status
                patched = _merge(obj, body)
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as err:
            return web.json_response({"kind": "Status", "code": 409, "message": str(err)}, status=409)
        if request.path.endswith("/status"):  # the status subresource changes only status
            patched = {**obj, "status": patched.get("status", {})}
        else:
            patched["status"] = obj.get("status", {})
        self.version += 1
        patched["metadata"]["resourceVersion"] = str(self.version)
        obj.clear()
        obj.update(patched)
        self._send("stores", "MODIFIED", obj)
        return web.json_response(obj)

    async def _create_cronjob(self, request: web.Request):
        obj = json.loads(await request.read())
        key = (request.match_info["ns"], obj["metadata"]["name"])
        if key in self.cronjobs:
            return web.json_response({"kind": "Status", "code": 409, "reason": "AlreadyExists"}, status=409)
        self.version += 1
        obj["metadata"].update(namespace=key[0], resourceVersion=str(self.version), uid=str(uuid.uuid4()))
        self.cronjobs[key] = obj
        return web.json_response(obj, status=201)

    async def _cronjob(self, request: web.Request):
        key = (request.match_info["ns"], request.match_info["name"])
        if key not in self.cronjobs:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        if request.method == "DELETE":
            del self.cronjobs[key]
        elif request.method == "PUT":  # an unconditional update, as the apiserver allows for CronJobs
            obj = json.loads(await request.read())
            self.version += 1
            obj["metadata"].update(namespace=key[0], resourceVersion=str(self.version),
                                   uid=self.cronjobs[key]["metadata"]["uid"])
            self.cronjobs[key] = obj
        return web.json_response(self.cronjobs.get(key, {"kind": "Status", "status": "Success"}))

    def set_store(self, obj: dict) -> None:
        """Change a Store as `kubectl apply` would: its spec, then a MODIFIED event to the watchers."""
        def change():
            current = self.stores[(obj["metadata"]["namespace"], obj["metadata"]["name"])]
            current["spec"] = json.loads(json.dumps(obj["spec"]))
            self.version += 1
            current["metadata"]["resourceVersion"] = str(self.version)
            self._send("stores", "MODIFIED", current)
        self.loop.call_soon_threadsafe(change)

    async def _echo(self, request: web.Request):
        body = await request.read()
        try:
            doc = json.loads(body) if body else {}
        except ValueError:
            doc = {}
        if request.method == "GET":
            return web.json_response({"kind": "Status", "code": 404}, status=404)
        return web.json_response(doc, status=201 if request.method == "POST" else 200)

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "stub",
            "clusters": [{"name": "stub", "cluster": {"server": f"http://127.0.0.1:{self.port}"}}],
            "users": [{"name": "stub", "user": {}}],
            "contexts": [{"name": "stub", "context": {"cluster": "stub", "user": "stub"}}]}))
        return path

    async def _shutdown(self) -> None:
        for queue in [q for qs in self._watches.values() for q in qs]:  # end the watch streams, then the server
            queue.put_nowait(None)
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()


def _merge(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(out.get(k), v)
    return out


def _selected(obj: dict, selector: dict[str, str] | None) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in (selector or {}).items())


def _res(name: str, kind: str, namespaced: bool) -> dict:
    return {"name": name, "singularName": name.split("/")[0].rstrip("s"), "namespaced": namespaced, "kind": kind,
            "verbs": ["get", "list", "watch", "patch", "create"]}


def store(namespace: str, name: str, bucket: str, endpoint: str | None, secret: str | None = "s3-keys",
          prefix: str = "runs") -> dict:
    spec = {"bucket": bucket, "prefix": prefix, "region": "us-east-1"}
    if endpoint:
        spec["endpoint"] = endpoint
    if secret:
        spec["credentialsSecret"] = {"name": secret}
    return {"apiVersion": GROUP_VERSION, "kind": "Store",
            "metadata": {"namespace": namespace, "name": name, "uid": str(uuid.uuid4()), "resourceVersion": "1"},
            "spec": spec}


class Operator:
    """`runsync operator` as a process, serving HTTPS on a free port."""

    def __init__(self, workdir: Path, stores: list[dict], values: dict[str, str] | None = None,
                 secrets: dict[tuple[str, str], dict[str, str]] | None = None):
        self.stub = ApiStub(stores, secrets)
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        self.ca_path = workdir / "ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_path))
        cert.private_key_pem.write_to_path(str(workdir / "tls.key"))
        cert.cert_chain_pems[0].write_to_path(str(workdir / "tls.crt"))
        self.port, metrics_port = ports.free_ports(2)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RUNSYNC_", "KUBE"))}
        env.update({
            "KUBECONFIG": str(self.stub.kubeconfig(workdir / "kubeconfig")),
            "RUNSYNC_OPERATOR_WEBHOOK_ADDR": "127.0.0.1", "RUNSYNC_OPERATOR_WEBHOOK_PORT": str(self.port),
            "RUNSYNC_OPERATOR_CERTFILE": str(workdir / "tls.crt"),
            "RUNSYNC_OPERATOR_PKEYFILE": str(workdir / "tls.key"),
            "RUNSYNC_OPERATOR_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
            "RUNSYNC_OPERATOR_IMAGE": "registry.example/runsync:test",
            **(values or {}),
        })
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        self.log = workdir / "operator.log"
        self.proc = subprocess.Popen([RUNSYNC, "operator"], env=env, stdout=open(self.log, "wb"),
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.context = ssl.create_default_context(cafile=str(self.ca_path))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-4000:]
            try:
                self.review_raw({"metadata": {"name": "probe", "namespace": "default"}, "spec": {"containers": []}},
                                path="/not-a-handler")
                if self._stores_indexed(stores):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("the operator did not start:\n" + self.log.read_text()[-4000:])

    def _stores_indexed(self, stores: list[dict]) -> bool:
        if not stores:
            return True
        s = stores[0]
        pod = {"metadata": {"name": "p", "namespace": s["metadata"]["namespace"],
                            "labels": {"runsync.dev/inject": "true"},
                            "annotations": {"runsync.dev/store": s["metadata"]["name"]}},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}}
        return self.review(pod)["response"]["allowed"]

    def review_raw(self, pod: dict, path: str = "/inject-pods", operation: str = "CREATE") -> dict:
        namespace = (pod.get("metadata") or {}).get("namespace", "default")
        review = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": str(uuid.uuid4()), "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace, "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:job-controller"},
            "object": pod, "oldObject": None, "dryRun": False, "options": {}}}
        req = urllib.request.Request(f"https://127.0.0.1:{self.port}{path}", data=json.dumps(review).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, context=self.context, timeout=10) as resp:
            return json.loads(resp.read())

    def review(self, pod: dict) -> dict:
        return self.review_raw(pod)

    def patched(self, pod: dict) -> tuple[dict, dict]:
        """(the patched pod, the response): applies the JSON patch the way the API server does."""

        response = self.review(pod)["response"]
        assert response["allowed"], response
        if "patch" not in response:
            return pod, response
        ops = json.loads(base64.b64decode(response["patch"]))
        return jsonpatch.apply_patch(pod, ops), response

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stub.stop()
