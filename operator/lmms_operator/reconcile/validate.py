"""What the API server's schema cannot check, checked before anything is created.

Pure functions: a raw spec in, a parsed spec or a list of problems out. Each problem
names the field (``spec.tasks[1]``) and says why, with a suggestion where one exists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .. import catalogue, presets
from ..api import EvalRunSpec
from ..api.parse import parse_spec
from ..errors import InvalidSpec, Problem

__all__ = ["FEATURES", "InvalidSpec", "Problem", "check_spec", "parse_spec", "validate"]


def check_spec(spec: EvalRunSpec, cat: catalogue.Catalogue | None = None) -> list[Problem]:
    """Semantic checks against lmms-eval's registries and the presets."""
    cat = cat or catalogue.load()
    problems: list[Problem] = []
    model_type = spec.model.type
    if model_type not in cat.models:
        hint = cat.suggest_model(model_type)
        problems.append(
            Problem(
                "spec.model.type",
                f"unknown lmms-eval model type {model_type!r}"
                + (
                    f"; did you mean {hint!r}?"
                    if hint
                    else f" (lmms-eval {cat.lmms_eval_version} knows {len(cat.models)} model types)"
                ),
            )
        )
    else:
        pretrained, _ = presets.resolve(model_type, spec.model.pretrained, spec.model.args)
        if pretrained is None and model_type not in NO_PRETRAINED:
            problems.append(
                Problem(
                    "spec.model.pretrained",
                    f"required: model type {model_type!r} has no preset, so name the checkpoint",
                )
            )
    for key in spec.model.args:
        if SECRET_ARG.search(key):
            problems.append(
                Problem(
                    f"spec.model.args.{key}",
                    "looks like a secret; model args are stored in a ConfigMap: put the key in a "
                    "Secret and reference it from spec.model.apiKey",
                )
            )
    custom = {t for source in spec.custom_tasks for t in source.tasks}
    known = cat.task_names | custom
    for i, task in enumerate(spec.tasks):
        if task not in known:
            hint = catalogue.closest(task, known)
            problems.append(
                Problem(
                    f"spec.tasks[{i}]",
                    f"unknown task {task!r}"
                    + (f"; did you mean {hint!r}?" if hint else "")
                    + (
                        " (custom tasks must be listed in spec.customTasks[].tasks)"
                        if spec.custom_tasks
                        else ""
                    ),
                )
            )
    seen: set[str] = set()
    for i, source in enumerate(spec.custom_tasks):
        if source.config_map in seen:
            problems.append(
                Problem(
                    f"spec.customTasks[{i}].configMap",
                    f"ConfigMap {source.config_map!r} is listed twice",
                )
            )
        seen.add(source.config_map)
    for i, var in enumerate(spec.env):
        if var.name in RESERVED_ENV or var.name.startswith(RESERVED_ENV_PREFIXES):
            problems.append(
                Problem(
                    f"spec.env[{i}].name",
                    f"{var.name} is set by the operator and cannot be overridden",
                )
            )
        elif SECRET_ENV.search(var.name):
            problems.append(
                Problem(
                    f"spec.env[{i}].name",
                    f"{var.name} looks like a secret; env values are stored in the Job: use "
                    "huggingFaceToken, model.apiKey or output.s3.credentialsSecret, which "
                    "read Secrets",
                )
            )
    if spec.resources.nodes > 1 and spec.resources.gpus < 1:
        problems.append(
            Problem("spec.resources.gpus", "a multi-node run needs at least one GPU per node")
        )
    return problems


#: Environment variable names that hold secrets (TOKENIZERS_PARALLELISM does not).
SECRET_ENV = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY(_ID)?|PRIVATE_KEY)$", re.IGNORECASE
)

#: Model arg names that hold secrets.
SECRET_ARG = re.compile(r"(api_?key|token|secret|password)", re.IGNORECASE)

#: Variables the operator sets on the runner (secrets among them).
RESERVED_ENV = frozenset(
    {
        "POD_IP",
        "POD_NAME",
        "POD_NAMESPACE",
        "HF_HOME",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HOME",
        "TMPDIR",
        "PATH",
    }
)
RESERVED_ENV_PREFIXES = ("LMMS_", "AWS_")

#: Backends that talk to a server or need no checkpoint.
NO_PRETRAINED = frozenset(
    {
        "dummy",
        "dummy_video_reader",
        "openai",
        "openai_compatible",
        "openai_compatible_chat",
        "async_openai",
        "async_openai_compatible",
        "async_openai_compatible_chat",
        "litellm",
        "litellm_chat",
        "litellm_compatible",
        "claude",
        "gemini",
        "gemini_api",
        "gpt4v",
        "batch_gpt4",
        "gpt4o_audio",
        "generation_api",
        "from_log",
        "reka",
    }
)


#: Features a platform team can turn off (LMMS_ALLOWED_FEATURES; Helm: allowedFeatures),
#: with the field each one is about.
FEATURES = {
    "imageOverride": "spec.image",
    "multiNode": "spec.resources.nodes",
    "customTasks": "spec.customTasks",
    "s3Output": "spec.output.s3",
    "remoteModels": "spec.model.apiKey",
}


def used_features(spec: EvalRunSpec) -> dict[str, str]:
    """The optional features the spec uses, with their fields."""
    used = {
        "imageOverride": spec.image is not None,
        "multiNode": spec.resources.nodes > 1,
        "customTasks": bool(spec.custom_tasks),
        "s3Output": spec.output is not None and spec.output.s3 is not None,
        "remoteModels": spec.model.api_key is not None,
    }
    return {name: FEATURES[name] for name, on in used.items() if on}


def check_features(spec: EvalRunSpec, allowed: frozenset[str] | None) -> list[Problem]:
    """Problems for the features this operator does not allow (None: all allowed)."""
    if allowed is None:
        return []
    return [
        Problem(
            field,
            f"{name} is not allowed by this operator (allowed features: "
            f"{', '.join(sorted(allowed)) or 'none'})",
        )
        for name, field in used_features(spec).items()
        if name not in allowed
    ]


def validate(
    raw: Mapping[str, Any] | None, allowed_features: frozenset[str] | None = None
) -> EvalRunSpec:
    """Parses and checks a spec; raises InvalidSpec with every problem found."""
    spec = parse_spec(raw)
    problems = check_spec(spec) + check_features(spec, allowed_features)
    if problems:
        raise InvalidSpec(problems)
    return spec
