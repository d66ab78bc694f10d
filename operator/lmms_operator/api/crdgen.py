"""Generates the CRDs in ``crds/`` from the pydantic models (the single source of truth).

    python -m lmms_operator.api.crdgen --write     # regenerate crds/
    python -m lmms_operator.api.crdgen --check     # exit 1 when crds/ drifted

The output is a structural schema: no ``$ref``, no ``anyOf``, a type and a description
on every field, defaults and CEL rules (``x-kubernetes-validations``) where the models
carry them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .base import GROUP, VERSION
from .evalrun import EvalRunSpec
from .leaderboard import LeaderboardSpec, LeaderboardStatus
from .status import EvalRunStatus

REPO_ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = REPO_ROOT / "crds"
#: The Helm chart templates its CRDs from its own copy (a chart cannot read outside itself).
CHART_CRD_DIR = REPO_ROOT / "helm" / "lmms-operator" / "files" / "crds"

_COPY = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "enum",
    "format",
)


class SchemaError(ValueError):
    pass


def structural(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    factories = _factory_defaults(model)
    return _convert(raw, defs, path=model.__name__, factories=factories)


def _factory_defaults(model: type[BaseModel]) -> dict[str, dict[str, Any]]:
    """Defaults of fields with a default_factory, which JSON schema leaves out.

    Objects default to their fully defaulted form (the API server validates a default
    against CEL rules before nested defaults apply), lists and maps to empty ones, so
    CEL rules may use ``size()`` without ``has()``.
    """
    result: dict[str, dict[str, Any]] = {}

    def visit(m: type[BaseModel]) -> None:
        if m.__name__ in result:
            return
        per_field: dict[str, Any] = {}
        result[m.__name__] = per_field
        for name, info in m.model_fields.items():
            alias = info.alias or name
            if info.default_factory is not None:
                value = info.default_factory()  # type: ignore[call-arg]
                if isinstance(value, BaseModel):
                    value = value.model_dump(by_alias=True, exclude_none=True, mode="json")
                per_field[alias] = value
            for sub in _submodels(info):
                visit(sub)

    visit(model)
    return result


def _submodels(info: FieldInfo) -> list[type[BaseModel]]:
    found: list[type[BaseModel]] = []

    def walk(tp: Any) -> None:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            found.append(tp)
        for arg in getattr(tp, "__args__", ()) or ():
            walk(arg)

    walk(info.annotation)
    return found


def _copy_bounds(node: dict[str, Any], out: dict[str, Any]) -> None:
    """The bounds and formats of ``node``, in OpenAPI v3.0's spelling."""
    # A bound pydantic could not attach to its type (a validator wraps it) keeps its name.
    for short, key in (
        ("ge", "minimum"),
        ("le", "maximum"),
        ("gt", "exclusiveMinimum"),
        ("lt", "exclusiveMaximum"),
    ):
        if short in node and key not in node:
            out[key] = node[short]
    for key in _COPY:
        if key in node:
            out[key] = node[key]
    # JSON Schema 2020-12 (pydantic) -> OpenAPI v3.0 (Kubernetes): exclusive bounds are flags.
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if flag in out:
            out[bound] = out[flag]
            out[flag] = True


