"""The platform's defaults for every runner pod (settings ``LMMS_RUNNER_*``, chart values
``runnerPodDefaults.*``), and how they merge with a run's own placement. Pure: ``parse``
takes the values (the environment, as a mapping) and reads nothing itself.

A platform team states once what every runner pod needs on its cluster: the pull secrets
of a private registry, the tolerations and node selector of its GPU nodes, a priority
class, the ``nvidia`` runtime class, and labels or annotations (cost centre, autoscaler
hints). The admin is trusted: the defaults are not checked against the placement policy
(a default toleration need not be in ``LMMS_ALLOWED_TOLERATION_KEYS``). They are checked
at start-up for what would make every runner Job fail or be refused: bad JSON, a wrong
type, a name or key the API server refuses, a key-less toleration, a key of Kubernetes'
own taints or node roles (the chart's admission policy refuses those whatever the
operator does), and a label or annotation of the operator's own (reserved below).

How they merge with the run's own values (``apply``; the run's are checked against the
placement policy exactly as before, ``placement.check``):

- ``imagePullSecrets``: the defaults (Secrets of those names in the run's namespace);
- ``tolerations``: the union of the run's and the defaults, without duplicates (the run's
  first);
- ``nodeSelector``: the platform's keys and the run's. A run may add keys, and repeat a
  platform key with the same value, but never change one: ``placement.check`` refuses it
  (``InvalidSpec`` naming ``spec.scheduling.nodeSelector.<key>``), as the PodNodeSelector
  admission plugin refuses a pod that conflicts with its namespace's selector. The
  platform's selector is a fence (its GPU nodes), not a suggestion;
- ``priorityClassName``: the run's when it sets one (from the admin's list), else the
  default;
- ``runtimeClassName``: the default (runs cannot choose one);
- labels and annotations, on the Job and its pod template: the defaults under the
  operator's own, which always win.

The defaults are not part of the evaluation's identity (``job.spec_hash``, which hashes
the spec only): changing them never restarts, renames or re-runs a run's Job; Jobs made
afterwards get the new ones.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..api.base import DNS_SUBDOMAIN
from ..api.corev1 import LABEL_VALUE, QUALIFIED_NAME, Toleration
from .placement import NODE_ROLE_DOMAIN, RESERVED_TAINT_DOMAINS, domain, in_domain

IMAGE_PULL_SECRETS = "LMMS_RUNNER_IMAGE_PULL_SECRETS"
TOLERATIONS = "LMMS_RUNNER_TOLERATIONS"
NODE_SELECTOR = "LMMS_RUNNER_NODE_SELECTOR"
PRIORITY_CLASS_NAME = "LMMS_RUNNER_PRIORITY_CLASS_NAME"
RUNTIME_CLASS_NAME = "LMMS_RUNNER_RUNTIME_CLASS_NAME"
LABELS = "LMMS_RUNNER_LABELS"
ANNOTATIONS = "LMMS_RUNNER_ANNOTATIONS"
VARIABLES = (
    IMAGE_PULL_SECRETS,
    TOLERATIONS,
    NODE_SELECTOR,
    PRIORITY_CLASS_NAME,
    RUNTIME_CLASS_NAME,
    LABELS,
    ANNOTATIONS,
)

#: The operator's own label domain (``job.LABEL_PREFIX``): its labels select its children.
OWN_DOMAIN = "eval.lmms.dev"
#: Labels the operator sets on every Job and pod (``job._labels``).
OWN_LABELS = frozenset({"app.kubernetes.io/name", "app.kubernetes.io/managed-by"})
#: Label domains the platform may not use: Kubernetes' own (the Job controller's
#: ``batch.kubernetes.io/controller-uid`` selects the pods), but the recommended
#: ``app.kubernetes.io`` labels, which are the user's; and Kueue's, whose queue label
#: admits a Job (a run names its queue in spec.scheduling.queueName).
RESERVED_LABEL_DOMAINS = (OWN_DOMAIN, *RESERVED_TAINT_DOMAINS, "kueue.x-k8s.io")
#: Labels without a prefix that the Job controller sets on the pods it makes.
JOB_CONTROLLER_LABELS = frozenset({"job-name", "controller-uid"})
#: Annotation domains the platform may not use: the operator's, and the Job controller's
#: (``batch.kubernetes.io/job-completion-index``, which the runner reads).
RESERVED_ANNOTATION_DOMAINS = (OWN_DOMAIN, "batch.kubernetes.io")
#: All the annotations of one object, keys and values (the API server's limit).
MAX_ANNOTATION_BYTES = 256 * 1024

_QUALIFIED = re.compile(QUALIFIED_NAME.removesuffix("$") + r"\Z")
_LABEL_VALUE = re.compile(LABEL_VALUE.removesuffix("$") + r"\Z")
_DNS_SUBDOMAIN = re.compile(DNS_SUBDOMAIN.removesuffix("$") + r"\Z")

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class PodDefaults:
    """What the platform puts on every runner pod; empty: nothing."""

    image_pull_secrets: tuple[str, ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    node_selector: Pairs = ()
    priority_class_name: str | None = None
    runtime_class_name: str | None = None
    labels: Pairs = ()
    annotations: Pairs = ()

    def __bool__(self) -> bool:
        return any(
            (
                self.image_pull_secrets,
                self.tolerations,
                self.node_selector,
                self.priority_class_name,
                self.runtime_class_name,
                self.labels,
                self.annotations,
            )
        )


# --- parsing the settings ---------------------------------------------------------------


class _Errors:
    """The problems of every variable, so that one start-up says them all."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, where: str, why: str) -> None:
        self.messages.append(f"{where}: {why}")


