"""Pod networking for the process executor: a network namespace per pod, with an
address on a bridge, made by the real CNI plugins (``bridge`` with ``host-local`` IPAM,
and ``loopback``; built by ``build-netmon.sh``), as a kubelet's container runtime does.

Each devcluster directory gets a bridge and a subnet of its own (derived from the
directory's path: ``lmms<8 hex>``, a /22 in 10.128.0.0/10), so two devclusters run side
by side. The bridge is the pods' gateway; the host reaches every pod at its address
(the operator's scrapes, the executor's probes, a Prometheus on the host), pods reach
each other over the bridge, and ``ipMasq`` takes them out through the host's interfaces.

The control plane and the tests' fixtures (model servers, S3) listen on the host's
127.0.0.1, and the runs name them there. Inside a pod, TCP to 127.0.0.1 on the host's
ephemeral port range (where every such listener is: all bind port 0) goes to the
gateway (``DNAT``, with ``route_localnet``), and the host sends what arrives at the
gateway on those ports on to its own 127.0.0.1. So ``KUBERNETES_SERVICE_HOST=127.0.0.1``
and a model URL ``http://127.0.0.1:PORT`` mean the same inside a pod as on the host. The
pod's own ephemeral ports are moved out of that range (``ip_local_port_range``), so what
a pod binds to port 0 and dials on its own loopback stays inside it. A pod that listens
on a fixed port inside the host's ephemeral range and dials itself on 127.0.0.1 there
would reach the host instead: nothing here does.

NetworkPolicy is not enforced (there is no policy engine): the namespaces are where it
would start.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("lmms.executor.podnet")

#: What a pod's own port-0 binds get inside its namespace (below the host's range).
POD_PORT_RANGE = (10000, 32767)
PLUGINS = ("bridge", "host-local", "loopback")
CNI_VERSION = "1.0.0"


class PodNetworkError(RuntimeError):
    pass


def _host_port_range() -> tuple[int, int]:
    text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(text[0]), int(text[1])


def identity(state_dir: Path) -> tuple[str, ipaddress.IPv4Network]:
    """The bridge name and subnet of the devcluster whose executor keeps ``state_dir``."""
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).digest()
    bridge = "lmms" + digest[:4].hex()
    subnet = ipaddress.IPv4Network(f"10.{128 + digest[4] % 64}.{digest[5] & 0xFC}.0/22")
    return bridge, subnet


def available(cni_path: Path | None) -> str | None:
    """Why pods cannot get network namespaces here (``None`` when they can)."""
    if os.geteuid() != 0:
        return "not root"
    for tool in ("ip", "iptables", "iptables-restore", "nsenter", "sysctl"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if cni_path is None:
        return "no CNI plugins"
    missing = [p for p in PLUGINS if not (cni_path / p).is_file()]
    if missing:
        return f"CNI plugins missing in {cni_path}: {', '.join(missing)}"
    return None


@dataclass
class Sandbox:
    """One pod's network namespace and its address."""

    uid: str
    netns: str
    ip: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.netns}"

    def enter(self) -> list[str]:
        """The command prefix that runs a process in the namespace."""
        return ["nsenter", f"--net={self.path}"]


