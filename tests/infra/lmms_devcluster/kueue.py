"""Kueue in the devcluster: the real manager, built from its Go module (build-kueue.sh).

It runs as a local process against the devcluster's API server, like the other control
plane components:

- no leader election, one replica;
- its webhooks are served on ``127.0.0.1:<port>`` with a certificate from the
  devcluster's CA (``internalCertManagement`` off); the module's own webhook
  configurations are installed with ``clientConfig.url`` and that CA as ``caBundle``;
- only the ``batch/job`` integration. The Job webhooks carry an ``objectSelector``
  (the queue label exists), so a Job without ``kueue.x-k8s.io/queue-name`` never waits
  for Kueue, even while it is down;
- a supervisor (a shell loop) starts it again whenever it exits.

Kueue reads its metrics server's certificate from a fixed path,
``/etc/kueue/metrics/certs``, when it does not manage certificates itself. The
supervisor runs in a private mount namespace (``unshare``) in which a read-only overlay
adds that directory to ``/etc``; the host's ``/etc`` is never written.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
NAMESPACE = "kueue-system"
MUTATING = "kueue-mutating-webhook-configuration"
VALIDATING = "kueue-validating-webhook-configuration"
#: API groups whose webhooks are installed: Kueue's own objects and batch/v1 Jobs (the
#: only integration turned on). The pod, Deployment, ... webhooks are left out: with
#: their integrations off, they would only put Kueue in the path of every pod.
WEBHOOK_GROUPS = frozenset({"batch", "kueue.x-k8s.io"})


@functools.cache
def find_kueue() -> tuple[str, Path]:
    """The ``kueue`` binary and the module's source directory (its manifests).

    ``$LMMS_KUEUE_BINARY`` (with ``$LMMS_KUEUE_SOURCE``) first, else build-kueue.sh,
    which builds and caches the binary by version on first use.
    """
    binary, source = os.environ.get("LMMS_KUEUE_BINARY"), os.environ.get("LMMS_KUEUE_SOURCE")
    if binary and source:
        return binary, Path(source)
    out = subprocess.run(
        ["bash", str(HERE / "build-kueue.sh")], check=True, stdout=subprocess.PIPE, text=True
    )
    bin_dir, src = out.stdout.strip().splitlines()[-2:]
    return str(Path(bin_dir) / "kueue"), Path(src)


def crds(source: Path) -> list[dict[str, Any]]:
    """Kueue's CRDs, as the module ships them (v1beta2 stored; no conversion webhook:
    the devcluster only speaks v1beta2)."""
    docs: list[dict[str, Any]] = []
    for path in sorted((source / "config" / "components" / "crd" / "bases").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def webhook_configurations(source: Path, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """The module's webhook configurations, pointed at ``https://127.0.0.1:<port>``.

    The Job webhooks only see Jobs that carry the queue label (``objectSelector``): a
    Kueue outage must never block a Job that Kueue does not manage. The webhooks keep
    the module's ``failurePolicy: Fail``, so queued Jobs do wait for Kueue.
    """
    manifest = source / "config" / "components" / "webhook" / "manifests.yaml"
    out = []
    for doc in yaml.safe_load_all(manifest.read_text()):
        if not doc:
            continue
        kept = []
        for hook in doc["webhooks"]:
            groups = {g for rule in hook["rules"] for g in rule["apiGroups"]}
            if not groups <= WEBHOOK_GROUPS:
                continue
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
            if "batch" in groups:
                hook["objectSelector"] = {
                    "matchExpressions": [{"key": QUEUE_LABEL, "operator": "Exists"}]
                }
            hook["timeoutSeconds"] = 10
            kept.append(hook)
        doc["webhooks"] = kept
        doc["metadata"] = {
            "name": MUTATING if doc["kind"] == "MutatingWebhookConfiguration" else VALIDATING
        }
        out.append(doc)
    return out


def configuration(webhook_port: int, health_port: int, metrics_port: int, cert_dir: Path) -> str:
    """Kueue's Configuration (config.kueue.x-k8s.io/v1beta2) for the devcluster."""
    cfg = {
        "apiVersion": "config.kueue.x-k8s.io/v1beta2",
        "kind": "Configuration",
        "namespace": NAMESPACE,
        "manageJobsWithoutQueueName": False,
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"host": "127.0.0.1", "port": webhook_port, "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{metrics_port}"},
        # Benchmarks start hundreds of Jobs: the default (50/100) throttles admission.
        "clientConnection": {"qps": 200, "burst": 400},
        "controller": {
            "groupKindConcurrency": {
                "Job.batch": 10,
                "Workload.kueue.x-k8s.io": 10,
                "LocalQueue.kueue.x-k8s.io": 1,
                "ClusterQueue.kueue.x-k8s.io": 1,
                "ResourceFlavor.kueue.x-k8s.io": 1,
            }
        },
        "integrations": {"frameworks": ["batch/job"]},
        # The visibility API server would listen on 0.0.0.0:8082 and needs an
        # APIService; MultiKueue has no workers here.
        "featureGates": {"VisibilityOnDemand": False, "MultiKueue": False},
    }
    return yaml.safe_dump(cfg)


