"""The process executor: a tiny kubelet that runs one node's pods as local processes.

For end-to-end tests and the local demo. For every pod bound to its node it runs every
container as a kubelet does: the init containers in order (a native sidecar, an init
container with ``restartPolicy: Always``, is started and the next container waits only
for its startup probe; it is restarted whenever it exits, and stopped with SIGTERM, then
SIGKILL after the grace period, once every regular container has exited; a plain init
container must exit 0 first), then the regular containers at once, each under the pod's
restart policy. Every container of a pod shares its network namespace (127.0.0.1
between them) and its volumes. Each container runs:

- **From its image** when the image is in the node's image store (``imagestore``: the
  images ``make images`` built): inside an overlay over the image's root filesystem
  (``chroot``), with the image's entrypoint, cmd, env, working directory and user merged
  with the pod spec as a kubelet does (``command`` replaces the entrypoint, ``args`` the
  cmd; ``runAsUser``/``runAsGroup`` over the image's user; ``runAsNonRoot`` checked),
  ``readOnlyRootFilesystem`` honoured, and the pod's ``imageID`` set to the image's
  digest. An image that is not in the store cannot be pulled: the container waits in
  ``ErrImagePull``, then ``ImagePullBackOff``, as a kubelet reports them.
- **With the devcluster's own Python environment** when it names ``HOST_IMAGE``: the
  container's ``command`` + ``args`` as a local process (the in-process tests' scripted
  runners and fixtures live there), with ``LMMS_TASK_INDEX``,
  ``LMMS_TRANSFORMERS_INDEX`` and ``LMMS_PUNCTUATION_INDEX`` set as the runner image sets
  them (the indexes kept under ``~/.cache/lmms-operator``).

Either way the container gets its environment (downward-API values included, and
``KUBERNETES_SERVICE_HOST``/``PORT`` pointing at the API server, the endpoint a
kube-proxy would reach). Each pod gets a network namespace of its own with an address
on the devcluster's bridge (``podnet``: the real CNI bridge, host-local and loopback
plugins), which ``status.podIP`` and ``POD_IP`` name, so a Service's endpoints take it;
the host's loopback services (the API server, the tests' fixtures) stay reachable at
127.0.0.1 from inside. Where that cannot be made (not root, no CNI plugins, or
``LMMS_DEVCLUSTER_POD_NETWORK=loopback``) and for ``hostNetwork`` pods, the pod shares
the node's network and ``POD_IP`` is a unique address in 127.0.0.0/8 it can bind to. The pod's ConfigMap, Secret, downwardAPI, projected (ServiceAccount tokens
included, from the TokenRequest API, bound to the pod, renewed at 80% of their
lifetime), emptyDir and PVC volumes appear
at their mount paths through bind mounts in a private mount namespace (``unshare
--mount``), and the termination-message file at its path. A pod with a ``subdomain``
(the pods of an Indexed Job behind a headless Service) gets its ``hostname`` (a private
UTS namespace) and an ``/etc/hosts`` that names every such pod of the subdomain as a
cluster's DNS would (``<hostname>.<subdomain>``, and ``.<namespace>.svc.cluster.local``),
so torchrun's rendezvous finds node 0. Every other pod's ``/etc/hosts`` names the ready
Services of its namespace (``servicenames``: ``<service>.<namespace>.svc`` at a ready
endpoint's pod address; no kube-proxy, so a Service's port must equal its targetPort).
HTTP and TCP startup, readiness and liveness probes run as a kubelet runs them: readiness sets the pod's Ready condition, a failed
startup or liveness probe restarts the container. The pod's status follows the processes,
with a status per container (``initContainerStatuses``, ``containerStatuses``: state,
``lastState.terminated`` with the exit code and termination message of the run before a
restart, ``restartCount``, ready, started): Pending until a regular container starts,
Running, then Succeeded (every regular container exited 0) or Failed, so the real Job
controller completes or fails Jobs. Deleting the pod stops its processes (the regular
containers, then the sidecars: SIGTERM, then SIGKILL after the grace period).

Resource limits, seccomp/capability settings and NetworkPolicies are recorded, not
enforced (there is no policy engine).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from lmms_devcluster import podnet, servicenames
from lmms_devcluster.imagestore import (
    HOST_IMAGE,
    Image,
    ImageNotFound,
    ImageStore,
    command_line,
    resolve_user,
)
from lmms_devcluster.podnet import PodNetwork, PodNetworkError, Sandbox

log = logging.getLogger("lmms.executor")

TERMINATION_LOG_LIMIT = 4096
#: What this node tells every container: its nvidia.com/gpu are simulated, there is no
#: driver (lmms_operator.api.runner.SIMULATED_GPUS_ENV: the runner checks none).
SIMULATED_GPUS_ENV = "LMMS_SIMULATED_GPUS"
#: Where pods of the host environment keep lmms-eval's task index (the runner image has
#: it at /opt/lmms/task-index.json, built with the image).
HOST_TASK_INDEX = (
    Path(os.environ.get("LMMS_CACHE_DIR") or Path.home() / ".cache" / "lmms-operator")
    / "host-task-index.json"
)
#: And transformers' index of its model modules (/opt/lmms/transformers-index.json there).
HOST_TRANSFORMERS_INDEX = HOST_TASK_INDEX.with_name("host-transformers-index.json")
#: And the table of Unicode punctuation lmms-eval builds at import (/opt/lmms/punctuation.json).
HOST_PUNCTUATION_INDEX = HOST_TASK_INDEX.with_name("host-punctuation.json")
#: And the compiled methods of dataclasses (/opt/lmms/code-cache.marshal).
HOST_CODE_CACHE = HOST_TASK_INDEX.with_name("host-code-cache.marshal")
FALLBACK_LOG_LINES = 80


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class IPPool:
    """Hands out unique loopback addresses, one per pod, in 127.64.0.0/10."""

    def __init__(self) -> None:
        # A random start, so that two devclusters on one machine do not share addresses.
        self._second = random.randint(64, 127)
        self._next = random.randint(0, 200) * 256 + 1
        self._lock = threading.Lock()

    def allocate(self) -> str:
        with self._lock:
            n = self._next
            self._next += 1
            if self._next & 0xFF == 0:
                self._next += 1  # skip .0
        return f"127.{self._second}.{(n >> 8) & 0xFF}.{n & 0xFF}"


class PodNames:
    """What a cluster's DNS answers for pods with a subdomain: one hosts file per
    (namespace, subdomain), bind-mounted over each such pod's /etc/hosts and rewritten in
    place (same inode, so the mounts see it) as the subdomain's pods come and go."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._lock = threading.Lock()
        self._pods: dict[tuple[str, str], dict[str, str]] = {}

    def add(self, namespace: str, subdomain: str, hostname: str, ip: str) -> Path:
        with self._lock:
            self._pods.setdefault((namespace, subdomain), {})[hostname] = ip
            return self._write(namespace, subdomain)

    def remove(self, namespace: str, subdomain: str, hostname: str) -> None:
        with self._lock:
            self._pods.get((namespace, subdomain), {}).pop(hostname, None)
            self._write(namespace, subdomain)

    def _write(self, namespace: str, subdomain: str) -> Path:
        lines = ["127.0.0.1\tlocalhost"]
        for hostname, ip in sorted(self._pods.get((namespace, subdomain), {}).items()):
            fqdn = f"{hostname}.{subdomain}.{namespace}.svc.cluster.local"
            lines.append(f"{ip}\t{fqdn}\t{hostname}.{subdomain}\t{hostname}")
        path = self.dir / namespace / f"{subdomain}.hosts"
        path.parent.mkdir(parents=True, exist_ok=True)
        text = "\n".join(lines) + "\n"
        with open(path, "a+") as fh:  # in place: the pods' bind mounts keep the inode
            fh.seek(0)
            fh.truncate()
            fh.write(text)
        path.chmod(0o644)
        return path


