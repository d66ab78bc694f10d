"""What the API server's schema cannot check, checked before anything is created.

Pure functions: a raw spec in, a parsed spec or a list of problems out. Each problem
names the field (``spec.tasks[1]``) and says why, with a suggestion where one exists.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import catalogue, presets
from ..api import EvalRunSpec
from ..api.parse import parse_spec
from ..errors import InvalidSpec, Problem

__all__ = [
    "DEFAULT_FEATURES",
    "FEATURES",
    "InvalidSpec",
    "Policy",
    "Problem",
    "check_spec",
    "parse_spec",
    "validate",
]


def check_spec(spec: EvalRunSpec, cat: catalogue.Catalogue | None = None) -> list[Problem]:
    """Semantic checks against lmms-eval's registries and the presets."""
    cat = cat or catalogue.load()
    problems = _check_model(spec, cat) + _check_tasks(spec, cat) + _check_sizes(spec)
    return problems + _check_env_names(spec) + _check_combinations(spec)


def _check_model(spec: EvalRunSpec, cat: catalogue.Catalogue) -> list[Problem]:
    """A backend lmms-eval knows, a checkpoint where it needs one, and model args that
    neither repeat what the operator writes nor hold secrets (a ConfigMap stores them)."""
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
        if key in OPERATOR_ARGS:
            problems.append(
                Problem(
                    f"spec.model.args.{key}",
                    f"set by the operator from spec.model.{OPERATOR_ARGS[key]}",
                )
            )
        elif SECRET_ARG.search(key):
            problems.append(
                Problem(
                    f"spec.model.args.{key}",
                    "looks like a secret; model args are stored in a ConfigMap: put the key in a "
                    "Secret and reference it from spec.model.apiKey",
                )
            )
    return problems


def _check_tasks(spec: EvalRunSpec, cat: catalogue.Catalogue) -> list[Problem]:
    """Tasks lmms-eval or the custom tasks know, and each task ConfigMap listed once."""
    problems: list[Problem] = []
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
    return problems


def _check_env_names(spec: EvalRunSpec) -> list[Problem]:
    """No variable the operator sets, none that looks like a secret (the Job stores it)."""
    problems: list[Problem] = []
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
    return problems


def _check_combinations(spec: EvalRunSpec) -> list[Problem]:
    """Fields fine alone but not together (the CRD's CEL rules say the same)."""
    problems: list[Problem] = []
    s3 = spec.output.s3 if spec.output else None
    if s3 is not None and s3.endpoint and not s3.credentials_secret:
        problems.append(
            Problem(
                "spec.output.s3.credentialsSecret",
                "required with an endpoint: the operator reads a store a run names only with "
                "the credentials the run gives",
            )
        )
    if spec.resources.nodes > 1 and spec.resources.gpus < 1:
        problems.append(
            Problem("spec.resources.gpus", "a multi-node run needs at least one GPU per node")
        )
    if spec.parallelism > 1 and spec.resources.nodes > 1:
        problems.append(
            Problem(
                "spec.parallelism",
                "cannot be combined with resources.nodes > 1: a multi-node run is one torchrun "
                "world over an Indexed Job whose indexes are node ranks; use one or the other",
            )
        )
    return problems


#: Environment variable names that hold secrets (TOKENIZERS_PARALLELISM does not).
SECRET_ENV = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY(_ID)?|PRIVATE_KEY)$", re.IGNORECASE
)

#: --model_args entries the operator writes from other fields.
OPERATOR_ARGS = {"pretrained": "pretrained", "revision": "revision"}

#: The kernel refuses one argument longer than 128 KiB (MAX_ARG_STRLEN) and an argument
#: list with the environment over ARG_MAX (2 MiB by default); stay well inside both.
MAX_MODEL_ARGS = 64 * 1024
MAX_ENV_BYTES = 256 * 1024
#: Affinity is passed through as the Pod's; bounded before it reaches the Job.
MAX_AFFINITY_BYTES = 16 * 1024
MAX_AFFINITY_TERMS = 32
MAX_TOLERATION_BYTES = 1024


