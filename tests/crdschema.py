"""The EvalRun CRD's schema as the API server applies it, for generating specs: the
structural checks (``conforms``), the defaults it fills in (``with_defaults``), and its
CEL rules (``x-kubernetes-validations``) as Python predicates.

CEL cannot be evaluated here. ``CEL`` holds each rule the CRD has, by its text, as a
predicate over the object it sits on; ``cel_predicate`` also knows two forms of rule
(``!self.contains('..')``; every key of a map matching a pattern). ``unknown_cel_rules``
lists the rules it does not know, so that a new one is noticed rather than ignored.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from lmms_operator.api import crdgen
from tests import re2

Node = Mapping[str, Any]


def evalrun_spec_schema() -> dict[str, Any]:
    """The ``spec`` schema of the EvalRun CRD's stored version, as generated now."""
    for crd in crdgen.all_crds().values():
        if crd["spec"]["names"]["kind"] == "EvalRun":
            version = next(v for v in crd["spec"]["versions"] if v.get("storage"))
            return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])
    raise LookupError("no EvalRun CRD")


# --- CEL -------------------------------------------------------------------------------


def _tasks_present(s: Any) -> bool:
    return bool(s.get("tasks")) or any(c.get("tasks") for c in s.get("customTasks") or [])


#: The CRD's CEL rules, by their text, as predicates over the object they sit on (with
#: the API server's defaults filled in).
CEL: dict[str, Callable[[Any], bool]] = {
    "size(self.tasks) > 0 || self.customTasks.exists(c, size(c.tasks) > 0)": _tasks_present,
    "!has(self.parallelism) || self.parallelism == 1 || !has(self.resources) || "
    "!has(self.resources.nodes) || self.resources.nodes == 1": lambda s: (
        s.get("parallelism", 1) == 1 or (s.get("resources") or {}).get("nodes", 1) == 1
    ),
    "!has(self.model.multiGPU) || self.model.multiGPU != 'ModelParallel' || "
    "!has(self.resources) || !has(self.resources.nodes) || self.resources.nodes == 1": (
        lambda s: (
            (s.get("model") or {}).get("multiGPU") != "ModelParallel"
            or (s.get("resources") or {}).get("nodes", 1) == 1
        )
    ),
    "!self.split('/').exists(s, s == '..')": lambda v: ".." not in v.split("/"),
    "self.nodes == 1 || self.gpus >= 1": lambda r: r.get("nodes") == 1 or r.get("gpus", 0) >= 1,
    "!self.split('/')[0].endsWith('kubernetes.io') && !self.split('/')[0].endsWith('k8s.io')": (
        lambda v: not v.split("/")[0].endswith(("kubernetes.io", "k8s.io"))
    ),
    "!has(self.endpoint) || self.endpoint == '' || has(self.credentialsSecret)": lambda s: (
        not s.get("endpoint") or "credentialsSecret" in s
    ),
    "has(self.key) && size(self.key) > 0": lambda t: bool(t.get("key")),
    "[has(self.service), has(self.inferenceService), has(self.url)].filter(x, x).size() == 1": (
        lambda e: sum(k in e for k in ("service", "inferenceService", "url")) == 1
    ),
    "!has(self.endpoint) || self.type == 'openai'": lambda m: (
        "endpoint" not in m or m.get("type") == "openai"
    ),
    "!has(self.endpoint) || !has(self.engine)": lambda m: "endpoint" not in m or "engine" not in m,
    "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''": (
        lambda t: t.get("operator") != "Exists" or not t.get("value")
    ),
}


def _affinity_terms(a: Mapping[str, Any]) -> int:
    """Node selector terms, preferred terms, pod (anti-)affinity terms: the affinity rule's sum."""
    node = a.get("nodeAffinity") or {}
    required = node.get("requiredDuringSchedulingIgnoredDuringExecution")
    count = len(required.get("nodeSelectorTerms") or []) if required is not None else 0
    count += len(node.get("preferredDuringSchedulingIgnoredDuringExecution") or [])
    for kind in ("podAffinity", "podAntiAffinity"):
        pod = a.get(kind) or {}
        count += len(pod.get("requiredDuringSchedulingIgnoredDuringExecution") or [])
        count += len(pod.get("preferredDuringSchedulingIgnoredDuringExecution") or [])
    return count


#: The affinity rule: a sum of the sizes of six term lists, at most N.
_AFFINITY = re.compile(
    r"^\(has\(self\.nodeAffinity\) && has\(self\.nodeAffinity\."
    r"requiredDuringSchedulingIgnoredDuringExecution\) \? .* <= (\d+)$"
)
#: Rules of a known form: ``!self.contains('..')``; every key an identifier of at most N.
_CONTAINS = re.compile(r"^!self\.contains\('([^']*)'\)$")
_KEYS = re.compile(r"^self\.all\(k, size\(k\) <= (\d+) && k\.matches\('([^']*)'\)\)$")


