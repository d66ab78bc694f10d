"""Runs inside the pod's private mount namespace: bind-mounts the volumes, then execs.

Started by the process executor as ``unshare --mount --uts -- python -m ...launch PLAN``;
sets the pod's hostname when it has one (a pod with a subdomain).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import socket
import sys
from pathlib import Path

MS_RDONLY = 1
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _mount(source: str | None, target: str, flags: int) -> None:
    src = source.encode() if source else None
    if _libc.mount(src, target.encode(), None, flags, None) != 0:
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


def _protected() -> list[str]:
    """Paths this machine's own environment lives in: a pod volume must not hide them
    (a pod's /tmp emptyDir over a checkout under /tmp would hide the Python it runs)."""
    here = Path(__file__).resolve()
    return [os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, str(here.parents[2]))]


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    protected = _protected()
    kept = []
    for m in plan["mounts"]:
        target = os.path.realpath(m["target"]).rstrip("/") + "/"
        if any((p.rstrip("/") + "/").startswith(target) for p in protected):
            print(
                f"executor: not mounting {m['target']}: it would hide {protected}", file=sys.stderr
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
        bind(m["source"], m["target"], m["readOnly"], m["isDir"])
    for fd in held:
        os.close(fd)
    if plan.get("hostname"):
        socket.sethostname(plan["hostname"])  # the pod's own UTS namespace
    os.chdir(plan["workingDir"])
    argv = plan["argv"]
    try:
        os.execvpe(argv[0], argv, plan["env"])
    except OSError as exc:
        print(f"exec {argv[0]}: {exc.strerror}", file=sys.stderr)
        sys.exit(127)


if __name__ == "__main__":
    main()