def parse(values: Mapping[str, str]) -> PodDefaults:
    """The defaults from the ``LMMS_RUNNER_*`` variables in ``values`` (the environment);
    unset, empty or JSON ``null``: none. Raises ValueError naming each variable (and the
    item) that cannot be used, and why."""
    errors = _Errors()
    defaults = PodDefaults(
        image_pull_secrets=_image_pull_secrets(values, errors),
        tolerations=_tolerations(values, errors),
        node_selector=_node_selector(values, errors),
        priority_class_name=_name(values, PRIORITY_CLASS_NAME, errors),
        runtime_class_name=_name(values, RUNTIME_CLASS_NAME, errors),
        labels=_labels(values, errors),
        annotations=_annotations(values, errors),
    )
    if errors.messages:
        raise ValueError("; ".join(errors.messages))
    return defaults


_KINDS: dict[type, str] = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
}


def _show(text: str, most: int = 60) -> str:
    """``text`` quoted, cut to ``most`` characters: an error message stays readable."""
    return repr(text) if len(text) <= most else repr(text[:most]) + "..."


def _kind(value: Any) -> str:
    return _KINDS.get(type(value), type(value).__name__)


def _json(values: Mapping[str, str], name: str, want: type, errors: _Errors) -> Any:
    """The variable's JSON value when it is a ``want``; None when unset, empty, null or
    unusable (the problem recorded)."""
    raw = values.get(name, "")
    if not raw.strip():
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        why = f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        errors.add(name, f"not valid JSON ({why}); expected {_KINDS[want]}")
        return None
    except RecursionError:
        errors.add(name, f"nested too deeply; expected {_KINDS[want]}")
        return None
    if value is None:
        return None
    if not isinstance(value, want):
        errors.add(name, f"expected a JSON {_KINDS[want].split()[-1]}, got {_kind(value)}")
        return None
    return value


def _name(values: Mapping[str, str], name: str, errors: _Errors) -> str | None:
    """A plain (not JSON) object name: a DNS subdomain."""
    raw = values.get(name, "").strip()
    if not raw:
        return None
    why = dns_subdomain_problem(raw)
    if why:
        errors.add(name, why)
        return None
    return raw


def dns_subdomain_problem(name: str) -> str | None:
    """Why ``name`` is no object name (RFC 1123 subdomain), or None."""
    if len(name) > 253:
        return f"{_show(name)} is longer than 253 characters"
    if not _DNS_SUBDOMAIN.match(name):
        return (
            f"{_show(name)} is not a valid name (lower-case letters, digits, '-' and '.', "
            "starting and ending with a letter or digit)"
        )
    return None


