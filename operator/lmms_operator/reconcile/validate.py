"""What the API server's schema cannot check, checked before anything is created.

Pure functions: a raw spec in, a parsed spec or a list of problems out. Each problem
names the field (``spec.tasks[1]``) and says why, with a suggestion where one exists.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import catalogue, concurrency, presets
from ..api import EvalRunSpec
from ..api.parse import parse_spec
from ..errors import InvalidSpec, Problem
from . import identity, inference, modelendpoint, multigpu, placement
from .cmdline import check_command_line
from .endpoints import Network, check_store_endpoint, runner_url_problems
from .envvars import (
    RESERVED_ENV,
    RESERVED_ENV_PREFIXES,
    SECRET_ENV,
    check_env_names,
    check_env_values,
    env_refused_already,
)
from .grammar import text_problem
from .modelargs import OPERATOR_ARGS, SECRET_ARG, check_model_args, remote_code_requested
from .modelurls import UrlRule
from .placement import PlacementPolicy

__all__ = [
    "DEFAULT_FEATURES",
    "FEATURES",
    "OPERATOR_ARGS",
    "RESERVED_ENV",
    "RESERVED_ENV_PREFIXES",
    "SECRET_ARG",
    "SECRET_ENV",
    "InvalidSpec",
    "Policy",
    "Problem",
    "check_spec",
    "parse_spec",
    "validate",
]


def check_spec(
    spec: EvalRunSpec, cat: catalogue.Catalogue | None = None, policy: Policy | None = None
) -> list[Problem]:
    """Semantic checks against lmms-eval's registries, the presets and the kernel's
    limits. The admin's policies (endpoints, placement) are checked in ``validate``."""
    cat = cat or catalogue.load()
    extra = policy.model_args if policy else ()
    problems = _check_model(spec, cat) + check_model_args(spec, cat, extra)
    problems += _check_tasks(spec, cat) + check_command_line(spec)
    problems += concurrency.problems(spec.model.type, spec.model.concurrency, spec.model.args)
    return problems + check_env_names(spec) + check_env_values(spec) + _check_combinations(spec)


def _check_model(spec: EvalRunSpec, cat: catalogue.Catalogue) -> list[Problem]:
    """A backend lmms-eval knows, and a checkpoint where its backend takes one and no
    preset names it (``reconcile.modelargs`` checks the args themselves)."""
    model_type = spec.model.type
    if model_type not in cat.models:
        hint = cat.suggest_model(model_type)
        return [
            Problem(
                "spec.model.type",
                f"unknown lmms-eval model type {model_type!r}"
                + (
                    f"; did you mean {hint!r}?"
                    if hint
                    else f" (lmms-eval {cat.lmms_eval_version} knows {len(cat.models)} model types)"
                ),
            )
        ]
    pretrained, _ = presets.resolve(model_type, spec.model.pretrained, spec.model.args)
    takes_checkpoint = "pretrained" in cat.model_args.get(model_type, ())
    if pretrained is None and takes_checkpoint and model_type not in NO_PRETRAINED:
        return [
            Problem(
                "spec.model.pretrained",
                f"required: model type {model_type!r} has no preset, so name the checkpoint",
            )
        ]
    return [
        Problem(f"spec.model.{name}", "all digits: lmms-eval reads it as a number, not a name")
        for name, value in (
            ("pretrained", spec.model.pretrained),
            ("revision", spec.model.revision),
        )
        if value and value.isdigit()
    ]


def _check_tasks(spec: EvalRunSpec, cat: catalogue.Catalogue) -> list[Problem]:
    """Tasks lmms-eval or the custom tasks know, and each task ConfigMap listed once.
    "Did you mean" only for the first few unknown names (``catalogue.closest`` bounds
    each one), so a spec of many long unknown names costs no more than a short one."""
    problems: list[Problem] = []
    custom = {t for source in spec.custom_tasks for t in source.tasks}
    known = cat.task_names | custom
    suggested = 0
    for i, task in enumerate(spec.tasks):
        found = text_problem(task) or _listing_word(task)
        if found:
            problems.append(Problem(f"spec.tasks[{i}]", f"the name {found}"))
        elif task not in known:
            hint = None
            if suggested < catalogue.MAX_SUGGESTIONS:
                suggested += 1
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
        problems += [
            Problem(f"spec.customTasks[{i}].tasks[{j}]", f"the name {found}")
            for j, task in enumerate(source.tasks)
            if (found := text_problem(task) or _listing_word(task))
        ]
    return problems


#: --tasks values lmms-eval 0.7.3 takes as "list the tasks and exit 0", not as names.
LISTING_WORDS = frozenset({"list", "list_groups", "list_tags", "list_subtasks"})


def _listing_word(task: str) -> str | None:
    if task in LISTING_WORDS:
        return f"{task!r} is a word lmms-eval reads as 'list the tasks and exit', not a task"
    return None


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


