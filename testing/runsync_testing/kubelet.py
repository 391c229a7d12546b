"""What a kubelet does to a container's process and volumes, as root can emulate it on one machine.

- The user: the container's effective securityContext (the pod's `runAsUser`, `runAsGroup`,
  `runAsNonRoot` overridden by the container's), the pod's `fsGroup` and `supplementalGroups` as
  supplementary groups; a `runAsUser` without `runAsGroup` runs with GID 0, as containerd does for
  a numeric user the image does not know. Run with `setpriv`, no capabilities left.
- `readOnlyRootFilesystem: true`: a mount namespace (`unshare -m`) in which each volume dir the
  container mounts is bind-mounted onto itself (read-only if its mount says so) and `/` is then
  remounted read-only, so only the pod's volumes can be written.
- fsGroup on a volume: group-owned by the fsGroup, group rw, setgid dirs, as the kubelet's
  SetVolumeOwnership does (`fsGroupChangePolicy: OnRootMismatch` skips a volume whose root already
  matches).
- An emptyDir with a `sizeLimit` as a tmpfs of that size, in the container's mount namespace.
- A umask the test chooses (the image's default is 022).

Needs root (switching UIDs, mount namespaces): `unavailable()` says why not, for tests to skip.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import stat
from pathlib import Path


class ContainerConfigError(ValueError):
    """The kubelet would refuse to start this container (CreateContainerConfigError)."""


@dataclasses.dataclass(frozen=True)
class Identity:
    uid: int
    gid: int
    groups: tuple[int, ...]
    """Supplementary groups: fsGroup and supplementalGroups."""
    read_only_root: bool


def unavailable() -> str | None:
    """Why this machine cannot run containers as a kubelet would, or None when it can."""
    if os.geteuid() != 0:
        return "running containers as their securityContext's UIDs with a read-only root needs root"
    for tool in ("setpriv", "unshare", "mount"):
        if not shutil.which(tool):
            return f"{tool} (util-linux) is not installed"
    return None


def identity(pod_spec: dict, container: dict) -> Identity:
    """The user, groups and root filesystem the kubelet gives this container."""
    pod_sc = pod_spec.get("securityContext") or {}
    sc = {**pod_sc, **(container.get("securityContext") or {})}
    uid = sc.get("runAsUser", 0)
    gid = sc.get("runAsGroup", 0)
    if sc.get("runAsNonRoot") and uid == 0:
        raise ContainerConfigError(f"container {container.get('name')!r} has runAsNonRoot and would run as root")
    groups = []
    if pod_sc.get("fsGroup") is not None:
        groups.append(pod_sc["fsGroup"])
    groups += [g for g in pod_sc.get("supplementalGroups") or [] if g not in groups]
    return Identity(uid, gid, tuple(groups), bool(sc.get("readOnlyRootFilesystem")))


def command(who: Identity, argv: list[str], writable: list[str], read_only: list[str] = (),
            umask: int = 0o022, sized: dict[str, str] | None = None) -> list[str]:
    """`argv` wrapped to run as `who`, with only `writable` dirs writable when its root is read-only.
    `sized` (dir → emptyDir sizeLimit, e.g. "256Mi") become tmpfs mounts of that size, so a
    container that writes past its emptyDir's limit fails here as it would be evicted there."""
    setup = ["set -e"]
    if who.read_only_root or sized:
        for path in writable:
            setup.append(f"mount --bind {shlex.quote(path)} {shlex.quote(path)}")
        for path in read_only:
            setup.append(f"mount --bind {shlex.quote(path)} {shlex.quote(path)}")
            setup.append(f"mount -o remount,bind,ro {shlex.quote(path)}")
        for path, size in (sized or {}).items():
            setup.append(f"mount -t tmpfs -o size={shlex.quote(_bytes(size))},mode=1777 tmpfs {shlex.quote(path)}")
    if who.read_only_root:
        setup.append("mount -o remount,bind,ro /")
    groups = f"--groups={','.join(map(str, who.groups))}" if who.groups else "--clear-groups"
    # Through sh: it sets the umask, and setpriv keeps root's capabilities until its own exec.
    setup.append(f"exec setpriv --reuid={who.uid} --regid={who.gid} {groups} --inh-caps=-all "
                 f"-- /bin/sh -c 'umask {umask:03o}; exec \"$@\"' sh \"$@\"")
    prefix = ["unshare", "--mount", "--propagation", "private"] if who.read_only_root or sized else []
    return [*prefix, "/bin/sh", "-c", "\n".join(setup), "sh", *argv]


def _bytes(quantity: str) -> str:
    """A Kubernetes quantity ("256Mi", "1G", "1000") as bytes, for tmpfs's size option."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return str(int(float(quantity[: -len(suffix)]) * factor))
    return str(int(quantity))


def make_empty_dir(path: Path) -> None:
    """An emptyDir as the kubelet makes it: root-owned, mode 0777."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o777)


def apply_fs_group(path: Path, gid: int, policy: str = "Always") -> None:
    """The kubelet's volume ownership for fsGroup: group `gid`, group rw, setgid dirs."""
    st = os.lstat(path)
    if policy == "OnRootMismatch" and st.st_gid == gid and st.st_mode & 0o2070 == 0o2070:
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [None, *filenames]:
            p = dirpath if name is None else os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            os.chown(p, -1, gid)
            extra = 0o2770 if stat.S_ISDIR(st.st_mode) else 0o660
            os.chmod(p, stat.S_IMODE(st.st_mode) | extra)
