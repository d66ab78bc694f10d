"""Every phase, condition type, condition reason and Event reason the operator uses, in
one place (CamelCase)."""

from __future__ import annotations

from ..api import runner as _runner

# Phases of an EvalRun (status.phase; some double as the reason of that phase).
PENDING = "Pending"
QUEUED = "Queued"
RUNNING = "Running"
SUCCEEDED = "Succeeded"
FAILED = "Failed"
CANCELLED = "Cancelled"
PHASES = (PENDING, QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
ACTIVE = frozenset({PENDING, QUEUED, RUNNING})
# Kubernetes' own words the status is read from: pod phases and Job condition types.
POD_RUNNING = "Running"
POD_SUCCEEDED = "Succeeded"
POD_FAILED = "Failed"
JOB_COMPLETE = "Complete"
JOB_FAILED = "Failed"

# Condition types of an EvalRun (KEP-1623; Ready/Reconciling/Stalled as kstatus reads them).
READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
SUSPENDED_CONDITION = "Suspended"
# The Job-like pair `kubectl wait --for=condition=...` waits on: Complete is True once the
# run Succeeded, Failed once it Failed or was Cancelled (each False until then).
COMPLETE = "Complete"
FAILED_CONDITION = "Failed"
OUTCOMES = (
    (COMPLETE, frozenset({SUCCEEDED})),
    (FAILED_CONDITION, frozenset({FAILED, CANCELLED})),
)
POD_SCHEDULED = "PodScheduled"
RUNNER_REACHABLE = "RunnerReachable"
LEADERBOARD_PUBLISHED = "LeaderboardPublished"
HARNESS_PATCHED = "HarnessPatched"
# Condition type of a Leaderboard stored in S3.
OBJECT_STORE_SYNCED = "ObjectStoreSynced"

# Phase reasons while the run is active.
JOB_PENDING = "JobPending"
SCHEDULING = "Scheduling"
STARTING = "Starting"
RETRYING = "Retrying"
SUSPENDED = "Suspended"
#: Kueue evicted the run's Workload for one of higher priority: queued again, not failed.
PREEMPTED = "Preempted"
#: Kueue cannot admit the run's Workload (its LocalQueue or ClusterQueue is missing...).
INADMISSIBLE = "Inadmissible"
UNSCHEDULABLE = "Unschedulable"
IMAGE_PULL_BACKOFF = "ImagePullBackOff"
CONTAINER_CONFIG_ERROR = "ContainerConfigError"
WAITING_FOR_REFERENCES = "WaitingForReferences"
#: The run's spec.model.endpoint or spec.judge is not ready yet: no Job, no GPU held.
WAITING_FOR_MODEL = "WaitingForModel"
#: Pending reasons of a spec pass that is retried (admission waits for something).
ADMISSION_WAITS = frozenset({WAITING_FOR_REFERENCES, WAITING_FOR_MODEL})
SCHEDULED = "Scheduled"
#: An engine run whose runner waits for the engine to serve the model.
MODEL_LOADING = "ModelLoading"

# Terminal reasons.
REUSED = "Reused"
INVALID_SPEC = "InvalidSpec"
INVALID_SECRET = "InvalidSecret"
REFERENCES_NOT_FOUND = "ReferencesNotFound"
#: The endpoint was not ready within its waitSeconds.
MODEL_NOT_READY = "ModelNotReady"
IMAGE_PULL_ERROR = "ImagePullError"
OOM_KILLED = "OOMKilled"
DEADLINE_EXCEEDED = "DeadlineExceeded"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
RUNNER_ERROR = "RunnerError"
JOB_DELETED = "JobDeleted"
POD_CREATION_FAILED = "PodCreationFailed"
NO_RESULTS = "NoResults"
#: The engine server of an engine run (spec.model.engine) exited.
ENGINE_FAILED = "EngineFailed"
#: The runner's own reasons (its termination message): the node's NVIDIA driver is older
#: than the image's torch needs, or the pod's GPUs cannot be reached.
DRIVER_TOO_OLD = _runner.DRIVER_TOO_OLD
NO_GPU = _runner.NO_GPU
#: A pass raised what is neither the spec's fault nor transient: the operator's bug.
INTERNAL_ERROR = "InternalError"

# Events about the operator's own actions.
JOB_CREATED = "JobCreated"
JOB_REPLACED = "JobReplaced"
JOB_SUSPENDED = "JobSuspended"
JOB_RESUMED = "JobResumed"
JOB_STOPPED = "JobStopped"
RESULTS_COLLECTED = "ResultsCollected"
RESULTS_NOT_IN_OBJECT_STORE = "ResultsNotInObjectStore"
PUBLISH_FAILED = "PublishFailed"
RESULTS_NOT_UPLOADED = "ResultsNotUploaded"
SAMPLES_KEPT = "SamplesKept"
SAMPLES_NOT_KEPT = "SamplesNotKept"
LEADERBOARD_STORE_FAILED = "ObjectStoreWriteFailed"
LEADERBOARD_STORE_WRITTEN = "Written"
# RunnerReachable: condition reasons, and the Events when it changes.
SCRAPED = "Scraped"
SCRAPE_FAILED = "ScrapeFailed"
RUNNER_UNREACHABLE = "RunnerUnreachable"
# Events on the leader Lease (``--leader-elect``), client-go's reason.
LEADER_ELECTION = "LeaderElection"
# HarnessPatched: the runner patched the lmms-eval it found, or runs it plain.
KNOWN_HARNESS = "KnownVersion"
UNKNOWN_HARNESS = "UnknownHarnessVersion"

FAILURE_REASONS = (
    INVALID_SPEC,
    INVALID_SECRET,
    REFERENCES_NOT_FOUND,
    MODEL_NOT_READY,
    UNSCHEDULABLE,
    IMAGE_PULL_ERROR,
    CONTAINER_CONFIG_ERROR,
    POD_CREATION_FAILED,
    OOM_KILLED,
    DEADLINE_EXCEEDED,
    BACKOFF_LIMIT_EXCEEDED,
    RUNNER_ERROR,
    DRIVER_TOO_OLD,
    NO_GPU,
    NO_RESULTS,
    ENGINE_FAILED,
    JOB_DELETED,
    INTERNAL_ERROR,
)
