"""The admin's placement policy (reconcile.placement) and the typed core/v1 placement
types it reads: what a tenant may not choose, and that the Job's pod gets exactly the
placement the tenant wrote."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmms_operator.api import parse_spec
from lmms_operator.config import Settings
from lmms_operator.errors import InvalidSpec
from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile.placement import PlacementPolicy, check

DEFAULT = PlacementPolicy()
RUN = jobs.RunRef(name="r", namespace="team-a", uid="u1")


def spec(**scheduling: Any) -> Any:
    return parse_spec({"model": {"type": "qwen2_vl"}, "tasks": ["mme"], "scheduling": scheduling})


def fields(scheduling: dict[str, Any], policy: PlacementPolicy = DEFAULT) -> list[str]:
    return [p.field for p in check(spec(**scheduling), policy, namespace="team-a")]


def pod_term(**over: Any) -> dict[str, Any]:
    return {"topologyKey": "kubernetes.io/hostname", **over}


def anti(*terms: dict[str, Any]) -> dict[str, Any]:
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": list(terms)}}


def test_the_defaults_allow_ordinary_placement() -> None:
    ok = {
        "nodeSelector": {"nvidia.com/gpu.product": "H100", "topology.kubernetes.io/zone": "a"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": anti(pod_term(labelSelector={"matchLabels": {"app": "x"}}))
        | {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["a"]}]}
                    ]
                }
            }
        },
    }
    assert fields(ok) == []


def test_priority_classes_only_from_the_admins_list() -> None:
    assert fields({"priorityClassName": "system-cluster-critical"}) == [
        "spec.scheduling.priorityClassName"
    ]
    allowed = PlacementPolicy(priority_classes=frozenset({"batch-low"}))
    assert fields({"priorityClassName": "batch-low"}, allowed) == []
    assert fields({"priorityClassName": "batch-high"}, allowed) == [
        "spec.scheduling.priorityClassName"
    ]
    (p,) = check(spec(priorityClassName="x"), DEFAULT)
    assert "leave it unset" in p.message


@pytest.mark.parametrize(
    "key",
    [
        "node-role.kubernetes.io/control-plane",
        "node-role.kubernetes.io/master",
        "node-role.kubernetes.io",
        "node.kubernetes.io/unreachable",
        "node.kubernetes.io/not-ready",
        "node.cloudprovider.kubernetes.io/uninitialized",
        "kubernetes.io/anything",
        "k8s.io/x",
    ],
)
def test_kubernetes_taints_are_never_tolerated(key: str) -> None:
    t = {"key": key, "operator": "Exists"}
    assert fields({"tolerations": [t]}) == ["spec.scheduling.tolerations[0].key"]
    everything = PlacementPolicy(toleration_keys=("*",))
    assert fields({"tolerations": [t]}, everything) == ["spec.scheduling.tolerations[0].key"]


def test_a_keyless_toleration_is_refused() -> None:
    assert fields({"tolerations": [{"operator": "Exists"}]}) == [
        "spec.scheduling.tolerations[0].key"
    ]


def test_admins_narrow_toleration_keys_by_name_or_prefix() -> None:
    policy = PlacementPolicy(toleration_keys=("nvidia.com/gpu", "lmms.dev/*"))
    ok = [{"key": "nvidia.com/gpu", "operator": "Exists"}, {"key": "lmms.dev/x"}]
    assert fields({"tolerations": ok}, policy) == []
    bad = [{"key": "nvidia.com/gpu2", "operator": "Exists"}, {"key": "lmms.devx"}]
    assert fields({"tolerations": bad}, policy) == [
        "spec.scheduling.tolerations[0].key",
        "spec.scheduling.tolerations[1].key",
    ]
    assert fields({"tolerations": ok}, PlacementPolicy(toleration_keys=())) != []


def test_a_domain_suffix_is_not_the_domain() -> None:
    # kueue.x-k8s.io is not in k8s.io; mykubernetes.io is not in kubernetes.io.
    tolerations = [{"key": "kueue.x-k8s.io/q"}, {"key": "mykubernetes.io/x"}]
    assert fields({"tolerations": tolerations}) == []


@pytest.mark.parametrize(
    "term, field",
    [
        (pod_term(namespaceSelector={}), "namespaceSelector"),
        (pod_term(namespaceSelector={"matchLabels": {"team": "b"}}), "namespaceSelector"),
        (pod_term(namespaces=["team-b"]), "namespaces[0]"),
    ],
)
def test_affinity_terms_stay_in_the_runs_namespace(term: dict[str, Any], field: str) -> None:
    path = "spec.scheduling.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    assert fields({"affinity": anti(term)}) == [f"{path}[0].{field}"]
    weighted = {
        "podAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 5, "podAffinityTerm": term}
            ]
        }
    }
    (got,) = fields({"affinity": weighted})
    assert got.endswith(f"[0].podAffinityTerm.{field}")
    assert fields({"affinity": anti(term)}, PlacementPolicy(cross_namespace_affinity=True)) == []


def test_naming_the_runs_own_namespace_is_allowed_when_known() -> None:
    assert fields({"affinity": anti(pod_term(namespaces=["team-a"]))}) == []
    found = check(spec(affinity=anti(pod_term(namespaces=["team-a"]))), DEFAULT)
    assert [p.field[-13:] for p in found] == ["namespaces[0]"]


def test_no_placement_by_node_role() -> None:
    assert fields({"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}) == [
        "spec.scheduling.nodeSelector.node-role.kubernetes.io/control-plane"
    ]
    pref = {
        "nodeAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 1,
                    "preference": {
                        "matchExpressions": [
                            {"key": "node-role.kubernetes.io/master", "operator": "Exists"}
                        ]
                    },
                }
            ]
        }
    }
    (got,) = fields({"affinity": pref})
    assert got.endswith("[0].preference.matchExpressions[0].key")


def test_the_schema_bounds_what_it_used_to_pass_through() -> None:
    deep: dict[str, Any] = {}
    for _ in range(100):
        deep = {"x": deep}
    for bad in (
        {"affinity": {"nodeAffinity": deep}},
        {"tolerations": [{"key": "k", "extra": deep}]},
        {"tolerations": [{"key": "k" * 400}]},
        {"affinity": anti(*[pod_term()] * 33)},
        {"nodeSelector": {"bad key": "v"}},
    ):
        with pytest.raises(InvalidSpec) as exc:
            spec(**bad)
        assert all(p.field.startswith("spec.scheduling.") for p in exc.value.problems)
    # 17 node terms and 17 pod terms: each list fits, the total does not.
    node: dict[str, Any] = {"nodeSelectorTerms": [{"matchFields": []}] * 17}
    many = anti(*[pod_term()] * 17) | {
        "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": node}
    }
    with pytest.raises(InvalidSpec) as exc:
        spec(affinity=many)
    assert [p.field for p in exc.value.problems] == ["spec.scheduling.affinity"]


def test_the_pod_gets_the_placement_as_written_and_the_spec_hash_is_unchanged() -> None:
    scheduling = {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "affinity": anti(pod_term(labelSelector={"matchLabels": {"app": "x"}})),
    }
    parsed = spec(**scheduling)
    pod = jobs.build(RUN, parsed, Settings().runner, token="t")
    pod_spec = pod.job["spec"]["template"]["spec"]
    assert pod_spec["tolerations"] == scheduling["tolerations"]
    assert pod_spec["affinity"] == scheduling["affinity"]
    assert (
        "affinity"
        not in jobs.build(RUN, spec(), Settings().runner, token="t").job["spec"]["template"]["spec"]
    )
    # The hash of a spec written before the typed models (affinity {}, plain dicts).
    assert (
        parsed.model_dump(mode="json", by_alias=True)["scheduling"]["affinity"]
        == (scheduling["affinity"])
    )
    assert spec().model_dump(mode="json", by_alias=True)["scheduling"]["affinity"] == {}


# -- property-based: any tolerations and affinity the schema admits -----------------------
_DOMAINS = st.sampled_from(
    [
        "",
        "nvidia.com/",
        "node-role.kubernetes.io/",
        "node.kubernetes.io/",
        "kubernetes.io/",
        "a.k8s.io/",
        "x-k8s.io/",
        "lmms.dev/",
    ]
)
_NAMES = st.from_regex(r"\A[a-z][a-z0-9]{0,8}\Z")
_KEYS = st.builds(lambda d, n: d + n, _DOMAINS, _NAMES) | st.sampled_from(
    ["node-role.kubernetes.io", "k8s.io"]
)
_TOLERATIONS = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "key": _KEYS,
            "operator": st.sampled_from(["Exists", "Equal"]),
            "effect": st.sampled_from(["NoSchedule", "NoExecute"]),
        },
    ),
    max_size=4,
)
_TERMS = st.lists(
    st.fixed_dictionaries(
        {"topologyKey": _KEYS},
        optional={
            "namespaces": st.lists(st.sampled_from(["team-a", "team-b"]), max_size=2),
            "namespaceSelector": st.just({}) | st.just({"matchLabels": {"a": "b"}}),
        },
    ),
    max_size=3,
)
_POLICIES = st.builds(
    PlacementPolicy,
    priority_classes=st.just(frozenset()),
    toleration_keys=st.none() | st.just(("nvidia.com/*", "lmms.dev/*")),
    cross_namespace_affinity=st.booleans(),
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(tolerations=_TOLERATIONS, terms=_TERMS, policy=_POLICIES)
def test_every_refusal_names_its_field_and_nothing_reserved_gets_through(
    tolerations: list[dict[str, Any]], terms: list[dict[str, Any]], policy: PlacementPolicy
) -> None:
    sched = {"tolerations": tolerations, "affinity": anti(*terms) if terms else {}}
    parsed = spec(**sched)
    refused = {p.field for p in check(parsed, policy, namespace="team-a")}
    for i, t in enumerate(tolerations):
        key = t.get("key", "")
        reserved = (
            key.split("/")[0].endswith(("kubernetes.io", ".k8s.io"))
            or key.split("/")[0] == "k8s.io"
        )
        narrowed = policy.toleration_keys is not None and not key.startswith(
            ("nvidia.com/", "lmms.dev/")
        )
        assert (f"spec.scheduling.tolerations[{i}].key" in refused) == (
            not key or reserved or narrowed
        ), (t, refused)
    path = "spec.scheduling.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution"
    for i, term in enumerate(terms):
        foreign = "namespaceSelector" in term or any(
            n != "team-a" for n in term.get("namespaces", [])
        )
        flagged = any(f.startswith(f"{path}[{i}].") for f in refused)
        assert flagged == (foreign and not policy.cross_namespace_affinity), (term, refused)
    # What is left passes to the pod unchanged.
    pod = jobs.build(RUN, parsed, Settings().runner, token="t").job["spec"]["template"]["spec"]
    assert pod.get("tolerations", []) == tolerations
    assert pod.get("affinity", {}) == sched["affinity"]


def test_settings_read_the_placement_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings.from_env().placement == PlacementPolicy()
    monkeypatch.setenv("LMMS_ALLOWED_PRIORITY_CLASSES", "low, batch")
    monkeypatch.setenv("LMMS_ALLOWED_TOLERATION_KEYS", "nvidia.com/gpu,lmms.dev/*")
    monkeypatch.setenv("LMMS_ALLOW_CROSS_NAMESPACE_AFFINITY", "true")
    assert Settings.from_env().placement == PlacementPolicy(
        priority_classes=frozenset({"low", "batch"}),
        toleration_keys=("nvidia.com/gpu", "lmms.dev/*"),
        cross_namespace_affinity=True,
    )
    monkeypatch.setenv("LMMS_ALLOWED_TOLERATION_KEYS", "")
    assert Settings.from_env().placement.toleration_keys == ()
    monkeypatch.setenv("LMMS_ALLOW_CROSS_NAMESPACE_AFFINITY", "maybe")
    with pytest.raises(ValueError, match="LMMS_ALLOW_CROSS_NAMESPACE_AFFINITY"):
        Settings.from_env()
