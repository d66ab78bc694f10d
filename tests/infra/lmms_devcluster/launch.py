"""Runs inside the pod's private mount namespace: bind-mounts the volumes, then execs.

Started by the process executor as ``unshare --mount --uts -- python -m ...launch PLAN``;
sets the pod's hostname when it has one. A container run from its image gets a root
filesystem of its own first: an overlay over the image's (its writes go to the
container's own upper directory, and none at all with ``readOnlyRootFilesystem``), a
private ``/dev`` (tmpfs with the usual device nodes and a ``/dev/shm``), ``/proc``,
a read-only ``/sys``; the volumes are mounted in it, then the process is chrooted into
it and runs as the container's user and groups.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import shutil
import socket
import sys
from pathlib import Path

MS_RDONLY = 1
MS_REMOUNT = 32
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(
    source: str | None, target: str, flags: int, fstype: str | None = None, data: str = ""
) -> None:
    src = source.encode() if source else None
    kind = fstype.encode() if fstype else None
    if _libc.mount(src, target.encode(), kind, flags, data.encode() if data else None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target}: {os.strerror(err)}")


def bind(source: str, target: str, read_only: bool, is_dir: bool) -> None:
    dst = Path(target)
    if is_dir:
        dst.mkdir(parents=True, exist_ok=True)
    else:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            dst.touch()
    _mount(source, target, MS_BIND | MS_REC)
    if read_only:
        _mount(None, target, MS_BIND | MS_REMOUNT | MS_RDONLY)


DEVICES = ("null", "zero", "full", "random", "urandom", "tty")


def image_root(image: dict[str, object]) -> str:
    """Mounts the container's root filesystem and what every container has in it;
    returns its path (the chroot)."""
    base = Path(str(image["dir"]))
    shutil.rmtree(base, ignore_errors=True)  # a restarted container starts afresh
    root, upper, work = base / "root", base / "upper", base / "work"
    for d in (root, upper, work):
        d.mkdir(parents=True)
    _mount(
        "overlay",
        str(root),
        0,
        "overlay",
        f"lowerdir={image['rootfs']},upperdir={upper},workdir={work}",
    )
    dev = root / "dev"
    dev.mkdir(exist_ok=True)
    _mount("tmpfs", str(dev), MS_NOSUID, "tmpfs", "mode=755,size=65536k")
    for name in DEVICES:
        bind(f"/dev/{name}", str(dev / name), read_only=False, is_dir=False)
    (dev / "shm").mkdir()
    _mount("shm", str(dev / "shm"), MS_NOSUID | MS_NODEV, "tmpfs", "mode=1777,size=65536k")
    for link, to in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        (dev / link).symlink_to(to)
    (root / "proc").mkdir(exist_ok=True)
    _mount("proc", str(root / "proc"), MS_NOSUID | MS_NODEV, "proc")
    (root / "sys").mkdir(exist_ok=True)
    bind("/sys", str(root / "sys"), read_only=True, is_dir=True)
    if Path("/etc/resolv.conf").exists():
        target = in_root(str(root), "/etc/resolv.conf")
        bind("/etc/resolv.conf", target, read_only=True, is_dir=False)
    return str(root)


def in_root(root: str, path: str) -> str:
    """``path`` inside the container's root filesystem, its symlinks resolved there (an
    image's /var/run -> /run must not lead to the node's /run), as runc's securejoin."""
    if not root:
        return path
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(f"too many levels of symbolic links in {path}")
            target = os.readlink(candidate)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


def _protected() -> list[str]:
    """Paths this machine's own environment lives in: a pod volume must not hide them
    (a pod's /tmp emptyDir over a checkout under /tmp would hide the Python it runs)."""
    here = Path(__file__).resolve()
    return [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, str(here.parents[2]))]


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    image = plan.get("image")
    root = image_root(image) if image else ""
    if not image:
        protected = _protected()
        kept = []
        for m in plan["mounts"]:
            target = os.path.realpath(m["target"]).rstrip("/") + "/"
            if any((p.rstrip("/") + "/").startswith(target) for p in protected):
                print(
                    f"executor: not mounting {m['target']}: it would hide {protected}",
                    file=sys.stderr,
                )
                continue
            kept.append(m)
        plan["mounts"] = kept
    # Hold every source open first: a mount over /tmp would otherwise hide sources that
    # live under /tmp from the mounts after it.
    held = []
    for m in plan["mounts"]:
        fd = os.open(m["source"], os.O_PATH)
        held.append(fd)
        m["isDir"] = Path(m["source"]).is_dir()
        m["source"] = f"/proc/self/fd/{fd}"
    for m in plan["mounts"]:
        bind(m["source"], in_root(root, m["target"]), m["readOnly"], m["isDir"])
    for fd in held:
        os.close(fd)
    if plan.get("hostname"):
        socket.sethostname(plan["hostname"])  # the pod's own UTS namespace
    if image:
        if image["readOnlyRoot"]:
            _mount(None, root, MS_BIND | MS_REMOUNT | MS_RDONLY)
        os.chroot(root)
        os.chdir("/")
    try:
        os.chdir(plan["workingDir"])
    except OSError as exc:
        print(f"executor: working directory {plan['workingDir']}: {exc.strerror}", file=sys.stderr)
        sys.exit(128)
    if image:
        os.setgroups(image["groups"])
        os.setgid(image["gid"])
        os.setuid(image["uid"])
    argv = plan["argv"]
    try:
        os.execvpe(argv[0], argv, plan["env"])
    except OSError as exc:
        print(f"exec {argv[0]}: {exc.strerror}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
