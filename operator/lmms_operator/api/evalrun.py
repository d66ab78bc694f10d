"""The EvalRun API (``eval.lmms.dev/v1alpha1``): the single source of truth.

The CRD in ``crds/`` is built from these models (``python -m lmms_operator.api.crdgen``)
and the runner reads its configuration with the same types. The spec's compute and
placement are in ``resources``, the status in ``status``, the servers and Secrets it
names in ``endpoint``, its string grammars in ``grammar``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from .base import DNS_LABEL, DNS_SUBDOMAIN, ApiModel
from .endpoint import EndpointRef, JudgeSpec, SecretSource
from .grammar import (
    _TASK_ITEMS,
    ARG_KEY,
    ARG_VALUE,
    MODEL_ID,
    REVISION,
    SAFE_TEXT,
    ArgKey,
    ArgValue,
    TaskName,
)
from .output import CacheSpec, OutputSpec
from .resources import ResourcesSpec, SchedulingSpec
from .status import EvalRunStatus


class ModelSpec(ApiModel):
    """The model to evaluate."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.endpoint) || self.type == 'openai'",
                    "message": "a model served at an endpoint is evaluated with type openai",
                    "fieldPath": ".type",
                },
                {
                    "rule": "!has(self.endpoint) || !has(self.engine)",
                    "message": "a model served at an endpoint needs no engine: name one or the "
                    "other",
                    "fieldPath": ".engine",
                },
            ]
        }
    )

    type: str = Field(
        description="lmms-eval model backend (--model), e.g. qwen2_vl, llava_onevision, "
        "openai. Checked against lmms-eval 0.7.3's model registry.",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9_.\-]+$",
    )
    pretrained: str | None = Field(
        default=None,
        description="Model id on the Hugging Face Hub or a local path (pretrained= in "
        "--model_args). Optional when the model type has a preset.",
        min_length=1,
        max_length=512,
        pattern=MODEL_ID,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!self.split('/').exists(s, s == '..')",
                    "message": "may not contain a '..' path segment",
                }
            ]
        },
    )
    revision: str | None = Field(
        default=None,
        description="Model revision (branch, tag or commit) passed as revision= in --model_args.",
        min_length=1,
        max_length=256,
        pattern=REVISION,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!self.contains('..')", "message": "may not contain '..'"}
            ]
        },
    )
    version: str | None = Field(
        default=None,
        description="A version you declare for a model whose revision is not a commit id "
        "(an API model's dated release, a checkpoint baked into an image): with it, or with "
        "a 40-hex-digit revision, the model counts as pinned and spec.reuse can serve its "
        "results from earlier runs.",
        min_length=1,
        max_length=128,
        pattern=REVISION,
    )
    args: dict[ArgKey, ArgValue] = Field(
        default_factory=dict,
        description="Extra --model_args entries (key=value). Values override the preset's. "
        "Keys must be arguments the model type's lmms-eval class accepts; values may not "
        "hold , = quotes or brackets, control, format (bidi, invisible) or private-use "
        "characters, nor begin or end with a space, and must be in Unicode NFKC form. "
        "trust_remote_code (any value but false) needs the remoteCode feature.",
        max_length=64,
        json_schema_extra={
            "additionalProperties": {"type": "string", "maxLength": 4096, "pattern": ARG_VALUE},
            "x-kubernetes-validations": [
                {
                    "rule": "self.all(k, size(k) <= 100 && k.matches('" + ARG_KEY + "'))",
                    "message": "model args keys must be identifiers ([A-Za-z_][A-Za-z0-9_]*, "
                    "at most 100 characters)",
                }
            ],
        },
    )
    engine: Literal["vllm", "sglang"] | None = Field(
        default=None,
        description="Serve the model with an inference engine in the run's own pod: the "
        "engine's OpenAI-compatible server (vLLM's or SGLang's, from the operator's engine "
        "image) runs beside the runner, on all of the pod's GPUs (tensor parallel size = "
        "resources.gpus), and the runner evaluates it over the pod's loopback with type "
        "openai once it answers. Needs type openai, the checkpoint to serve in pretrained, "
        "and resources.nodes 1. A server that exits ends the run Failed (EngineFailed) with "
        "its last log lines.",
    )
    api_key: SecretSource | None = Field(
        default=None,
        description="API key of a model server (openai, litellm and other API backends), "
        "given to the runner as OPENAI_API_KEY. Keys never belong in args, which are stored "
        "in a ConfigMap.",
    )
    endpoint: EndpointRef | None = Field(
        default=None,
        description="A model already served in the cluster (a Service or a KServe "
        "InferenceService in the run's namespace) or at a URL the admin allows, evaluated "
        "over its OpenAI-compatible API: type must be openai. The run waits (no Job, no GPU) "
        "until the endpoint is ready; its pod requests no GPU (resources.gpus is ignored). "
        "The served model's id, read from /v1/models, and the endpoint name the model on "
        "Leaderboards.",
    )
    multi_gpu: Literal["DataParallel", "ModelParallel"] | None = Field(
        default=None,
        alias="multiGPU",
        description="How a Hugging Face backend uses the pod's GPUs (resources.gpus). "
        "DataParallel: one process per GPU (accelerate launch), each holding a whole copy of "
        "the model and evaluating a share of the documents. ModelParallel: one process that "
        "spreads one copy of the model over the pod's GPUs (device_map=auto in --model_args, "
        "unless args sets device_map), for a model larger than one GPU; only for backends "
        "whose lmms-eval class honours device_map, in one pod (not with resources.nodes > 1 "
        "nor an engine). Unset, with more than one GPU: DataParallel when the model fits on "
        "one GPU (and always for a backend that cannot spread a model, or several nodes), "
        "ModelParallel when it does not, from the preset's size (2 bytes a parameter, plus "
        "a quarter for activations, the KV cache and the CUDA context) against the GPU "
        "memory the admin declares for resources.gpuResourceName (settings.gpuMemory). "
        "Where that size is unknown (no preset, another checkpoint than the preset's, or no "
        "declared memory), a run with more than one GPU must set it. With one GPU, unset "
        "changes nothing.",
    )
    concurrency: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Requests in flight at once to an OpenAI-compatible model server (type "
        "openai, with base_url in args, and engine and endpoint runs; also async_openai): "
        "lmms-eval's num_concurrent (num_cpus for async_openai) and adaptive_max_concurrency "
        "both set to it, so it bounds adaptive concurrency too. Unset: lmms-eval's default "
        "(32 for openai; for async_openai half the node's CPUs, not the pod's limit). "
        "Refused for other backends, and beside those args in args.",
    )


