"""Property: for any spec the API server accepts, the operator either plans a Job whose
lmms-eval command line, parsed back by lmms-eval 0.7.3's own parser, says exactly the
spec's model args and tasks (and fits the kernel's limits), or refuses the spec with
problems that name its fields; it never raises anything else (issue 30, item 7).

The specs come from the CRD's own schema (``tests/strategies.py``), so a tightened or
widened grammar is what the test explores next time. A fixed seed keeps CI repeatable;
``tests/bench/properties.py`` runs many more.
"""

from __future__ import annotations

import collections
import random
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests import crdschema, re2, roundtrip, strategies

#: hypothesis spells out the strategies of a deep schema when a filter retries.
pytestmark = pytest.mark.filterwarnings("ignore:Generating overly large repr")

SCHEMA = crdschema.evalrun_spec_schema()
#: Examples per run: the file takes well under a minute on a two-core machine.
EXAMPLES = 150
#: The slowest validate + plan + build one spec may take (seconds): "a bounded time".
SLOWEST = 5.0


def test_every_cel_rule_of_the_crd_is_known_to_the_generator() -> None:
    """A CEL rule the generator cannot apply would make it offer specs the API server
    refuses (or miss ones it accepts): add it to ``tests/crdschema.py``'s CEL table."""
    assert crdschema.unknown_cel_rules(SCHEMA) == []


def test_re2_patterns_translate_to_python_with_the_same_meaning() -> None:
    assert re2.translate(r"^[^,\x{85}\x{200b}-\x{200f}]*$") == r"^[^,\x85\u200b-\u200f]*\Z"
    assert re2.matches(r"^\p{Lu}\P{L}$", "É1") and not re2.matches(r"^\p{Lu}\P{L}$", "Éé")
    assert re2.matches(r"^[^\p{Z}\p{Cc}]+$", "a\u00e9") and not re2.matches(
        r"^[^\p{Z}]+$", "a\u3000"
    )
    assert re2.matches(r"^[[:alpha:]_]\x{1F600}$", "_\U0001f600")
    # RE2's $ is the end of the text; Python's also matches before a final newline.
    assert not re2.matches(r"^a$", "a\n")


def test_the_sampler_makes_matching_strings_up_to_the_limit() -> None:
    sampler = re2.Sampler(random.Random(7), fill=1.0)
    for node in _string_nodes(SCHEMA):
        made = sampler.string(
            node["pattern"], node.get("maxLength", 4096), node.get("minLength", 0)
        )
        assert made is not None and re2.matches(node["pattern"], made), node["pattern"]


def _string_nodes(node: object) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        own = [node] if isinstance(node.get("pattern"), str) else []
        return own + [n for v in node.values() for n in _string_nodes(v)]
    if isinstance(node, list):
        return [n for v in node for n in _string_nodes(v)]
    return []


@settings(derandomize=True, max_examples=30, deadline=None, database=None)
@given(strategies.evalrun_specs(SCHEMA))
def test_generated_specs_are_what_the_api_server_accepts(spec: dict[str, object]) -> None:
    assert crdschema.conforms(SCHEMA, spec) == []


def test_any_accepted_spec_round_trips_through_lmms_eval_and_any_other_is_refused() -> None:
    counts: collections.Counter[str] = collections.Counter()
    slowest = [0.0]

    @settings(
        derandomize=True,
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        # Near-limit specs are made from a seed and do not shrink; the assertion says
        # the field, the value and what lmms-eval parsed.
        phases=[Phase.explicit, Phase.generate],
    )
    @given(strategies.evalrun_specs(SCHEMA), st.sampled_from(["default", "open"]))
    def run(spec: dict[str, object], which: str) -> None:
        policy = roundtrip.OPEN_POLICY if which == "open" else roundtrip.DEFAULT_POLICY
        outcome = roundtrip.check(spec, policy)
        slowest[0] = max(slowest[0], outcome.seconds)
        counts["accepted" if outcome.accepted else "refused"] += 1
        for field in outcome.fields:
            counts["refused " + re.sub(r"\[\d+\]", "[]", field)] += 1

    run()
    # Both branches are explored, not only the refusal.
    # (How many of the 150 are accepted varies between 13 and 28 with what ran before in
    # the same process, for a reason not found; test_ordinary_specs_round_trip covers the
    # accepted branch whatever the sample.)
    assert counts["accepted"] >= EXAMPLES // 30, counts
    assert counts["refused"] >= EXAMPLES // 10, counts
    assert slowest[0] < SLOWEST, slowest


@pytest.mark.parametrize(
    "spec",
    [
        {"model": {"type": "qwen2_vl"}, "tasks": ["mme", "ai2d"]},
        {
            "model": {
                "type": "llava_hf",
                "pretrained": "llava-hf/llava-1.5-7b-hf",
                "revision": "a" * 40,
                "args": {"attn_implementation": "sdpa", "max_frames_num": "16"},
            },
            "tasks": ["textvqa_val"],
            "evaluation": {"limit": 10, "generation": {"temperature": 0.0}},
            "parallelism": 2,
        },
        {
            "model": {
                "type": "openai_compatible",
                "args": {"model_version": "m-1", "base_url": "http://127.0.0.1:8000/v1"},
            },
            "tasks": ["mme"],
            "customTasks": [{"configMap": "colors", "tasks": ["colors"]}],
            "cache": {"persistentVolumeClaim": "hf"},
        },
    ],
)
def test_ordinary_specs_round_trip(spec: dict[str, object]) -> None:
    outcome = roundtrip.check(spec, roundtrip.DEFAULT_POLICY)
    assert outcome.accepted, outcome.fields
