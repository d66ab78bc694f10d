"""The API types of ``eval.lmms.dev/v1alpha1``: the single source of truth."""

from .base import API_VERSION, GROUP, VERSION, ApiModel
from .endpoint import (
    EndpointRef,
    InferenceServiceRef,
    JudgeSpec,
    SecretKeyRef,
    SecretSource,
    ServiceEndpoint,
)
from .evalrun import (
    CustomTaskSource,
    EnvVar,
    EvalRun,
    EvalRunSpec,
    EvaluationSpec,
    GenerationSpec,
    ModelSpec,
)
from .leaderboard import Leaderboard, LeaderboardEntry, LeaderboardSpec, LeaderboardStatus
from .output import CacheSpec, OutputSpec, S3Output
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
    "EndpointRef",
    "EnvVar",
    "EvalRun",
    "EvalRunSpec",
    "EvalRunStatus",
    "EvaluationSpec",
    "GenerationSpec",
    "InferenceServiceRef",
    "JudgeSpec",
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
    "ServiceEndpoint",
    "ShardStatus",
    "TaskProgress",
    "parse_spec",
]