class CustomTaskSource(ApiModel):
    """Task YAML (and small data files) from a ConfigMap, passed with --include_path."""

    config_map: str = Field(
        description="Name of a ConfigMap in the run's namespace holding task YAML files.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    tasks: list[TaskName] = Field(
        default_factory=list,
        description="Task names the ConfigMap defines. Listed tasks are evaluated in "
        "addition to spec.tasks; spec.tasks may also name them.",
        json_schema_extra={"items": _TASK_ITEMS, "x-kubernetes-list-type": "set"},
        max_length=100,
    )


class GenerationSpec(ApiModel):
    """Generation settings (--gen_kwargs)."""

    temperature: float | None = Field(
        default=None, ge=0, le=100, description="Sampling temperature."
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, le=1_000_000, description="Maximum number of new tokens."
    )
    top_p: float | None = Field(default=None, gt=0, le=1, description="Nucleus sampling p.")
    num_beams: int | None = Field(default=None, ge=1, le=64, description="Beam search width.")
    do_sample: bool | None = Field(default=None, description="Sample instead of greedy decoding.")


class EvaluationSpec(ApiModel):
    """How lmms-eval evaluates."""

    batch_size: int = Field(default=1, ge=1, le=4096, description="--batch_size.")
    limit: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="Evaluate at most this many samples per task (--limit).",
    )
    num_fewshot: int | None = Field(default=None, ge=0, le=128, description="--num_fewshot.")
    seed: int = Field(
        default=1234,
        ge=0,
        le=2**32 - 1,
        description="Seed for Python, NumPy, torch and few-shot sampling (--seed).",
    )
    log_samples: bool = Field(
        default=False,
        description="Log per-sample outputs (lmms-eval's --log_samples) and keep them "
        "without an object store: compact records (doc id, target, filtered response, "
        "per-sample metric values; text cut to 200 characters) in ConfigMaps owned by the "
        "run, the full files on the cache volume (spec.cache) and in the output "
        "(spec.output.s3) when the run has them; status.samples says where. `kubectl lmms "
        "compare` pairs two such runs document by document.",
    )
    verbosity: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO",
        description="lmms-eval's log level (--verbosity). The run's progress does not depend "
        "on it (the runner reads lmms-eval's progress bars and counts answers), but lmms-eval "
        "logs each task's post-processed document count at INFO: at WARNING and ERROR "
        "status.progress.tasks shows no per-task counts while the run goes.",
    )
    generation: GenerationSpec | None = Field(default=None, description="Generation settings.")


class EnvVar(ApiModel):
    """An environment variable of the runner and lmms-eval (a plain value)."""

    name: str = Field(
        description="Variable name.", max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$"
    )
    value: str = Field(
        default="",
        description="Value: no control, format (bidi, invisible), private-use or "
        "line-separator characters, and nothing shaped like a credential.",
        max_length=4096,
        pattern=SAFE_TEXT,
    )