#: Backends that talk to a server or need no checkpoint.
NO_PRETRAINED = concurrency.OPENAI_COMPATIBLE | frozenset(
    {
        "dummy",
        "dummy_video_reader",
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
    #: Further model args (``BACKEND:KEY``, globs allowed) beyond the catalogue's.
    model_args: tuple[str, ...] = field(default_factory=tuple)
    #: Networks beyond public addresses where a run's object store may be.
    store_cidrs: tuple[Network, ...] = ()
    #: Priority classes, tolerations and affinity tenants may choose.
    placement: PlacementPolicy = field(default_factory=PlacementPolicy)
    #: The memory of one GPU per resource name, for spec.model.multiGPU's default.
    gpu_memory: multigpu.GpuMemory = field(default_factory=multigpu.GpuMemory)
    #: Engines (spec.model.engine) this operator has an image for.
    engines: frozenset[str] = frozenset()
    #: URLs a run's model or judge endpoint may name (``modelurls``; none by default).
    model_urls: tuple[UrlRule, ...] = ()

    def env_allowed(self, name: str) -> bool:
        return name in SAFE_ENV or any(fnmatch.fnmatchcase(name, p) for p in self.env)


def used_features(spec: EvalRunSpec, cat: catalogue.Catalogue | None = None) -> dict[str, str]:
    """The optional features the spec uses, with the (first) field that uses each."""
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
    remote = remote_code_uses(spec, cat)
    if remote:
        used["remoteCode"] = remote[0][0]
    return used


def remote_code_uses(spec: EvalRunSpec, cat: catalogue.Catalogue) -> list[tuple[str, str]]:
    """Every field that makes a run execute code the operator's image does not fix,
    with why: the model's args, its backend, and each task whose scoring code the
    catalogue flags (it ``eval``s or ``exec``s what the model answered, and a tenant's
    model answers whatever it likes)."""
    uses: list[tuple[str, str]] = []
    _, args = presets.resolve(spec.model.type, spec.model.pretrained, spec.model.args)
    if remote_code_requested(args):
        uses.append(
            ("spec.model.args.trust_remote_code", "it runs code from the model's repository")
        )
    elif spec.model.type in cat.remote_code_models:
        uses.append(
            (
                "spec.model.type",
                "the backend runs code from the model's repository, runs the model's output "
                "or imports from a path its args name",
            )
        )
    uses += [
        (f"spec.tasks[{i}]", "its scoring code runs the model's output as Python")
        for i, task in enumerate(spec.tasks)
        if task in cat.remote_code_tasks
    ]
    return uses


def check_features(
    spec: EvalRunSpec, allowed: Iterable[str], cat: catalogue.Catalogue | None = None
) -> list[Problem]:
    """Problems for the features this operator does not allow: remoteCode once for
    each field that uses it, so a refusal lists every task to drop."""
    cat = cat or catalogue.load()
    allowed = frozenset(allowed)
    listed = f"allowed features: {', '.join(sorted(allowed)) or 'none'}"
    problems = [
        Problem(field, f"{name} is not allowed by this operator; {listed}")
        for name, field in used_features(spec, cat).items()
        if name not in allowed and name != "remoteCode"
    ]
    if "remoteCode" not in allowed:
        problems += [
            Problem(field, f"remoteCode is not allowed by this operator ({why}); {listed}")
            for field, why in remote_code_uses(spec, cat)
        ]
    return problems


def check_env(spec: EvalRunSpec, policy: Policy) -> list[Problem]:
    return [
        Problem(
            f"spec.env[{i}].name",
            f"{var.name} is not an allowed variable: it could change what code runs or "
            "where requests and credentials go (an admin can allow it with "
            "settings.allowedEnv; docs/security.md lists the variables allowed by default)",
        )
        for i, var in enumerate(spec.env)
        if not env_refused_already(var.name) and not policy.env_allowed(var.name)
    ]


def validate(
    raw: Mapping[str, Any] | None, policy: Policy | None = None, namespace: str | None = None
) -> EvalRunSpec:
    """Parses and checks a spec; raises InvalidSpec with every problem found.
    ``namespace``: the run's own, which its affinity terms may name."""
    policy = policy or Policy()
    spec = parse_spec(raw)
    problems = check_spec(spec, policy=policy) + check_features(spec, policy.features)
    problems += check_env(spec, policy) + check_endpoints(spec, policy)
    problems += placement.check(spec, policy.placement, namespace)
    problems += identity.naming_problems(spec.model.args)
    problems += multigpu.check(spec, policy.gpu_memory)
    problems += inference.problems(spec, policy.engines)
    if problems:
        raise InvalidSpec(problems)
    return spec


def check_endpoints(spec: EvalRunSpec, policy: Policy) -> list[Problem]:
    """The object store the operator itself contacts (syntax and address class, in
    every spelling), and the URLs only the runner contacts (no link-local, metadata or
    unspecified address: the pod's own loopback stays allowed)."""
    problems: list[Problem] = []
    s3 = spec.output.s3 if spec.output else None
    if s3 is not None and s3.endpoint:
        found = check_store_endpoint("spec.output.s3.endpoint", s3.endpoint, policy.store_cidrs)
        problems += [found] if found else []
    problems += modelendpoint.problems(spec, policy.model_urls)
    problems += runner_url_problems("spec.model.args", spec.model.args)
    for i, var in enumerate(spec.env):
        problems += runner_url_problems(f"spec.env[{i}]", {"value": var.value})
    return problems