class PodRunner:
    """Runs one pod: prepares its volumes, starts the process, reports its status."""

    def __init__(self, executor: Executor, pod: client.V1Pod) -> None:
        self.ex = executor
        self.namespace: str = pod.metadata.namespace
        self.name: str = pod.metadata.name
        self.uid: str = pod.metadata.uid
        self.pod = pod
        self.dir = executor.state_dir / "pods" / self.uid
        self.stopping = threading.Event()
        self.done = threading.Event()
        self.start_time: str | None = None
        spec = pod.spec
        self.containers: list[ContainerRun] = [
            ContainerRun(self, c, "sidecar" if c.restart_policy == "Always" else "init", False)
            for c in spec.init_containers or []
        ] + [ContainerRun(self, c, "regular", i == 0) for i, c in enumerate(spec.containers)]
        self.hostname: str | None = None
        self.hosts_file: Path | None = None
        # With a pod network, the address comes with the pod's sandbox (``_sandbox_up``).
        self.sandbox: Sandbox | None = None
        self.pod_ip = ""
        if not self._own_network():
            self.pod_ip = executor.ips.allocate()
            self._name()
        self.thread = threading.Thread(target=self._run, name=f"pod-{self.name}", daemon=True)

    # -- the pod's life -----------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        try:
            if self._sandbox_up():
                self._run_inner()
        except Exception as exc:
            log.exception("pod %s/%s: executor error", self.namespace, self.name)
            if not self.stopping.is_set():
                self._report_terminated(128, "ExecutorError", f"executor error: {exc}", _now())
        finally:
            self._sandbox_down()
            self.done.set()

    # -- the pod's sandbox: its network namespace and address ------------------------
    def _own_network(self) -> bool:
        return self.ex.network is not None and not self.pod.spec.host_network

    def _name(self) -> None:
        """A pod with a subdomain is named in it as soon as it has an address (as DNS
        names a pod), so that its peers find it whatever the start order."""
        if self.pod.spec.subdomain:
            self.hostname = self.pod.spec.hostname or self.name
            self.hosts_file = self.ex.names.add(
                self.namespace, self.pod.spec.subdomain, self.hostname, self.pod_ip
            )

    def _sandbox_up(self) -> bool:
        """The pod's network namespace, with its address on the devcluster's bridge
        (CNI), made before anything else as a kubelet's RunPodSandbox; retried while it
        fails (the pod waits in ContainerCreating). False when the pod stopped meanwhile."""
        network = self.ex.network
        if network is None or not self._own_network():
            return True
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                self.sandbox = network.add(self.uid)
            except (PodNetworkError, OSError, subprocess.SubprocessError) as exc:
                log.warning("pod %s/%s: sandbox: %s", self.namespace, self.name, exc)
                self._report_waiting("ContainerCreating", f"failed to create pod sandbox: {exc}")
                if self.stopping.wait(backoff):
                    return False
                backoff = min(backoff * 2, 10.0)
                continue
            self.pod_ip = self.sandbox.ip
            self._name()
            return not self.stopping.is_set()
        return False

    def _sandbox_down(self) -> None:
        sandbox, self.sandbox = self.sandbox, None
        if sandbox is not None and self.ex.network is not None:
            self._unname()
            try:
                self.ex.network.delete(sandbox)
            except Exception as exc:  # the namespace stays for cleanup() at the end
                log.warning("pod %s/%s: sandbox removal: %s", self.namespace, self.name, exc)

    def _run_inner(self) -> None:
        """The pod's containers as a kubelet runs them: the init containers in order
        (a native sidecar, ``restartPolicy: Always``, is started, and the next container
        waits only for its startup; a plain one must exit 0), then every regular
        container at once, each under the pod's restart policy; once they have all
        exited, the sidecars are stopped (SIGTERM, SIGKILL after the grace period) and
        the pod's phase follows the regular containers' exit codes."""
        spec = self.pod.spec
        policy = spec.restart_policy or "Always"
        self.start_time = _now()
        self.publish()
        sidecars: list[tuple[ContainerRun, threading.Thread]] = []
        for run in self.containers:
            if run.kind == "sidecar":
                thread = threading.Thread(
                    target=run.run, args=("Always",), name=f"sidecar-{run.cname}", daemon=True
                )
                thread.start()
                sidecars.append((run, thread))
                while not run.startup_done.wait(0.2):
                    if self.stopping.is_set():
                        return
            elif run.kind == "init":
                code = run.run("Never" if policy == "Never" else "OnFailure")
                if code is None:
                    return
                if code != 0:
                    self._finish(sidecars, [code])
                    return
        regular = [r for r in self.containers if r.kind == "regular"]
        codes: list[int | None] = [None] * len(regular)

        def run_one(i: int, run: ContainerRun) -> None:
            codes[i] = run.run(policy)

        threads = [
            threading.Thread(target=run_one, args=(i, r), name=f"container-{r.cname}", daemon=True)
            for i, r in enumerate(regular)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.stopping.is_set() or any(c is None for c in codes):
            return
        self._finish(sidecars, [int(c) for c in codes if c is not None])

    def _finish(
        self, sidecars: list[tuple[ContainerRun, threading.Thread]], codes: list[int]
    ) -> None:
        """Every regular container exited (or an init container failed): the sidecars
        are stopped in reverse order, then the pod is Succeeded or Failed."""
        self._unname()
        grace = float(self.pod.spec.termination_grace_period_seconds or 30)
        for run, thread in reversed(sidecars):
            run.stop(grace)
            thread.join(timeout=grace + 5)
        phase = "Succeeded" if all(c == 0 for c in codes) else "Failed"
        self.publish(phase)
        log.info("pod %s/%s: %s (exit codes %s)", self.namespace, self.name, phase, codes)

    def _pull(self, run: ContainerRun) -> Image | None:
        """The container's image from the node's store; while it is not there, the
        container waits in ErrImagePull and ImagePullBackOff, as a kubelet's does when a
        pull fails, and looks again after a back-off (10 s doubling up to 300 s)."""
        backoff = 10.0
        image = run.container.image or ""
        while not run.stopping.is_set():
            try:
                return self.ex.images.lookup(image)
            except ImageNotFound as exc:
                reason = f'failed to pull and unpack image "{image}": {exc}'
                run.set_waiting("ErrImagePull", reason)
            if run.stopping.wait(2):
                return None
            run.set_waiting("ImagePullBackOff", f'Back-off pulling image "{image}"')
            if run.stopping.wait(backoff):
                return None
            backoff = min(backoff * 2, 300.0)
        return None

    def _unname(self) -> None:
        if self.hostname is not None and self.pod.spec.subdomain:
            self.ex.names.remove(self.namespace, self.pod.spec.subdomain, self.hostname)

    def stop(self, grace: float) -> None:
        """Stops the pod's processes: the regular containers, then the sidecars (SIGTERM,
        then SIGKILL once ``grace`` seconds have passed)."""
        self.stopping.set()
        self._unname()
        deadline = time.monotonic() + max(grace, 0.1)
        regular = [r for r in self.containers if r.kind != "sidecar"]
        sidecars = [r for r in reversed(self.containers) if r.kind == "sidecar"]
        for group in (regular, sidecars):
            for run in group:
                run.stopping.set()
                run.signal(signal.SIGTERM)
            for run in group:
                run.wait_or_kill(max(deadline - time.monotonic(), 0.1))
        self.thread.join(timeout=5)

    # -- building the process ----------------------------------------------------------
    def _plan(
        self,
        container: client.V1Container,
        image: Image | None,
        rootfs: Path | None,
        cdir: Path,
    ) -> dict[str, Any]:
        if image is None:
            if not container.command and not container.args:
                raise _InvalidPod(
                    f"container {container.name!r} has no command: an image that is not "
                    f"in the node's store ({HOST_IMAGE}) needs an explicit command"
                )
            argv = [*(container.command or []), *(container.args or [])]
            base = self._host_environment()
        else:
            argv = command_line(image, container.command, container.args)
            if not argv:
                raise _InvalidPod(f"container {container.name!r}: no command specified")
            base = dict(e.split("=", 1) for e in image.env if "=" in e)
            base.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            base["HOSTNAME"] = self.hostname or self.name
        env = self._environment(container, base)
        self.dir.mkdir(parents=True, exist_ok=True)
        cdir.mkdir(parents=True, exist_ok=True)
        volumes = self._volumes()
        mounts: list[dict[str, Any]] = []
        for vm in container.volume_mounts or []:
            if vm.name not in volumes:
                raise _InvalidPod(f"volumeMount {vm.name!r} names no volume of the pod")
            source = volumes[vm.name]
            if vm.sub_path:
                source = source / vm.sub_path
                if not source.exists():
                    source.mkdir(parents=True)
            mounts.append(
                {"source": str(source), "target": vm.mount_path, "readOnly": bool(vm.read_only)}
            )
        term_path = container.termination_message_path or "/dev/termination-log"
        term_file = cdir / "termination-log"
        term_file.write_text("")
        term_file.chmod(0o666)
        mounts.append({"source": str(term_file), "target": term_path, "readOnly": False})
        hosts = self.hosts_file
        if hosts is None and image is not None:
            hosts = self.dir / "hosts"
            hosts.write_text(f"127.0.0.1\tlocalhost\n{self.pod_ip}\t{self.name}\n")
        if self.hosts_file is None:  # the namespace's Services by name (servicenames)
            api = self.ex.core.api_client
            hosts = servicenames.hosts_file(
                api, self.namespace, self.dir, hosts, self.name, self.pod_ip
            )
        if hosts is not None:
            mounts.append({"source": str(hosts), "target": "/etc/hosts", "readOnly": True})
        argv = [_expand(a, env) for a in argv]
        plan: dict[str, Any] = {
            "argv": argv,
            "env": env,
            "mounts": mounts,
            "workingDir": container.working_dir or (image.working_dir if image else "") or "/",
            "hostname": self.hostname or (self.name if image is not None else None),
        }
        if image is not None and rootfs is not None:
            uid, gid, groups = self._user(container, image, rootfs)
            sc = container.security_context
            plan["image"] = {
                "rootfs": str(rootfs),
                "dir": str(cdir / "container"),
                "readOnlyRoot": bool(sc and sc.read_only_root_filesystem),
                "uid": uid,
                "gid": gid,
                "groups": groups,
            }
            env.setdefault("HOME", "/")
        return plan

    def _user(
        self, container: client.V1Container, image: Image, rootfs: Path
    ) -> tuple[int, int, list[int]]:
        """The container's uid, gid and supplementary groups: the pod's and the
        container's securityContext over the image's ``User``, as a kubelet merges them."""
        psc = self.pod.spec.security_context
        csc = container.security_context
        try:
            image_uid, image_gid = resolve_user(image.user, rootfs)
        except ValueError as exc:
            raise _InvalidPod(str(exc)) from None

        def pick(attr: str, default: Any) -> Any:
            for sc in (csc, psc):
                value = getattr(sc, attr, None) if sc is not None else None
                if value is not None:
                    return value
            return default

        uid = int(pick("run_as_user", image_uid))
        gid = int(pick("run_as_group", image_gid))
        if pick("run_as_non_root", False) and uid == 0:
            raise _InvalidPod("container has runAsNonRoot and image will run as root")
        groups = {gid}
        if psc is not None:
            if psc.fs_group is not None:
                groups.add(int(psc.fs_group))
            groups.update(int(g) for g in psc.supplemental_groups or [])
        return uid, gid, sorted(groups)

    def _launch(self, plan: dict[str, Any], cdir: Path, name: str) -> subprocess.Popen[bytes]:
        """Starts one container's process (in the pod's network namespace, when it has
        one: every container of the pod shares its loopback and address)."""
        plan_file = cdir / "plan.json"
        plan_file.write_text(json.dumps(plan))
        log_file = open(cdir / "container.log", "ab")  # noqa: SIM115 - owned by the child
        launcher = [sys.executable, "-m", "lmms_devcluster.launch", str(plan_file)]
        netns = self.sandbox.enter() if self.sandbox is not None else []
        proc = subprocess.Popen(
            [*netns, *self.ex.unshare_prefix, *launcher],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=cdir,
        )
        log_file.close()
        self.ex.register_child(proc.pid)
        log.info(
            "pod %s/%s: started %s, pid %d at %s",
            self.namespace,
            self.name,
            name,
            proc.pid,
            self.pod_ip,
        )
        return proc

    def _host_environment(self) -> dict[str, str]:
        (self.dir / "home").mkdir(parents=True, exist_ok=True)
        # A checkout put first on the executor's path (a worktree beside the environment's
        # editable install) is the code its pods run too.
        path = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
        return {
            **path,
            # The project's own environment provides the commands the image would have.
            "PATH": os.pathsep.join(
                [os.path.dirname(sys.executable), os.environ.get("PATH", "/usr/bin:/bin")]
            ),
            "HOSTNAME": self.name,
            "HOME": str(self.dir / "home"),
            # As the runner image does (ENV LMMS_TASK_INDEX): lmms-eval's task index,
            # written by the first runner and checked against lmms-eval's files by
            # every other, instead of indexing some 2,000 YAML files in every pod.
            "LMMS_TASK_INDEX": str(HOST_TASK_INDEX),
            "LMMS_TRANSFORMERS_INDEX": str(HOST_TRANSFORMERS_INDEX),
            "LMMS_PUNCTUATION_INDEX": str(HOST_PUNCTUATION_INDEX),
            "LMMS_CODE_CACHE": str(HOST_CODE_CACHE),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONUNBUFFERED": "1",
            # A worktree's tests put its code first on the path: its pods run that code,
            # not the editable install's.
            **({"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}),
        }

    def _environment(self, container: client.V1Container, base: dict[str, str]) -> dict[str, str]:
        env = dict(base)
        # Every container gets the API server's address, whatever enableServiceLinks
        # says: here its own endpoint, as no kube-proxy routes the Service's cluster IP.
        host, port = self.ex.api_endpoint
        env["KUBERNETES_SERVICE_HOST"] = host
        env["KUBERNETES_SERVICE_PORT"] = port
        env["KUBERNETES_SERVICE_PORT_HTTPS"] = port
        env[SIMULATED_GPUS_ENV] = "1"
        for src in container.env_from or []:
            prefix = src.prefix or ""
            if src.config_map_ref:
                cm = self._config_map(src.config_map_ref.name, src.config_map_ref.optional)
                env.update({prefix + k: v for k, v in cm.items()})
            if src.secret_ref:
                secret = self._secret(src.secret_ref.name, src.secret_ref.optional)
                env.update({prefix + k: v.decode(errors="replace") for k, v in secret.items()})
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = _expand(var.value or "", env)
                continue
            vf = var.value_from
            if vf.field_ref:
                env[var.name] = self._field(vf.field_ref.field_path)
            elif vf.secret_key_ref:
                ref = vf.secret_key_ref
                values = self._secret(ref.name, ref.optional)
                if ref.key in values:
                    env[var.name] = values[ref.key].decode(errors="replace")
                elif not ref.optional:
                    raise _NotReady(f"secret {ref.name!r} has no key {ref.key!r}")
            elif vf.config_map_key_ref:
                ref = vf.config_map_key_ref
                cm = self._config_map(ref.name, ref.optional)
                if ref.key in cm:
                    env[var.name] = cm[ref.key]
                elif not ref.optional:
                    raise _NotReady(f"configmap {ref.name!r} has no key {ref.key!r}")
            elif vf.resource_field_ref:
                env[var.name] = self._resource(container, vf.resource_field_ref.resource)
        return env

    def _field(self, path: str) -> str:
        meta = self.pod.metadata
        simple = {
            "metadata.name": meta.name,
            "metadata.namespace": meta.namespace,
            "metadata.uid": meta.uid,
            "spec.nodeName": self.pod.spec.node_name,
            "spec.serviceAccountName": self.pod.spec.service_account_name or "default",
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path in simple:
            return str(simple[path] or "")
        for prefix, mapping in (
            ("metadata.labels", meta.labels),
            ("metadata.annotations", meta.annotations),
        ):
            if path.startswith(prefix + "['") and path.endswith("']"):
                return str((mapping or {}).get(path[len(prefix) + 2 : -2], ""))
            if path == prefix:
                return "\n".join(f'{k}="{v}"' for k, v in sorted((mapping or {}).items()))
        raise _InvalidPod(f"unsupported fieldRef {path!r}")

    @staticmethod
    def _resource(container: client.V1Container, resource: str) -> str:
        kind, _, name = resource.partition(".")
        res = container.resources
        values = (res.limits if kind == "limits" else res.requests) if res else None
        return str((values or {}).get(name, "0"))

    def _config_map(self, name: str, optional: bool | None) -> dict[str, str]:
        try:
            cm = self.ex.core.read_namespaced_config_map(
                name, self.namespace, _request_timeout=API_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                if optional:
                    return {}
                raise _NotReady(f'configmap "{name}" not found') from None
            raise _NotReady(f'configmap "{name}": {exc.status} {exc.reason}') from None
        except TRANSIENT_ERRORS as exc:  # the API server is away: the pod waits
            raise _NotReady(f'configmap "{name}": {_brief(exc)}') from None
        data = dict(cm.data or {})
        for key, value in (cm.binary_data or {}).items():
            data[key] = base64.b64decode(value).decode(errors="replace")
        return data

    def _secret(self, name: str, optional: bool | None) -> dict[str, bytes]:
        try:
            secret = self.ex.core.read_namespaced_secret(
                name, self.namespace, _request_timeout=API_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                if optional:
                    return {}
                raise _NotReady(f'secret "{name}" not found') from None
            raise _NotReady(f'secret "{name}": {exc.status} {exc.reason}') from None
        except TRANSIENT_ERRORS as exc:
            raise _NotReady(f'secret "{name}": {_brief(exc)}') from None
        return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}

    def _volumes(self) -> dict[str, Path]:
        result: dict[str, Path] = {}
        root = self.dir / "volumes"
        for vol in self.pod.spec.volumes or []:
            target = root / vol.name
            if vol.config_map is not None:
                src = vol.config_map
                data = {k: v.encode() for k, v in self._config_map(src.name, src.optional).items()}
                _write_files(target, data, src.items, src.default_mode)
            elif vol.secret is not None:
                src = vol.secret
                _write_files(
                    target,
                    self._secret(src.secret_name, src.optional),
                    src.items,
                    src.default_mode,
                )
            elif vol.downward_api is not None:
                self._downward(target, vol.downward_api.items or [])
            elif vol.projected is not None:
                target.mkdir(parents=True, exist_ok=True)
                for source in vol.projected.sources or []:
                    if source.config_map is not None:
                        cm = self._config_map(source.config_map.name, source.config_map.optional)
                        _write_files(
                            target,
                            {k: v.encode() for k, v in cm.items()},
                            source.config_map.items,
                            None,
                        )
                    elif source.secret is not None:
                        data = self._secret(source.secret.name, source.secret.optional)
                        _write_files(target, data, source.secret.items, None)
                    elif source.downward_api is not None:
                        self._downward(target, source.downward_api.items or [])
                    elif source.service_account_token is not None:
                        self._service_account_token(target, source.service_account_token)
            elif vol.empty_dir is not None:
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o777)  # as a kubelet makes them: any container user writes
            elif vol.persistent_volume_claim is not None:
                target = self.ex.pvc_dir(self.namespace, vol.persistent_volume_claim.claim_name)
                fs_group = (
                    self.pod.spec.security_context or client.V1PodSecurityContext()
                ).fs_group
                if fs_group is not None:  # a kubelet gives the volume to the fsGroup
                    os.chown(target, -1, int(fs_group))
                    target.chmod(0o2775)
            elif vol.host_path is not None:
                target = Path(vol.host_path.path)
                target.mkdir(parents=True, exist_ok=True)
            else:
                raise _InvalidPod(f"volume {vol.name!r}: unsupported volume type")
            result[vol.name] = target
        return result

    def _service_account_token(self, target: Path, source: Any) -> None:
        """A projected ServiceAccount token, as a kubelet gets it: from the TokenRequest
        API, bound to this pod (the API server rejects it once the pod is gone)."""
        sa = self.pod.spec.service_account_name or "default"
        spec: dict[str, Any] = {
            "expirationSeconds": source.expiration_seconds or 3600,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.name,
                "uid": self.uid,
            },
        }
        if source.audience:
            spec["audiences"] = [source.audience]
        try:
            made = self.ex.core.create_namespaced_service_account_token(
                sa, self.namespace, {"spec": spec}, _request_timeout=API_TIMEOUT
            )
        except ApiException as exc:
            if exc.status == 404:
                raise _NotReady(f'serviceaccount "{sa}" not found') from None
            raise _NotReady(f'serviceaccount "{sa}" token: {exc.status} {exc.reason}') from None
        except TRANSIENT_ERRORS as exc:
            raise _NotReady(f'serviceaccount "{sa}" token: {_brief(exc)}') from None
        path = target / source.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(made.status.token)  # in place: the pod's mount sees the new one
        path.chmod(0o644)
        # As a kubelet does: a new token once 80% of this one's lifetime has passed.
        timer = threading.Timer(
            0.8 * spec["expirationSeconds"], self._refresh_token, args=(target, source)
        )
        timer.daemon = True
        timer.start()

    def _refresh_token(self, target: Path, source: Any) -> None:
        if self.stopping.is_set() or self.done.is_set():
            return
        try:
            self._service_account_token(target, source)
        except Exception as exc:  # the API server is away: try again soon
            log.warning("pod %s/%s: token refresh failed: %s", self.namespace, self.name, exc)
            timer = threading.Timer(10, self._refresh_token, args=(target, source))
            timer.daemon = True
            timer.start()

    def _downward(self, target: Path, items: list[Any]) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for item in items:
            if item.field_ref:
                value = self._field(item.field_ref.field_path)
            else:
                value = self._resource(
                    self.pod.spec.containers[0], item.resource_field_ref.resource
                )
            path = target / item.path
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value)

    def _termination_message(self, container: client.V1Container, code: int, cdir: Path) -> str:
        path = cdir / "termination-log"
        try:
            message = path.read_bytes()[:TERMINATION_LOG_LIMIT].decode(errors="replace")
        except OSError:
            message = ""
        policy = container.termination_message_policy or "File"
        if not message and code != 0 and policy == "FallbackToLogsOnError":
            lines = (cdir / "container.log").read_text(errors="replace").splitlines()
            message = "\n".join(lines[-FALLBACK_LOG_LINES:])[-TERMINATION_LOG_LIMIT:]
        return str(message)

    # -- status -----------------------------------------------------------------------
    def publish(self, phase: str | None = None) -> None:
        """The pod's status as its containers stand, as a kubelet reports it: the phase
        (Pending until a regular container has started, Running, then ``phase``), the
        conditions, and each container's status (``initContainerStatuses``,
        ``containerStatuses``) with its state, last state and restart count."""
        regular = [r for r in self.containers if r.kind == "regular"]
        inits = [r for r in self.containers if r.kind != "regular"]
        if phase is None:
            begun = any(r.restarts or "waiting" not in r.state for r in regular)
            phase = "Running" if begun else "Pending"
        done = phase in ("Succeeded", "Failed")
        initialized = done or all(
            "terminated" in r.state or (r.kind == "sidecar" and r.startup_done.is_set())
            for r in inits
        )
        ready = not done and all(r.ready for r in self.containers if r.kind != "init")
        reason = "PodCompleted" if done else (None if ready else "ContainersNotReady")
        status: dict[str, Any] = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time or _now(),
            "conditions": self._conditions(ready, reason, initialized),
            "containerStatuses": [r.status() for r in regular],
        }
        if self.pod_ip:
            status.update(podIP=self.pod_ip, podIPs=[{"ip": self.pod_ip}])
        if inits:
            status["initContainerStatuses"] = [r.status() for r in inits]
        self._patch_status(status)

    def _patch_status(self, status: dict[str, Any]) -> None:
        if self.stopping.is_set():
            return
        # Kept until written: while the API server is away it is written again (and on
        # every relist) until it is, as a kubelet's status manager does.
        self.ex.statuses.report(self.uid, self.namespace, self.name, status)

    def _conditions(
        self, ready: bool, reason: str | None = None, initialized: bool = True
    ) -> list[dict[str, Any]]:
        now = _now()
        conds = []
        for ctype in ("Initialized", "ContainersReady", "Ready", "PodReadyToStartContainers"):
            ok = {"Initialized": initialized, "PodReadyToStartContainers": True}.get(ctype, ready)
            cond: dict[str, Any] = {
                "type": ctype,
                "status": "True" if ok else "False",
                "lastTransitionTime": now,
            }
            if not ok and reason:
                cond["reason"] = reason
            conds.append(cond)
        return conds

    def _report_waiting(self, reason: str, message: str) -> None:
        """Every container not started yet waits (the pod's sandbox is not made)."""
        for run in self.containers:
            run.state = {"waiting": {"reason": reason, "message": message}}
        self.publish()

    def _report_terminated(self, code: int, reason: str, message: str, finished: str) -> None:
        """The pod failed as a whole (an executor error): every container that has not
        exited ends with ``reason``."""
        for run in self.containers:
            if "terminated" not in run.state:
                run.state = {"terminated": _terminated(code, reason, message, finished, finished)}
                run.ready = False
        self.publish("Failed")
        log.info("pod %s/%s: exited %d (%s)", self.namespace, self.name, code, reason)


class ContainerRun:
    """One container of a pod: its process (restarted under a restart policy), and its
    status as a kubelet reports it. ``kind``: ``init``, ``sidecar`` (an init container
    with ``restartPolicy: Always``) or ``regular``. The first regular container keeps its
    files (``container.log``, ``termination-log``) in the pod's directory; the others in
    ``containers/<name>`` there."""

    def __init__(
        self, pod: PodRunner, container: client.V1Container, kind: str, first: bool
    ) -> None:
        self.pod = pod
        self.container = container
        self.kind = kind
        self.cname: str = container.name
        self.namespace = pod.namespace
        self.name = f"{pod.name}/{container.name}"  # (for the prober's log lines)
        self.dir = pod.dir if first else pod.dir / "containers" / container.name
        self.proc: subprocess.Popen[bytes] | None = None
        self.image_id = ""
        waiting = "PodInitializing" if kind == "regular" else "ContainerCreating"
        self.state: dict[str, Any] = {"waiting": {"reason": waiting}}
        self.last: dict[str, Any] | None = None
        self.restarts = 0
        self.ready = False
        self.started = False
        #: Set once the container has started and its startup probe (if any) passed.
        self.startup_done = threading.Event()
        self.stopping = threading.Event()

    @property
    def pod_ip(self) -> str:
        return self.pod.pod_ip

    def set_waiting(self, reason: str, message: str) -> None:
        self.state = {"waiting": {"reason": reason, "message": message}}
        self.pod.publish()

    def run(self, policy: str) -> int | None:
        """Runs the container until it exits for good under ``policy`` (Always, OnFailure,
        Never); its last exit code, or None when it was stopped with its pod."""
        self._run_policy = policy
        image: Image | None = None
        rootfs: Path | None = None
        if (self.container.image or "") != HOST_IMAGE:
            image = self.pod._pull(self)
            if image is None:
                return None
            self.image_id = image.image_id
            self.set_waiting("ContainerCreating", "")
            rootfs = self.pod.ex.images.rootfs(image)
        while not self.stopping.is_set():
            try:
                plan = self.pod._plan(self.container, image, rootfs, self.dir)
            except _NotReady as exc:
                # Like a kubelet: the pod waits (ContainerCreating) until its volumes exist.
                self.set_waiting("ContainerCreating", str(exc))
                if self.stopping.wait(2):
                    return None
                continue
            except _InvalidPod as exc:
                self._terminate(128, "CreateContainerConfigError", str(exc), _now(), _now())
                return 128
            code = self._once(plan)
            if code is None:
                return None
            if code[0] is False:
                return code[1]
        return None

    def _once(self, plan: dict[str, Any]) -> tuple[bool, int] | None:
        """One start of the process: (False, code) when it ended for good, (True, code)
        when it is to be restarted, None when its pod is being deleted."""
        started = _now()
        self.proc = self.pod._launch(plan, self.dir, self.cname)
        prober = Prober(self, self.container, started, self.restarts)
        self.state = {"running": {"startedAt": started}}
        self.started, self.ready = True, prober.readiness is None
        if prober.startup is None:
            self.startup_done.set()
        self.pod.publish()
        prober.start()
        code = self.proc.wait()
        prober.stop()
        if code < 0:
            code = 128 - code
        if self.pod.stopping.is_set():
            return None
        finished = _now()
        message = self.pod._termination_message(self.container, code, self.dir)
        policy_retry = self._policy_retry(code)
        if self.stopping.is_set() or not policy_retry:
            self._terminate(code, "Completed" if code == 0 else "Error", message, started, finished)
            return (False, code)
        self.restarts += 1
        reason = "Completed" if code == 0 else "Error"
        self.last = {"terminated": _terminated(code, reason, message, started, finished)}
        self.state = {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off restarting failed container {self.cname}",
            }
        }
        self.started = self.ready = False
        self.pod.publish()
        if self.stopping.wait(min(10, 2**self.restarts)):
            self.state = dict(self.last)  # stopped in its back-off: its last end stands
            self.pod.publish()
            return (False, code)
        return (True, code)

    def _policy_retry(self, code: int) -> bool:
        policy = "Always" if self.kind == "sidecar" else self._run_policy
        return policy == "Always" or (policy == "OnFailure" and code != 0)

    _run_policy = "Never"

    def _terminate(self, code: int, reason: str, message: str, started: str, finished: str) -> None:
        self.state = {"terminated": _terminated(code, reason, message, started, finished)}
        self.started = self.ready = False
        self.pod.publish()
        log.info("pod %s: container exited %d (%s)", self.name, code, reason)

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "name": self.cname,
            "image": self.container.image or "",
            "imageID": self.image_id,
            "containerID": f"process://{self.proc.pid}" if self.proc else None,
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restarts,
            "state": self.state,
        }
        if self.last:
            status["lastState"] = self.last
        return status

    # -- for the prober and the pod ---------------------------------------------------
    def set_ready(self, ready: bool, started: str, restarts: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.ready = ready
            self.pod.publish()

    def signal(self, sig: int) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)

    def wait_or_kill(self, grace: float) -> None:
        proc = self.proc
        if proc is None:
            return
        try:
            proc.wait(timeout=max(grace, 0.1))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def kill_container(self, grace: float) -> None:
        """Ends the container's process (a failed liveness or startup probe); the pod
        lives on and the restart policy decides what comes next."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        self.wait_or_kill(grace)

    def stop(self, grace: float) -> None:
        """Stops a sidecar once the regular containers have exited."""
        self.stopping.set()
        self.signal(signal.SIGTERM)
        self.wait_or_kill(grace)


class Prober:
    """A container's startup, readiness and liveness probes (HTTP GET and TCP), run as a
    kubelet runs them: every ``periodSeconds`` after ``initialDelaySeconds``, each try
    cut at ``timeoutSeconds``. The other two wait until the startup probe succeeds, and
    ``failureThreshold`` failures of it in a row kill the container. Then
    ``failureThreshold`` failures in a row make the container not ready, or (liveness)
    kill it so that the restart policy applies; ``successThreshold`` successes make it
    ready again."""

    def __init__(
        self, pod: ContainerRun, container: client.V1Container, started: str, restarts: int
    ) -> None:
        self.pod = pod
        self.container = container
        self.started = started
        self.restarts = restarts
        self.startup = container.startup_probe
        self.readiness = container.readiness_probe
        self.liveness = container.liveness_probe
        self._stop = threading.Event()
        self._started = threading.Event()
        if self.startup is None:
            self._started.set()
        probes = (
            (self.startup, "startup"),
            (self.readiness, "readiness"),
            (self.liveness, "liveness"),
        )
        self._threads = [
            threading.Thread(target=self._loop, args=(probe, kind), daemon=True)
            for probe, kind in probes
            if probe is not None
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()

    def _port(self, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in self.container.ports or []:
            if p.name == port:
                return int(p.container_port)
        raise ValueError(f"port {port!r} is not a port of the container")

    def check(self, probe: client.V1Probe) -> bool:
        timeout = probe.timeout_seconds or 1
        try:
            if probe.http_get is not None:
                get = probe.http_get
                host = get.host or self.pod.pod_ip
                scheme = (get.scheme or "HTTP").lower()
                url = f"{scheme}://{host}:{self._port(get.port)}{get.path or '/'}"
                request = urllib.request.Request(
                    url, headers={h.name: h.value for h in get.http_headers or []}
                )
                context = ssl._create_unverified_context() if scheme == "https" else None
                with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
                    return bool(200 <= resp.status < 400)
            if probe.tcp_socket is not None:
                host = probe.tcp_socket.host or self.pod.pod_ip
                with socket.create_connection(
                    (host, self._port(probe.tcp_socket.port)), timeout=timeout
                ):
                    return True
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return True  # exec and gRPC probes are not run here: they pass

    def _loop(self, probe: client.V1Probe, kind: str) -> None:
        if kind != "startup":
            while not self._started.wait(0.5):
                if self._stop.is_set():
                    return
        if self._stop.wait(probe.initial_delay_seconds or 0):
            return
        failures = successes = 0
        while not self._stop.is_set() and not self.pod.stopping.is_set():
            ok = self.check(probe)
            if self._stop.is_set():
                return
            failures = 0 if ok else failures + 1
            successes = successes + 1 if ok else 0
            if kind == "startup" and ok:
                self._started.set()
                self.pod.startup_done.set()
                return
            if kind == "readiness":
                if ok and not self.pod.ready and successes >= (probe.success_threshold or 1):
                    self.pod.set_ready(True, self.started, self.restarts)
                elif not ok and self.pod.ready and failures >= (probe.failure_threshold or 3):
                    self.pod.set_ready(False, self.started, self.restarts)
            elif failures >= (probe.failure_threshold or 3):
                log.info(
                    "pod %s/%s: %s probe failed %d times: restarting",
                    self.pod.namespace,
                    self.pod.name,
                    kind,
                    failures,
                )
                self.pod.kill_container(probe.termination_grace_period_seconds or 30)
                return
            if self._stop.wait(probe.period_seconds or 10):
                return


def _terminated(
    code: int, reason: str, message: str, started: str, finished: str
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "exitCode": code,
        "reason": reason,
        "startedAt": started,
        "finishedAt": finished,
    }
    if message:
        result["message"] = message
    return result


def _expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion; ``$$(VAR)`` escapes it."""
    out: list[str] = []
    i = 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and ")" in value[i:]:
            end = value.index(")", i)
            name = value[i + 2 : end]
            out.append(env.get(name, value[i : end + 1]))
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def _write_files(
    target: Path, data: dict[str, bytes], items: list[Any] | None, mode: int | None
) -> None:
    target.mkdir(parents=True, exist_ok=True)
    chosen = [(i.key, i.path, i.mode) for i in items] if items else [(k, k, None) for k in data]
    for key, rel, item_mode in chosen:
        if key not in data:
            continue
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[key])
        path.chmod(item_mode or mode or 0o644)