def _check_sizes(spec: EvalRunSpec) -> list[Problem]:
    problems: list[Problem] = []
    pretrained, args = presets.resolve(spec.model.type, spec.model.pretrained, spec.model.args)
    model_args = ",".join(
        f"{k}={v}"
        for k, v in {
            "pretrained": pretrained or "",
            "revision": spec.model.revision or "",
            **args,
        }.items()
    )
    if len(model_args.encode()) > MAX_MODEL_ARGS:
        problems.append(
            Problem(
                "spec.model.args",
                f"--model_args would be {len(model_args.encode())} bytes; at most "
                f"{MAX_MODEL_ARGS} fit on a command line",
            )
        )
    env_bytes = sum(len(v.name.encode()) + len(v.value.encode()) + 2 for v in spec.env)
    if env_bytes > MAX_ENV_BYTES:
        problems.append(
            Problem("spec.env", f"{env_bytes} bytes in all; at most {MAX_ENV_BYTES} are allowed")
        )
    affinity = spec.scheduling.affinity
    if affinity:
        size = len(json.dumps(affinity))
        terms = _count_terms(affinity)
        if size > MAX_AFFINITY_BYTES or terms > MAX_AFFINITY_TERMS:
            problems.append(
                Problem(
                    "spec.scheduling.affinity",
                    f"{terms} terms and {size} bytes; at most {MAX_AFFINITY_TERMS} terms and "
                    f"{MAX_AFFINITY_BYTES} bytes are allowed",
                )
            )
    for i, toleration in enumerate(spec.scheduling.tolerations):
        if len(json.dumps(toleration)) > MAX_TOLERATION_BYTES:
            problems.append(
                Problem(
                    f"spec.scheduling.tolerations[{i}]",
                    f"larger than {MAX_TOLERATION_BYTES} bytes",
                )
            )
    return problems


def _count_terms(value: Any) -> int:
    """Selector terms and weighted terms anywhere in an affinity."""
    if isinstance(value, dict):
        return sum(
            (len(v) if k.endswith(("Terms", "Execution")) and isinstance(v, list) else 0)
            + _count_terms(v)
            for k, v in value.items()
        )
    if isinstance(value, list):
        return sum(_count_terms(v) for v in value)
    return 0


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


#: Features a platform team turns on or off (LMMS_ALLOWED_FEATURES; Helm:
#: allowedFeatures), with the field each one is about.
FEATURES = {
    "imageOverride": "spec.image",
    "multiNode": "spec.resources.nodes",
    "customTasks": "spec.customTasks",
    "s3Output": "spec.output.s3",
    "remoteModels": "spec.model.apiKey",
    "remoteCode": "spec.model.args.trust_remote_code",
}
#: On unless the platform says otherwise. remoteCode (code from a model repository run
#: in the runner) is off until an admin turns it on, as TrustyAI's LMEvalJob does.
DEFAULT_FEATURES = frozenset(FEATURES) - {"remoteCode"}

_TRUE = {"true", "1", "yes", "on"}

#: Environment variables a run may set without an admin's say: none can change what
#: code runs (PYTHON*, LD_*, plug-in loaders), where requests, credentials or downloads
#: go (endpoints, proxies, CA bundles and TLS settings), or where files are read from.
#: Settings add names (LMMS_ALLOWED_ENV; Helm: settings.allowedEnv).
SAFE_ENV = frozenset(
    {
        # Offline switches and verbosity of the Hugging Face libraries.
        "HF_HUB_OFFLINE",
        "HF_DATASETS_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "HF_HUB_DISABLE_PROGRESS_BARS",
        "HF_HUB_DISABLE_SYMLINKS_WARNING",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN",
        "HF_HUB_DOWNLOAD_TIMEOUT",
        "HF_HUB_ETAG_TIMEOUT",
        "HF_HUB_VERBOSITY",
        "TRANSFORMERS_VERBOSITY",
        "DATASETS_VERBOSITY",
        "TOKENIZERS_PARALLELISM",
        "TQDM_DISABLE",
        # Threads and devices.
        "OMP_NUM_THREADS",
        "MKL_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "CUDA_LAUNCH_BLOCKING",
        "CUDA_DEVICE_ORDER",
        "CUDA_MODULE_LOADING",
        "PYTORCH_CUDA_ALLOC_CONF",
        "PYTORCH_NO_CUDA_MEMORY_CACHING",
        "TORCH_CUDNN_V8_API_ENABLED",
        "TORCH_DISTRIBUTED_DEBUG",
        "TORCH_NCCL_ASYNC_ERROR_HANDLING",
        "TORCH_NCCL_BLOCKING_WAIT",
        "TORCH_SHOW_CPP_STACKTRACES",
        # NCCL's own settings (not its plug-in loaders).
        "NCCL_DEBUG",
        "NCCL_DEBUG_SUBSYS",
        "NCCL_P2P_DISABLE",
        "NCCL_P2P_LEVEL",
        "NCCL_IB_DISABLE",
        "NCCL_SHM_DISABLE",
        "NCCL_SOCKET_IFNAME",
        "NCCL_ASYNC_ERROR_HANDLING",
        "NCCL_TIMEOUT",
        "NCCL_NVLS_ENABLE",
        "NCCL_CUMEM_ENABLE",
        # vLLM's memory and attention choices.
        "VLLM_ATTENTION_BACKEND",
        "VLLM_WORKER_MULTIPROC_METHOD",
        "VLLM_LOGGING_LEVEL",
        # Locale and time zone.
        "TZ",
        "LANG",
        "LC_ALL",
    }
)


