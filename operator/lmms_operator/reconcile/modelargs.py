"""``spec.model.args`` by allow-list: the keys a backend's class hierarchy accepts.

lmms-eval builds a model with ``cls(**simple_parse_args_string(model_args), batch_size=..)``
(``lmms_eval.api.model.lmms.create_from_arg_string``): every key becomes a keyword
argument of the backend's ``__init__``. The catalogue records, per backend, the keyword
names of the ``__init__`` signatures of its whole class hierarchy; a key outside them is
refused even where the backend also takes ``**kwargs`` (which many backends assert empty
and others silently drop: either way the run would not be what the spec says).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping

from .. import catalogue, presets
from ..api import EvalRunSpec
from ..errors import Problem
from .credentials import credential_kind
from .grammar import arg_value_problem, round_trips, text_problem

#: Keys the operator or lmms-eval writes from other fields; lmms-eval passes batch_size
#: itself, so a second one would fail the model's construction.
OPERATOR_ARGS = {
    "pretrained": "spec.model.pretrained",
    "revision": "spec.model.revision",
    "batch_size": "spec.evaluation.batchSize",
}

#: Model arg names that hold secrets.
SECRET_ARG = re.compile(r"(api_?key|token|secret|password)", re.IGNORECASE)

#: lmms-eval's no-op backend: it loads no model, runs no model code and drops unknown
#: keywords; the operator's own tests drive their stand-in runner through its args.
OPEN_BACKENDS = frozenset({"dummy", "dummy_video_reader"})


def accepts(model_type: str, key: str, cat: catalogue.Catalogue, extra: Iterable[str] = ()) -> bool:
    """Whether ``key`` may be passed to ``model_type``: in its signatures' keyword names,
    or allowed by the admin (``BACKEND:KEY`` patterns, globs allowed in both parts)."""
    if model_type in OPEN_BACKENDS or key in cat.model_args.get(model_type, ()):
        return True
    return any(
        fnmatch.fnmatchcase(model_type, b) and fnmatch.fnmatchcase(key, k)
        for b, _, k in (p.partition(":") for p in extra)
    )


def accepted_keys(model_type: str, cat: catalogue.Catalogue) -> str:
    """The keys a backend accepts, for a message (at most 20 named)."""
    keys = sorted(set(cat.model_args.get(model_type, ())) - set(OPERATOR_ARGS))
    shown = ", ".join(keys[:20]) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")
    return shown or "none"


def check_model_args(
    spec: EvalRunSpec, cat: catalogue.Catalogue, extra: Iterable[str] = ()
) -> list[Problem]:
    """Every --model_args entry the runner will pass: known to the backend, not one the
    operator writes, no secret in its name or value, and read back by lmms-eval's
    splitter as exactly this key and value."""
    model_type = spec.model.type
    if model_type not in cat.models:
        return []  # the model type's own problem says it all
    extra = tuple(extra)
    problems: list[Problem] = []
    suggestions = 0
    for key, value in spec.model.args.items():
        field = f"spec.model.args.{key}"
        if key in OPERATOR_ARGS:
            problems.append(Problem(field, f"set by the operator from {OPERATOR_ARGS[key]}"))
        elif SECRET_ARG.search(key):
            problems.append(
                Problem(
                    field,
                    "looks like a secret; model args are stored in a ConfigMap: put the key in "
                    "a Secret and reference it from spec.model.apiKey",
                )
            )
        elif not accepts(model_type, key, cat, extra):
            hint = None
            if suggestions < catalogue.MAX_SUGGESTIONS:
                suggestions += 1
                hint = catalogue.closest(key, cat.model_args.get(model_type, frozenset()))
            problems.append(Problem(field, _unknown(model_type, key, hint, cat)))
        else:
            problems += _value_problems(field, value)
    problems += _checkpoint_problems(spec, cat, extra)
    problems += _preset_problems(spec, cat, extra)
    if not problems and not round_trips(runner_model_args(spec)):
        problems.append(
            Problem(
                "spec.model.args",
                "lmms-eval's --model_args splitter would not read these entries back as written",
            )
        )
    return problems


def _unknown(model_type: str, key: str, hint: str | None, cat: catalogue.Catalogue) -> str:
    return (
        f"model type {model_type!r} takes no argument {key!r}"
        + (f"; did you mean {hint!r}?" if hint else "")
        + f" (lmms-eval {cat.lmms_eval_version}'s {model_type} accepts: "
        + accepted_keys(model_type, cat)
        + "; an admin can allow more with settings.allowedModelArgs)"
    )


def _value_problems(field: str, value: str) -> list[Problem]:
    found = arg_value_problem(value)
    if found:
        return [Problem(field, f"the value {found}")]
    kind = credential_kind(value)
    if kind:
        return [Problem(field, _credential_message(kind))]
    return []


def _credential_message(kind: str) -> str:
    return (
        f"the value looks like {kind}; values here are stored in plain objects: put it in a "
        "Secret and reference it (spec.model.apiKey, spec.huggingFaceToken)"
    )


def _checkpoint_problems(
    spec: EvalRunSpec, cat: catalogue.Catalogue, extra: tuple[str, ...]
) -> list[Problem]:
    """``pretrained=`` and ``revision=`` (written by the runner from their fields) must be
    arguments the backend takes: otherwise lmms-eval fails, or evaluates something other
    than what the spec (and so the Leaderboard) names."""
    problems: list[Problem] = []
    pretrained, _ = presets.resolve(spec.model.type, spec.model.pretrained, {})
    for name, value in (("pretrained", pretrained), ("revision", spec.model.revision)):
        if value is None:
            continue
        field = f"spec.model.{name}"
        # (An engine serves them: they reach its command, not --model_args.)
        if spec.model.engine is None and not accepts(spec.model.type, name, cat, extra):
            problems.append(Problem(field, _not_taken(spec.model.type, name, cat)))
            continue
        found = text_problem(value)
        kind = credential_kind(value)
        if found or kind:
            problems.append(
                Problem(field, f"the value {found}" if found else _credential_message(kind or ""))
            )
    return problems


def _not_taken(model_type: str, name: str, cat: catalogue.Catalogue) -> str:
    fix = (
        "pin the model with spec.model.version instead"
        if name == "revision"
        else "name the model with the backend's own argument in spec.model.args"
    )
    return (
        f"model type {model_type!r} takes no {name!r} argument, so lmms-eval would fail or "
        f"evaluate something other than what this names; {fix} (it accepts: "
        f"{accepted_keys(model_type, cat)})"
    )


def _preset_problems(
    spec: EvalRunSpec, cat: catalogue.Catalogue, extra: tuple[str, ...]
) -> list[Problem]:
    """A preset's own args pass the same checks (a stale preset is refused, not run)."""
    preset = presets.PRESETS.get(spec.model.type)
    if preset is None:
        return []
    problems: list[Problem] = []
    for key, value in preset.args.items():
        if key in spec.model.args:
            continue
        if not accepts(spec.model.type, key, cat, extra) or arg_value_problem(value):
            problems.append(
                Problem(
                    "spec.model.type",
                    f"the preset of {spec.model.type!r} passes {key!r}, which lmms-eval "
                    f"{cat.lmms_eval_version} does not accept; set spec.model.args yourself",
                )
            )
    return problems


def runner_model_args(spec: EvalRunSpec) -> dict[str, str]:
    """The --model_args entries the runner builds (``lmms_runner.command.model_args``):
    pretrained, revision, then the preset's and the spec's args (and, model parallel,
    device_map=auto unless they name one)."""
    pretrained, args = presets.resolve(spec.model.type, spec.model.pretrained, spec.model.args)
    out: dict[str, str] = {}
    if spec.model.engine is not None:  # the engine serves them (``inference.command``)
        pretrained = None
    if pretrained:
        out["pretrained"] = pretrained
    if spec.model.revision and spec.model.engine is None:
        out["revision"] = spec.model.revision
    out.update({k: v for k, v in args.items() if k not in ("pretrained", "revision")})
    if spec.model.multi_gpu == "ModelParallel":
        out.setdefault("device_map", "auto")
    return out


def remote_code_requested(args: Mapping[str, str]) -> bool:
    """Any ``trust_remote_code`` value but an explicit false turns it on: lmms-eval reads
    "1", "yes", "True ", "2" and every other string as truthy."""
    value = args.get("trust_remote_code")
    return value is not None and value.lower() != "false"
