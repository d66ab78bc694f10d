"""Operator settings, read from the environment (the Helm chart sets them).

| variable                       | default                          | meaning                               |
|--------------------------------|----------------------------------|---------------------------------------|
| LMMS_RUNNER_IMAGE              | lmms-operator-runner:0.1.0       | default runner image                  |
| LMMS_RUNNER_COMMAND            | lmms-runner                      | runner command (space-separated)      |
| LMMS_RUNNER_PORT               | 8080                             | port the runner serves /progress on   |
| LMMS_IMAGE_PULL_POLICY         | IfNotPresent                     | runner imagePullPolicy                |
| LMMS_UNSCHEDULABLE_TIMEOUT     | 600                              | s a pod may stay Unschedulable        |
| LMMS_IMAGE_PULL_TIMEOUT        | 300                              | s a pod may fail to pull its image    |
| LMMS_CONFIG_ERROR_TIMEOUT      | 300                              | s a container may fail to be created  |
| LMMS_POD_CREATION_TIMEOUT      | 300                              | s a Job may fail to create its pod    |
| LMMS_REFERENCE_TIMEOUT         | 600                              | s a run waits for objects it names    |
| LMMS_SCRAPE_INTERVAL           | 5                                | s between progress scrapes            |
| LMMS_RESYNC_INTERVAL           | 15                               | s between checks of an active run     |
| LMMS_OBSERVE_DELAY             | 0.5                              | s from a Job/pod event to its status  |
| LMMS_DEFAULT_SHM               | 8Gi                              | /dev/shm size for multi-GPU pods      |
| LMMS_RUNNER_UID                | 1000                             | uid and gid of the runner             |
| LMMS_HOLD_TIMEOUT              | 600                              | s a runner serves results until acked |
| LMMS_SCRAPE_TIMEOUT            | 3                                | s before a runner scrape gives up     |
| LMMS_SCRAPE_CONCURRENCY        | 32                               | runners scraped at once, at most      |
| LMMS_ALLOWED_FEATURES          | (all but remoteCode)             | comma list of optional spec features  |
| LMMS_ALLOWED_ENV               | (none)                           | further spec.env names (NAME, PFX*)   |
| LMMS_OWN_IDENTITY_BUCKETS      | (none)                           | buckets the operator's identity may use|
| LMMS_RUNNER_NETWORK_POLICY     | true                             | a NetworkPolicy per run               |
| LMMS_OPERATOR_NAMESPACE        | (the kubeconfig's)               | where the operator's pods run         |
| LMMS_OPERATOR_POD_LABELS       | app.kubernetes.io/name=lmms-operator | labels of the operator's pods     |
| LMMS_PROMETHEUS_NAMESPACE_SELECTOR | (unset)                      | namespaces of Prometheus pods that may scrape runners |
| LMMS_PROMETHEUS_POD_SELECTOR   | (unset)                          | Prometheus pods that may scrape runners |
| LMMS_WORKERS                   | 16                               | new/edited runs reconciled at once    |
| LMMS_ALLOWED_PRIORITY_CLASSES  | (none)                           | priorityClassNames runs may set       |
| LMMS_ALLOWED_TOLERATION_KEYS   | (unset: any outside kubernetes.io, k8s.io) | toleration keys (NAME, PFX*) |
| LMMS_ALLOW_CROSS_NAMESPACE_AFFINITY | false                       | pod affinity terms on other namespaces|
| LMMS_OBJECT_STORE_ALLOWED_CIDRS | (none)                          | non-public networks stores may be on  |
| LMMS_ALLOWED_MODEL_ARGS        | (none)                           | further model args (BACKEND:KEY, globs)|
| LMMS_ALLOWED_MODEL_URLS        | (none)                           | URLs model/judge endpoints may name   |
| LMMS_RUNNER_IMAGE_PULL_SECRETS | (none)                           | JSON list: Secret names for every pod |
| LMMS_RUNNER_TOLERATIONS        | (none)                           | JSON list: core/v1 Tolerations        |
| LMMS_RUNNER_NODE_SELECTOR      | (none)                           | JSON map: nodeSelector runs can't change|
| LMMS_RUNNER_PRIORITY_CLASS_NAME | (none)                          | priorityClassName of runs setting none|
| LMMS_RUNNER_RUNTIME_CLASS_NAME | (none)                           | runtimeClassName (e.g. nvidia)        |
| LMMS_RUNNER_LABELS             | (none)                           | JSON map: labels of runner Jobs, pods |
| LMMS_RUNNER_ANNOTATIONS        | (none)                           | JSON map: annotations of Jobs, pods   |
| LMMS_GPU_MEMORY                | (none)                           | memory of one GPU per resource name   |
| LMMS_ENGINE_IMAGE_VLLM         | (none)                           | image of spec.model.engine: vllm      |
| LMMS_ENGINE_IMAGE_SGLANG       | (none)                           | image of spec.model.engine: sglang    |
| LMMS_ENGINE_RUNNER_CPU         | 1                                | cpu of the runner beside an engine    |
| LMMS_ENGINE_RUNNER_MEMORY      | 4Gi                              | memory of the runner beside an engine |

LMMS_ALLOWED_FEATURES names the optional features EvalRuns may use: imageOverride
(spec.image), multiNode (resources.nodes > 1), customTasks, s3Output (output.s3),
remoteModels (model.apiKey), remoteCode (trust_remote_code, and the backends that always
set it). Unset: all but remoteCode; empty: none. A run using another ends Failed with
reason InvalidSpec, naming the field. LMMS_ALLOWED_ENV adds names to the spec.env
variables a run may set (docs/security.md lists the default ones).

LMMS_ENGINE_IMAGE_VLLM and LMMS_ENGINE_IMAGE_SGLANG name the images of the inference
engines (``reconcile.inference``); a run naming an engine without one ends Failed
(InvalidSpec, naming spec.model.engine). A value that is not an image reference stops
the operator at start-up. LMMS_ENGINE_RUNNER_CPU and LMMS_ENGINE_RUNNER_MEMORY are the
request and limit of the runner container beside an engine, added to the engine's share
(spec.resources); a value that is not a positive quantity stops the operator at start-up.

LMMS_PROMETHEUS_NAMESPACE_SELECTOR and LMMS_PROMETHEUS_POD_SELECTOR (label selectors in
kubectl's ``-l`` syntax, e.g. ``kubernetes.io/metadata.name=monitoring`` and
``app.kubernetes.io/name=prometheus``) open the runner port, in each namespace's
``lmms-runner`` NetworkPolicy, to those Prometheus pods, for a runner PodMonitor. Both
unset (or empty): the operator's pods only. With one set, the other selects all: the
selected pods in every namespace, or every pod of the selected namespaces.

The placement policy (``reconcile.placement``): LMMS_ALLOWED_PRIORITY_CLASSES lists the
priority classes runs may name (unset or empty: none, only the cluster default);
LMMS_ALLOWED_TOLERATION_KEYS narrows the toleration keys runs may use (unset: every key
outside the kubernetes.io and k8s.io domains, which are refused whatever it says, as is
a key-less toleration; empty: none); LMMS_ALLOW_CROSS_NAMESPACE_AFFINITY lets pod
affinity terms look at pods in other namespaces.

The runner pod defaults (``reconcile.poddefaults``: the platform's, trusted, not checked
against the placement policy) go on every runner pod, merged with the run's own values:
pull secrets (Secrets of those names in the run's namespace; ``["regcred"]`` or
``[{"name": "regcred"}]``), tolerations (the union), nodeSelector (a run may add keys, never
change the platform's: InvalidSpec), priorityClassName (the run's, when it sets one),
runtimeClassName, and labels and annotations on the Job and its pods (the operator's own
win). Unset, empty or ``null``: none. A value that cannot be used (bad JSON, a wrong type,
an invalid name, key or value, a key-less toleration, Kubernetes' own taints or node
roles, the operator's or Kubernetes' label domains) stops the operator at start-up with a
message naming the variable. Defaults are not part of a run's identity: changing them
restarts no Job; Jobs made afterwards get them.

LMMS_GPU_MEMORY declares the memory of one GPU of each extended resource name
(``nvidia.com/gpu=80Gi,nvidia.com/mig-1g.10gb=10Gi``): with it, a run on more than one GPU
of a model whose preset gives its size is data parallel when the model fits on one GPU
and model parallel when it does not (``reconcile.multigpu``, spec.model.multiGPU). A
value that is not such a list stops the operator at start-up, naming the variable.

LMMS_OBJECT_STORE_ALLOWED_CIDRS lists the networks, beyond public addresses, where the
operator may reach a tenant's object store (``netguard``: every other loopback,
link-local, private or reserved address is refused, in every spelling, after resolving
the name). LMMS_ALLOWED_MODEL_ARGS adds ``BACKEND:KEY`` patterns to the model args the
catalogue lists for each backend (the keyword arguments of its class hierarchy).
LMMS_ALLOWED_MODEL_URLS lists the URLs ``spec.model.endpoint.url`` and ``spec.judge.url``
may name (``reconcile.modelurls``: URL prefixes ``https://host[:port][/path]`` and host
patterns ``host[:port]``, ``*.domain``; commas or spaces between them): none by default,
so runs name a Service or an InferenceService. The operator never connects to them.

Leader election (``LeaderElection``) is set by flags of ``lmms-operator run``, not by
the environment (docs/operations.md, "High availability"):

| flag               | default                                   | meaning                          |
|--------------------|-------------------------------------------|----------------------------------|
| --leader-elect     | off: the process always does the work     | hold a Lease to do the work      |
| --lease-name       | lmms-operator                             | the coordination.k8s.io Lease    |
| --lease-namespace  | $POD_NAMESPACE, else the pod's namespace  | where the Lease is               |
| --lease-duration   | 15                                        | s a standby waits on a silent holder |
| --renew-deadline   | 10                                        | s the leader tries to renew before it stops its work |
| --retry-period     | 2                                         | s between tries                  |

The identity written in the Lease is ``$POD_NAME``, else the host name: stable across
restarts of a pod, so that a restarted leader takes its Lease back at once.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
from dataclasses import dataclass, field

from .objectstore import StorePolicy
from .reconcile import inference, modelurls, multigpu, poddefaults
from .reconcile.job import RunnerDefaults
from .reconcile.lease import Timing
from .reconcile.netpol import PrometheusScrapers, prometheus_peer
from .reconcile.placement import PlacementPolicy
from .reconcile.status import Timeouts
from .reconcile.validate import DEFAULT_FEATURES, FEATURES, Policy


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


@dataclass(frozen=True)
class Settings:
    runner_image: str = "lmms-operator-runner:0.1.0"
    runner_command: tuple[str, ...] = ("lmms-runner",)
    runner_port: int = 8080
    image_pull_policy: str = "IfNotPresent"
    unschedulable_timeout: float = 600.0
    image_pull_timeout: float = 300.0
    config_error_timeout: float = 300.0
    pod_creation_timeout: float = 300.0
    reference_timeout: float = 600.0
    scrape_interval: float = 5.0
    resync_interval: float = 15.0
    observe_delay: float = 0.5
    default_shm: str = "8Gi"
    runner_uid: int = 1000
    hold_timeout: float = 600.0
    scrape_timeout: float = 3.0
    scrape_concurrency: int = 32
    workers: int = 16
    namespaces: tuple[str, ...] = field(default_factory=tuple)
    allowed_features: frozenset[str] = DEFAULT_FEATURES
    allowed_env: tuple[str, ...] = ()
    own_identity_buckets: frozenset[str] = frozenset()
    runner_network_policy: bool = True
    operator_namespace: str = ""
    operator_pod_labels: tuple[tuple[str, str], ...] = (
        ("app.kubernetes.io/name", "lmms-operator"),
    )
    allowed_priority_classes: frozenset[str] = frozenset()
    allowed_toleration_keys: tuple[str, ...] | None = None
    allow_cross_namespace_affinity: bool = False
    prometheus_namespace_selector: str | None = None
    prometheus_pod_selector: str | None = None
    runner_pod_defaults: poddefaults.PodDefaults = field(default_factory=poddefaults.PodDefaults)
    gpu_memory: multigpu.GpuMemory = field(default_factory=multigpu.GpuMemory)
    #: (engine, image) for spec.model.engine; an engine not listed has no image.
    engine_images: tuple[tuple[str, str], ...] = ()
    #: The runner's own (resource, quantity) request = limit beside an engine.
    engine_runner: tuple[tuple[str, str], ...] = inference.RUNNER_RESOURCES

    @property
    def runner(self) -> RunnerDefaults:
        return RunnerDefaults(
            image=self.runner_image,
            command=self.runner_command,
            port=self.runner_port,
            image_pull_policy=self.image_pull_policy,
            default_shm=self.default_shm,
            uid=self.runner_uid,
            hold_timeout=self.hold_timeout,
            network_policy=self.runner_network_policy,
            operator_namespace=self.operator_namespace,
            operator_labels=self.operator_pod_labels,
            prometheus=PrometheusScrapers(
                self.prometheus_namespace_selector, self.prometheus_pod_selector
            ),
            pod=self.runner_pod_defaults,
            gpu_memory=self.gpu_memory,
            engine_images=self.engine_images,
            engine_runner=self.engine_runner,
        )

    #: Networks beyond public addresses where object stores may be (netguard).
    object_store_allowed_cidrs: tuple[str, ...] = ()
    allowed_model_args: tuple[str, ...] = ()
    #: URLs model and judge endpoints may name (``reconcile.modelurls``).
    allowed_model_urls: str = ""

    @property
    def store_policy(self) -> StorePolicy:
        return StorePolicy(
            enabled="s3Output" in self.allowed_features,
            own_identity_buckets=self.own_identity_buckets,
            allowed_cidrs=StorePolicy.networks(
                self.object_store_allowed_cidrs, "LMMS_OBJECT_STORE_ALLOWED_CIDRS"
            ),
        )

    @property
    def policy(self) -> Policy:
        return Policy(
            features=self.allowed_features,
            env=self.allowed_env,
            model_args=self.allowed_model_args,
            store_cidrs=self.store_policy.allowed_cidrs,
            placement=self.placement,
            gpu_memory=self.gpu_memory,
            engines=frozenset(name for name, _ in self.engine_images),
            model_urls=modelurls.parse_rules(self.allowed_model_urls),
        )

    @property
    def placement(self) -> PlacementPolicy:
        return PlacementPolicy(
            priority_classes=self.allowed_priority_classes,
            toleration_keys=self.allowed_toleration_keys,
            cross_namespace_affinity=self.allow_cross_namespace_affinity,
            node_selector=self.runner_pod_defaults.node_selector,
        )

    @property
    def timeouts(self) -> Timeouts:
        return Timeouts(
            unschedulable=self.unschedulable_timeout,
            image_pull=self.image_pull_timeout,
            container_config=self.config_error_timeout,
            pod_creation=self.pod_creation_timeout,
        )

    @classmethod
    def from_env(cls) -> Settings:
        d = cls()
        command = os.environ.get("LMMS_RUNNER_COMMAND")
        return cls(
            runner_image=os.environ.get("LMMS_RUNNER_IMAGE") or d.runner_image,
            runner_command=tuple(command.split()) if command else d.runner_command,
            runner_port=_int("LMMS_RUNNER_PORT", d.runner_port),
            image_pull_policy=os.environ.get("LMMS_IMAGE_PULL_POLICY") or d.image_pull_policy,
            unschedulable_timeout=_float("LMMS_UNSCHEDULABLE_TIMEOUT", d.unschedulable_timeout),
            image_pull_timeout=_float("LMMS_IMAGE_PULL_TIMEOUT", d.image_pull_timeout),
            config_error_timeout=_float("LMMS_CONFIG_ERROR_TIMEOUT", d.config_error_timeout),
            pod_creation_timeout=_float("LMMS_POD_CREATION_TIMEOUT", d.pod_creation_timeout),
            reference_timeout=_float("LMMS_REFERENCE_TIMEOUT", d.reference_timeout),
            scrape_interval=_float("LMMS_SCRAPE_INTERVAL", d.scrape_interval),
            resync_interval=_float("LMMS_RESYNC_INTERVAL", d.resync_interval),
            observe_delay=_float("LMMS_OBSERVE_DELAY", d.observe_delay),
            default_shm=os.environ.get("LMMS_DEFAULT_SHM") or d.default_shm,
            runner_uid=_int("LMMS_RUNNER_UID", d.runner_uid),
            hold_timeout=_float("LMMS_HOLD_TIMEOUT", d.hold_timeout),
            scrape_timeout=_float("LMMS_SCRAPE_TIMEOUT", d.scrape_timeout),
            scrape_concurrency=_int("LMMS_SCRAPE_CONCURRENCY", d.scrape_concurrency),
            workers=max(1, _int("LMMS_WORKERS", d.workers)),
            allowed_features=_features(os.environ.get("LMMS_ALLOWED_FEATURES")),
            allowed_env=_list("LMMS_ALLOWED_ENV"),
            own_identity_buckets=frozenset(_list("LMMS_OWN_IDENTITY_BUCKETS")),
            runner_network_policy=os.environ.get("LMMS_RUNNER_NETWORK_POLICY", "true").lower()
            not in ("false", "0", "no"),
            operator_namespace=os.environ.get("LMMS_OPERATOR_NAMESPACE", ""),
            operator_pod_labels=_labels("LMMS_OPERATOR_POD_LABELS") or d.operator_pod_labels,
            allowed_priority_classes=frozenset(_list("LMMS_ALLOWED_PRIORITY_CLASSES")),
            allowed_toleration_keys=_list("LMMS_ALLOWED_TOLERATION_KEYS")
            if "LMMS_ALLOWED_TOLERATION_KEYS" in os.environ
            else None,
            allow_cross_namespace_affinity=_bool("LMMS_ALLOW_CROSS_NAMESPACE_AFFINITY", False),
            object_store_allowed_cidrs=_list("LMMS_OBJECT_STORE_ALLOWED_CIDRS"),
            allowed_model_args=_model_args(_list("LMMS_ALLOWED_MODEL_ARGS")),
            allowed_model_urls=os.environ.get("LMMS_ALLOWED_MODEL_URLS", ""),
            prometheus_namespace_selector=os.environ.get("LMMS_PROMETHEUS_NAMESPACE_SELECTOR")
            or None,
            prometheus_pod_selector=os.environ.get("LMMS_PROMETHEUS_POD_SELECTOR") or None,
            runner_pod_defaults=poddefaults.parse(os.environ),
            gpu_memory=multigpu.parse_gpu_memory(os.environ.get(multigpu.SETTING, "")),
            engine_images=_engine_images(),
            engine_runner=inference.runner_resources(os.environ),
        )

    def check(self) -> Settings:
        """Fails at start-up on a setting that cannot be used (a CIDR that is none)."""
        _ = self.store_policy
        _ = self.policy  # an allowed model URL that is none fails here, named
        _ = prometheus_peer(self.runner)  # a selector that is none fails here, named
        return self


#: An image reference: [registry/]path[:tag][@digest] (no spaces, no scheme).
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@\-]{0,511}")


def _engine_images() -> tuple[tuple[str, str], ...]:
    """LMMS_ENGINE_IMAGE_<ENGINE>: each engine's image, checked to be an image reference."""
    pairs = []
    for engine in inference.ENGINES:
        name = f"LMMS_ENGINE_IMAGE_{engine.upper()}"
        image = os.environ.get(name, "").strip()
        if image and not _IMAGE.fullmatch(image):
            raise ValueError(f"{name} must be an image reference, got {image!r}")
        if image:
            pairs.append((engine, image))
    return tuple(pairs)


