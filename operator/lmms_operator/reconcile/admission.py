"""Admission: what makes the cluster match a run's spec (new, edited, resumed,
cancelled). Pure: a function of a snapshot read beforehand (``lmms_operator.reads``).

A spec whose status does not reflect it yet is validated, its referenced objects are
checked, the previous evaluation's Job is stopped, and the evaluation's objects are
planned (or, when every task was evaluated before with the same identity, its results
are reused: no Job, no GPU).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api import EvalRunSpec
from ..errors import Problem
from . import columns, kueue, modelendpoint, modelwait, publishing, reuse
from . import job as jobs
from . import reasons as R
from . import shards as shard_plan
from . import status as st
from .observation import job_deleted, observe_job
from .plan import Create, Evaluation, Event, Plan, StatusPatch
from .times import fmt_time
from .validate import Policy


@dataclass(frozen=True)
class Rules:
    """The admin's settings that admission applies (values, from ``config.Settings``)."""

    policy: Policy
    runner: jobs.RunnerDefaults
    timeouts: st.Timeouts
    reference_timeout: float = 600.0


@dataclass(frozen=True)
class Lookup:
    """The run's evaluation identity and the index entries found for its tasks."""

    key: dict[str, Any]
    entries: dict[str, reuse.Entry]  # entry of the task list -> its index entry
    missing: list[str]
    restore: tuple[Mapping[str, Any], ...] = ()  # entries found only in the bucket