def _convert(
    node: dict[str, Any],
    defs: dict[str, Any],
    path: str,
    factories: dict[str, dict[str, Any]],
    title: str | None = None,
) -> dict[str, Any]:
    node = dict(node)
    if "$ref" in node:
        ref_name = node.pop("$ref").split("/")[-1]
        target = dict(defs[ref_name])
        target.update({k: v for k, v in node.items() if k in ("description", "default")})
        return _convert(target, defs, path, factories, title=ref_name)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in node:
            options = [o for o in node.pop(combinator) if o.get("type") != "null"]
            if len(options) != 1:
                raise SchemaError(f"{path}: unions are not structural ({options})")
            merged = dict(options[0])
            merged.update(node)
            if merged.get("default", ...) is None:
                merged.pop("default")
            return _convert(merged, defs, path, factories, title=title)
    title = title or node.get("title")
    out: dict[str, Any] = {}
    kind = node.get("type")
    if kind is None and "enum" in node:
        kind = "string"
    if kind is None and node.get("x-kubernetes-preserve-unknown-fields"):
        kind = "object"
    if kind is None and "const" in node:
        kind, node["enum"] = "string", [node["const"]]
    if kind is None:
        raise SchemaError(f"{path}: no type")
    out["type"] = kind
    if "description" in node:
        out["description"] = " ".join(str(node["description"]).split())
    _copy_bounds(node, out)
    if "default" in node and node["default"] is not None:
        out["default"] = node["default"]
    for key, value in node.items():
        if key.startswith("x-kubernetes-"):
            out[key] = value
    if kind == "object":
        props = node.get("properties")
        if props:
            model_factories = factories.get(title or "", {})
            out["properties"] = {}
            for name, sub in props.items():
                child = _convert(sub, defs, f"{path}.{name}", factories)
                if name in model_factories and "default" not in child:
                    child["default"] = model_factories[name]
                out["properties"][name] = child
            if node.get("required"):
                out["required"] = list(node["required"])
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _convert(extra, defs, f"{path}[*]", factories)
        elif extra is True or (isinstance(extra, dict) and not extra):
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif kind == "array":
        items = dict(node.get("items") or {})
        items_extra = {}
        if isinstance(out.get("items"), dict):
            items_extra = out.pop("items")
        items.update(items_extra)
        out["items"] = _convert(items or {"type": "string"}, defs, f"{path}[]", factories)
    return out