class _NotReady(Exception):
    """Something the pod needs does not exist yet; the pod waits, as with a kubelet."""


class _InvalidPod(Exception):
    """The pod cannot be run by the executor at all."""


#: Seconds an API request may take (a watch: its read timeout on top of its own).
API_TIMEOUT = 10.0
#: How often unwritten pod statuses are written again while the API server is away.
STATUS_RETRY_INTERVAL = 1.0
#: What a call to an API server that is away (restarting, or its etcd away) raises,
#: besides an ApiException: refused and reset connections, timeouts.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (urllib3.exceptions.HTTPError, OSError)


def _brief(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


@dataclass(frozen=True)
class PodView:
    """What the executor needs to know of a pod bound to its node."""

    uid: str
    phase: str | None
    deleting: bool

    @classmethod
    def of(cls, pod: client.V1Pod) -> PodView:
        return cls(
            uid=pod.metadata.uid,
            phase=pod.status.phase if pod.status is not None else None,
            deleting=pod.metadata.deletion_timestamp is not None,
        )


def pod_action(pod: PodView, running: bool) -> str | None:
    """What a kubelet does about one pod of its node: ``"start"`` a pod it does not run
    yet (a pod it has never started is Pending, or has no phase yet), ``"delete"`` a
    pod being deleted (stop its process, if any, and confirm the deletion), or nothing."""
    if pod.deleting:
        return "delete"
    if not running and pod.phase in (None, "Pending"):
        return "start"
    return None


@dataclass(frozen=True)
class Relist:
    """What a relist must do to make the node's runners match the pods bound to it."""

    start: tuple[str, ...] = ()
    #: Pods being deleted: stop their runners (those that have one), confirm the deletion.
    delete: tuple[str, ...] = ()
    #: Runners whose pod is gone (deleted while the watch was down): stop them.
    stop: tuple[str, ...] = ()
    #: Runners whose last status write failed: write their current status again.
    report: tuple[str, ...] = ()


def plan_relist(
    pods: Iterable[PodView], running: Iterable[str], unwritten: Iterable[str]
) -> Relist:
    """Reconciles a full list of the pods bound to the node (``pods``) against the pods
    it runs (``running``: uids of its runners, finished ones included) and the runners
    whose status is not written yet (``unwritten``)."""
    running_set = set(running)
    start: list[str] = []
    delete: list[str] = []
    listed: set[str] = set()
    for pod in pods:
        listed.add(pod.uid)
        action = pod_action(pod, pod.uid in running_set)
        if action == "start":
            start.append(pod.uid)
        elif action == "delete":
            delete.append(pod.uid)
    stop = sorted(running_set - listed)
    gone = set(delete) | set(stop)
    report = sorted(uid for uid in set(unwritten) & running_set if uid not in gone)
    return Relist(tuple(start), tuple(delete), tuple(stop), tuple(report))


class StatusWriter:
    """The executor's status manager: the status each of its pods should have, kept
    until the API server has it. A report the API server does not take (it is away,
    or its etcd is) stays, merged with later ones, and is written again every
    ``STATUS_RETRY_INTERVAL`` seconds and at every relist, until it is written."""

    def __init__(self, core: client.CoreV1Api) -> None:
        self.core = core
        self._lock = threading.Lock()
        #: uid -> (namespace, name, the status to write)
        self._pending: dict[str, tuple[str, str, dict[str, Any]]] = {}
        # One write per pod at a time, so that an older status never lands after a newer.
        self._writing: dict[str, threading.Lock] = {}
        self._failing: set[str] = set()
        self.wake = threading.Event()

    def report(self, uid: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        with self._lock:
            entry = self._pending.get(uid)
            merged = {**(entry[2] if entry else {}), **status}
            self._pending[uid] = (namespace, name, merged)
        self.write(uid)

    def unwritten(self) -> set[str]:
        with self._lock:
            return set(self._pending)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._pending.pop(uid, None)
            self._failing.discard(uid)
            self._writing.pop(uid, None)

    def write(self, uid: str, wait: bool = True) -> bool:
        """Writes the pod's pending status; False when it stays pending (also when
        ``wait`` is false and a write of it is in flight)."""
        with self._lock:
            lock = self._writing.setdefault(uid, threading.Lock())
        if not lock.acquire(blocking=wait):
            return False
        try:
            return self._write(uid)
        finally:
            lock.release()

    def _write(self, uid: str) -> bool:
        with self._lock:
            entry = self._pending.get(uid)
        if entry is None:
            return True
        namespace, name, status = entry
        try:
            self.core.patch_namespaced_pod_status(
                name, namespace, {"status": status}, _request_timeout=API_TIMEOUT
            )
        except ApiException as exc:
            if exc.status in (404, 400, 422):  # the pod is gone, or the patch can never be
                if exc.status != 404:
                    log.warning("pod %s/%s: status refused: %s", namespace, name, _brief(exc))
                self._done(uid, entry)
                return True
            self._failed(uid, namespace, name, exc)
            return False
        except TRANSIENT_ERRORS as exc:
            self._failed(uid, namespace, name, exc)
            return False
        if uid in self._failing:
            log.info("pod %s/%s: status written after an outage", namespace, name)
        self._done(uid, entry)
        return True

    def _done(self, uid: str, entry: tuple[str, str, dict[str, Any]]) -> None:
        with self._lock:
            self._failing.discard(uid)
            if self._pending.get(uid) is entry:  # else a newer report is waiting its turn
                del self._pending[uid]

    def _failed(self, uid: str, namespace: str, name: str, exc: BaseException) -> None:
        with self._lock:
            first = uid not in self._failing
            self._failing.add(uid)
        if first:
            log.warning(
                "pod %s/%s: status write failed (%s): kept, written again until it is",
                namespace,
                name,
                _brief(exc),
            )

    def retry_loop(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.wake.wait(STATUS_RETRY_INTERVAL)
            self.wake.clear()
            for uid in sorted(self.unwritten()):
                if stop.is_set():
                    return
                try:
                    self.write(uid, wait=False)
                except Exception:  # never let one pod's write end the retries
                    log.exception("status retry failed")


class Executor:
    """The kubelet of one node. It lists the pods bound to the node and watches them
    from that list; whenever the watch ends (its timeout, 410 Gone, the API server or
    its etcd restarting) it lists again and reconciles (``plan_relist``): it starts the
    pods bound meanwhile, stops those deleted meanwhile, and writes again each status
    the API server did not take (``StatusWriter``). No API error ends it."""

    def __init__(
        self, node: str, state_dir: Path, api: client.ApiClient, cni_path: Path | None = None
    ) -> None:
        self.node = node
        self.state_dir = state_dir
        self.core = client.CoreV1Api(api)
        self.ips = IPPool()
        self.network = _pod_network(state_dir, cni_path)
        self.names = PodNames(state_dir / "names")
        self.runners: dict[str, PodRunner] = {}
        self.lock = threading.Lock()
        self.statuses = StatusWriter(self.core)
        self.unshare_prefix = _unshare_prefix()
        self.images = ImageStore()
        endpoint = urllib.parse.urlsplit(api.configuration.host)
        self.api_endpoint = (endpoint.hostname or "127.0.0.1", str(endpoint.port or 443))

    def register_child(self, pid: int) -> None:
        with (self.state_dir / "children").open("a") as fh:
            fh.write(f"{pid}\n")

    def pvc_dir(self, namespace: str, claim: str) -> Path:
        path = self.state_dir / "pvcs" / namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        return path

    def ensure_node(self) -> None:
        capacity = {
            "cpu": "32",
            "memory": "256Gi",
            "pods": "110",
            "nvidia.com/gpu": "8",
            "ephemeral-storage": "500Gi",
        }
        now = _now()
        status = {
            "capacity": capacity,
            "allocatable": capacity,
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "ExecutorReady",
                    "message": "the process executor runs this node's pods",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                },
            ],
            "nodeInfo": {
                "kubeletVersion": "executor",
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "local processes",
                "containerRuntimeVersion": "process://",
                "kernelVersion": "",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
                "kubeProxyVersion": "",
            },
        }
        deadline = time.monotonic() + 60
        while True:
            try:
                self.core.patch_node_status(self.node, {"status": status})
                return
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def handle(self, pod: client.V1Pod) -> None:
        """Acts on one pod of the node, as seen in a watch event or a relist."""
        view = PodView.of(pod)
        with self.lock:
            runner = self.runners.get(view.uid)
            action = pod_action(view, runner is not None)
            if action == "delete":
                if runner is not None:
                    del self.runners[view.uid]
                    grace = pod.metadata.deletion_grace_period_seconds or 0
                    self._stop_runner(runner, grace, then_delete=pod)
                else:
                    threading.Thread(target=self._force_delete, args=(pod,), daemon=True).start()
            elif action == "start":
                runner = PodRunner(self, pod)
                self.runners[view.uid] = runner
                runner.start()

    def _stop_runner(
        self, runner: PodRunner, grace: float, then_delete: client.V1Pod | None = None
    ) -> None:
        self.statuses.forget(runner.uid)
        threading.Thread(
            target=self._delete, args=(runner, then_delete, grace), daemon=True
        ).start()

    def _delete(self, runner: PodRunner, pod: client.V1Pod | None, grace: float) -> None:
        runner.stop(grace)
        self.statuses.forget(runner.uid)
        if pod is not None:  # a graceful deletion: the pod's files go with it
            self._force_delete(pod)
            shutil.rmtree(runner.dir, ignore_errors=True)

    def _force_delete(self, pod: client.V1Pod) -> None:
        # With no kubelet to confirm, the pod object would stay Terminating forever.
        # Should the API server be away, the next relist confirms it again.
        try:
            self.core.delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                grace_period_seconds=0,
                body=client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=client.V1Preconditions(uid=pod.metadata.uid),
                ),
                _request_timeout=API_TIMEOUT,
            )
        except ApiException as exc:
            if exc.status not in (404, 409):
                log.warning("pod %s: delete failed: %s", pod.metadata.name, _brief(exc))
        except TRANSIENT_ERRORS as exc:
            log.warning("pod %s: delete failed: %s", pod.metadata.name, _brief(exc))

    def relist(self) -> str:
        """Lists the node's pods and makes the runners match them, as a kubelet does
        after its watch broke: starts the pods it missed, stops those deleted meanwhile,
        and writes again every status the API server has not taken. Returns the list's
        resourceVersion, to watch from."""
        pods = self.core.list_pod_for_all_namespaces(
            field_selector=f"spec.nodeName={self.node}", _request_timeout=API_TIMEOUT * 3
        )
        with self.lock:
            plan = plan_relist(
                (PodView.of(p) for p in pods.items), self.runners, self.statuses.unwritten()
            )
            stopped = [self.runners.pop(uid) for uid in plan.stop]
        for runner in stopped:
            log.info("pod %s/%s: deleted while away: stopping it", runner.namespace, runner.name)
            self._stop_runner(runner, 0)
        starting = set(plan.start) | set(plan.delete)
        for pod in pods.items:
            if pod.metadata.uid in starting:
                self.handle(pod)
        if plan.start:
            log.info("relist: %d pod(s) to start", len(plan.start))
        if plan.report:
            log.info("relist: %d pod status(es) to write again", len(plan.report))
            self.statuses.wake.set()
        return str(pods.metadata.resource_version)

    def _watch(self, resource_version: str, stop: threading.Event) -> None:
        w = watch.Watch()
        for event in w.stream(
            self.core.list_pod_for_all_namespaces,
            field_selector=f"spec.nodeName={self.node}",
            resource_version=resource_version,
            timeout_seconds=60,
            _request_timeout=(API_TIMEOUT, 60 + API_TIMEOUT),
        ):
            if stop.is_set():
                w.stop()
                return
            if event["type"] in ("ADDED", "MODIFIED"):
                self.handle(event["object"])
            elif event["type"] == "DELETED":
                with self.lock:
                    runner = self.runners.pop(event["object"].metadata.uid, None)
                if runner:
                    self._stop_runner(runner, 0)

    def run(self, stop: threading.Event) -> None:
        """List, then watch from the list; whenever the watch ends (its timeout, a 410
        Gone, an error, the API server going away) list again. Nothing the API server
        does ends this loop."""
        threading.Thread(
            target=self.statuses.retry_loop, args=(stop,), name="status-retry", daemon=True
        ).start()
        backoff = 0.0
        while not stop.is_set():
            if stop.wait(backoff):
                return
            try:
                self.ensure_node()
                break
            except Exception as exc:
                log.warning("registering the node failed: %s", _brief(exc))
                backoff = min(max(backoff * 2, 0.5), 5.0)
        backoff = 0.0
        while not stop.is_set():
            if stop.wait(backoff):
                return
            try:
                resource_version = self.relist()
            except Exception as exc:
                log.warning("relist failed: %s", _brief(exc))
                backoff = min(max(backoff * 2, 0.5), 5.0)
                continue
            backoff = 0.0
            try:
                self._watch(resource_version, stop)
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch expired (410 Gone): relisting")
                else:
                    log.warning("watch failed: %s: relisting", _brief(exc))
                    backoff = 0.5
            except Exception as exc:  # connection reset and the like
                log.warning("watch interrupted: %s: relisting", _brief(exc))
                backoff = 0.5

    def shutdown(self) -> None:
        with self.lock:
            runners = list(self.runners.values())
            self.runners.clear()
        for runner in runners:
            runner.stop(2)
        if self.network is not None:
            self.network.close()


