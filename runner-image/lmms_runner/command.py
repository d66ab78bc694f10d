"""The lmms-eval invocation, as an argument list (never through a shell)."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lmms_operator import concurrency

from .config import RunConfig

#: Variables a scheduler or an outer launcher may leak into the pod; lmms-eval's own
#: job scheduler strips the same ones before it starts accelerate.
LEAKED_DISTRIBUTED_ENV = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "GROUP_RANK",
    "ROLE_RANK",
    "TORCHELASTIC_RUN_ID",
)


@dataclass(frozen=True)
class Distributed:
    """How lmms-eval is started over the pod's GPUs (and nodes). ``model_parallel``
    (spec.model.multiGPU ModelParallel): one process spreading the model over the GPUs;
    otherwise one process per GPU (data parallel)."""

    gpus: int = 1
    nodes: int = 1
    node_rank: int = 0
    master_addr: str = ""
    master_port: int = 29500
    model_parallel: bool = False

    @classmethod
    def from_env(cls, cfg: RunConfig, env: Mapping[str, str]) -> Distributed:
        nodes = int(env.get("LMMS_NNODES") or cfg.spec.resources.nodes)
        return cls(
            gpus=int(env.get("LMMS_NPROC_PER_NODE") or cfg.spec.resources.gpus or 1),
            nodes=nodes,
            node_rank=int(env.get("LMMS_NODE_RANK") or 0),
            master_addr=env.get("LMMS_MASTER_ADDR", ""),
            master_port=int(env.get("LMMS_MASTER_PORT") or 29500),
            model_parallel=cfg.spec.model.multi_gpu == "ModelParallel",
        )


def _concurrency(cfg: RunConfig) -> dict[str, str]:
    model = cfg.spec.model
    return concurrency.model_args(model.type, model.concurrency)


def model_args(cfg: RunConfig) -> str:
    """--model_args: pretrained, revision, the preset's and the spec's args, and (model
    parallel) device_map=auto unless the args set a device_map of their own; a served
    model's are the openai backend's own (served.model_args)."""
    if cfg.served:
        return ",".join(f"{k}={v}" for k, v in {**cfg.model_args, **_concurrency(cfg)}.items())
    parts: list[str] = []
    if cfg.pretrained:
        parts.append(f"pretrained={cfg.pretrained}")
    if cfg.spec.model.revision:
        parts.append(f"revision={cfg.spec.model.revision}")
    parts += [f"{k}={v}" for k, v in cfg.model_args.items() if k not in ("pretrained", "revision")]
    if cfg.spec.model.multi_gpu == "ModelParallel" and "device_map" not in cfg.model_args:
        parts.append("device_map=auto")
    parts += [f"{k}={v}" for k, v in _concurrency(cfg).items()]
    return ",".join(parts)


def in_flight(cfg: RunConfig, cpus: int | None = None) -> int | None:
    """The most requests lmms-eval keeps in flight to an OpenAI-compatible server (None:
    the backend holds the model, or talks to another API)."""
    model = cfg.spec.model
    return concurrency.in_flight(
        model.type, model.concurrency, cfg.model_args, cpus or os.cpu_count() or 1
    )


def gen_kwargs(cfg: RunConfig) -> str:
    gen = cfg.spec.evaluation.generation
    if gen is None:
        return ""
    pairs = {
        "temperature": gen.temperature,
        "max_new_tokens": gen.max_new_tokens,
        "top_p": gen.top_p,
        "num_beams": gen.num_beams,
        "do_sample": gen.do_sample,
    }
    return ",".join(f"{k}={v}" for k, v in pairs.items() if v is not None)


def launcher(dist: Distributed, python: str = sys.executable) -> list[str]:
    """torchrun over the nodes; accelerate with one process per GPU (data parallel);
    else one process (one GPU, or model parallel over all of them)."""
    if dist.nodes > 1:
        return [
            python,
            "-m",
            "torch.distributed.run",
            f"--nnodes={dist.nodes}",
            f"--node_rank={dist.node_rank}",
            f"--nproc_per_node={dist.gpus}",
            f"--master_addr={dist.master_addr}",
            f"--master_port={dist.master_port}",
            "-m",
            "lmms_runner.lmms_eval_main",
        ]
    if dist.gpus > 1 and not dist.model_parallel:
        return [
            python,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(dist.gpus),
            "--num_machines",
            "1",
            "-m",
            "lmms_runner.lmms_eval_main",
        ]
    return [python, "-m", "lmms_runner.lmms_eval_main"]


def build(
    cfg: RunConfig,
    output_dir: str,
    include_paths: Sequence[str] = (),
    cache_file: str | None = None,
    dist: Distributed | None = None,
    tasks: list[str] | None = None,
) -> list[str]:
    ev = cfg.spec.evaluation
    argv = launcher(dist or Distributed())
    argv += ["--model", cfg.spec.model.type]
    margs = model_args(cfg)
    if margs:
        argv += ["--model_args", margs]
    argv += ["--tasks", ",".join(tasks or cfg.tasks)]
    for path in include_paths:
        argv += ["--include_path", path]
    argv += ["--batch_size", str(ev.batch_size)]
    if ev.limit is not None:
        argv += ["--limit", str(ev.limit)]
    if ev.num_fewshot is not None:
        argv += ["--num_fewshot", str(ev.num_fewshot)]
    argv += ["--seed", str(ev.seed)]
    gk = gen_kwargs(cfg)
    if gk:
        argv += ["--gen_kwargs", gk]
    if ev.log_samples:
        argv.append("--log_samples")
    if cache_file:
        argv += ["--use_cache", cache_file]
    argv += ["--output_path", output_dir, "--timezone", "UTC", "--verbosity", ev.verbosity]
    return argv


def child_env(env: Mapping[str, str], dist: Distributed) -> dict[str, str]:
    out = dict(env)
    if dist.nodes == 1:
        for name in LEAKED_DISTRIBUTED_ENV:
            out.pop(name, None)
    out.setdefault("PYTHONUNBUFFERED", "1")
    # lmms-eval needs no token in its own environment besides what the user gave.
    out.pop("LMMS_RUNNER_TOKEN", None)
    out.pop("AWS_ACCESS_KEY_ID", None)
    out.pop("AWS_SECRET_ACCESS_KEY", None)
    out.pop("AWS_SESSION_TOKEN", None)
    return out
