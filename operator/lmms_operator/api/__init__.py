"""The API types of ``eval.lmms.dev/v1alpha1``: the single source of truth."""

from .base import API_VERSION, GROUP, VERSION, ApiModel
from .evalrun import (
    CacheSpec,
    CustomTaskSource,
    EnvVar,
    EvalRun,
    EvalRunSpec,
    EvaluationSpec,
    GenerationSpec,
    ModelSpec,
    OutputSpec,
    S3Output,
    SecretKeyRef,
    SecretSource,
)
from .leaderboard import Leaderboard, LeaderboardEntry, LeaderboardSpec, LeaderboardStatus
from .parse import parse_spec
from .resources import ResourcesSpec, SchedulingSpec
from .status import (
    Condition,
    EvalRunStatus,
    MetricResult,
    Phase,
    Progress,
    ReusedResult,
    ShardStatus,
    TaskProgress,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "ApiModel",
    "CacheSpec",
    "Condition",
    "CustomTaskSource",
    "EnvVar",
    "EvalRun",
    "EvalRunSpec",
    "EvalRunStatus",
    "EvaluationSpec",
    "GenerationSpec",
    "Leaderboard",
    "LeaderboardEntry",
    "LeaderboardSpec",
    "LeaderboardStatus",
    "MetricResult",
    "ModelSpec",
    "OutputSpec",
    "Phase",
    "Progress",
    "ResourcesSpec",
    "ReusedResult",
    "S3Output",
    "SchedulingSpec",
    "SecretKeyRef",
    "SecretSource",
    "ShardStatus",
    "TaskProgress",
    "parse_spec",
]