@dataclass(frozen=True)
class Policy:
    """What this operator lets a run do beyond the defaults: the features it allows and
    further environment variable names (``NAME`` or a ``PREFIX*`` glob)."""

    features: frozenset[str] = DEFAULT_FEATURES
    env: tuple[str, ...] = field(default_factory=tuple)

    def env_allowed(self, name: str) -> bool:
        return name in SAFE_ENV or any(fnmatch.fnmatchcase(name, p) for p in self.env)


def used_features(spec: EvalRunSpec, cat: catalogue.Catalogue | None = None) -> dict[str, str]:
    """The optional features the spec uses, with the field that uses each."""
    cat = cat or catalogue.load()
    used: dict[str, str] = {}
    if spec.image is not None:
        used["imageOverride"] = FEATURES["imageOverride"]
    if spec.resources.nodes > 1:
        used["multiNode"] = FEATURES["multiNode"]
    if spec.custom_tasks:
        used["customTasks"] = FEATURES["customTasks"]
    if spec.output is not None and spec.output.s3 is not None:
        used["s3Output"] = FEATURES["s3Output"]
    if spec.model.api_key is not None:
        used["remoteModels"] = FEATURES["remoteModels"]
    _, args = presets.resolve(spec.model.type, spec.model.pretrained, spec.model.args)
    if str(args.get("trust_remote_code", "")).strip().lower() in _TRUE:
        used["remoteCode"] = "spec.model.args.trust_remote_code"
    elif spec.model.type in cat.remote_code_models:
        used["remoteCode"] = "spec.model.type"
    return used


def check_features(spec: EvalRunSpec, allowed: Iterable[str]) -> list[Problem]:
    """Problems for the features this operator does not allow."""
    allowed = frozenset(allowed)
    reasons = {
        "remoteCode": " (it runs code from the model's repository: "
        + "trust_remote_code, or a backend that always sets it)",
    }
    return [
        Problem(
            field,
            f"{name} is not allowed by this operator{reasons.get(name, '')}; allowed "
            f"features: {', '.join(sorted(allowed)) or 'none'}",
        )
        for name, field in used_features(spec).items()
        if name not in allowed
    ]


def check_env(spec: EvalRunSpec, policy: Policy) -> list[Problem]:
    return [
        Problem(
            f"spec.env[{i}].name",
            f"{var.name} is not an allowed variable: it could change what code runs or "
            "where requests and credentials go (an admin can allow it with "
            "settings.allowedEnv; docs/security.md lists the variables allowed by default)",
        )
        for i, var in enumerate(spec.env)
        if not _env_refused_already(var.name) and not policy.env_allowed(var.name)
    ]


def _env_refused_already(name: str) -> bool:
    return (
        name in RESERVED_ENV
        or name.startswith(RESERVED_ENV_PREFIXES)
        or SECRET_ENV.search(name) is not None
    )


def validate(raw: Mapping[str, Any] | None, policy: Policy | None = None) -> EvalRunSpec:
    """Parses and checks a spec; raises InvalidSpec with every problem found."""
    policy = policy or Policy()
    spec = parse_spec(raw)
    problems = check_spec(spec) + check_features(spec, policy.features) + check_env(spec, policy)
    if problems:
        raise InvalidSpec(problems)
    return spec
