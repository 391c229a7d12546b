"""The local pod is as strict as a kubelet: each container as its securityContext's user and
groups, a read-only root with only its volumes writable, the pod's fsGroup on its volumes, the
umask the test chose; an emptyDir is 0777 and a fresh PVC root-owned 0755."""

from __future__ import annotations

import os
import stat
import subprocess

import pytest

from runsync_testing import kubelet
from runsync_testing.localpod import LocalPod

pytestmark = pytest.mark.usefixtures("as_kubelet")


def pod(container_sc=None, pod_sc=None, volume=None) -> dict:
    app = {"name": "app", "image": "busybox", "volumeMounts": [
        {"name": "run", "mountPath": "/run-dir"}, {"name": "info", "mountPath": "/etc/info", "readOnly": True}]}
    if container_sc:
        app["securityContext"] = container_sc
    spec = {"containers": [app], "volumes": [
        {"name": "run", **(volume or {"emptyDir": {}})},
        {"name": "info", "downwardAPI": {"items": [{"path": "annotations",
                                                   "fieldRef": {"fieldPath": "metadata.annotations"}}]}}]}
    if pod_sc:
        spec["securityContext"] = pod_sc
    return {"metadata": {"name": "p", "annotations": {"a": "b"}}, "spec": spec}


def sh(local: LocalPod, script: str) -> subprocess.CompletedProcess:
    c = local.container("app")
    return subprocess.run(local.command(c, ["/bin/sh", "-c", script]), env=local.env(c), capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize("container_sc,pod_sc,expected", [
    (None, None, "0 0 0"),
    ({"runAsUser": 1000, "runAsGroup": 1000}, None, "1000 1000 1000"),
    ({"runAsUser": 1000}, {"runAsGroup": 3000, "fsGroup": 2000, "supplementalGroups": [4000]},
     "1000 3000 3000 2000 4000"),
    ({"runAsUser": 1000}, None, "1000 0 0"),  # no runAsGroup: GID 0, as containerd does
    ({"runAsUser": 1001}, {"runAsUser": 1000, "runAsGroup": 1000}, "1001 1000 1000"),  # container wins
])
def test_a_container_runs_as_its_effective_security_context(pod_root, container_sc, pod_sc, expected):
    local = LocalPod(pod(container_sc, pod_sc), pod_root, {})
    result = sh(local, 'echo "$(id -u) $(id -g) $(id -G)"')
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == expected.split()


def test_run_as_non_root_refuses_root(pod_root):
    local = LocalPod(pod({"runAsNonRoot": True}), pod_root, {})
    with pytest.raises(kubelet.ContainerConfigError, match="runAsNonRoot"):
        local.command(local.container("app"), ["true"])


def test_a_read_only_root_leaves_only_the_writable_volumes_writable(pod_root):
    local = LocalPod(pod({"runAsUser": 0, "readOnlyRootFilesystem": True}), pod_root, {})
    outside = pod_root / "outside"
    run, info = local.paths["run"], local.paths["info"]
    result = sh(local, f"touch {run}/ok && cat {info}/annotations && "
                       f"(touch {outside} 2>&1; touch {info}/x 2>&1; touch /var/tmp/runsync-x 2>&1; true)")
    assert result.returncode == 0, result.stderr
    assert os.path.exists(f"{run}/ok") and 'a="b"' in result.stdout
    assert result.stdout.count("Read-only file system") == 3, result.stdout
    assert not outside.exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_the_umask_is_the_one_the_test_chose(pod_root, umask, mode):
    local = LocalPod(pod({"runAsUser": 1000, "runAsGroup": 1000}), pod_root, {}, umask=umask)
    assert sh(local, f"echo x > {local.paths['run']}/f").returncode == 0
    assert stat.S_IMODE(os.stat(f"{local.paths['run']}/f").st_mode) == mode


def test_an_empty_dir_is_open_to_every_uid_and_a_fresh_pvc_is_root_only(pod_root):
    empty = LocalPod(pod({"runAsUser": 1000, "runAsGroup": 1000}), pod_root / "a", {})
    assert stat.S_IMODE(os.stat(empty.paths["run"]).st_mode) == 0o777
    assert sh(empty, f"touch {empty.paths['run']}/f").returncode == 0
    pvc = LocalPod(pod({"runAsUser": 1000, "runAsGroup": 1000}, volume={"persistentVolumeClaim": {"claimName": "c"}}),
                   pod_root / "b", {})
    st = os.stat(pvc.paths["run"])
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755)
    denied = sh(pvc, f"touch {pvc.paths['run']}/f")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr


def test_an_fs_group_makes_a_root_owned_pvc_group_writable_with_setgid_dirs(pod_root):
    run = pod_root / "volumes" / "run"
    (run / "old").mkdir(parents=True)  # what a previous pod left, root-owned 0755
    (run / "old" / "f").write_text("x")
    os.chmod(run, 0o755)
    local = LocalPod(pod({"runAsUser": 1000, "runAsGroup": 1000}, {"fsGroup": 2000},
                         {"persistentVolumeClaim": {"claimName": "c"}}), pod_root, {})
    for path, mode in ((run, 0o2775), (run / "old", 0o2775), (run / "old" / "f", 0o664)):
        st = os.stat(path)
        assert (st.st_gid, stat.S_IMODE(st.st_mode)) == (2000, mode), path
    result = sh(local, f"mkdir {run}/new && echo y > {run}/old/f && stat -c '%g' {run}/new")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2000"]  # setgid: new dirs keep the group


def test_a_sized_tmp_empty_dir_is_a_tmpfs_of_that_size(pod_root):
    spec = pod({"runAsUser": 1000, "runAsGroup": 1000, "readOnlyRootFilesystem": True})
    spec["spec"]["volumes"].append({"name": "tmp", "emptyDir": {"sizeLimit": "1Mi"}})
    spec["spec"]["containers"][0]["volumeMounts"].append({"name": "tmp", "mountPath": "/tmp"})
    local = LocalPod(spec, pod_root, {})
    tmp = local.env(local.container("app"))["TMPDIR"]
    result = sh(local, f"head -c 900000 /dev/zero > {tmp}/fits && echo fits && head -c 2000000 /dev/zero > {tmp}/big")
    assert result.stdout.split() == ["fits"]
    assert result.returncode != 0 and "No space left on device" in result.stderr
    assert os.listdir(tmp) == []  # the tmpfs was the container's own
