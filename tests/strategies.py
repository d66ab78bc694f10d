"""EvalRun specs the API server accepts, generated from the CRD's openAPIV3Schema.

The strategy walks the generated CRD (``lmms_operator.api.crdgen.all_crds()``), so it
follows whatever the schema says today: objects (required and optional properties, the
defaults the API server fills in, ``additionalProperties`` up to ``maxProperties``),
arrays (``maxItems``; ``x-kubernetes-list-type: set`` items unique), strings (``pattern``
through ``st.from_regex`` after ``re2.translate``, ``minLength``/``maxLength``, ``enum``),
integers and numbers (bounds, exclusive ones included) and booleans. Objects kept whole
(``x-kubernetes-preserve-unknown-fields`` without properties) get small JSON objects.

CEL rules (``x-kubernetes-validations``) cannot be evaluated here; the ones the CRD has
are applied as filters (``tests.crdschema.CEL``). ``unknown_cel_rules`` there lists any
rule the generator does not know, so that a new rule is noticed (the property test says so).

Values are biased towards the interesting (``hints()``): known backends and tasks (so that
many specs pass validation), lmms-eval's listing words, numbers lmms-eval converts, Unicode
lookalikes of ``,`` and ``=``, quotes, brackets and spaces; every hint still has to satisfy
the schema, so a tightened grammar drops the hints it refuses. About one value in four
is near its limits (``Values``: the longest strings, the most items), made from a seeded
``random.Random`` because hypothesis keeps its own draws small.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from hypothesis import strategies as st

from lmms_operator import catalogue, presets
from lmms_operator.reconcile import validate
from tests import re2
from tests.crdschema import Node, cel_ok, conforms, evalrun_spec_schema, key_pattern, with_defaults

Hints = Mapping[str, Sequence[Sequence[Any]]]

INT64 = 2**63 - 1


# --- hypothesis strategies -------------------------------------------------------------

_JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**31), 2**31) | st.text(max_size=12)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3)
    ),
    max_leaves=8,
)
#: How many items or properties an ordinary (not near-limit) value has at most.
SMALL = 6
#: Characters one near-limit value may hold in all (the spec's largest lists reach about
#: 450,000: 20 custom-task sources of 100 names of 200 characters, and 200 tasks).
BUDGET = 600_000


class Builder:
    """A hypothesis strategy for each schema node; ``hints`` adds pools of values for
    paths (``spec.tasks[]``; ``spec.model.args{}`` for keys, ``.*`` for values)."""

    def __init__(self, hints: Hints | None = None) -> None:
        self.hints = hints or {}

    def node(self, node: Node, path: str) -> st.SearchStrategy[Any]:
        base = self._base(node, path)
        hinted = self._hinted(node, path)
        # Hints, where there are any, are most of the draws.
        branches = [base] if hinted else [base, base, base]
        if self._sized(node, path):
            branches.append(self.near_limit(node, path))
        branches += hinted
        made = st.one_of(branches).filter(lambda v: cel_ok(node, v))
        # A short repr: hypothesis spells a strategy out whenever a filter retries.
        return st.deferred(lambda: made)

    @staticmethod
    def _sized(node: Node, path: str) -> bool:
        """Nodes offered near their limits: strings, and lists and maps of scalars; lists
        of objects only at the top of the spec (nested ones would multiply)."""
        kind = node.get("type")
        if "enum" in node or node.get("x-kubernetes-preserve-unknown-fields"):
            return False
        inner = node.get("items") if kind == "array" else node.get("additionalProperties")
        if kind == "string":
            return True
        if kind not in ("array", "object") or not isinstance(inner, Mapping):
            return False
        return inner.get("type") not in ("array", "object") or path.count(".") <= 1

    def near_limit(self, node: Node, path: str) -> st.SearchStrategy[Any]:
        seeds = st.integers(0, 2**32 - 1)
        made = seeds.map(lambda s: Values(random.Random(s), self.hints).value(node, path, True))
        return made.filter(lambda v: v is not None and not conforms(node, v, path))

    def _hinted(self, node: Node, path: str) -> list[st.SearchStrategy[Any]]:
        pools = [
            [v for v in pool if not conforms(node, v, path)] for pool in self.hints.get(path, ())
        ]
        return [_pick(pool) for pool in pools if pool]

    def _base(self, node: Node, path: str) -> st.SearchStrategy[Any]:
        kind = node.get("type")
        if "enum" in node:
            return st.sampled_from(list(node["enum"]))
        if kind == "string":
            return self._string(node)
        if kind == "integer":
            return st.integers(_lower(node, -INT64, 1), _upper(node, INT64, 1))
        if kind == "number":
            lo, hi = node.get("minimum"), node.get("maximum")
            floats = st.floats(
                lo,
                hi,
                exclude_min=node.get("exclusiveMinimum") is True,
                exclude_max=node.get("exclusiveMaximum") is True,
                allow_nan=False,
                allow_infinity=False,
            )
            return floats | st.integers(_lower(node, -(2**53), 1), _upper(node, 2**53, 1))
        if kind == "boolean":
            return st.booleans()
        if kind == "array":
            return self._array(node, path)
        if kind == "object":
            return self._object(node, path)
        raise ValueError(f"{path}: schema type {kind!r} is not generated")

    def _string(self, node: Node) -> st.SearchStrategy[str]:
        lo, hi = node.get("minLength", 0), node.get("maxLength", 4096)
        if "pattern" in node:
            return _regex(node["pattern"], lo, hi)
        return st.text(st.characters(codec="utf-8"), min_size=lo, max_size=min(hi, 64))

    def _array(self, node: Node, path: str) -> st.SearchStrategy[list[Any]]:
        items = self.node(node.get("items") or {}, f"{path}[]")
        unique = node.get("x-kubernetes-list-type") == "set"
        size = min(node.get("maxItems", SMALL), SMALL)
        return st.lists(items, max_size=size, unique_by=repr if unique else None)

    def _object(self, node: Node, path: str) -> st.SearchStrategy[dict[str, Any]]:
        props = node.get("properties")
        if props:
            required = set(node.get("required") or ())
            made = st.fixed_dictionaries(
                {k: self.node(v, f"{path}.{k}") for k, v in props.items() if k in required},
                optional={
                    k: self.node(v, f"{path}.{k}") for k, v in props.items() if k not in required
                },
            )
            return made.map(lambda d: with_defaults(node, d))
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping):
            keys = self._keys(node, path)
            size = min(node.get("maxProperties", SMALL), SMALL)
            return st.dictionaries(keys, self.node(extra, f"{path}.*"), max_size=size)
        return st.dictionaries(st.text(max_size=12), _JSON, max_size=3)

    def _keys(self, node: Node, path: str) -> st.SearchStrategy[str]:
        rule = key_pattern(node)
        if rule is None:
            return st.text(min_size=1, max_size=40)
        size, pattern = rule
        base = _regex(pattern, 0, size)
        key_node = {"type": "string", "maxLength": size, "pattern": pattern}
        return st.one_of([base, base, *self._hinted(key_node, f"{path}{{}}")])


@functools.cache
def _regex(pattern: str, lo: int, hi: int) -> st.SearchStrategy[str]:
    """``from_regex`` over the translated pattern, of ``lo`` to ``hi`` characters, built
    once (hypothesis rebuilds a regex strategy for each length filter, and a class of
    Unicode categories takes it a second)."""
    lazy = st.from_regex(re2.compile_re2(pattern), fullmatch=True)
    # The strategy itself, not a lazy wrapper that hypothesis would build again.
    made = getattr(lazy, "wrapped_strategy", lazy).filter(lambda s: lo <= len(s) <= hi)
    return st.deferred(lambda: made)


def _pick(pool: Sequence[Any]) -> st.SearchStrategy[Any]:
    """One of ``pool`` (``sampled_from`` would spell the whole pool in its repr)."""
    return st.integers(0, len(pool) - 1).map(lambda i: pool[i])


def _lower(node: Node, default: int, step: int) -> int:
    lo = node.get("minimum")
    if lo is None:
        return default
    return int(math.floor(lo) + step if node.get("exclusiveMinimum") is True else math.ceil(lo))


def _upper(node: Node, default: int, step: int) -> int:
    hi = node.get("maximum")
    if hi is None:
        return default
    return int(math.ceil(hi) - step if node.get("exclusiveMaximum") is True else math.floor(hi))


class Values:
    """Schema values from a seeded ``random.Random``; ``big``: near the limits (the
    longest strings, the most items), each child near its limits half the time."""

    def __init__(
        self, rng: random.Random, hints: Hints | None = None, budget: int = BUDGET
    ) -> None:
        self.rng, self.hints, self.left = rng, hints or {}, budget

    def value(self, node: Node, path: str, big: bool) -> Any:
        for _ in range(6):
            made = self._make(node, path, big)
            if made is not None and cel_ok(node, made):
                return made
        return None

    def _hint(self, node: Node, path: str) -> Any:
        pools = [p for p in self.hints.get(path, ()) if p]
        if pools and self.rng.random() < 0.75:
            value = self.rng.choice(self.rng.choice(pools))
            if not conforms(node, value, path):
                return value
        return None

    def _make(self, node: Node, path: str, big: bool) -> Any:
        kind, rng = node.get("type"), self.rng
        if "enum" in node:
            return rng.choice(list(node["enum"]))
        if (hinted := self._hint(node, path)) is not None:
            return hinted
        if kind == "string":
            return self._string(node, big)
        if kind in ("integer", "number"):
            lo, hi = _lower(node, -(2**31), 1), _upper(node, 2**31, 1)
            return hi if big and rng.random() < 0.5 else rng.randint(lo, hi)
        if kind == "boolean":
            return rng.random() < 0.5
        if kind == "array":
            return self._array(node, path, big)
        if kind == "object":
            return self._object(node, path, big)
        raise ValueError(f"{path}: schema type {kind!r} is not generated")

    def _string(self, node: Node, big: bool) -> str | None:
        lo, hi = node.get("minLength", 0), node.get("maxLength", 4096)
        small = self.rng.randint(lo, max(lo, min(hi, 40)))
        size = hi if big and self.left >= hi else small
        if "pattern" in node:
            fill = 1.0 if big else self.rng.choice([0.5, 0.8, 0.95])
            made = re2.Sampler(self.rng, fill).string(node["pattern"], size, lo)
        else:
            made = "".join(self.rng.choices(re2.ALPHABET, k=size))
        self.left -= len(made or "")
        return made

    def _child_big(self, big: bool) -> bool:
        return big and self.left > 0 and self.rng.random() < 0.5

    def _array(self, node: Node, path: str, big: bool) -> list[Any]:
        cap = node.get("maxItems", SMALL)
        count = cap if big else self.rng.randint(0, min(cap, SMALL))
        items: list[Any] = []
        seen: set[str] = set()
        unique = node.get("x-kubernetes-list-type") == "set"
        for _ in range(count * 2):
            if len(items) == count or self.left <= 0:
                break
            item = self.value(node.get("items") or {}, f"{path}[]", self._child_big(big))
            if item is None or (unique and repr(item) in seen):
                continue
            seen.add(repr(item))
            items.append(item)
        return items

    def _object(self, node: Node, path: str, big: bool) -> dict[str, Any] | None:
        props = node.get("properties")
        if props:
            required = set(node.get("required") or ())
            out: dict[str, Any] = {}
            for k, child in props.items():
                if k in required or self.rng.random() < (0.8 if big else 0.5):
                    made = self.value(child, f"{path}.{k}", self._child_big(big))
                    if made is None and k in required:
                        return None
                    if made is not None:
                        out[k] = made
            return with_defaults(node, out)
        extra = node.get("additionalProperties")
        if not isinstance(extra, Mapping):
            return {}
        cap = node.get("maxProperties", SMALL)
        count = cap if big else self.rng.randint(0, min(cap, SMALL))
        rule = key_pattern(node) or (40, r"^[A-Za-z_][A-Za-z0-9_]*$")
        key_node = {"type": "string", "maxLength": rule[0], "pattern": rule[1]}
        made_dict: dict[str, Any] = {}
        for _ in range(count):
            if self.left <= 0:
                break
            key = self._hint(key_node, f"{path}{{}}") or re2.Sampler(self.rng, 0.9).string(
                rule[1], rule[0], 1
            )
            made = self.value(extra, f"{path}.*", self._child_big(big))
            if key is not None and made is not None:
                made_dict[key] = made
        return made_dict


# --- the interesting values ------------------------------------------------------------

# fmt: off
#: Model-args values: what lmms-eval converts (booleans, numbers, NaN), digits that are
#: not ASCII, lookalikes of "," and "=", quotes, brackets (lmms-eval's splitter counts
#: them), spaces at either end (it strips), shell syntax, option-like words.
VALUES = (
    "true", "True", "FALSE", "1", "0", "007", "-1", "1e5", "1_000", " 1", "nan", "NaN", "inf",
    "-Infinity", "\u00b2", "\u00bd", "\u0663", "\u4e94", "\u2460", "x ", " x", "x\u3000",
    "\u00a0", "x\u2007", "a b", "{", "}", "[", "]", "{a:b}", "[1;2]", "(x)", "x\\", "\\",
    "bfloat16", "auto", "cuda:0", "flash_attention_2", "${HOME}", "$(id)", "`id`", "--tasks",
    "-h", "a;b", "x\uff0cy", "a\uff1db", "\u201cq\u201d", "\u2018q\u2019", "q\uff02", "",
    "\U0001f600", "e\u0301", "\ufb01", "K\u212a", "list",
)
#: Model-args keys: the operator's own, secret-looking ones, lmms-eval's common ones.
KEYS = (
    "trust_remote_code", "device_map", "max_pixels", "conv_template", "model_name",
    "attn_implementation", "torch_dtype", "dtype", "use_flash_attention_2", "max_frames_num",
    "device", "batch_size", "pretrained", "revision", "Pretrained", "api_key", "hf_token",
    "model_args", "tasks", "_", "a" * 100, "x" * 101, "mm_spatial_pool_mode",
)
#: Custom-task names: lmms-eval's listing words, a name of a built-in task, the longest.
CUSTOM_TASKS = (
    "list_tags", "tasks", "mme", "my_task", "my_task_2", "colors", "a.b", "t" * 200, "A-1+b",
    "_", "eval.v2", "x-y",
)
MODEL_IDS = (
    "Qwen/Qwen2-VL-7B-Instruct", "llava-hf/llava-1.5-7b-hf", "/models/x", "./m", "a/../b",
    "1234", "1e5", "x:y@z", "nan", "true", "m" * 512,
)
REVISIONS = ("main", "0123456", "1234", "v1.0", "a" * 40, "refs/pr/1", "0" * 256, "1e5")
ENV_NAMES = ("LMMS_FOO", "AWS_REGION", "PYTHONPATH", "LD_PRELOAD", "HF_TOKEN", "MY_TOKEN", "PATH")


# fmt: on


@functools.cache
def hints() -> dict[str, Sequence[Sequence[Any]]]:
    """Pools of values for the paths that decide what reaches lmms-eval's command line."""
    cat = catalogue.load()
    task_names = sorted(cat.task_names)
    models = sorted(cat.models)
    rng = random.Random(30)
    known_lists = [rng.sample(task_names, rng.randint(1, 4)) for _ in range(200)]
    safe = sorted(validate.SAFE_ENV)
    env_lists = [
        [{"name": n, "value": rng.choice(VALUES)} for n in rng.sample(safe, rng.randint(0, 3))]
        for _ in range(50)
    ]
    return {
        # Whole lists of known names: most specs then pass validation.
        "spec.tasks": [known_lists] * 6,
        "spec.env": [env_lists] * 3,
        "spec.model.args": [[{}]] * 3,
        "spec.model.type": [sorted(presets.PRESETS)] * 6
        + [sorted(validate.NO_PRETRAINED & cat.models)] * 3
        + [models] * 2,
        "spec.model.pretrained": [MODEL_IDS],
        "spec.model.revision": [REVISIONS],
        "spec.model.args{}": [KEYS],
        "spec.model.args.*": [VALUES, VALUES],
        "spec.tasks[]": [task_names, task_names, task_names, CUSTOM_TASKS],
        "spec.customTasks[].tasks[]": [CUSTOM_TASKS, task_names],
        "spec.env[].name": [sorted(validate.SAFE_ENV), sorted(validate.SAFE_ENV), ENV_NAMES],
        "spec.env[].value": [VALUES],
    }


def evalrun_specs(schema: Node | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Specs the API server accepts (as it stores them), biased towards the interesting."""
    node = schema if schema is not None else evalrun_spec_schema()
    return Builder(hints()).node(node, "spec").filter(lambda s: not conforms(node, s))


def sample_specs(seed: int, schema: Node | None = None) -> Iterator[dict[str, Any]]:
    """Specs without hypothesis (for the benchmark's many examples): a fixed seed, one in
    four near the limits."""
    node = schema if schema is not None else evalrun_spec_schema()
    rng = random.Random(seed)
    values = Values(rng, hints())
    while True:
        spec = values.value(node, "spec", rng.random() < 0.25)
        if spec is not None and not conforms(node, spec):
            yield spec