def _pod_network(state_dir: Path, cni_path: Path | None) -> PodNetwork | None:
    """Pods in network namespaces of their own on a bridge (``podnet``) when the CNI
    plugins are given and this machine allows it; else on the node's loopback."""
    if cni_path is None:
        return None
    why = podnet.available(cni_path)
    if why is not None:
        log.warning("pods share the node's network (loopback addresses): %s", why)
        return None
    podnet.cleanup(state_dir)  # what an executor killed before left
    network = PodNetwork(state_dir, cni_path)
    log.info(
        "pod network %s on bridge %s (gateway %s)", network.subnet, network.bridge, network.gateway
    )
    return network


def _unshare_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if unshare is None:
        raise SystemExit("executor: util-linux's unshare is required")
    if os.geteuid() == 0:
        return [unshare, "--mount", "--uts", "--propagation", "private"]
    return [unshare, "--map-root-user", "--mount", "--uts", "--propagation", "private"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmms-executor", description=__doc__.split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument(
        "--cni-path",
        type=Path,
        help="the CNI plugins (bridge, host-local, loopback): pods get network namespaces",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # Its retries say each refused connection again: the executor says what it does about it.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    args.state_dir.mkdir(parents=True, exist_ok=True)
    api = config.new_client_from_config(config_file=args.kubeconfig)
    executor = Executor(args.node, args.state_dir, api, args.cni_path)
    stop = threading.Event()

    def _on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    worker = threading.Thread(target=executor.run, args=(stop,), daemon=True)
    worker.start()
    stop.wait()
    executor.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