def _model_args(items: tuple[str, ...]) -> tuple[str, ...]:
    for item in items:
        backend, sep, key = item.partition(":")
        if not sep or not backend or not key:
            raise ValueError(f"LMMS_ALLOWED_MODEL_ARGS: expected BACKEND:KEY, got {item!r}")
    return items


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def _labels(name: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in _list(name):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{name}: expected key=value pairs, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


def _list(name: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in os.environ.get(name, "").split(",") if n.strip())


def _features(raw: str | None) -> frozenset[str]:
    if raw is None:
        return DEFAULT_FEATURES
    names = frozenset(f.strip() for f in raw.split(",") if f.strip())
    unknown = sorted(names - set(FEATURES))
    if unknown:
        raise ValueError(
            f"LMMS_ALLOWED_FEATURES: unknown feature(s) {', '.join(unknown)}; "
            f"known: {', '.join(FEATURES)}"
        )
    return names


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class LeaderElection:
    """``lmms-operator run --leader-elect``: the Lease, this process's identity in it, and
    the timing. ``namespace`` '' means the operator's own (``k8s.own_namespace``)."""

    enabled: bool = False
    name: str = "lmms-operator"
    namespace: str = ""
    identity: str = ""
    timing: Timing = field(default_factory=Timing)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        d = Timing()
        group = parser.add_argument_group("leader election (for more than one replica)")
        group.add_argument(
            "--leader-elect",
            action="store_true",
            help="do the work only while holding a coordination.k8s.io Lease; a standby "
            "serves metrics and health and takes over when the leader goes",
        )
        group.add_argument("--lease-name", default="lmms-operator", help="the Lease's name")
        group.add_argument(
            "--lease-namespace",
            default="",
            help="the Lease's namespace (default: $POD_NAMESPACE, else the pod's own)",
        )
        for flag, value, meaning in (
            (
                "--lease-duration",
                d.lease_duration,
                "a standby waits on a holder that stopped renewing",
            ),
            (
                "--renew-deadline",
                d.renew_deadline,
                "the leader keeps trying to renew before it stops its work",
            ),
            ("--retry-period", d.retry_period, "between tries to take or renew the Lease"),
        ):
            group.add_argument(
                flag, type=float, default=value, help=f"seconds {meaning} (default {value:g})"
            )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LeaderElection:
        """The settings of the flags; ValueError naming the flag when one is unusable."""
        timing = Timing(args.lease_duration, args.renew_deadline, args.retry_period)
        problems = timing.problems()
        if len(args.lease_name) > 253 or not _DNS_SUBDOMAIN.fullmatch(args.lease_name):
            problems.append(f"--lease-name must be a DNS subdomain name, got {args.lease_name!r}")
        if problems:
            raise ValueError("; ".join(problems))
        return cls(
            enabled=args.leader_elect,
            name=args.lease_name,
            namespace=args.lease_namespace,
            identity=os.environ.get("POD_NAME") or socket.gethostname(),
            timing=timing,
        )