def label_key_problem(key: str) -> str | None:
    """Why ``key`` is no label or annotation key ([DNS-subdomain prefix/]name, the name at
    most 63 characters, the prefix at most 253), or None."""
    prefix, _, name = key.rpartition("/")
    if not _QUALIFIED.match(key):
        return (
            f"{_show(key)} is not a valid key ([prefix/]name: the name alphanumerics with '-', "
            "'_' and '.' inside; the prefix a DNS subdomain)"
        )
    if len(name) > 63:
        return f"{_show(key)}: the name after the prefix is longer than 63 characters"
    if len(prefix) > 253:
        return f"{_show(key)}: the prefix is longer than 253 characters"
    return None


def label_value_problem(value: Any) -> str | None:
    """Why ``value`` is no label value, or None."""
    if not isinstance(value, str):
        return f"values must be strings, got {_kind(value)}"
    if len(value) > 63:
        return f"{_show(value)} is longer than 63 characters"
    if not _LABEL_VALUE.match(value):
        return (
            f"{_show(value)} is not a valid label value (empty, or alphanumerics with '-', '_' "
            "and '.' inside)"
        )
    return None


def _string_map(
    values: Mapping[str, str],
    name: str,
    errors: _Errors,
    value_problem: Callable[[Any], str | None],
    key_problem: Callable[[str], str | None] = lambda _: None,
) -> Pairs:
    raw = _json(values, name, dict, errors)
    if raw is None:
        return ()
    pairs: list[tuple[str, str]] = []
    for key, value in raw.items():
        why = label_key_problem(key) or key_problem(key) or value_problem(value)
        if why:
            errors.add(f"{name}[{_show(key)}]", why)
        else:
            pairs.append((key, value))
    return tuple(pairs)


def _node_selector(values: Mapping[str, str], errors: _Errors) -> Pairs:
    def node_role(key: str) -> str | None:
        if in_domain(key, (NODE_ROLE_DOMAIN,)):
            return (
                "runner pods are not placed by node role (the chart's admission policy "
                "refuses node-role.kubernetes.io keys)"
            )
        return None

    return _string_map(values, NODE_SELECTOR, errors, label_value_problem, node_role)


def _labels(values: Mapping[str, str], errors: _Errors) -> Pairs:
    def reserved(key: str) -> str | None:
        if key in OWN_LABELS:
            return "the operator sets this label itself"
        if key in JOB_CONTROLLER_LABELS:
            return "the Job controller sets this label on the pods it makes"
        if in_domain(key, RESERVED_LABEL_DOMAINS) and domain(key) != "app.kubernetes.io":
            return (
                f"labels in the {', '.join(RESERVED_LABEL_DOMAINS)} domains are reserved "
                "(the operator's, Kubernetes', and Kueue's, whose queue label a run sets "
                "with spec.scheduling.queueName)"
            )
        return None

    return _string_map(values, LABELS, errors, label_value_problem, reserved)


def _annotations(values: Mapping[str, str], errors: _Errors) -> Pairs:
    def reserved(key: str) -> str | None:
        if in_domain(key, RESERVED_ANNOTATION_DOMAINS):
            return (
                f"annotations in the {', '.join(RESERVED_ANNOTATION_DOMAINS)} domains are "
                "reserved (the operator's and the Job controller's)"
            )
        return None

    def string(value: Any) -> str | None:
        return None if isinstance(value, str) else f"values must be strings, got {_kind(value)}"

    pairs = _string_map(values, ANNOTATIONS, errors, string, reserved)
    size = sum(len(k.encode()) + len(v.encode()) for k, v in pairs)
    if size > MAX_ANNOTATION_BYTES:
        errors.add(ANNOTATIONS, f"{size} bytes in all, more than the API server's 256 KiB")
        return ()
    return pairs