class EvalRunSpec(ApiModel):
    """The desired evaluation. Editing anything but suspend starts a new evaluation."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "size(self.tasks) > 0 || self.customTasks.exists(c, size(c.tasks) > 0)",
                    "message": "at least one task is required: list spec.tasks or the tasks "
                    "of a spec.customTasks entry",
                    "fieldPath": ".tasks",
                },
                {
                    "rule": "!has(self.parallelism) || self.parallelism == 1 || "
                    "!has(self.resources) || !has(self.resources.nodes) || "
                    "self.resources.nodes == 1",
                    "message": "parallelism > 1 cannot be combined with resources.nodes > 1: a "
                    "multi-node run is one torchrun world over an Indexed Job whose indexes "
                    "are node ranks",
                    "fieldPath": ".parallelism",
                },
                {
                    "rule": "!has(self.model.multiGPU) || self.model.multiGPU != 'ModelParallel' "
                    "|| !has(self.resources) || !has(self.resources.nodes) || "
                    "self.resources.nodes == 1",
                    "message": "ModelParallel runs in one pod: resources.nodes > 1 is data "
                    "parallel over one torchrun world",
                    "fieldPath": ".model.multiGPU",
                },
            ]
        }
    )

    model: ModelSpec = Field(description="The model to evaluate.")
    tasks: list[TaskName] = Field(
        default_factory=list,
        description="lmms-eval task, group or tag names (--tasks). Checked against lmms-eval "
        "0.7.3's task index; names of custom tasks are allowed.",
        max_length=200,
        json_schema_extra={
            "items": _TASK_ITEMS,
            "x-kubernetes-list-type": "set",
        },
    )
    custom_tasks: list[CustomTaskSource] = Field(
        default_factory=list, description="Custom tasks from ConfigMaps.", max_length=20
    )
    evaluation: EvaluationSpec = Field(
        default_factory=EvaluationSpec, description="Evaluation settings."
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Compute.")
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Placement of the pods."
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        description="Extra environment variables, e.g. HF_HUB_OFFLINE or NCCL_DEBUG. Plain "
        "values only: tokens belong in huggingFaceToken and output.s3.credentialsSecret. "
        "Only names that cannot change what code runs or where requests go are accepted "
        "(docs/security.md lists them; settings.allowedEnv adds names).",
        max_length=64,
    )
    image: str | None = Field(
        default=None,
        description="Runner image; empty means the operator's default runner image.",
        max_length=512,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/@\-]*$",
    )
    cache: CacheSpec | None = Field(default=None, description="Cache volume mounted as HF_HOME.")
    hugging_face_token: SecretSource | None = Field(
        default=None, description="Hugging Face token (HF_TOKEN) for gated models and datasets."
    )
    timeout_seconds: int = Field(
        default=86_400,
        ge=1,
        le=30 * 86_400,
        description="Wall-clock limit of the evaluation (the Job's activeDeadlineSeconds).",
    )
    reuse: Literal["IfIdentical", "Never"] = Field(
        default="IfIdentical",
        description="IfIdentical: tasks whose evaluation identity (a pinned model, the task "
        "and its definition, the settings that change scores, the lmms-eval version; see "
        "the README) was evaluated before in this namespace are not evaluated again: their "
        "results come from the evaluation index (a run whose every task is there ends "
        "Succeeded with reason Reused, with no Job). Never: evaluate every task. A run with "
        "evaluation.logSamples evaluates every task (the samples are its output).",
    )
    parallelism: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Spread the run's tasks over this many pods of one Indexed Job, each "
        "with resources.gpus. Whole entries of tasks and customTasks (a group with all its "
        "subtasks) go to one pod, balanced by expected documents; the results are merged "
        "into one result set. Capped by the number of tasks; needs resources.nodes 1.",
    )
    retries: int = Field(
        default=1,
        ge=0,
        le=20,
        description="Retries after a failed pod (the Job's backoffLimit; with parallelism > 1, "
        "per shard: backoffLimitPerIndex).",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=86_400,
        ge=0,
        le=366 * 86_400,
        description="Delete the finished Job (not the EvalRun) after this many seconds (at "
        "most a year).",
    )
    judge: JudgeSpec | None = Field(
        default=None,
        description="The LLM judge of judged tasks (an OpenAI-compatible server, in the same "
        "forms as model.endpoint). Its model and endpoint are part of the run's provenance "
        "and of its Leaderboard entries: a score judged by another model is another entry.",
    )
    output: OutputSpec | None = Field(default=None, description="Extra result destinations.")
    leaderboard: str | None = Field(
        default="default",
        description="Leaderboard (in the run's namespace) to publish the scores to: a DNS "
        "label of at most 63 characters (it is a label value).",
        max_length=63,
        pattern=DNS_LABEL,
    )
    suspend: bool = Field(
        default=False,
        description="Suspend the run: the Job is suspended and its pods deleted; false resumes "
        "it, from the run's cache volume when it has one. With scheduling.queueName, Kueue owns "
        "the Job's suspend: the run is held by deactivating its Workload (spec.active: false). "
        "A run suspended before it ever started gets no Job until it is resumed.",
    )
    cancel: bool = Field(
        default=False,
        description="Stop the evaluation for good: the Job is deleted and the run ends "
        "Cancelled. Unlike suspend it cannot be resumed.",
    )


class EvalRun(ApiModel):
    """An evaluation of one model on lmms-eval tasks, run as a GPU Job."""

    model_config = ConfigDict(extra="ignore")

    api_version: str = Field(default="eval.lmms.dev/v1alpha1")
    kind: str = Field(default="EvalRun")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: EvalRunSpec
    status: EvalRunStatus = Field(default_factory=EvalRunStatus)