def make_serving_cert(pki: Path, directory: Path) -> None:
    """A serving certificate for 127.0.0.1 signed by the devcluster's CA, as ``tls.crt``
    and ``tls.key`` in ``directory`` (controller-runtime's names)."""
    directory.mkdir(parents=True, exist_ok=True)
    if (directory / "tls.crt").exists():
        return

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    (directory / "san.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
    )
    openssl(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
        "-subj",
        "/CN=kueue-webhook",
    )
    openssl(
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        str(pki / "ca.crt"),
        "-CAkey",
        str(pki / "ca.key"),
        "-CAcreateserial",
        "-CAserial",
        str(directory / "ca.srl"),
        "-days",
        "3650",
        "-out",
        "tls.crt",
        "-extfile",
        "san.cnf",
    )


def prepare(directory: Path, pki: Path, ports: dict[str, int]) -> Path:
    """Writes the certificate, the /etc overlay and the configuration under
    ``directory``; returns the configuration file."""
    certs = directory / "certs"
    make_serving_cert(pki, certs)
    metrics_certs = directory / "etc" / "kueue" / "metrics" / "certs"
    metrics_certs.mkdir(parents=True, exist_ok=True)
    for name in ("tls.crt", "tls.key"):
        shutil.copyfile(certs / name, metrics_certs / name)
    config = directory / "config.yaml"
    config.write_text(configuration(ports["webhook"], ports["health"], ports["metrics"], certs))
    return config


def supervisor_argv(binary: str, directory: Path, config: Path, kubeconfig: Path) -> list[str]:
    """The supervisor: a private mount namespace with the /etc overlay, and a loop that
    starts Kueue again a second after it exits."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise RuntimeError("util-linux's unshare is required to run Kueue")
    prefix = [unshare, "--mount", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix[1:1] = ["--map-root-user"]
    script = (
        'mount -t overlay overlay -o "lowerdir=$1:/etc" /etc || exit 1; shift; '
        "while :; do "
        '"$@"; rc=$?; '
        'echo "devcluster: kueue exited with $rc; starting it again" >&2; '
        "sleep 1; "
        "done"
    )
    kueue = [
        binary,
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        "--zap-log-level=info",
    ]
    return [*prefix, "sh", "-c", script, "kueue-supervisor", str(directory / "etc"), *kueue]


def kueue_pids(supervisor: int) -> list[int]:
    """The Kueue processes (not the supervisor) in the supervisor's process group."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        if comm == "kueue" and int(fields[2]) == supervisor and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def job_webhook_live(kubectl: Any) -> bool:
    """Whether the API server already calls Kueue for queued Jobs: Kueue's defaulting
    webhook suspends a queued Job (seen on a server-side dry run)."""
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "kueue-probe",
            "namespace": "default",
            "labels": {QUEUE_LABEL: "probe"},
        },
        "spec": {
            "suspend": False,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "probe"}],
                }
            },
        },
    }
    out = kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(job), check=False
    )
    try:
        return bool(json.loads(out)["spec"].get("suspend"))
    except (ValueError, KeyError):
        return False