class PodNetwork:
    """The devcluster's pod network: one bridge, ``host-local`` addresses, a namespace
    per pod."""

    def __init__(self, state_dir: Path, cni_path: Path) -> None:
        self.state_dir = state_dir
        self.cni_path = cni_path
        self.bridge, self.subnet = identity(state_dir)
        self.gateway = str(self.subnet.network_address + 1)
        self.name = f"lmms-devcluster-{self.bridge}"
        self.ipam_dir = state_dir / "cni" / "ipam"  # its existence says pods have a network
        self.ipam_dir.mkdir(parents=True, exist_ok=True)
        self.host_ports = _host_port_range()
        self._host_ready = False
        self._lock = threading.Lock()

    # -- the CNI calls --------------------------------------------------------------
    def _bridge_config(self) -> dict[str, object]:
        return {
            "cniVersion": CNI_VERSION,
            "name": self.name,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": True,
            "ipMasq": True,
            "hairpinMode": True,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": str(self.subnet), "gateway": self.gateway}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": str(self.ipam_dir),
            },
        }

    def _cni(self, command: str, sandbox: Sandbox, plugin: str, ifname: str) -> dict[str, object]:
        config = (
            self._bridge_config()
            if plugin == "bridge"
            else {"cniVersion": CNI_VERSION, "name": "lo", "type": "loopback"}
        )
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": sandbox.uid,
            "CNI_NETNS": sandbox.path,
            "CNI_IFNAME": ifname,
            "CNI_PATH": str(self.cni_path),
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        out = subprocess.run(
            [str(self.cni_path / plugin)],
            input=json.dumps(config),
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if out.returncode != 0:
            raise PodNetworkError(
                f"CNI {plugin} {command}: {(out.stdout + out.stderr).strip()[-500:]}"
            )
        return dict(json.loads(out.stdout)) if out.stdout.strip() else {}

    # -- pods -------------------------------------------------------------------------
    def add(self, uid: str) -> Sandbox:
        """A network namespace for pod ``uid``, with ``lo`` up and ``eth0`` on the bridge."""
        sandbox = Sandbox(uid=uid, netns=f"{self.bridge}-{uid}", ip="")
        self.delete(sandbox)  # what a crashed executor left
        _run(["ip", "netns", "add", sandbox.netns])
        try:
            self._cni("ADD", sandbox, "loopback", "lo")
            result = self._cni("ADD", sandbox, "bridge", "eth0")
            ips = result.get("ips") or []
            assert isinstance(ips, list) and ips, result
            sandbox.ip = str(ips[0]["address"]).split("/")[0]
            self._host_side()
            self._pod_side(sandbox)
        except BaseException:
            self.delete(sandbox)
            raise
        return sandbox

    def delete(self, sandbox: Sandbox) -> None:
        """Releases the pod's address and removes its namespace (and its end of the veth)."""
        if not Path(sandbox.path).exists():
            return
        try:
            self._cni("DEL", sandbox, "bridge", "eth0")
        except (PodNetworkError, subprocess.TimeoutExpired) as exc:
            log.warning("pod %s: %s", sandbox.uid, exc)
        subprocess.run(["ip", "netns", "delete", sandbox.netns], capture_output=True, check=False)

    def _pod_side(self, sandbox: Sandbox) -> None:
        low, high = self.host_ports
        _run(
            [
                *sandbox.enter(),
                "sysctl",
                "-qw",
                "net.ipv4.conf.all.route_localnet=1",
                "net.ipv4.conf.eth0.route_localnet=1",
                f"net.ipv4.ip_local_port_range={POD_PORT_RANGE[0]} {min(POD_PORT_RANGE[1], low - 1)}",
            ]
        )
        rules = (
            "*nat\n"
            f"-A OUTPUT -d 127.0.0.1/32 -p tcp -m tcp --dport {low}:{high} "
            f"-j DNAT --to-destination {self.gateway}\n"
            "-A POSTROUTING -s 127.0.0.0/8 ! -o lo -j MASQUERADE\n"
            "COMMIT\n"
        )
        _run([*sandbox.enter(), "iptables-restore", "--noflush"], input=rules)

    def _host_rule(self) -> list[str]:
        low, high = self.host_ports
        return [
            "PREROUTING",
            "-i",
            self.bridge,
            "-d",
            self.gateway,
            "-p",
            "tcp",
            "-m",
            "tcp",
            "--dport",
            f"{low}:{high}",
            "-m",
            "comment",
            "--comment",
            self.name,
            "-j",
            "DNAT",
            "--to-destination",
            "127.0.0.1",
        ]

    def _host_side(self) -> None:
        """Once the bridge exists: what arrives at the gateway on the host's ephemeral
        ports goes on to the host's 127.0.0.1."""
        with self._lock:
            if self._host_ready:
                return
            Path(f"/proc/sys/net/ipv4/conf/{self.bridge}/route_localnet").write_text("1")
            check = subprocess.run(
                ["iptables", "-t", "nat", "-C", *self._host_rule()], capture_output=True
            )
            if check.returncode != 0:
                _run(["iptables", "-t", "nat", "-A", *self._host_rule()])
            self._host_ready = True

    # -- the whole network --------------------------------------------------------------
    def close(self) -> None:
        """Removes every pod namespace of this devcluster, the host rule and the bridge."""
        cleanup(self.state_dir)


def cleanup(state_dir: Path) -> None:
    """What the pod network of the executor with ``state_dir`` left on the host (also
    after a SIGKILL): its pods' namespaces, the host's rule, the bridge, the addresses."""
    bridge, _ = identity(state_dir)
    netns_dir = Path("/run/netns")
    if netns_dir.is_dir():
        for entry in netns_dir.iterdir():
            if entry.name.startswith(bridge + "-"):
                subprocess.run(["ip", "netns", "delete", entry.name], capture_output=True)
    if shutil.which("iptables") is not None:
        rules = subprocess.run(
            ["iptables", "-t", "nat", "-S", "PREROUTING"], capture_output=True, text=True
        ).stdout
        for line in rules.splitlines():
            if f"lmms-devcluster-{bridge}" in line and line.startswith("-A "):
                args = _split_rule(line[3:])
                subprocess.run(["iptables", "-t", "nat", "-D", *args], capture_output=True)
    if Path(f"/sys/class/net/{bridge}").exists():
        subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
    # The bridge plugin's masquerade chains go with CNI DEL; a SIGKILLed executor leaves
    # them (and their POSTROUTING jumps), named by this network.
    if shutil.which("iptables") is not None:
        rules = subprocess.run(
            ["iptables", "-t", "nat", "-S", "POSTROUTING"], capture_output=True, text=True
        ).stdout
        for line in rules.splitlines():
            if f'name: \\"lmms-devcluster-{bridge}\\"' in line and line.startswith("-A "):
                args = _split_rule(line[3:])
                chain = args[args.index("-j") + 1]
                subprocess.run(["iptables", "-t", "nat", "-D", *args], capture_output=True)
                subprocess.run(["iptables", "-t", "nat", "-F", chain], capture_output=True)
                subprocess.run(["iptables", "-t", "nat", "-X", chain], capture_output=True)
    with contextlib.suppress(OSError):
        shutil.rmtree(state_dir / "cni")


def _split_rule(text: str) -> list[str]:
    import shlex

    return shlex.split(text)


def _run(argv: list[str], input: str | None = None) -> None:
    out = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise PodNetworkError(f"{' '.join(argv)}: {(out.stdout + out.stderr).strip()[-500:]}")
