"""A real, local Kubernetes control plane for tests and the demo ("devcluster").

It starts, on loopback addresses only: etcd, kube-apiserver, kube-controller-manager
(the Job controller, garbage collector, ...), kube-scheduler, kwok (fake GPU nodes),
the process executor (runs the pods of one node as local processes) and Kueue (quota
and admission for Jobs labelled ``kueue.x-k8s.io/queue-name``; see kueue.py).

    lmms-devcluster up   [--dir DIR]   # idempotent; prints `export KUBECONFIG=...`
    lmms-devcluster down [--dir DIR]   # stops every process it started

Binaries come from ``$KUBEBUILDER_ASSETS`` (envtest's convention), then ``$PATH``,
and are otherwise built from their Go modules by ``build-k8s.sh`` and cached under
``~/.cache/lmms-operator``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lmms_devcluster import kueue as kueue_mod

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[2]
DEFAULT_DIR = REPO_ROOT / ".devcluster"

#: Nodes that kwok keeps Ready. Their pods are simulated (Running, then Succeeded for
#: Job-owned pods), which is what scale tests want.
KWOK_NODES = ("gpu-node-0", "gpu-node-1")
#: The node whose pods the process executor runs for real.
EXECUTOR_NODE = "executor-0"
EXECUTOR_LABEL = "lmms.dev/executor"
#: A node no kubelet manages: tests write its pods' status as a kubelet would report
#: states that cannot be produced here (an image that cannot be pulled, an OOM kill).
MANUAL_NODE = "manual-0"
MANUAL_LABEL = "lmms.dev/manual"
GPU_RESOURCE = "nvidia.com/gpu"
GPUS_PER_NODE = 8

K8S_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok")


class DevClusterError(RuntimeError):
    pass


def _log(msg: str) -> None:
    print(f"devcluster: {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _which_in(directory: str | None, name: str) -> str | None:
    if directory:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        return None
    return shutil.which(name)


@functools.cache
def find_binaries(build: bool = True) -> dict[str, str]:
    """Locates every binary the devcluster needs, building the Go ones when absent.

    ``$KUBEBUILDER_ASSETS`` first, then ``$PATH``; when any Kubernetes binary is missing,
    all of them come from one build (cached by version), so their versions match.
    """
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    found: dict[str, str] = {}
    for name in (*K8S_BINARIES, "etcd"):
        path = _which_in(assets, name) or shutil.which(name)
        if path:
            found[name] = path
    missing = [n for n in K8S_BINARIES if n not in found]
    if missing and build:
        _log(
            f"{', '.join(missing)} not on PATH: building from the Go modules (or reusing the cache)"
        )
        out = subprocess.run(
            ["bash", str(HERE / "build-k8s.sh")], check=True, stdout=subprocess.PIPE, text=True
        )
        bin_dir = out.stdout.strip().splitlines()[-1]
        for name in K8S_BINARIES:
            found[name] = str(Path(bin_dir) / name)
    if "etcd" not in found:
        raise DevClusterError(
            "etcd not found: install Debian's etcd-server (apt-get install etcd-server) "
            "or put etcd in $KUBEBUILDER_ASSETS"
        )
    still = [n for n in K8S_BINARIES if n not in found]
    if still:
        raise DevClusterError(f"binaries not found: {', '.join(still)}")
    return found


@functools.cache
def find_helm() -> str:
    """The helm binary: ``$PATH``, else the one built with the Kubernetes binaries."""
    path = shutil.which("helm")
    if path:
        return path
    out = subprocess.run(
        ["bash", str(HERE / "build-k8s.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    return str(Path(out.stdout.strip().splitlines()[-1]) / "helm")


@functools.cache
def find_netmon(only_cni: bool = False) -> Path:
    """The directory of the CNI plugins and the Prometheus Operator (with its CRDs under
    ``crds/``), built by ``build-netmon.sh`` and cached by version."""
    out = subprocess.run(
        ["bash", str(HERE / "build-netmon.sh"), *(["cni"] if only_cni else [])],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def find_cni_plugins() -> Path | None:
    """The CNI plugins for the executor's pod network (``podnet``); ``None`` (pods on
    loopback addresses) where it cannot be made: not root, or
    ``LMMS_DEVCLUSTER_POD_NETWORK=loopback``."""
    from lmms_devcluster import podnet

    if os.environ.get("LMMS_DEVCLUSTER_POD_NETWORK", "cni") == "loopback":
        return None
    if os.geteuid() != 0:
        _log("pods share the node's network (loopback addresses): not root")
        return None
    path = find_netmon(only_cni=True)
    why = podnet.available(path)
    if why is not None:
        _log(f"pods share the node's network (loopback addresses): {why}")
        return None
    return path


KSTATUS_CLI_UTILS = "v0.37.2"


@functools.cache
def find_kstatus_check() -> str:
    """``kstatus-check`` (testing/kstatus: sigs.k8s.io/cli-utils' kstatus), built once
    and cached by version and source."""
    cache = Path(os.environ.get("LMMS_CACHE_DIR") or Path.home() / ".cache" / "lmms-operator")
    import hashlib

    source = hashlib.sha256()
    for name in ("main.go", "go.mod", "go.sum"):
        source.update((HERE / "kstatus" / name).read_bytes())
    key = f"kstatus-check-cli-utils-{KSTATUS_CLI_UTILS}-{source.hexdigest()[:10]}"
    binary = cache / key / "kstatus-check"
    if not binary.exists():
        _log(f"building kstatus-check (sigs.k8s.io/cli-utils {KSTATUS_CLI_UTILS})")
        binary.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["go", "build", "-trimpath", "-o", str(binary) + ".tmp", "."],
            cwd=HERE / "kstatus",
            check=True,
            env={**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-buildvcs=false"},
        )
        os.replace(str(binary) + ".tmp", binary)
    return str(binary)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _make_pki(pki: Path) -> None:
    pki.mkdir(parents=True, exist_ok=True)
    if (pki / "apiserver.crt").exists():
        return
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "3650",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-subj",
        "/CN=lmms-devcluster-ca",
        cwd=pki,
    )
    (pki / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
        "DNS:kubernetes.default,DNS:kubernetes.default.svc\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "apiserver.key",
        "-out",
        "apiserver.csr",
        "-subj",
        "/CN=kube-apiserver",
        cwd=pki,
    )
    _openssl(
        "x509",
        "-req",
        "-in",
        "apiserver.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3650",
        "-out",
        "apiserver.crt",
        "-extfile",
        "san.cnf",
        cwd=pki,
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


@dataclass
class DevCluster:
    """Handle on a devcluster rooted at ``directory`` (its state lives there)."""

    directory: Path
    binaries: dict[str, str] = field(default_factory=dict)
    #: Start Kueue (see kueue.py); ``lmms-devcluster up --no-kueue`` leaves it out.
    kueue: bool = True

    @property
    def kubeconfig(self) -> Path:
        return self.directory / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.directory / "state.json"

    @property
    def log_dir(self) -> Path:
        return self.directory / "logs"

    # -- state -----------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        if self.state_file.exists():
            return dict(json.loads(self.state_file.read_text()))
        return {}

    def _save_state(self, state: dict[str, Any]) -> None:
        self.state_file.write_text(json.dumps(state, indent=2))

    @property
    def server(self) -> str:
        return str(self._state()["server"])

    @property
    def token(self) -> str:
        return str(self._state()["token"])

    def is_running(self) -> bool:
        state = self._state()
        if not state.get("pids"):
            return False
        if not all(_alive(pid) for pid in state["pids"].values()):
            return False
        return self._api_ready(state)

    def _api_ready(self, state: dict[str, Any]) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.directory / "pki" / "ca.crt"))
        req = urllib.request.Request(
            state["server"] + "/readyz", headers={"Authorization": f"Bearer {state['token']}"}
        )
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    # -- lifecycle ---------------------------------------------------------------
    def up(self, timeout: float = 120.0) -> None:
        if self.is_running():
            _log(f"already running ({self.server})")
            return
        self.down(quiet=True)
        self.binaries = self.binaries or find_binaries()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        pki = self.directory / "pki"
        _make_pki(pki)
        token = secrets.token_hex(24)
        (pki / "tokens.csv").write_text(f'{token},admin,admin-uid,"system:masters"\n')
        etcd_port, peer_port, api_port, kwok_port = (free_port() for _ in range(4))
        server = f"https://127.0.0.1:{api_port}"
        state: dict[str, Any] = {"server": server, "token": token, "pids": {}}
        self._save_state(state)
        self._write_kubeconfig(server, token)
        etcd_dir = self.directory / "etcd"
        shutil.rmtree(etcd_dir, ignore_errors=True)
        b = self.binaries
        try:
            self._spawn(
                state,
                "etcd",
                [
                    b["etcd"],
                    "--name",
                    "devcluster",
                    "--data-dir",
                    str(etcd_dir),
                    "--listen-client-urls",
                    f"http://127.0.0.1:{etcd_port}",
                    "--advertise-client-urls",
                    f"http://127.0.0.1:{etcd_port}",
                    "--listen-peer-urls",
                    f"http://127.0.0.1:{peer_port}",
                    "--initial-advertise-peer-urls",
                    f"http://127.0.0.1:{peer_port}",
                    "--initial-cluster",
                    f"devcluster=http://127.0.0.1:{peer_port}",
                    "--unsafe-no-fsync",
                    "--log-level",
                    "warn",
                ],
            )
            self._spawn(
                state,
                "kube-apiserver",
                [
                    b["kube-apiserver"],
                    f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                    "--bind-address=127.0.0.1",
                    "--advertise-address=127.0.0.1",
                    f"--secure-port={api_port}",
                    f"--tls-cert-file={pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={pki / 'apiserver.key'}",
                    f"--client-ca-file={pki / 'ca.crt'}",
                    f"--token-auth-file={pki / 'tokens.csv'}",
                    "--authorization-mode=RBAC",
                    f"--service-account-key-file={pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={pki / 'sa.key'}",
                    "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                    "--service-cluster-ip-range=10.96.0.0/24",
                    "--allow-privileged=true",
                    # Without the node lifecycle controller (see below) nothing would lift
                    # the not-ready taint this plugin puts on every new Node.
                    "--disable-admission-plugins=TaintNodesByCondition",
                    # etcd 3.4 cannot serve watch progress requests, which the streaming
                    # "watch list" needs; turned off, clients fall back to list + watch.
                    "--feature-gates=WatchList=false",
                    "--profiling=false",
                    "--v=0",
                ],
            )
            self._wait_api(state, timeout)
            if self.kueue:
                self._install_kueue_crds()
            self._spawn(
                state,
                "kube-controller-manager",
                [
                    b["kube-controller-manager"],
                    f"--kubeconfig={self.kubeconfig}",
                    "--bind-address=127.0.0.1",
                    "--secure-port=0",
                    "--leader-elect=false",
                    # No kubelets heartbeat here: the node lifecycle controller would taint
                    # the executor's node unreachable and evict its pods.
                    "--controllers=*,-node-lifecycle-controller",
                    f"--service-account-private-key-file={pki / 'sa.key'}",
                    f"--root-ca-file={pki / 'ca.crt'}",
                    "--use-service-account-credentials=false",
                    "--concurrent-job-syncs=20",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--profiling=false",
                ],
            )
            self._spawn(
                state,
                "kube-scheduler",
                [
                    b["kube-scheduler"],
                    f"--kubeconfig={self.kubeconfig}",
                    "--bind-address=127.0.0.1",
                    "--secure-port=0",
                    "--leader-elect=false",
                    "--kube-api-qps=200",
                    "--kube-api-burst=400",
                    "--profiling=false",
                ],
            )
            self._spawn(
                state,
                "kwok",
                [
                    b["kwok"],
                    f"--kubeconfig={self.kubeconfig}",
                    "--manage-all-nodes=false",
                    "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                    # Pod IPs of simulated pods stay on loopback: nothing ever dials out.
                    "--cidr=127.1.0.1/16",
                    "--node-ip=127.0.0.1",
                    f"--server-address=127.0.0.1:{kwok_port}",
                ],
            )
            self._create_nodes()
            if self.kueue:
                self.start_kueue(wait=False)
                state = self._state()
            cni = find_cni_plugins()
            self._spawn(
                state,
                "executor",
                [
                    sys.executable,
                    "-m",
                    "lmms_devcluster.executor",
                    "--kubeconfig",
                    str(self.kubeconfig),
                    "--node",
                    EXECUTOR_NODE,
                    "--state-dir",
                    str(self.directory / "executor"),
                    *(["--cni-path", str(cni)] if cni else []),
                ],
            )
            self._wait_nodes_ready(timeout)
            if self.kueue:
                self._wait_kueue(timeout)
        except BaseException:
            self.down(quiet=True)
            raise
        _log(f"ready: {server}")

    def _spawn(self, state: dict[str, Any], name: str, argv: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        env = dict(os.environ)
        env.pop("KUBECONFIG", None)
        # etcd 3.4 cannot serve watch progress requests, so the API server refuses the
        # streaming "watch list"; clients must not ask for it (kwok's client-go does).
        env["KUBE_FEATURE_WatchListClient"] = "false"
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=self.directory,
        )
        log.close()
        state["pids"][name] = proc.pid
        self._save_state(state)
        time.sleep(0.2)
        if proc.poll() is not None:
            raise DevClusterError(f"{name} exited at once; see {self.log_dir / (name + '.log')}")

    def _wait_api(self, state: dict[str, Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._api_ready(state):
                return
            for name, pid in state["pids"].items():
                if not _alive(pid):
                    tail = _tail(self.log_dir / f"{name}.log")
                    raise DevClusterError(f"{name} died while starting:\n{tail}")
            time.sleep(0.3)
        raise DevClusterError(f"kube-apiserver not ready after {timeout:.0f}s")

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        kubectl = (self.binaries or find_binaries())["kubectl"]
        out = subprocess.run(
            [kubectl, f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
        )
        if check and out.returncode != 0:
            raise DevClusterError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def _create_nodes(self) -> None:
        docs = [_node_manifest(n, kwok=True) for n in KWOK_NODES]
        docs.append(_node_manifest(EXECUTOR_NODE, kwok=False))
        docs.append(_node_manifest(MANUAL_NODE, kwok=False, label=MANUAL_LABEL))
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        manual = _node_manifest(MANUAL_NODE, kwok=False, label=MANUAL_LABEL)["status"]
        manual["conditions"] = [
            {
                "type": "Ready",
                "status": "True",
                "reason": "Manual",
                "message": "tests report this node's pods",
            }
        ]
        self.kubectl(
            "patch",
            "node",
            MANUAL_NODE,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": manual}),
        )

    def _wait_nodes_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        names = [*KWOK_NODES, EXECUTOR_NODE, MANUAL_NODE]
        while time.monotonic() < deadline:
            out = json.loads(self.kubectl("get", "nodes", "-o", "json"))
            ready = {
                n["metadata"]["name"]
                for n in out["items"]
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in n.get("status", {}).get("conditions", [])
                )
            }
            if all(n in ready for n in names):
                return
            time.sleep(0.5)
        raise DevClusterError(f"nodes not Ready after {timeout:.0f}s")

    # -- Kueue (kueue.py) ----------------------------------------------------------
    @property
    def kueue_dir(self) -> Path:
        return self.directory / "kueue"

    def _install_kueue_crds(self) -> None:
        _, source = kueue_mod.find_kueue()
        docs = kueue_mod.crds(source)
        docs.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kueue-system"}})
        self.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(docs))

    def start_kueue(self, wait: bool = True, timeout: float = 60.0) -> None:
        """Starts Kueue under its supervisor (again, after ``stop_kueue``)."""
        binary, source = kueue_mod.find_kueue()
        state = self._state()
        ports = state.get("kueue") or {n: free_port() for n in ("webhook", "health", "metrics")}
        state["kueue"] = ports
        config = kueue_mod.prepare(self.kueue_dir, self.directory / "pki", ports)
        crds = [f"crd/{d['metadata']['name']}" for d in kueue_mod.crds(source)]
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *crds)
        argv = kueue_mod.supervisor_argv(binary, self.kueue_dir, config, self.kubeconfig)
        self._spawn(state, "kueue", argv)
        if wait:
            self._wait_kueue(timeout)

    def _wait_kueue(self, timeout: float) -> None:
        """Until Kueue is ready and the API server calls its webhooks."""
        state = self._state()
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{state['kueue']['health']}/readyz"
        while True:
            if not _alive(state["pids"]["kueue"]):
                raise DevClusterError(
                    f"kueue's supervisor died:\n{_tail(self.log_dir / 'kueue.log')}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise DevClusterError(f"kueue not ready:\n{_tail(self.log_dir / 'kueue.log')}")
            time.sleep(0.2)
        _, source = kueue_mod.find_kueue()
        ca = base64.b64encode((self.directory / "pki" / "ca.crt").read_bytes()).decode()
        hooks = kueue_mod.webhook_configurations(source, state["kueue"]["webhook"], ca)
        self.kubectl("apply", "--server-side", "-f", "-", input=yaml.safe_dump_all(hooks))
        while not kueue_mod.job_webhook_live(self.kubectl):
            if time.monotonic() > deadline:
                raise DevClusterError("the API server does not call Kueue's Job webhook")
            time.sleep(0.2)

    def stop_kueue(self) -> None:
        """Stops Kueue and its supervisor (an outage: its webhooks stay installed)."""
        state = self._state()
        pid = state["pids"].pop("kueue", None)
        if pid is not None:
            _stop_group(pid)
        self._save_state(state)

    def kill_kueue(self) -> list[int]:
        """SIGKILLs the Kueue process (not its supervisor, which starts it again)."""
        pids = kueue_mod.kueue_pids(self._state()["pids"]["kueue"])
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids

    def kueue_pids(self) -> list[int]:
        """The running Kueue processes (under the supervisor)."""
        return kueue_mod.kueue_pids(self._state()["pids"]["kueue"])

    def down(self, quiet: bool = False) -> None:
        state = self._state()
        pids: dict[str, int] = state.get("pids", {})
        # Reverse start order: the executor first (it stops its pods' processes).
        for name in reversed(list(pids)):
            _stop_group(pids[name])
        # Pod processes lead process groups of their own; stop any the executor left.
        children = self.directory / "executor" / "children"
        if children.exists():
            for line in children.read_text().split():
                _stop_group(int(line), grace=2)
            children.unlink()
        # The pod network's namespaces, host rule and bridge, if the executor could not.
        if (self.directory / "executor" / "cni").exists():
            from lmms_devcluster import podnet

            podnet.cleanup(self.directory / "executor")
        if pids and not quiet:
            _log(f"stopped {', '.join(reversed(list(pids)))}")
        if state:
            state["pids"] = {}
            self._save_state(state)

    # -- outages: one component stopped and started again ------------------------------
    #: The components a test may restart; etcd keeps its data, and each comes back on
    #: the same ports with the same certificates, as after a crash or an upgrade.
    RESTARTABLE = ("etcd", "kube-apiserver")

    def stop_component(self, name: str, kill: bool = False) -> None:
        """Stops one component (``RESTARTABLE``): SIGTERM, then SIGKILL after 10 s;
        ``kill``: SIGKILL at once, as a crash. ``start_component`` starts it again with
        the same command line (etcd's data directory is kept)."""
        if name not in self.RESTARTABLE:
            raise DevClusterError(f"{name}: not one of {', '.join(self.RESTARTABLE)}")
        state = self._state()
        pid = state.get("pids", {}).get(name)
        if pid is None or not _alive(pid):
            raise DevClusterError(f"{name} is not running")
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
        state.setdefault("stopped", {})[name] = [a.decode() for a in argv]
        self._save_state(state)
        if kill:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _group_alive(pid):
                time.sleep(0.05)
        else:
            _stop_group(pid)
        _log(f"{name} stopped")

    def start_component(self, name: str, timeout: float = 120.0) -> None:
        """Starts a component ``stop_component`` stopped, and waits until the API server
        is ready again (which needs etcd)."""
        state = self._state()
        argv = state.get("stopped", {}).pop(name, None)
        if argv is None:
            raise DevClusterError(f"{name} was not stopped by stop_component")
        self._spawn(state, name, argv)  # saves the state, without it in "stopped"
        if not state["stopped"]:  # with another one still down it cannot be ready
            self._wait_api(state, timeout)
        _log(f"{name} started again (pid {state['pids'][name]})")

    def restart(
        self, name: str, downtime: float = 0.0, kill: bool = False, timeout: float = 120.0
    ) -> None:
        """Restarts etcd (its data kept) or the API server, on the same ports and
        certificates, after ``downtime`` seconds down; returns once the API server is
        ready again."""
        self.stop_component(name, kill=kill)
        time.sleep(downtime)
        self.start_component(name, timeout=timeout)

    @contextlib.contextmanager
    def outage(self, name: str, kill: bool = False) -> Iterator[None]:
        """``name`` is down for the ``with`` block, and back (and the API server ready)
        after it, also when the block fails."""
        self.stop_component(name, kill=kill)
        try:
            yield
        finally:
            self.start_component(name)

    def _write_kubeconfig(self, server: str, token: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "devcluster",
                    "cluster": {
                        "server": server,
                        "certificate-authority": str(self.directory / "pki" / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": "admin", "user": {"token": token}}],
            "contexts": [
                {"name": "devcluster", "context": {"cluster": "devcluster", "user": "admin"}}
            ],
            "current-context": "devcluster",
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))
        self.kubeconfig.chmod(0o600)


def _node_manifest(name: str, kwok: bool, label: str = EXECUTOR_LABEL) -> dict[str, Any]:
    capacity = {
        "cpu": "32",
        "memory": "256Gi",
        "pods": "110",
        "ephemeral-storage": "500Gi",
        GPU_RESOURCE: str(GPUS_PER_NODE),
    }
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "nvidia.com/gpu.present": "true",
    }
    node: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {}},
        "spec": {},
        "status": {"capacity": capacity, "allocatable": capacity},
    }
    if kwok:
        node["metadata"]["annotations"]["kwok.x-k8s.io/node"] = "fake"
        labels["type"] = "kwok"
    else:
        labels[label] = "true"
        # Only pods that ask for this node land on it (the executor runs them for real).
        node["spec"]["taints"] = [{"key": label, "value": "true", "effect": "NoSchedule"}]
    return node


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as dead.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _stop_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL what is left."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _group_alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _group_alive(pid):
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            if int(entry.name) == pgid:
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pgid, os.WNOHANG)[0]:
                        continue
            return True
    return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextlib.contextmanager
def running(directory: Path, timeout: float = 180.0) -> Iterator[DevCluster]:
    """Starts a devcluster for the duration of a ``with`` block, and always stops it."""
    cluster = DevCluster(Path(directory))
    try:
        cluster.up(timeout=timeout)
        yield cluster
    finally:
        cluster.down(quiet=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmms-devcluster", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "binaries"])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="state directory")
    parser.add_argument("--no-kueue", action="store_true", help="do not start Kueue")
    args = parser.parse_args(argv)
    cluster = DevCluster(args.dir.resolve(), kueue=not args.no_kueue)
    try:
        if args.command == "up":
            cluster.up()
            print(f"export KUBECONFIG={cluster.kubeconfig}")
        elif args.command == "down":
            cluster.down()
        elif args.command == "status":
            running_ = cluster.is_running()
            print("running" if running_ else "stopped")
            return 0 if running_ else 1
        else:
            for name, path in sorted(find_binaries().items()):
                print(f"{name}\t{path}")
            print(f"kueue\t{kueue_mod.find_kueue()[0]}")
    except (DevClusterError, subprocess.CalledProcessError) as exc:
        _log(f"error: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