def cel_predicate(rule: str) -> Callable[[Any], bool] | None:
    if rule in CEL:
        return CEL[rule]
    if m := _CONTAINS.match(rule):
        needle = m.group(1)
        return lambda v: needle not in v
    if m := _KEYS.match(rule):
        size, pattern = int(m.group(1)), _cel_string(m.group(2))
        return lambda d: all(len(k) <= size and re2.matches(pattern, k) for k in d)
    if (m := _AFFINITY.match(rule)) and rule.count("size(") == 6:
        most = int(m.group(1))
        return lambda a: _affinity_terms(a) <= most
    return None


def _cel_string(literal: str) -> str:
    """The value of a single-quoted CEL string literal's body."""
    return re.sub(r"\\(.)", r"\1", literal)


def _rules(node: Node) -> list[str]:
    return [r["rule"] for r in node.get("x-kubernetes-validations") or []]


def cel_rules(node: Node, path: str = "spec") -> Iterator[tuple[str, str]]:
    """(path, rule) for every CEL rule in the schema."""
    for rule in _rules(node):
        yield path, rule
    for name, child in (node.get("properties") or {}).items():
        yield from cel_rules(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), Mapping):
        yield from cel_rules(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), Mapping):
        yield from cel_rules(node["items"], f"{path}[]")


def unknown_cel_rules(node: Node) -> list[str]:
    return [f"{p}: {r}" for p, r in cel_rules(node) if cel_predicate(r) is None]


def cel_ok(node: Node, value: Any) -> bool:
    return all((pred := cel_predicate(r)) is None or pred(value) for r in _rules(node))


def key_pattern(node: Node) -> tuple[int, str] | None:
    """(max length, pattern) of an object's keys, from a CEL rule of the ``_KEYS`` form."""
    for rule in _rules(node):
        if m := _KEYS.match(rule):
            return int(m.group(1)), _cel_string(m.group(2))
    return None


# --- conformance -----------------------------------------------------------------------


def conforms(node: Node, value: Any, path: str = "spec") -> list[str]:
    """What the API server would refuse in ``value`` (structural schema and known CEL)."""
    kind = node.get("type")
    errs: list[str] = []
    if "enum" in node and value not in node["enum"]:
        return [f"{path}: not in enum"]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: not a string"]
        if not node.get("minLength", 0) <= len(value) <= node.get("maxLength", math.inf):
            errs.append(f"{path}: length {len(value)}")
        if "pattern" in node and not re2.matches(node["pattern"], value):
            errs.append(f"{path}: pattern")
    elif kind in ("integer", "number"):
        ok = isinstance(value, int) or (kind == "number" and isinstance(value, float))
        if not ok or isinstance(value, bool) or not _in_bounds(node, value):
            errs.append(f"{path}: {value!r} out of bounds")
    elif kind == "boolean" and not isinstance(value, bool):
        errs.append(f"{path}: not a boolean")
    elif kind == "array":
        errs += _array_errors(node, value, path)
    elif kind == "object":
        errs += _object_errors(node, value, path)
    if not errs and not cel_ok(node, value):
        errs.append(f"{path}: CEL {_rules(node)}")
    return errs


def _in_bounds(node: Node, value: float) -> bool:
    lo, hi = node.get("minimum", -math.inf), node.get("maximum", math.inf)
    if node.get("exclusiveMinimum") is True and value <= lo:
        return False
    if node.get("exclusiveMaximum") is True and value >= hi:
        return False
    return bool(lo <= value <= hi)


def _array_errors(node: Node, value: Any, path: str) -> list[str]:
    if not isinstance(value, list):
        return [f"{path}: not a list"]
    errs = [f"{path}: {len(value)} items"] if len(value) > node.get("maxItems", math.inf) else []
    if node.get("x-kubernetes-list-type") == "set" and len(set(map(repr, value))) < len(value):
        errs.append(f"{path}: duplicates in a set")
    for i, item in enumerate(value):
        errs += conforms(node.get("items") or {}, item, f"{path}[{i}]")
    return errs


def _object_errors(node: Node, value: Any, path: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{path}: not an object"]
    props = node.get("properties") or {}
    errs = [f"{path}.{k}: required" for k in node.get("required") or [] if k not in value]
    if len(value) > node.get("maxProperties", math.inf):
        errs.append(f"{path}: {len(value)} properties")
    extra = node.get("additionalProperties")
    for k, v in value.items():
        if k in props:
            errs += conforms(props[k], v, f"{path}.{k}")
        elif isinstance(extra, Mapping):
            errs += conforms(extra, v, f"{path}.{k}")
        elif props and not node.get("x-kubernetes-preserve-unknown-fields"):
            errs.append(f"{path}.{k}: unknown field")
    return errs


def with_defaults(node: Node, value: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server stores it: absent properties with a default get it."""
    props = node.get("properties") or {}
    filled = {k: copy.deepcopy(p["default"]) for k, p in props.items() if "default" in p}
    return {**{k: v for k, v in filled.items() if k not in value}, **value}
