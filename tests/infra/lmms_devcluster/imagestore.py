"""The process executor's image store: the images `make images` built (buildah, vfs).

A kubelet pulls an image into its runtime's store and runs containers in its root
filesystem. Here nothing can be pulled (no registry is reachable); the store is buildah's
local one, and an image that is not in it cannot be pulled. The root filesystem of an
image is its top layer's directory in the vfs store (where every layer is a full copy of
the root filesystem), else one buildah working container per image ID
(``lmms-rootfs-<id>``); it is never written to: each container gets an overlay over it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Pods naming this image run with the devcluster's own Python environment (the
#: executor's processes, as before images): the in-process tests' scripted runners and
#: fixtures live there. No registry serves ``.invalid``.
HOST_IMAGE = "executor.invalid/host-environment:latest"

ROOTFS_PREFIX = "lmms-rootfs-"


@dataclass(frozen=True)
class Image:
    """What a container runtime takes from an image's configuration."""

    reference: str
    id: str
    digest: str
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    working_dir: str = ""
    user: str = ""

    @property
    def image_id(self) -> str:
        """``status.containerStatuses[].imageID`` as containerd reports it: the
        repository and the manifest digest."""
        repo = self.reference.rsplit(":", 1)[0] if "@" not in self.reference else ""
        repo = repo or self.reference.split("@", 1)[0]
        return f"{repo}@{self.digest}"


class ImageNotFound(Exception):
    pass


def _candidates(reference: str) -> list[str]:
    """The names an image reference may have in a local store: as written, and under
    ``localhost/`` when it names no registry (``lmms-operator:0.1.0``)."""
    first = reference.split("/", 1)[0]
    has_registry = "/" in reference and ("." in first or ":" in first or first == "localhost")
    names = [reference]
    if not has_registry:
        names.append(f"localhost/{reference}")
    if ":" not in reference.rsplit("/", 1)[-1] and "@" not in reference:
        names += [f"{n}:latest" for n in list(names)]
    return names


class ImageStore:
    def __init__(self, buildah: str | None = None) -> None:
        self.buildah = buildah or shutil.which("buildah")
        self._lock = threading.Lock()
        self._rootfs: dict[str, Path] = {}

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert self.buildah is not None
        return subprocess.run(
            [self.buildah, "--storage-driver", "vfs", *args],
            capture_output=True,
            text=True,
            timeout=600,
        )

    def lookup(self, reference: str) -> Image:
        """The image, or ImageNotFound with the reason a kubelet would give."""
        if self.buildah is None:
            raise ImageNotFound("no image store on this node (buildah is not installed)")
        for name in _candidates(reference):
            out = self._run("inspect", "--type", "image", name)
            if out.returncode == 0:
                return _image(name, json.loads(out.stdout))
        raise ImageNotFound(f"{reference}: not found in the node's image store (make images)")

    def _top_layer(self, image: Image) -> Path | None:
        """The image's top layer in the vfs store: a full root filesystem."""
        info = self._run("info", "--format", "{{.store.GraphRoot}}")
        if info.returncode != 0:
            return None
        root = Path(info.stdout.strip())
        try:
            listed = json.loads((root / "vfs-images" / "images.json").read_text())
        except (OSError, ValueError):
            return None
        layer = next((i.get("layer") for i in listed if i.get("id") == image.id), None)
        path = root / "vfs" / "dir" / str(layer)
        return path if layer and (path / "etc").is_dir() else None

    def rootfs(self, image: Image) -> Path:
        """The image's root filesystem (read-only by contract)."""
        with self._lock:
            path = self._rootfs.get(image.id)
            if path is not None and path.is_dir():
                return path
            path = self._top_layer(image)
            if path is not None:
                self._rootfs[image.id] = path
                return path
            name = ROOTFS_PREFIX + image.id[:12]
            if self._run("inspect", "--type", "container", name).returncode != 0:
                made = self._run("from", "--pull=never", "--name", name, image.id)
                if made.returncode != 0:
                    raise RuntimeError(f"buildah from {image.id[:12]}: {made.stderr.strip()}")
            mounted = self._run("mount", name)
            if mounted.returncode != 0:
                raise RuntimeError(f"buildah mount {name}: {mounted.stderr.strip()}")
            path = Path(mounted.stdout.strip())
            self._rootfs[image.id] = path
            return path


def _image(reference: str, inspected: dict[str, Any]) -> Image:
    config = (inspected.get("OCIv1") or {}).get("config") or {}
    return Image(
        reference=reference,
        id=inspected["FromImageID"],
        digest=inspected["FromImageDigest"],
        entrypoint=list(config.get("Entrypoint") or []),
        cmd=list(config.get("Cmd") or []),
        env=list(config.get("Env") or []),
        working_dir=config.get("WorkingDir") or "",
        user=config.get("User") or "",
    )


def command_line(image: Image, command: list[str] | None, args: list[str] | None) -> list[str]:
    """The process a container runs, as Kubernetes merges the pod spec with the image:
    ``command`` replaces the entrypoint (and drops the image's cmd), ``args`` replaces
    the cmd."""
    if command:
        return [*command, *(args or [])]
    return [*image.entrypoint, *(args if args else image.cmd)]


def resolve_user(user: str, rootfs: Path) -> tuple[int, int]:
    """An image's ``User`` ("1000", "1000:1000", "name", "name:group") as uid and gid,
    names looked up in the image's own /etc/passwd and /etc/group."""
    if not user:
        return 0, 0
    name, _, group = user.partition(":")

    def table(path: str) -> dict[str, list[str]]:
        try:
            lines = (rootfs / path).read_text().splitlines()
        except OSError:
            return {}
        return {f[0]: f for f in (line.split(":") for line in lines) if len(f) > 3}

    passwd = table("etc/passwd")
    if name.isdigit():
        uid = int(name)
        entry = next((f for f in passwd.values() if f[2] == name), None)
        gid = int(entry[3]) if entry else uid if not group else 0
    elif name in passwd:
        uid, gid = int(passwd[name][2]), int(passwd[name][3])
    else:
        raise ValueError(f"unable to find user {name}: no matching entries in passwd file")
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            groups = table("etc/group")
            if group not in groups:
                raise ValueError(f"unable to find group {group}: no matching entries")
            gid = int(groups[group][2])
    return uid, gid