def _image_pull_secrets(values: Mapping[str, str], errors: _Errors) -> tuple[str, ...]:
    """Secret names, or ``{"name": ...}`` objects as in a pod's imagePullSecrets."""
    raw = _json(values, IMAGE_PULL_SECRETS, list, errors)
    names: list[str] = []
    for i, item in enumerate(raw or []):
        where = f"{IMAGE_PULL_SECRETS}[{i}]"
        if isinstance(item, dict) and set(item) == {"name"}:
            item = item["name"]
        if not isinstance(item, str):
            errors.add(where, f'expected a Secret name (or {{"name": ...}}), got {_kind(item)}')
            continue
        why = dns_subdomain_problem(item)
        if why:
            errors.add(where, why)
        elif item not in names:
            names.append(item)
    return tuple(names)


def _tolerations(values: Mapping[str, str], errors: _Errors) -> tuple[Toleration, ...]:
    raw = _json(values, TOLERATIONS, list, errors)
    made: list[Toleration] = []
    seen: list[dict[str, Any]] = []
    for i, item in enumerate(raw or []):
        where = f"{TOLERATIONS}[{i}]"
        if not isinstance(item, dict):
            errors.add(where, f"expected a JSON object (a core/v1 Toleration), got {_kind(item)}")
            continue
        try:
            toleration = Toleration.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors():
                loc = "".join(f".{p}" if isinstance(p, str) else f"[{p}]" for p in err["loc"])
                said = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
                errors.add(where + loc, said)
            continue
        problem = toleration_problem(toleration)
        if problem:
            errors.add(where, problem)
            continue
        wire = toleration.to_wire()
        if wire not in seen:
            seen.append(wire)
            made.append(toleration)
    return tuple(made)


def toleration_problem(t: Toleration) -> str | None:
    """Why the platform may not give every runner pod ``t``, or None."""
    if not t.key:
        return "a toleration needs a key: one without tolerates every taint"
    if in_domain(t.key, RESERVED_TAINT_DOMAINS):
        return (
            f"{t.key!r} is a Kubernetes taint (kubernetes.io and k8s.io domains: the control "
            "plane, unhealthy nodes); the chart's admission policy refuses runner pods that "
            "tolerate it"
        )
    if t.operator == "Exists" and t.value:
        return "a toleration with operator Exists takes no value"
    if t.toleration_seconds is not None and t.effect != "NoExecute":
        return "tolerationSeconds needs effect NoExecute"
    return None


# --- merging with a run's own values ----------------------------------------------------


def apply(job: Mapping[str, Any], defaults: PodDefaults) -> dict[str, Any]:
    """The Job with the platform's defaults merged in (module docstring); a new object.
    The run's own placement is in ``job`` already, checked by ``placement.check``."""
    out = copy.deepcopy(dict(job))
    if not defaults:
        return out
    template = out["spec"]["template"]
    pod = template["spec"]
    if defaults.image_pull_secrets:
        have = list(pod.get("imagePullSecrets") or [])
        have += [{"name": n} for n in defaults.image_pull_secrets if {"name": n} not in have]
        pod["imagePullSecrets"] = have
    if defaults.tolerations:
        tolerations: list[dict[str, Any]] = []
        for t in [*(pod.get("tolerations") or []), *(t.to_wire() for t in defaults.tolerations)]:
            if t not in tolerations:
                tolerations.append(t)
        pod["tolerations"] = tolerations
    if defaults.node_selector:
        # placement.check refused a run that changes a platform key; the platform's wins.
        pod["nodeSelector"] = {**(pod.get("nodeSelector") or {}), **dict(defaults.node_selector)}
    if defaults.priority_class_name and not pod.get("priorityClassName"):
        pod["priorityClassName"] = defaults.priority_class_name
    if defaults.runtime_class_name and not pod.get("runtimeClassName"):
        pod["runtimeClassName"] = defaults.runtime_class_name
    for meta in (out["metadata"], template.setdefault("metadata", {})):
        for field, extra in (("labels", defaults.labels), ("annotations", defaults.annotations)):
            if extra:
                meta[field] = {**dict(extra), **(meta.get(field) or {})}
    return out
