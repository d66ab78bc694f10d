"""The core/v1 placement types a run's pods take from its spec: ``Affinity`` and
``Toleration``, spelled out field by field.

They used to pass through schemaless (``x-kubernetes-preserve-unknown-fields``), which let
a tenant nest data as deep as it liked: CEL cannot measure that, and the operator's own
decoders ran out of stack. Here every list has a ``maxItems``, every string a
``maxLength`` and every map a ``maxProperties``, so the API server bounds depth and size
before the operator sees the object, and the operator parses it with the same types.

On the wire (``to_wire``, ``model_dump``) a model keeps only the fields that are set: a
Job's pod gets exactly the JSON the tenant wrote, and the spec hash of a run written
before these types existed does not change.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import (
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    StringConstraints,
    model_serializer,
    model_validator,
)

from .base import DNS_LABEL, ApiModel

#: A label or taint key: an optional DNS-subdomain prefix and "/", then a name.
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
#: A label value (empty, or alphanumerics with - _ . inside).
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: A node selector value: a label value, an integer (Gt, Lt) or a node name (matchFields).
NODE_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

MAX_KEY = 317  # 253 (prefix) + 1 + 63 (name)
#: Terms of one affinity, in all: node selector terms and every weighted or pod term.
MAX_AFFINITY_TERMS = 32
#: The JSON of one affinity, at most.
MAX_AFFINITY_BYTES = 16 * 1024
MAX_TERMS = 32
MAX_EXPRESSIONS = 16
MAX_VALUES = 32
MAX_LABELS = 32
MAX_NAMESPACES = 16

LabelKey = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_KEY, pattern=QUALIFIED_NAME)
]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)]
NodeValue = Annotated[str, StringConstraints(max_length=253, pattern=NODE_VALUE)]
Namespace = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL)]

#: QUALIFIED_NAME in a CEL string literal (a backslash escaped).
_CEL_QUALIFIED_NAME = QUALIFIED_NAME.replace("\\", "\\\\")
#: A map of label keys to values: the schema bounds the values and the count, CEL the keys.
LABEL_MAP_SCHEMA: dict[str, Any] = {
    "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
    "x-kubernetes-validations": [
        {
            "rule": f"self.all(k, size(k) <= {MAX_KEY} && k.matches('{_CEL_QUALIFIED_NAME}'))",
            "message": "keys must be label keys ([prefix/]name, at most 317 characters)",
        }
    ],
}


def _key(description: str, **kw: Any) -> Any:
    return Field(
        description=description, min_length=1, max_length=MAX_KEY, pattern=QUALIFIED_NAME, **kw
    )


class K8sModel(ApiModel):
    """A core/v1 type: on the wire only the fields that are set (None is never written)."""

    @model_serializer(mode="wrap")
    def _set_fields_only(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if v is not None}


class Toleration(K8sModel):
    """A pod toleration (core/v1 Toleration). It needs a key: a key-less toleration
    tolerates every taint, the control plane's among them."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.key) && size(self.key) > 0",
                    "message": "a toleration needs a key: one without tolerates every taint",
                    "fieldPath": ".key",
                },
                {
                    "rule": "!has(self.operator) || self.operator != 'Exists' || "
                    "!has(self.value) || self.value == ''",
                    "message": "a toleration with operator Exists takes no value",
                    "fieldPath": ".value",
                },
            ]
        }
    )

    key: str | None = _key("The taint key the toleration matches.", default=None)
    operator: Literal["Exists", "Equal"] | None = Field(
        default=None, description="Exists or Equal (the default)."
    )
    value: LabelValue | None = Field(default=None, description="The taint value (Equal).")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="The taint effect matched; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None,
        ge=0,
        le=10 * 365 * 86_400,
        description="How long a NoExecute taint is tolerated; empty: for ever.",
    )


class NodeSelectorRequirement(K8sModel):
    """A node label (matchExpressions) or field (matchFields) and the values it may take."""

    key: str = _key("The node label key (or field, metadata.name).")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"] = Field(
        description="In, NotIn, Exists, DoesNotExist, Gt or Lt."
    )
    values: list[NodeValue] | None = Field(
        default=None, description="The values (one integer for Gt and Lt).", max_length=MAX_VALUES
    )


