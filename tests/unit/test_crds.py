"""The CRDs in crds/ are generated from the API models and stay in sync."""

from __future__ import annotations

from typing import Any

import pytest

from lmms_operator.api import crdgen


def test_crds_match_the_models() -> None:
    assert crdgen.main(["--check"]) == 0, "run: python -m lmms_operator.api.crdgen --write"


def _walk(schema: dict[str, Any], path: str) -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk(schema["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("name", sorted(crdgen.all_crds()))
def test_schemas_are_structural_and_described(name: str) -> None:
    crd = crdgen.all_crds()[name]
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(root["properties"]["spec"], "spec") + _walk(
        root["properties"]["status"], "status"
    ):
        assert "type" in node, f"{path}: no type"
        assert not {"$ref", "anyOf", "oneOf", "allOf"} & set(node), f"{path}: not structural"
        if not path.endswith(("[]", "{}")):
            assert node.get("description"), f"{path}: no description (kubectl explain)"
    assert version["subresources"] == {"status": {}}
    names = crd["spec"]["names"]
    assert names["categories"] == ["lmms"]


def test_evalrun_printer_columns_and_short_name() -> None:
    crd = crdgen.all_crds()["eval.lmms.dev_evalruns.yaml"]
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:4] == ["Model", "Tasks", "Phase", "Progress"]
    assert columns[-1] == "Age"
    assert crd["spec"]["names"]["shortNames"] == ["er"]
    lb = crdgen.all_crds()["eval.lmms.dev_leaderboards.yaml"]
    assert lb["spec"]["names"]["shortNames"] == ["lb"]


def test_cel_rules_cover_what_the_schema_cannot_say() -> None:
    crd = crdgen.all_crds()["eval.lmms.dev_evalruns.yaml"]
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert any("size(self.tasks) > 0" in r for r in rules)
    res_rules = [r["rule"] for r in spec["properties"]["resources"]["x-kubernetes-validations"]]
    assert any("self.nodes == 1 || self.gpus >= 1" in r for r in res_rules)
