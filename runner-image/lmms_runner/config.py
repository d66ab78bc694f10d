"""The run configuration: an EvalRun manifest (or only its spec), read with the
operator's own API types, so a workstation run and a pod run mean the same thing."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from lmms_operator import concurrency, presets
from lmms_operator.api import EvalRunSpec, parse_spec
from lmms_operator.errors import InvalidSpec


class ConfigError(ValueError):
    """The configuration cannot be run; retrying will not help (exit code 2)."""


@dataclass(frozen=True)
class RunConfig:
    spec: EvalRunSpec
    name: str
    pretrained: str | None
    model_args: dict[str, str]
    config_hash: str
    #: The operator's fan-out assignment (spec.parallelism): each Job index's tasks.
    shards: tuple[tuple[str, ...], ...] = ()
    #: This pod's index in ``shards`` (LMMS_SHARD_INDEX), when the run is sharded.
    shard: int | None = None
    #: The tasks left to evaluate when the operator reused the others' results.
    evaluate: tuple[str, ...] | None = None
    #: A model server serves the model (LMMS_MODEL_URL, see served.py): ``model_args``
    #: are the openai backend's whole --model_args, with no pretrained= or revision=.
    served: bool = False

    @property
    def tasks(self) -> list[str]:
        """Every task to evaluate: spec.tasks, then custom tasks not already listed; a
        shard's own tasks when the run is sharded; those left after reuse."""
        if self.shard is not None:
            return list(self.shards[self.shard])
        if self.evaluate is not None:
            return list(self.evaluate)
        seen: list[str] = list(self.spec.tasks)
        for source in self.spec.custom_tasks:
            seen += [t for t in source.tasks if t not in seen]
        return seen

    @property
    def state_key(self) -> str:
        """Names this pod's resume state and upload folder: shards never share one."""
        return self.config_hash if self.shard is None else f"{self.config_hash}-shard-{self.shard}"

    def for_shard(self, value: str | None) -> RunConfig:
        """This configuration for the shard ``value`` (LMMS_SHARD_INDEX) names."""
        if not self.shards:
            return self
        if value is None or not value.strip().isdigit() or int(value) >= len(self.shards):
            raise ConfigError(
                f"the configuration assigns tasks to {len(self.shards)} shards, and "
                f"LMMS_SHARD_INDEX is {value!r}: expected 0 to {len(self.shards) - 1}"
            )
        return replace(self, shard=int(value))


def load(path: Path) -> RunConfig:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not YAML or JSON: {exc}") from None
    return from_document(raw, source=str(path))


def from_document(raw: Any, source: str = "config") -> RunConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected an EvalRun manifest or its spec")
    if raw.get("kind") == "EvalRun" or "spec" in raw:
        spec_raw = raw.get("spec")
        name = str((raw.get("metadata") or {}).get("name") or "evalrun")
    else:
        spec_raw, name = raw, "evalrun"
    try:
        spec = parse_spec(spec_raw)
    except InvalidSpec as exc:
        raise ConfigError(str(exc)) from None
    if not spec.tasks and not any(s.tasks for s in spec.custom_tasks):
        raise ConfigError("spec.tasks: at least one task is required")
    if spec.model.multi_gpu == "ModelParallel" and spec.resources.nodes > 1:
        raise ConfigError(
            "spec.model.multiGPU: ModelParallel runs in one pod; resources.nodes is "
            f"{spec.resources.nodes}"
        )
    pretrained, args = presets.resolve(spec.model.type, spec.model.pretrained, spec.model.args)
    found = concurrency.problems(spec.model.type, spec.model.concurrency, args)
    if found:
        raise ConfigError("; ".join(str(p) for p in found))
    canonical = json.dumps(
        spec.model_dump(mode="json", by_alias=True, exclude={"suspend"}), sort_keys=True
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return RunConfig(
        spec=spec,
        name=name,
        pretrained=pretrained,
        model_args=args,
        config_hash=digest,
        shards=_shards(raw.get("shards"), source),
        evaluate=_evaluate(raw.get("evaluate"), source),
    )


def _evaluate(raw: Any, source: str) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(t, str) for t in raw):
        raise ConfigError(f"{source}: evaluate must be a non-empty list of task names")
    return tuple(raw)


def _shards(raw: Any, source: str) -> tuple[tuple[str, ...], ...]:
    if raw is None:
        return ()
    if (
        not isinstance(raw, list)
        or not raw
        or not all(isinstance(s, list) and s and all(isinstance(t, str) for t in s) for s in raw)
    ):
        raise ConfigError(f"{source}: shards must be a list of non-empty lists of task names")
    return tuple(tuple(s) for s in raw)