@dataclass(frozen=True)
class References:
    """What the run's referenced objects looked like: ConfigMaps and PVCs that exist;
    Secrets usable by EvalRuns, by name (None: missing or not labelled usable)."""

    config_maps: frozenset[str] = frozenset()
    pvcs: frozenset[str] = frozenset()
    secrets: Mapping[str, Mapping[str, bytes] | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """Everything an admission pass reads before it decides."""

    run: Mapping[str, Any]
    spec: EvalRunSpec
    now: dt.datetime
    waited: float = 0.0  # seconds this generation has waited for references
    references: References = References()
    run_has_jobs: bool = False  # any Job of the run (read when cancelling)
    stale_jobs: bool = False  # Jobs of a previous spec
    job: Mapping[str, Any] | None = None  # the Job of this spec, when it exists
    pods: tuple[Mapping[str, Any], ...] = ()
    token: str | None = None  # from an existing token Secret
    new_token: str = ""  # a fresh random token, for a new token Secret
    custom: tuple[Mapping[str, Any], ...] = ()  # custom-task ConfigMaps
    lookup: Lookup | None = None
    job_shards: tuple[shard_plan.Shard, ...] = ()  # the assignment of an existing Job
    policy_known: bool = False  # the namespace's runner NetworkPolicy was made already
    refused: str | None = None  # the API server refused an object of the evaluation
    token_exists: bool = False  # the token Secret is there: the Job reads its token from it
    publish_failures: int = 0  # Leaderboard publishes of reused results that failed so far
    publish_failed: str | None = None  # the last one, when it will not be retried
    workload: kueue.Workload | None = None  # a queued run's Kueue Workload (of ``job``)
    endpoints: Mapping[str, modelendpoint.Readiness] = field(default_factory=dict)  # by field


def run_selector(uid: str) -> str:
    return f"{jobs.LABEL_RUN_UID}={uid}"


def is_fresh(run: Mapping[str, Any]) -> bool:
    """A run that never had a status nor another spec: nothing of another spec to stop,
    and no Job of its own yet (saves the reads per new run)."""
    return not run.get("status") and int(run["metadata"].get("generation") or 1) == 1


def invalid(
    run: Mapping[str, Any], problems: list[Problem], now: dt.datetime, reason: str = R.INVALID_SPEC
) -> Plan:
    """The spec no longer describes a runnable evaluation: stop whatever ran before."""
    status = run.get("status") or {}
    meta = run["metadata"]
    message = "; ".join(str(p) for p in problems)
    ob = st.Observation(R.FAILED, reason, message, completion_time=fmt_time(now))
    before = {"conditions": status.get("conditions") or [], "phase": status.get("phase")}
    plan = Plan(delete=[run_selector(meta["uid"])])
    return plan.then(st.transition(before, ob, _generation(run), None, None, now))


def decide(snap: Snapshot, rules: Rules) -> Plan:
    """The plan that makes the cluster match the spec; a status it writes names the
    model and the tasks (the Model and Tasks columns)."""
    plan = _decide(snap, rules)
    if plan.status:
        status = snap.run.get("status") or {}
        new = status.get("specHash") != jobs.spec_hash(snap.spec)
        add = columns.missing_columns(
            status, snap.run.get("spec") or {}, shard_plan.units(snap.spec), new=new
        )
        plan.status = StatusPatch(**{**add, **plan.status})  # the plan's own values win
    return plan


def _decide(snap: Snapshot, rules: Rules) -> Plan:
    run, spec, now = snap.run, snap.spec, snap.now
    meta = run["metadata"]
    name, uid, generation = meta["name"], meta["uid"], _generation(run)
    status = dict(run.get("status") or {})
    hash_ = jobs.spec_hash(spec)
    if spec.cancel:
        return _cancelled(snap, status, hash_)
    plan = Plan()
    if not is_fresh(run):
        plan.delete.append(f"{run_selector(uid)},{jobs.LABEL_SPEC_HASH}!={hash_}")
        if snap.stale_jobs:
            message = "the spec changed: the previous evaluation's Job was deleted"
            plan.events.append(Event("Normal", R.JOB_REPLACED, message))
    same_evaluation = status.get("specHash") == hash_
    if same_evaluation and status.get("phase") in st.TERMINAL:
        # Finished: never start it again (its Job may be gone after ttlSecondsAfterFinished).
        if status.get("observedGeneration") != generation:
            plan.status = StatusPatch(
                observedGeneration=generation,
                conditions=[
                    dict(c, observedGeneration=generation) for c in status.get("conditions") or []
                ],
            )
        return plan
    missing, problems = check_references(spec, snap.references)
    if missing:
        message = "; ".join(missing)
        if snap.waited >= rules.reference_timeout:
            problem = Problem("spec", f"{message} (waited {int(snap.waited)}s)")
            return plan.then(invalid(run, [problem], now, R.REFERENCES_NOT_FOUND))
        # The previous evaluation's Job is stopped all the same (plan.delete).
        waiting = waiting_for_references(run, message, now)
        waiting.retry_after = REFERENCE_RETRY
        return plan.then(waiting)
    if problems:
        return plan.then(invalid(run, problems, now, R.INVALID_SECRET))
    if snap.refused is not None:
        problem = Problem("spec", f"the API server refused the Job: {snap.refused}")
        return plan.then(invalid(run, [problem], now))
    desired_name = jobs.job_name(name, uid, hash_)
    job = dict(snap.job) if snap.job is not None else None
    shards: list[shard_plan.Shard] | None = None
    if job is None:
        if same_evaluation and status.get("jobName") == desired_name:
            ob = job_deleted(desired_name, status, now)
            return plan.then(st.transition(status, ob, generation, hash_, desired_name, now))
        if spec.suspend:
            return plan.then(_held_before_start(snap, status, hash_))
        lookup = snap.lookup
        plan.create += [Create(cm, best_effort=True) for cm in (lookup.restore if lookup else ())]
        if lookup is not None and lookup.entries and not lookup.missing:
            return plan.then(_reused(snap, status, hash_, desired_name, lookup))
        if (held := modelwait.plan(run, snap.endpoints, snap.waited, now)) is not None:
            return plan.then(held)
        evaluate = lookup.missing if lookup is not None and lookup.entries else None
        shards = _shard_plan(spec, snap.custom, evaluate)
        plan.evaluation = _evaluation(snap, rules, desired_name, hash_, shards, evaluate)
        plan.events += _created_events(desired_name, snap.lookup)
        job = dict(plan.evaluation.job)
    else:
        plan = plan.then(_pause(snap, job))
    if not same_evaluation:
        if status.get("shards") and spec.parallelism <= 1:
            plan.status["shards"] = None  # the previous evaluation's assignment
        if status.get("reused"):
            plan.status["reused"] = None
        status = {"conditions": status.get("conditions") or []}
    ob = observe_job(spec, job, [dict(p) for p in snap.pods], now, rules.timeouts, snap.workload)
    plan = plan.then(st.transition(status, ob, generation, hash_, desired_name, now))
    if spec.parallelism > 1 and not status.get("shards"):
        # The assignment the Job runs with: its ConfigMap's, when the Job was there.
        assignment = shards if shards is not None else list(snap.job_shards)
        if len(assignment) > 1:
            plan.status["shards"] = [s.to_status() for s in assignment]
    return plan


#: Seconds between two looks for a missing referenced object.
REFERENCE_RETRY = 10.0


def _generation(run: Mapping[str, Any]) -> int:
    return int(run["metadata"].get("generation") or 1)


def _cancelled(snap: Snapshot, status: dict[str, Any], hash_: str) -> Plan:
    run, now = snap.run, snap.now
    uid, generation = run["metadata"]["uid"], _generation(run)
    plan = Plan(delete=[run_selector(uid)])
    if status.get("phase") == R.CANCELLED and status.get("observedGeneration") == generation:
        return plan
    ob = st.Observation(
        R.CANCELLED,
        R.CANCELLED,
        "spec.cancel is true: the evaluation was stopped"
        + (" and its Job deleted" if snap.run_has_jobs else ""),
        completion_time=fmt_time(now),
    )
    return plan.then(st.transition(status, ob, generation, hash_, status.get("jobName"), now))


def _pause(snap: Snapshot, job: dict[str, Any]) -> Plan:
    """Suspends or resumes the existing Job as spec.suspend says: through its Workload
    when the run is queued (Kueue owns the Job's suspend)."""
    if kueue.queue_of(snap.spec.scheduling.queue_name, job):
        age = kueue.job_age(job, snap.now)
        return kueue.hold(snap.spec.suspend, snap.workload, age=age)
    return suspend_plan(snap.spec, job)


def _held_before_start(snap: Snapshot, status: dict[str, Any], hash_: str) -> Plan:
    """A run suspended before it had a Job gets none until resumed: Kueue could admit a Job
    created suspended (queued, or in a namespace with a ``default`` LocalQueue) at once."""
    queue = snap.spec.scheduling.queue_name
    where = f", and queued in LocalQueue {queue!r}," if queue else ""
    message = f"spec.suspend is true: the Job is created{where} once it is false"
    ob = st.Observation(R.QUEUED, R.SUSPENDED, message)
    same = status.get("specHash") == hash_
    before = status if same else {"conditions": status.get("conditions") or []}
    return st.transition(before, ob, _generation(snap.run), hash_, None, snap.now)


def _evaluation(
    snap: Snapshot,
    rules: Rules,
    name: str,
    hash_: str,
    shards: list[shard_plan.Shard],
    evaluate: list[str] | None,
) -> Evaluation:
    """The objects of the evaluation, in their order of creation."""
    meta = snap.run["metadata"]
    run = jobs.RunRef(meta["name"], meta["namespace"], meta["uid"])
    lookup = snap.lookup
    key = lookup.key if lookup is not None else None
    token = snap.token or snap.new_token
    desired = jobs.build(run, snap.spec, rules.runner, token, shards, evaluate, key)
    modelendpoint.adapt(desired.job, snap.spec, snap.endpoints)
    before: list[Mapping[str, Any]] = []
    if lookup is not None and lookup.entries:
        before.append(reuse.kept_config_map(run, name, hash_, lookup.key, lookup.entries))
    if not snap.policy_known:
        policy = jobs.namespace_network_policy(run.namespace, rules.runner)
        if policy is not None:
            before.append(policy)
    if desired.network_policy is not None:
        before.append(desired.network_policy)
    before.append(desired.config_map)
    if desired.service is not None:
        before.append(desired.service)
    return Evaluation(
        token_secret=desired.token_secret,
        job=desired.job,
        before_job=tuple(before),
        # An existing Secret's token is the one the runner reads (secretKeyRef).
        token_known=snap.token is not None or snap.token_exists,
    )


def _created_events(name: str, lookup: Lookup | None) -> list[Event]:
    """The Events of an evaluation this pass creates (an attempt that finds its Job or
    token Secret there already plans again, so these are recorded only by the one that
    made them)."""
    events = [Event("Normal", R.JOB_CREATED, f"created Job {name}")]
    if lookup is not None and lookup.entries and lookup.missing:
        events.append(
            Event(
                "Normal",
                R.REUSED,
                f"{len(lookup.entries)} task(s) evaluated before with the same identity "
                f"were reused; the Job evaluates the other {len(lookup.missing)}: "
                + ", ".join(lookup.missing)[:500],
            )
        )
    return events


def _shard_plan(
    spec: EvalRunSpec, custom: tuple[Mapping[str, Any], ...], names: list[str] | None
) -> list[shard_plan.Shard]:
    """The fan-out assignment: custom tasks weigh the documents of their data files."""
    if spec.parallelism <= 1:
        return []
    counts: dict[str, int] = {}
    budget = shard_plan.Budget()  # for all of the run's ConfigMaps together
    for source, cm in zip(spec.custom_tasks, custom, strict=True):
        found = shard_plan.custom_task_documents(cm.get("data") or {}, budget)
        counts.update({t: n for t, n in found.items() if t in source.tasks})
    return shard_plan.plan(spec, counts, names)


def shards_of_config(cm: Mapping[str, Any] | None) -> list[shard_plan.Shard]:
    """The assignment in a Job's run configuration ConfigMap (made by an earlier pass)."""
    try:
        raw = json.loads(((cm or {}).get("data") or {}).get("config.json") or "{}")
    except ValueError:
        return []
    shards = raw.get("shards") if isinstance(raw, dict) else None
    return [
        shard_plan.Shard(i, tuple(map(str, tasks)), None) for i, tasks in enumerate(shards or [])
    ]


def _reused(
    snap: Snapshot, status: dict[str, Any], hash_: str, job_name: str, lookup: Lookup
) -> Plan:
    """Every task was evaluated before: Succeeded (reason Reused) with their results,
    published as a run's are, and no Job, no GPU."""
    run, spec, now = snap.run, snap.spec, snap.now
    units = shard_plan.units(spec)
    entries = [lookup.entries[u] for u in units]
    summary = reuse.in_unit_order(reuse.reused_summary(entries), units)
    runs = sorted({f"{e.source.namespace}/{e.source.run}" for e in entries})
    ob = st.Observation(
        R.SUCCEEDED,
        R.REUSED,
        f"every task was evaluated before with the same identity: the results of "
        f"{', '.join(runs)[:500]} are reused (no Job, no GPU)",
        completion_time=fmt_time(now),
    )
    fresh = {"conditions": status.get("conditions") or []}
    plan = st.transition(fresh, ob, _generation(run), hash_, None, now)
    plan.status["reused"] = reuse.reused_status(entries, run["metadata"]["namespace"])
    # The results ConfigMap is named as the Job would have been: unique to run and spec.
    after = {**status, **plan.status, "jobName": job_name}
    inputs = publishing.Inputs(
        summary=summary,
        image=entries[0].source.image,
        source=publishing.FROM_INDEX,
        publish_failures=snap.publish_failures,
        publish_failed=snap.publish_failed,
    )
    return plan.then(publishing.decide(run, spec, after, inputs, now))


#: What a run hears about a Secret it may not use, whether or not the Secret exists.
SECRET_NOT_USABLE = (
    "is not usable by EvalRuns: it must exist and be labelled eval.lmms.dev/usable-by-evalruns=true"
)


def secret_refs(spec: EvalRunSpec) -> list[tuple[str, str, tuple[str, ...]]]:
    """The Secrets a spec names: (field, Secret name, the keys it needs)."""
    refs: list[tuple[str, str, tuple[str, ...]]] = []
    if spec.model.api_key is not None:
        ref = spec.model.api_key.secret_key_ref
        refs.append(("spec.model.apiKey.secretKeyRef", ref.name, (ref.key,)))
    refs += modelendpoint.secret_refs(spec)
    if spec.hugging_face_token is not None:
        ref = spec.hugging_face_token.secret_key_ref
        refs.append(("spec.huggingFaceToken.secretKeyRef", ref.name, (ref.key,)))
    s3 = spec.output.s3 if spec.output else None
    if s3 is not None and s3.credentials_secret:
        keys: tuple[str, ...] = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        refs.append(("spec.output.s3.credentialsSecret", s3.credentials_secret, keys))
    return refs


def check_references(spec: EvalRunSpec, refs: References) -> tuple[list[str], list[Problem]]:
    """Objects the run references must exist before its Job is created: what is missing
    (or, for a Secret, not marked usable by EvalRuns), and problems of a Secret that is
    usable but cannot serve (a missing key, an empty or binary value)."""
    missing: list[str] = []
    problems: list[Problem] = []
    for i, source in enumerate(spec.custom_tasks):
        if source.config_map not in refs.config_maps:
            missing.append(
                f"spec.customTasks[{i}].configMap: ConfigMap {source.config_map!r} not found"
            )
    for field_, name, keys in secret_refs(spec):
        data = refs.secrets.get(name)
        if data is None:
            missing.append(f"{field_}: Secret {name!r} {SECRET_NOT_USABLE}")
            continue
        for key in keys:
            problem = _secret_value_problem(data.get(key))
            if problem:
                problems.append(Problem(field_, f"key {key!r} of Secret {name!r} {problem}"))
    if spec.cache is not None and spec.cache.persistent_volume_claim not in refs.pvcs:
        missing.append(
            f"spec.cache.persistentVolumeClaim: PersistentVolumeClaim "
            f"{spec.cache.persistent_volume_claim!r} not found"
        )
    return missing, problems


def _secret_value_problem(value: bytes | None) -> str | None:
    if value is None:
        return "is missing"
    if not value.strip():
        return "is empty"
    try:
        value.decode()
    except UnicodeDecodeError:
        return "is not UTF-8 text"
    return None


def suspend_plan(spec: EvalRunSpec, job: dict[str, Any]) -> Plan:
    """Suspends or resumes the Job as the spec says (a queued run's Job is Kueue's:
    ``kueue.hold`` holds it through its Workload instead)."""
    suspended = bool((job.get("spec") or {}).get("suspend"))
    name = job["metadata"]["name"]
    if spec.suspend and not suspended:
        job.setdefault("spec", {})["suspend"] = True
        return Plan(
            suspend=(name, True),
            events=[Event("Normal", R.JOB_SUSPENDED, "spec.suspend is true: the Job is suspended")],
        )
    if not spec.suspend and suspended and not kueue.queue_of(spec.scheduling.queue_name, job):
        job.setdefault("spec", {})["suspend"] = False
        return Plan(
            suspend=(name, False),
            events=[Event("Normal", R.JOB_RESUMED, "spec.suspend is false: the Job is resumed")],
        )
    return Plan()


def waiting_for_references(run: Mapping[str, Any], message: str, now: dt.datetime) -> Plan:
    """Status while referenced objects are missing (the pass is retried)."""
    status = dict(run.get("status") or {})
    ob = st.Observation(R.PENDING, R.WAITING_FOR_REFERENCES, message)
    return st.transition(
        status, ob, _generation(run), status.get("specHash"), status.get("jobName"), now
    )