def _printer_columns_evalrun() -> list[dict[str, Any]]:
    return [
        # The model's identity and the tasks as the operator wrote them in the status (a
        # column reads one field, and the spec names neither in one).
        {"name": "Model", "type": "string", "jsonPath": ".status.model"},
        {"name": "Tasks", "type": "string", "jsonPath": ".status.tasks"},
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Progress", "type": "string", "jsonPath": ".status.summary"},
        {"name": "Score", "type": "string", "jsonPath": ".status.score"},
        {"name": "Duration", "type": "string", "jsonPath": ".status.duration"},
        {"name": "Reason", "type": "string", "jsonPath": ".status.reason", "priority": 1},
        {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
        {"name": "Backend", "type": "string", "jsonPath": ".spec.model.type", "priority": 1},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def _printer_columns_leaderboard() -> list[dict[str, Any]]:
    return [
        {"name": "Entries", "type": "integer", "jsonPath": ".status.entries"},
        {"name": "Models", "type": "integer", "jsonPath": ".status.models"},
        {"name": "Tasks", "type": "integer", "jsonPath": ".status.tasks"},
        {"name": "Updated", "type": "date", "jsonPath": ".status.lastUpdate"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def crd(
    kind: str,
    plural: str,
    short: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    description: str,
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    spec_schema = structural(spec)
    status_schema = structural(status)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "lmms-operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["lmms"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string", "description": "API version."},
                                "kind": {"type": "string", "description": "Kind."},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def all_crds() -> dict[str, dict[str, Any]]:
    return {
        f"{GROUP}_evalruns.yaml": crd(
            "EvalRun",
            "evalruns",
            "er",
            EvalRunSpec,
            EvalRunStatus,
            "An evaluation of one model on lmms-eval tasks, run as a GPU Job by the lmms "
            "operator; status shows live progress and the scores.",
            _printer_columns_evalrun(),
        ),
        f"{GROUP}_leaderboards.yaml": crd(
            "Leaderboard",
            "leaderboards",
            "lb",
            LeaderboardSpec,
            LeaderboardStatus,
            "A ranked table of the scores that EvalRuns publish, stored in ConfigMaps and "
            "optionally S3.",
            _printer_columns_leaderboard(),
        ),
    }


class _NoAliases(yaml.SafeDumper):
    """Writes a repeated part of the schema out each time: no YAML anchors (&id001)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def render(obj: dict[str, Any]) -> str:
    header = "# Generated by `python -m lmms_operator.api.crdgen --write`. Do not edit.\n"
    return header + yaml.dump(obj, Dumper=_NoAliases, sort_keys=False, width=100)


DOCS = REPO_ROOT / "docs" / "crd-reference.md"


def _type(schema: dict[str, Any]) -> str:
    t = schema.get("type")
    if t == "array":
        return f"[]{_type(schema.get('items') or {})}"
    if t == "object" and "additionalProperties" in schema and not schema.get("properties"):
        return f"map[string]{_type(schema['additionalProperties'] or {})}"
    if schema.get("x-kubernetes-int-or-string"):
        return "int-or-string"
    if schema.get("x-kubernetes-preserve-unknown-fields") and not t:
        return "any"
    return str(t or "object")


def _rules(schema: dict[str, Any]) -> str:
    out = []
    if "enum" in schema:
        out.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    for key, label in (
        ("minimum", ">="),
        ("maximum", "<="),
        ("minLength", "length >="),
        ("maxLength", "length <="),
        ("minItems", "items >="),
        ("maxItems", "items <="),
    ):
        if key in schema:
            out.append(f"{label} {schema[key]}")
    if "pattern" in schema:
        out.append(f"pattern `{schema['pattern']}`")
    for rule in schema.get("x-kubernetes-validations") or []:
        out.append(str(rule.get("message") or rule["rule"]))
    return "; ".join(out).replace("|", "\\|")


def _rows(schema: dict[str, Any], path: str, required: bool) -> list[str]:
    default = f"`{json.dumps(schema['default'])}`" if "default" in schema else ""
    desc = " ".join(str(schema.get("description") or "").split()).replace("|", "\\|")
    rows = [
        f"| `{path}` | {_type(schema)} | {'yes' if required else ''} | {default} | {desc} "
        f"| {_rules(schema)} |"
    ]
    node = schema.get("items") if schema.get("type") == "array" else schema
    node = node or {}
    needed = set(node.get("required") or [])
    suffix = "[]" if schema.get("type") == "array" else ""
    for name, child in (node.get("properties") or {}).items():
        rows += _rows(child, f"{path}{suffix}.{name}", name in needed)
    return rows


def reference() -> str:
    """docs/crd-reference.md: every field of every CRD, from the same schemas."""
    lines = [
        "# CRD reference",
        "",
        "Generated from the API models by `python -m lmms_operator.api.crdgen --write`; "
        "do not edit. Each table lists a field's path, type, whether it is required, its "
        "default, what it means, and what the API server checks.",
    ]
    for obj in all_crds().values():
        names = obj["spec"]["names"]
        version = obj["spec"]["versions"][0]
        schema = version["schema"]["openAPIV3Schema"]
        lines += [
            "",
            f"## {names['kind']} (`{obj['spec']['group']}/{version['name']}`)",
            "",
            str(schema.get("description") or ""),
            "",
            f"Short names: {', '.join(names.get('shortNames') or [])}; scope: "
            f"{obj['spec']['scope']}; `kubectl get {names['plural']}` columns: "
            + ", ".join(c["name"] for c in version.get("additionalPrinterColumns") or [])
            + ".",
        ]
        for part in ("spec", "status"):
            sub = schema["properties"][part]
            lines += [
                "",
                f"### {part}",
                "",
                "| field | type | required | default | description | validation |",
                "|---|---|---|---|---|---|",
            ]
            needed = set(sub.get("required") or [])
            for name, child in (sub.get("properties") or {}).items():
                lines += _rows(child, f"{part}.{name}", name in needed)
            if sub.get("x-kubernetes-validations"):
                lines += ["", f"Rules on `{part}`: {_rules(sub)}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lmms_operator.api.crdgen")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true")
    group.add_argument("--check", action="store_true")
    parser.add_argument("--dir", type=Path, action="append", help="default: crds/ and the chart's")
    args = parser.parse_args(argv)
    drift = []
    for directory in args.dir or [CRD_DIR, CHART_CRD_DIR]:
        for name, obj in all_crds().items():
            path = directory / name
            text = render(obj)
            if args.write:
                directory.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {path}")
            elif not path.exists() or path.read_text() != text:
                drift.append(str(path))
    if not args.dir:
        text = reference()
        if args.write:
            DOCS.write_text(text)
            print(f"wrote {DOCS}")
        elif not DOCS.exists() or DOCS.read_text() != text:
            drift.append(str(DOCS))
    if drift:
        print("CRDs drifted from the API models; run: python -m lmms_operator.api.crdgen --write")
        print("\n".join(drift))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
