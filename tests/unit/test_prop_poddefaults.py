"""Properties of the runner pod defaults (reconcile.poddefaults), the admin's input:

- the parser reads back exactly what an admin wrote, in every shape the settings take;
- whatever the values, it returns defaults or refuses with a ValueError that names each
  variable that cannot be used, never anything else;
- for any run placement the API server accepts and any defaults, the Job's pod gets the
  union of both (the run's own values are kept, the platform's added, the operator's labels
  win), the placement policy refuses exactly the run's changes to a platform node selector
  key, and nothing else of the Job changes: not its name, not its spec hash.

The run's placement comes from the CRD's own schema (``tests/strategies.py``), and so do
the admin's tolerations and label maps, filtered by what the operator refuses at start-up.
"""

from __future__ import annotations

import collections
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmms_operator.api import parse_spec
from lmms_operator.api.corev1 import Toleration
from lmms_operator.errors import InvalidSpec
from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile import kueue as kueue_mod
from lmms_operator.reconcile import poddefaults as pd
from lmms_operator.reconcile.placement import PlacementPolicy, check
from tests import crdschema, strategies

#: hypothesis spells out the strategies of a deep schema when a filter retries.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

SCHED = crdschema.evalrun_spec_schema()["properties"]["scheduling"]
BUILDER = strategies.Builder()
RUN = jobs.RunRef("r", "team-a", "0b8e6f5c-1111-2222-3333-444455556666")
PROPS = settings(
    derandomize=True,
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

# --- what an admin may write ------------------------------------------------------------

NAMES = st.from_regex(
    r"[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,12}[a-z0-9])?){0,2}",
    fullmatch=True,
)


def _tolerable(t: dict[str, Any]) -> bool:
    return pd.toleration_problem(Toleration.model_validate(t)) is None


TOLERATIONS = BUILDER.node(SCHED["properties"]["tolerations"]["items"], "tolerations[]").filter(
    _tolerable
)
_LABEL_MAPS = BUILDER.node(SCHED["properties"]["nodeSelector"], "nodeSelector")


def _keys_where(ok: Any) -> st.SearchStrategy[dict[str, str]]:
    """Label maps of the CRD's grammar, keeping the keys the operator takes from an admin."""
    return _LABEL_MAPS.map(
        lambda m: {k: v for k, v in m.items() if pd.label_key_problem(k) is None and ok(k)}
    )


def _selector_key(key: str) -> bool:
    try:
        pd.parse({pd.NODE_SELECTOR: json.dumps({key: ""})})
    except ValueError:
        return False
    return True


def _label_key(key: str) -> bool:
    try:
        pd.parse({pd.LABELS: json.dumps({key: ""})})
    except ValueError:
        return False
    return True


def _annotation_key(key: str) -> bool:
    try:
        pd.parse({pd.ANNOTATIONS: json.dumps({key: ""})})
    except ValueError:
        return False
    return True


SELECTORS = _keys_where(_selector_key)
LABELS = _keys_where(_label_key)
ANNOTATIONS = st.dictionaries(
    _keys_where(_annotation_key).flatmap(lambda m: st.sampled_from(list(m) or ["a"])),
    st.text(max_size=40),
    max_size=4,
)


@st.composite
def admin_values(draw: st.DrawFn) -> dict[str, Any]:
    """The admin's values as the chart has them (before JSON), each possibly unset."""
    made: dict[str, Any] = {}
    maybe = {
        pd.IMAGE_PULL_SECRETS: st.lists(
            NAMES | NAMES.map(lambda n: {"name": n}), min_size=1, max_size=4
        ),
        pd.TOLERATIONS: st.lists(TOLERATIONS, min_size=1, max_size=4),
        pd.NODE_SELECTOR: SELECTORS,
        pd.PRIORITY_CLASS_NAME: NAMES,
        pd.RUNTIME_CLASS_NAME: NAMES,
        pd.LABELS: LABELS,
        pd.ANNOTATIONS: ANNOTATIONS,
    }
    for name, values in maybe.items():
        if draw(st.booleans()):
            made[name] = draw(values)
    return made


def environment(values: dict[str, Any]) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def _once(items: list[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


@PROPS
@given(admin_values())
def test_the_parser_reads_back_what_the_admin_wrote(values: dict[str, Any]) -> None:
    got = pd.parse(environment(values))
    secrets = [
        s if isinstance(s, str) else s["name"] for s in values.get(pd.IMAGE_PULL_SECRETS, [])
    ]
    assert list(got.image_pull_secrets) == _once(secrets)
    tolerations = [Toleration.model_validate(t).to_wire() for t in values.get(pd.TOLERATIONS, [])]
    assert [t.to_wire() for t in got.tolerations] == _once(tolerations)
    assert dict(got.node_selector) == values.get(pd.NODE_SELECTOR, {})
    assert got.priority_class_name == values.get(pd.PRIORITY_CLASS_NAME)
    assert got.runtime_class_name == values.get(pd.RUNTIME_CLASS_NAME)
    assert dict(got.labels) == values.get(pd.LABELS, {})
    assert dict(got.annotations) == values.get(pd.ANNOTATIONS, {})


# --- whatever the values ------------------------------------------------------------

_JSON_TEXT = strategies._JSON.map(json.dumps)
_SHAPES = st.one_of(
    st.text(max_size=40),
    _JSON_TEXT,
    admin_values().map(lambda v: list(environment(v).values()) or [""]).flatmap(st.sampled_from),
    st.lists(_JSON_TEXT.map(json.loads), max_size=3).map(json.dumps),
    st.dictionaries(st.text(max_size=20), strategies._JSON, max_size=3).map(json.dumps),
)


@PROPS
@given(st.dictionaries(st.sampled_from(pd.VARIABLES), _SHAPES, max_size=len(pd.VARIABLES)))
def test_any_values_give_defaults_or_an_error_naming_each_unusable_variable(
    env: dict[str, str],
) -> None:
    unusable = set()
    for name, raw in env.items():
        try:
            pd.parse({name: raw})
        except ValueError:
            unusable.add(name)
    try:
        pd.parse(env)
    except ValueError as exc:
        message = str(exc)
        assert unusable, message
        assert message.startswith(tuple(unusable)), message
        assert all(name in message for name in unusable), (unusable, message)
        assert len(message) <= 600 * message.count("LMMS_RUNNER_"), message
    else:
        assert not unusable


# --- the merge --------------------------------------------------------------------------

SCHEDULING = BUILDER.node(SCHED, "spec.scheduling")
#: The labels the operator puts on its Jobs and pods.
OWN = {
    jobs.LABEL_RUN,
    jobs.LABEL_RUN_UID,
    jobs.LABEL_SPEC_HASH,
    kueue_mod.QUEUE_LABEL,
    *pd.OWN_LABELS,
}
MERGED = {
    "imagePullSecrets",
    "tolerations",
    "nodeSelector",
    "priorityClassName",
    "runtimeClassName",
}


@st.composite
def runs_and_defaults(draw: st.DrawFn) -> tuple[dict[str, Any], pd.PodDefaults]:
    """A run's scheduling and the platform's defaults, the run often repeating (or
    changing) some of the platform's node selector keys and tolerations, and often naming
    its own priority class."""
    defaults = pd.parse(environment(draw(admin_values())))
    scheduling = draw(SCHEDULING)
    selector = dict(scheduling.get("nodeSelector") or {})
    for key, value in defaults.node_selector:
        if draw(st.booleans()):
            selector[key] = value if draw(st.booleans()) else _other(value)
    if selector:
        scheduling["nodeSelector"] = dict(list(selector.items())[:64])
    repeated = [t.to_wire() for t in defaults.tolerations if draw(st.booleans())]
    tolerations = repeated + list(scheduling.get("tolerations") or [])
    if tolerations:
        scheduling["tolerations"] = tolerations[:32]
    if draw(st.booleans()):
        scheduling["priorityClassName"] = draw(NAMES)
    return scheduling, defaults


def _other(value: str) -> str:
    """Another label value."""
    return value[:-1] + ("y" if value.endswith("x") else "x") if value else "x"


def _job(spec: Any, defaults: pd.PodDefaults) -> dict[str, Any]:
    return jobs.build(RUN, spec, jobs.RunnerDefaults(pod=defaults), token="t").job


def _without_merged(job: dict[str, Any]) -> dict[str, Any]:
    job = json.loads(json.dumps(job))
    for meta in (job["metadata"], job["spec"]["template"]["metadata"]):
        meta.pop("annotations", None)
        meta["labels"] = {k: v for k, v in meta["labels"].items() if k in OWN}
    for name in MERGED:
        job["spec"]["template"]["spec"].pop(name, None)
    return job


def test_the_pod_gets_the_run_and_the_platform_and_the_policy_refuses_changed_keys() -> None:
    counts: collections.Counter[str] = collections.Counter()

    @PROPS
    @given(runs_and_defaults())
    def run(case: tuple[dict[str, Any], pd.PodDefaults]) -> None:
        counts.update(_merge_holds(*case))

    run()
    # The interesting branches are explored, not only the disjoint ones.
    for branch in ("changed key", "repeated key", "repeated toleration", "own priority"):
        assert counts[branch] >= 3, counts


def _merge_holds(scheduling: dict[str, Any], defaults: pd.PodDefaults) -> list[str]:
    """Checks the merge of one case; returns the branches it took."""
    branches: list[str] = []
    try:
        spec = parse_spec(
            {"model": {"type": "qwen2_vl"}, "tasks": ["mme"], "scheduling": scheduling}
        )
    except InvalidSpec:
        # Beyond what the schema can say (an affinity over 16 KiB): no Job to merge into.
        return ["refused"]
    platform = dict(defaults.node_selector)
    own_selector = dict(spec.scheduling.node_selector)

    # The policy refuses exactly the run's keys that change the platform's.
    policy = PlacementPolicy(node_selector=defaults.node_selector)
    refused = {p.field for p in check(spec, policy) if "LMMS_RUNNER_NODE_SELECTOR" in p.message}
    changed = {k for k, v in own_selector.items() if k in platform and platform[k] != v}
    branches += ["changed key"] * bool(changed)
    branches += ["repeated key"] * any(platform.get(k) == v for k, v in own_selector.items())
    branches += ["own priority"] * bool(spec.scheduling.priority_class_name)
    assert refused == {f"spec.scheduling.nodeSelector.{k}" for k in changed}

    bare, merged = _job(spec, pd.PodDefaults()), _job(spec, defaults)
    pod, before = merged["spec"]["template"]["spec"], bare["spec"]["template"]["spec"]

    # Nothing but the merged fields changes: the name and spec hash neither.
    assert _without_merged(merged) == _without_merged(bare)
    assert merged["metadata"]["name"] == bare["metadata"]["name"]

    # Pull secrets, runtime class: the platform's.
    assert pod.get("imagePullSecrets", []) == [{"name": n} for n in defaults.image_pull_secrets]
    assert pod.get("runtimeClassName") == defaults.runtime_class_name
    # Tolerations: the union, the run's first, each once.
    tolerations = pod.get("tolerations", [])
    expected = before.get("tolerations", []) + [t.to_wire() for t in defaults.tolerations]
    if defaults.tolerations:
        assert tolerations == _once(expected)
        branches += ["repeated toleration"] * (len(tolerations) < len(expected))
    else:
        assert tolerations == before.get("tolerations", [])
    # Node selector: the run's keys and the platform's; on a changed key (refused above),
    # the platform's value.
    assert pod.get("nodeSelector", {}) == {**own_selector, **platform}
    # Priority: the run's when it sets one.
    assert pod.get("priorityClassName") == (
        spec.scheduling.priority_class_name or defaults.priority_class_name
    )
    # Labels and annotations: the platform's, under the operator's own.
    for meta, bare_meta in (
        (merged["metadata"], bare["metadata"]),
        (merged["spec"]["template"]["metadata"], bare["spec"]["template"]["metadata"]),
    ):
        assert meta["labels"] == {**dict(defaults.labels), **bare_meta["labels"]}
        assert meta.get("annotations", {}) == dict(defaults.annotations)
    return branches