class NodeSelectorTerm(K8sModel):
    """Requirements that all hold (AND)."""

    match_expressions: list[NodeSelectorRequirement] | None = Field(
        default=None, description="Requirements on node labels.", max_length=MAX_EXPRESSIONS
    )
    match_fields: list[NodeSelectorRequirement] | None = Field(
        default=None, description="Requirements on node fields.", max_length=MAX_EXPRESSIONS
    )


class NodeSelector(K8sModel):
    """Terms of which one must hold (OR)."""

    node_selector_terms: list[NodeSelectorTerm] = Field(
        description="The terms.", max_length=MAX_TERMS
    )


class PreferredSchedulingTerm(K8sModel):
    """A node preference and its weight."""

    weight: int = Field(ge=1, le=100, description="Weight, 1 to 100.")
    preference: NodeSelectorTerm = Field(description="The preferred nodes.")


class NodeAffinity(K8sModel):
    """Which nodes the pods may (or prefer to) run on."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = Field(
        default=None, description="Nodes the pods must run on."
    )
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = (
        Field(default=None, description="Nodes the pods prefer.", max_length=MAX_TERMS)
    )


class LabelSelectorRequirement(K8sModel):
    """A label, an operator and values."""

    key: str = _key("The label key.")
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"] = Field(
        description="In, NotIn, Exists or DoesNotExist."
    )
    values: list[LabelValue] | None = Field(
        default=None, description="The values (In, NotIn).", max_length=MAX_VALUES
    )


class LabelSelector(K8sModel):
    """A label query. Empty ({}) selects everything."""

    match_labels: dict[LabelKey, LabelValue] | None = Field(
        default=None,
        description="Labels that must all match.",
        max_length=MAX_LABELS,
        json_schema_extra=LABEL_MAP_SCHEMA,
    )
    match_expressions: list[LabelSelectorRequirement] | None = Field(
        default=None, description="Requirements that must all hold.", max_length=MAX_EXPRESSIONS
    )


LabelKeys = list[LabelKey]


class PodAffinityTerm(K8sModel):
    """Pods (by label, in namespaces) near which the pods must or must not run."""

    label_selector: LabelSelector | None = Field(default=None, description="The pods.")
    namespaces: list[Namespace] | None = Field(
        default=None,
        description="Namespaces of the pods; empty: the run's own namespace.",
        max_length=MAX_NAMESPACES,
    )
    topology_key: str = _key("The node label whose value defines 'near' (e.g. a zone).")
    namespace_selector: LabelSelector | None = Field(
        default=None, description="Namespaces of the pods by label; {} is every namespace."
    )
    match_label_keys: LabelKeys | None = Field(
        default=None,
        description="Label keys whose values, taken from the pod, are added to labelSelector.",
        max_length=MAX_LABELS,
    )
    mismatch_label_keys: LabelKeys | None = Field(
        default=None,
        description="Label keys whose values, taken from the pod, must differ.",
        max_length=MAX_LABELS,
    )


class WeightedPodAffinityTerm(K8sModel):
    """A pod affinity term and its weight."""

    weight: int = Field(ge=1, le=100, description="Weight, 1 to 100.")
    pod_affinity_term: PodAffinityTerm = Field(description="The term.")


class PodAffinity(K8sModel):
    """Pods the pods must (or prefer to) run near (podAffinity) or away from
    (podAntiAffinity)."""

    required_during_scheduling_ignored_during_execution: list[PodAffinityTerm] | None = Field(
        default=None, description="Terms that must hold.", max_length=MAX_TERMS
    )
    preferred_during_scheduling_ignored_during_execution: list[WeightedPodAffinityTerm] | None = (
        Field(default=None, description="Terms preferred.", max_length=MAX_TERMS)
    )


_REQ = "requiredDuringSchedulingIgnoredDuringExecution"
_PREF = "preferredDuringSchedulingIgnoredDuringExecution"


def _cel_size(parent: str, field: str, suffix: str = "") -> str:
    return (
        f"(has(self.{parent}) && has(self.{parent}.{field}) ? "
        f"size(self.{parent}.{field}{suffix}) : 0)"
    )


#: CEL: the terms of an affinity, in all.
TERMS_RULE = (
    " + ".join(
        [
            _cel_size("nodeAffinity", _REQ, ".nodeSelectorTerms"),
            _cel_size("nodeAffinity", _PREF),
            _cel_size("podAffinity", _REQ),
            _cel_size("podAffinity", _PREF),
            _cel_size("podAntiAffinity", _REQ),
            _cel_size("podAntiAffinity", _PREF),
        ]
    )
    + f" <= {MAX_AFFINITY_TERMS}"
)


class Affinity(K8sModel):
    """Pod affinity (core/v1 Affinity): at most 32 terms in all and 16 KiB."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": TERMS_RULE,
                    "message": f"at most {MAX_AFFINITY_TERMS} terms in all (node selector "
                    "terms, preferred terms, pod affinity and anti-affinity terms)",
                }
            ]
        }
    )

    node_affinity: NodeAffinity | None = Field(default=None, description="Node affinity.")
    pod_affinity: PodAffinity | None = Field(
        default=None, description="Pods to run near (podAffinity)."
    )
    pod_anti_affinity: PodAffinity | None = Field(
        default=None, description="Pods to run away from (podAntiAffinity)."
    )

    def __bool__(self) -> bool:
        """An affinity with nothing set is no affinity (the pod gets none)."""
        return bool(self.to_wire())

    def terms(self) -> int:
        """Node selector terms, preferred terms and pod (anti-)affinity terms, in all."""
        count = 0
        node = self.node_affinity
        if node is not None:
            required = node.required_during_scheduling_ignored_during_execution
            count += len(required.node_selector_terms) if required else 0
            count += len(node.preferred_during_scheduling_ignored_during_execution or [])
        for pod in (self.pod_affinity, self.pod_anti_affinity):
            if pod is not None:
                count += len(pod.required_during_scheduling_ignored_during_execution or [])
                count += len(pod.preferred_during_scheduling_ignored_during_execution or [])
        return count

    def pod_terms(self) -> list[tuple[str, PodAffinityTerm]]:
        """Every pod affinity and anti-affinity term, with its path under the affinity."""
        out: list[tuple[str, PodAffinityTerm]] = []
        for name, pod in (
            ("podAffinity", self.pod_affinity),
            ("podAntiAffinity", self.pod_anti_affinity),
        ):
            if pod is None:
                continue
            for i, term in enumerate(pod.required_during_scheduling_ignored_during_execution or []):
                out.append((f"{name}.{_REQ}[{i}]", term))
            for i, w in enumerate(pod.preferred_during_scheduling_ignored_during_execution or []):
                out.append((f"{name}.{_PREF}[{i}].podAffinityTerm", w.pod_affinity_term))
        return out

    def node_terms(self) -> list[tuple[str, NodeSelectorTerm]]:
        """Every node selector term, required or preferred, with its path."""
        node = self.node_affinity
        if node is None:
            return []
        out: list[tuple[str, NodeSelectorTerm]] = []
        required = node.required_during_scheduling_ignored_during_execution
        for i, term in enumerate(required.node_selector_terms if required else []):
            out.append((f"nodeAffinity.{_REQ}.nodeSelectorTerms[{i}]", term))
        for i, p in enumerate(node.preferred_during_scheduling_ignored_during_execution or []):
            out.append((f"nodeAffinity.{_PREF}[{i}].preference", p.preference))
        return out

    @model_validator(mode="after")
    def _bounded(self) -> Affinity:
        terms = self.terms()
        if terms > MAX_AFFINITY_TERMS:
            raise ValueError(f"{terms} terms; at most {MAX_AFFINITY_TERMS} in all are allowed")
        size = len(json.dumps(self.to_wire()))
        if size > MAX_AFFINITY_BYTES:
            raise ValueError(f"{size} bytes; at most {MAX_AFFINITY_BYTES} are allowed")
        return self
