"""The EvalRun lifecycle: validate, create the Job, keep the status truthful.

Handlers (``handlers/``) call these functions; the pure decisions live in
``reconcile/`` and every API call goes through ``k8s``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any

from . import (
    errors,
    evaluation_index,
    k8s,
    publishing,
)
from .api import (
    Condition,
    EvalRunSpec,
    Progress,
    TaskProgress,
)
from .api.runner import (
    RunnerProgress,
)
from .config import Settings
from .errors import InvalidSpec, Problem, RetryLater
from .reconcile import job as jobs
from .reconcile import reasons as R
from .reconcile import reuse
from .reconcile import shards as shard_plan
from .reconcile import status as st
from .reconcile.plan import Event, Plan
from .reconcile.validate import validate

log = logging.getLogger("lmms.controller")

TERMINAL = st.TERMINAL
#: At most this many tasks, with names of at most this length, in status.progress.
MAX_PROGRESS_TASKS = 256
MAX_TASK_NAME = 253


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _meta(body: Mapping[str, Any]) -> tuple[str, str, str, int]:
    m = body["metadata"]
    return m["name"], m["namespace"], m["uid"], int(m.get("generation") or 1)


def run_selector(uid: str) -> str:
    return f"{jobs.LABEL_RUN_UID}={uid}"


# -- applying a plan -----------------------------------------------------------------------
def apply(body: Mapping[str, Any], plan: Plan) -> None:
    """Carries out a plan for the run ``body``: children to delete, the Job's suspend,
    the status, the Events, then children to stop (once the status says why, so that
    their deletion does not read as JobDeleted)."""
    meta = body["metadata"]
    namespace = meta["namespace"]
    for selector in plan.delete:
        k8s.delete_run_children(namespace, selector)
    if plan.suspend is not None:
        k8s.patch_job_suspend(namespace, *plan.suspend)
    if plan.status:
        k8s.patch_evalrun_status(namespace, meta["name"], plan.status)
    for event in plan.events:
        k8s.event(body, event.type, event.reason, event.message)
    if plan.stop and k8s.delete_run_children(namespace, plan.stop):
        k8s.event(body, "Normal", R.JOB_STOPPED, f"deleted the Job of the run: {plan.stop_reason}")


# -- spec changes (create, update, resume) ----------------------------------------------
def ensure(body: Mapping[str, Any], settings: Settings, *, waited: float = 0.0) -> Plan:
    """What makes the cluster match the spec. Reads what it needs (referenced objects,
    the Job); creating the Job's objects is the one step done here rather than in the
    plan, since a create that finds its object there already must read it back.
    ``waited``: seconds this generation has waited for referenced objects so far; past
    ``settings.reference_timeout`` the run fails instead of waiting longer."""
    name, namespace, uid, generation = _meta(body)
    status = dict(body.get("status") or {})
    run = jobs.RunRef(name, namespace, uid)

    try:
        spec = validate(body.get("spec"), settings.policy)
    except InvalidSpec as exc:
        return _invalid(status, exc.problems, generation, uid)

    hash_ = jobs.spec_hash(spec)
    if spec.cancel:
        if status.get("phase") == "Cancelled" and status.get("observedGeneration") == generation:
            return Plan(delete=[run_selector(uid)])
        running = k8s.list_jobs(namespace, run_selector(uid))
        ob = st.Observation(
            "Cancelled",
            R.CANCELLED,
            "spec.cancel is true: the evaluation was stopped"
            + (" and its Job deleted" if running else ""),
            completion_time=st.fmt_time(_now()),
        )
        plan = Plan(delete=[run_selector(uid)])
        return plan.then(_transition(status, ob, generation, hash_, status.get("jobName")))

    # A run that never had a status nor another spec has nothing of another spec to stop
    # (saves the lists per new run).
    fresh = not status and generation == 1
    plan = Plan()
    if not fresh:
        stale = f"{run_selector(uid)},{jobs.LABEL_SPEC_HASH}!={hash_}"
        plan.delete.append(stale)
        if k8s.list_jobs(namespace, stale):
            plan.events.append(
                Event(
                    "Normal",
                    R.JOB_REPLACED,
                    "the spec changed: the previous evaluation's Job was deleted",
                )
            )

    same_evaluation = status.get("specHash") == hash_
    if same_evaluation and status.get("phase") in TERMINAL:
        # Finished: never start it again (its Job may be gone after ttlSecondsAfterFinished).
        if status.get("observedGeneration") != generation:
            plan.status = {
                "observedGeneration": generation,
                "conditions": [
                    dict(c, observedGeneration=generation) for c in status.get("conditions") or []
                ],
            }
        return plan

    try:
        problems = _check_references(spec, namespace)
    except RetryLater as exc:
        if waited >= settings.reference_timeout:
            problem = Problem("spec", f"{exc} (waited {int(waited)}s)")
            return plan.then(_invalid(status, [problem], generation, uid, R.REFERENCES_NOT_FOUND))
        # The previous evaluation's Job is stopped all the same (plan.delete).
        waiting = waiting_for_references(body, str(exc))
        waiting.retry_after = exc.delay
        return plan.then(waiting)
    if problems:
        return plan.then(_invalid(status, problems, generation, uid, R.INVALID_SECRET))
    desired_name = jobs.job_name(name, uid, hash_)
    shards: list[shard_plan.Shard] | None = None
    # A new run has no Job yet: create first and read only on conflict (an earlier
    # attempt that stopped before writing the status), two requests fewer per run.
    job = None if fresh else k8s.get_job(namespace, desired_name)
    pods: list[dict[str, Any]] = []
    if job is None:
        if same_evaluation and status.get("jobName") == desired_name:
            ob = _job_deleted(desired_name, status)
            return plan.then(_transition(status, ob, generation, hash_, desired_name))
        # The previous evaluation's Job goes before the new one asks for GPUs.
        for selector in plan.delete:
            k8s.delete_run_children(namespace, selector)
        plan.delete = []
        custom = _custom_task_data(spec, namespace)
        lookup = evaluation_index.lookup(spec, namespace, custom)
        if lookup is not None and lookup.entries and not lookup.missing:
            return plan.then(_reused(body, status, spec, generation, hash_, desired_name, lookup))
        evaluate = lookup.missing if lookup is not None and lookup.entries else None
        shards = _shard_plan(spec, custom, evaluate)
        try:
            if lookup is not None and lookup.entries:
                evaluation_index.keep_reused(run, desired_name, hash_, lookup)
            job, created = _create_children(
                run, spec, settings, desired_name, fresh, shards, evaluate, lookup
            )
        except errors.Invalid as exc:
            problem = Problem("spec", f"the API server refused the Job: {exc.message}")
            return plan.then(_invalid(status, [problem], generation, uid))
        if created:
            plan.events.append(Event("Normal", R.JOB_CREATED, f"created Job {desired_name}"))
            if evaluate is not None and lookup is not None:
                plan.events.append(
                    Event(
                        "Normal",
                        R.REUSED,
                        f"{len(lookup.entries)} task(s) evaluated before with the same identity "
                        f"were reused; the Job evaluates the other {len(evaluate)}: "
                        + ", ".join(evaluate)[:500],
                    )
                )
    else:
        plan = plan.then(_suspend_plan(spec, job))
        pods = k8s.list_pods(namespace, f"job-name={desired_name}")

    if not same_evaluation:
        if status.get("shards") and spec.parallelism <= 1:
            plan.status["shards"] = None  # the previous evaluation's assignment
        if status.get("reused"):
            plan.status["reused"] = None
        status = {"conditions": status.get("conditions") or []}
    ob = _observe_spec(spec, job, pods, settings)
    plan = plan.then(_transition(status, ob, generation, hash_, desired_name))
    if spec.parallelism > 1 and not status.get("shards"):
        # The assignment the Job runs with: its ConfigMap's, when the Job was there.
        if shards is None:
            shards = _shards_of_job(namespace, desired_name)
        if len(shards) > 1:
            plan.status["shards"] = [s.to_status() for s in shards]
    return plan


def _custom_task_data(spec: EvalRunSpec, namespace: str) -> list[dict[str, Any]]:
    """The custom-task ConfigMaps, read once for the fan-out's document counts and for
    the evaluation identity (nothing is read when neither needs them)."""
    if spec.parallelism <= 1 and reuse.not_pinned(spec):
        return []
    return [k8s.read_config_map(namespace, s.config_map) or {} for s in spec.custom_tasks]


def _shard_plan(
    spec: EvalRunSpec, custom: list[dict[str, Any]], names: list[str] | None
) -> list[shard_plan.Shard]:
    """The fan-out assignment: custom tasks weigh the documents of their data files."""
    if spec.parallelism <= 1:
        return []
    counts: dict[str, int] = {}
    for source, cm in zip(spec.custom_tasks, custom, strict=True):
        found = shard_plan.custom_task_documents(cm.get("data") or {})
        counts.update({t: n for t, n in found.items() if t in source.tasks})
    return shard_plan.plan(spec, counts, names)


# -- reuse: the evaluation index ----------------------------------------------------------------
def _reused(
    body: Mapping[str, Any],
    status: dict[str, Any],
    spec: EvalRunSpec,
    generation: int,
    hash_: str,
    job_name: str,
    lookup: evaluation_index.Lookup,
) -> Plan:
    """Every task was evaluated before: Succeeded (reason Reused) with their results,
    published as a run's are, and no Job, no GPU."""
    units = shard_plan.units(spec)
    entries = [lookup.entries[u] for u in units]
    summary = reuse.in_unit_order(reuse.reused_summary(entries), units)
    runs = sorted({f"{e.source.namespace}/{e.source.run}" for e in entries})
    ob = st.Observation(
        "Succeeded",
        R.REUSED,
        f"every task was evaluated before with the same identity: the results of "
        f"{', '.join(runs)[:500]} are reused (no Job, no GPU)",
        completion_time=st.fmt_time(_now()),
    )
    fresh = {"conditions": status.get("conditions") or []}
    plan = _transition(fresh, ob, generation, hash_, None)
    plan.status["reused"] = evaluation_index.reused_status(entries, body["metadata"]["namespace"])
    # The results ConfigMap is named as the Job would have been: unique to run and spec.
    after = {**status, **plan.status, "jobName": job_name}
    published = publishing.publish_results(
        body, after, summary, None, entries[0].source.image, source="evaluation index"
    )
    return plan.then(published)


def _shards_of_job(namespace: str, job_name: str) -> list[shard_plan.Shard]:
    """The assignment in a Job's run configuration (created by an earlier pass)."""
    cm = k8s.read_config_map(namespace, f"{job_name}-config") or {}
    try:
        raw = json.loads((cm.get("data") or {}).get("config.json") or "{}").get("shards") or []
    except ValueError:
        return []
    return [shard_plan.Shard(i, tuple(map(str, tasks)), None) for i, tasks in enumerate(raw)]


def _create_children(
    run: jobs.RunRef,
    spec: EvalRunSpec,
    settings: Settings,
    name: str,
    fresh: bool,
    shards: list[shard_plan.Shard],
    evaluate: list[str] | None = None,
    lookup: evaluation_index.Lookup | None = None,
) -> tuple[dict[str, Any], bool]:
    """Creates the token Secret, the run's ConfigMap, the rendezvous Service and the Job;
    returns the Job and whether this call created it. A Job the API server refuses
    leaves nothing behind (the token Secret is deleted; it is the only object made
    before the Job that no owner reference would clean up soon enough)."""
    namespace = run.namespace
    token_name = f"{name}-token"
    token = None if fresh else k8s.read_secret_value(namespace, token_name, "token")
    key = lookup.key if lookup is not None else None

    def build(token: str) -> jobs.Desired:
        return jobs.build(run, spec, settings.runner, token, shards, evaluate, key)

    desired = build(token or secrets.token_urlsafe(32))
    try:
        if not k8s.create(desired.token_secret) and token is None:
            # The Secret is there already: the Job must carry its token.
            token = k8s.read_secret_value(namespace, token_name, "token")
            desired = build(token or secrets.token_urlsafe(32))
        # Before the pods exist: a runner is never reachable from other runs.
        _ensure_namespace_policy(namespace, settings)
        if desired.network_policy is not None:
            k8s.create(desired.network_policy)
        k8s.create(desired.config_map)
        if desired.service is not None:
            k8s.create(desired.service)
        created = k8s.create(desired.job)
    except errors.Invalid:
        k8s.delete_secret(namespace, token_name)  # nothing half-created
        raise
    if created:
        return desired.job, True
    return k8s.get_job(namespace, name) or desired.job, False


# Namespaces whose runner NetworkPolicy this process has made or found (one create per
# namespace and process lifetime: no write per run).
_policy_namespaces: set[str] = set()


def _ensure_namespace_policy(namespace: str, settings: Settings) -> None:
    if namespace in _policy_namespaces:
        return
    policy = jobs.namespace_network_policy(namespace, settings.runner)
    if policy is not None:
        k8s.create(policy)
    _policy_namespaces.add(namespace)


def _transition(
    status: dict[str, Any],
    ob: st.Observation,
    generation: int,
    hash_: str | None,
    job_name: str | None,
) -> Plan:
    return st.transition(status, ob, generation, hash_, job_name, _now())


def _observe_spec(
    spec: EvalRunSpec, job: dict[str, Any], pods: list[dict[str, Any]], settings: Settings
) -> st.Observation:
    return st.observe(
        spec.suspend,
        spec.cancel,
        spec.scheduling.queue_name,
        spec.retries,
        spec.timeout_seconds,
        job,
        pods,
        _now(),
        settings.timeouts,
    )


def _check_references(spec: EvalRunSpec, namespace: str) -> list[Problem]:
    """Objects the run references must exist before its Job is created: RetryLater while
    one is missing (or, for a Secret, not marked usable by EvalRuns); problems for a
    Secret that is usable but cannot serve (a missing key, an empty or binary value)."""
    missing: list[str] = []
    problems: list[Problem] = []
    for i, source in enumerate(spec.custom_tasks):
        if not k8s.config_map_exists(namespace, source.config_map):
            missing.append(
                f"spec.customTasks[{i}].configMap: ConfigMap {source.config_map!r} not found"
            )
    refs: list[tuple[str, str, tuple[str, ...]]] = []
    if spec.model.api_key is not None:
        ref = spec.model.api_key.secret_key_ref
        refs.append(("spec.model.apiKey.secretKeyRef", ref.name, (ref.key,)))
    if spec.hugging_face_token is not None:
        ref = spec.hugging_face_token.secret_key_ref
        refs.append(("spec.huggingFaceToken.secretKeyRef", ref.name, (ref.key,)))
    s3 = spec.output.s3 if spec.output else None
    if s3 is not None and s3.credentials_secret:
        keys: tuple[str, ...] = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        refs.append(("spec.output.s3.credentialsSecret", s3.credentials_secret, keys))
    for field, name, keys in refs:
        data = k8s.read_tenant_secret(namespace, name)
        if data is None:
            missing.append(f"{field}: Secret {name!r} {SECRET_NOT_USABLE}")
            continue
        for key in keys:
            problem = _secret_value_problem(data.get(key))
            if problem:
                problems.append(Problem(field, f"key {key!r} of Secret {name!r} {problem}"))
    if spec.cache is not None and not k8s.pvc_exists(namespace, spec.cache.persistent_volume_claim):
        missing.append(
            f"spec.cache.persistentVolumeClaim: PersistentVolumeClaim "
            f"{spec.cache.persistent_volume_claim!r} not found"
        )
    if missing:
        raise RetryLater("; ".join(missing))
    return problems


#: What a run hears about a Secret it may not use, whether or not the Secret exists.
SECRET_NOT_USABLE = (
    f"is not usable by EvalRuns: it must exist and be labelled {k8s.USABLE_LABEL}=true"
)


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


def _suspend_plan(spec: EvalRunSpec, job: dict[str, Any]) -> Plan:
    """Suspends or resumes the Job as the spec says (with a queue, Kueue decides)."""
    suspended = bool((job.get("spec") or {}).get("suspend"))
    name = job["metadata"]["name"]
    if spec.suspend and not suspended:
        job.setdefault("spec", {})["suspend"] = True
        return Plan(
            suspend=(name, True),
            events=[Event("Normal", R.JOB_SUSPENDED, "spec.suspend is true: the Job is suspended")],
        )
    if not spec.suspend and suspended and not spec.scheduling.queue_name:
        job.setdefault("spec", {})["suspend"] = False
        return Plan(
            suspend=(name, False),
            events=[Event("Normal", R.JOB_RESUMED, "spec.suspend is false: the Job is resumed")],
        )
    return Plan()


def waiting_for_references(body: Mapping[str, Any], message: str) -> Plan:
    """Status while referenced objects are missing (the runtime retries)."""
    _, _, _, generation = _meta(body)
    status = dict(body.get("status") or {})
    ob = st.Observation("Pending", R.WAITING_FOR_REFERENCES, message)
    return _transition(status, ob, generation, status.get("specHash"), status.get("jobName"))


def _invalid(
    status: dict[str, Any],
    problems: list[Problem],
    generation: int,
    uid: str,
    reason: str = R.INVALID_SPEC,
) -> Plan:
    """The spec no longer describes a runnable evaluation: stop whatever ran before."""
    message = "; ".join(str(p) for p in problems)
    ob = st.Observation("Failed", reason, message, completion_time=st.fmt_time(_now()))
    before = {"conditions": status.get("conditions") or [], "phase": status.get("phase")}
    plan = Plan(delete=[run_selector(uid)])
    return plan.then(_transition(before, ob, generation, None, None))


def _job_deleted(job_name: str, status: Mapping[str, Any]) -> st.Observation:
    if status.get("resultsConfigMap"):
        # The results were kept before the Job went (a TTL, a cleanup): a success.
        return st.Observation(
            "Succeeded",
            R.SUCCEEDED,
            f"the evaluation finished; its results are in ConfigMap "
            f"{status['resultsConfigMap']} (Job {job_name} is gone)",
            completion_time=st.fmt_time(_now()),
        )
    return st.Observation(
        "Failed",
        R.JOB_DELETED,
        f"Job {job_name} was deleted while the run was active; edit the spec or re-create "
        "the EvalRun to run the evaluation again",
        completion_time=st.fmt_time(_now()),
    )


# -- observed changes (Job and pod events, resync) ------------------------------------------
def observe(
    body: Mapping[str, Any],
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    settings: Settings,
    *,
    periodic: bool = True,
) -> Plan:
    """What the run's status becomes, given its current Job and its pods (from the watch
    caches; the Job is read when the cache has none yet). An event-driven pass
    (``periodic`` False) does not write a passing state within the same phase: the
    periodic resync writes it once it has lasted ``status.PASSING_GRACE``."""
    _, namespace, uid, generation = _meta(body)
    status = dict(body.get("status") or {})
    if status.get("phase") in TERMINAL or status.get("phase") is None:
        return Plan()
    if status.get("observedGeneration") != generation:
        return Plan()  # the spec pass has not seen this generation yet
    job_name = status.get("jobName")
    if not job_name:
        return Plan()
    try:
        spec = EvalRunSpec.model_validate(body.get("spec") or {})
    except ValueError:
        return Plan()
    if job is None:
        job = k8s.get_job(namespace, job_name)
        if job is None:
            return _transition(
                status,
                _job_deleted(job_name, status),
                generation,
                status.get("specHash"),
                job_name,
            )
    ob = _observe_spec(spec, job, pods, settings)
    same_phase = ob.passing and ob.phase == status.get("phase")
    if same_phase and (not periodic or not ob.lasted(_now())):
        return Plan()  # the resync writes it if it lasts
    plan = _transition(status, ob, generation, status.get("specHash"), job_name)
    if ob.phase == "Succeeded" and not status.get("resultsConfigMap"):
        after = {**status, **plan.status}
        message = publishing.termination_message(pods)
        if len(status.get("shards") or []) > 1:
            published = publishing.publish_shards(body, after, pods)
        else:
            published = publishing.publish_results(
                body, after, None, message, publishing.image_id(pods)
            )
        if published.status or message is None:
            # (A pod without any termination message is not the runner, which always
            # writes one: a simulated pod, say. Nothing to judge it by.)
            plan = plan.then(published)
        else:
            # The runner exited 0, and neither it, the object store nor its termination
            # message holds a result: not a success.
            ob = st.Observation(
                "Failed",
                R.NO_RESULTS,
                "the runner exited 0 but left no results: it was not reached, and neither "
                "the object store nor its termination message holds any "
                f"(termination message: {message[:300]!r})",
                pod_name=ob.pod_name,
                start_time=ob.start_time,
                completion_time=ob.completion_time,
            )
            plan = _transition(status, ob, generation, status.get("specHash"), job_name)
    if ob.stop_job:
        # A run that failed before it started must not hold its GPUs any longer.
        plan.stop = f"{run_selector(uid)},{jobs.LABEL_SPEC_HASH}={status.get('specHash')}"
        plan.stop_reason = ob.reason
    return plan


# -- progress and results from the runner -------------------------------------------------
def progress_plan(status: Mapping[str, Any], progress: RunnerProgress) -> Plan:
    """status.progress (the typed ``Progress``) and the Progress column, when they changed
    (lastUpdate aside)."""
    percent = round(progress.percent, 1)
    new = Progress(
        percent=percent,
        # The runner is the tenant's code: what it reports is bounded before the status.
        tasks=[
            TaskProgress(name=t.name[:MAX_TASK_NAME], done=t.done, total=t.total)
            for t in progress.tasks[:MAX_PROGRESS_TASKS]
        ],
        samples_per_second=round(progress.samples_per_second, 3)
        if progress.samples_per_second is not None
        else None,
        eta_seconds=round(progress.eta_seconds) if progress.eta_seconds is not None else None,
        phase=progress.phase,
    ).to_wire()
    old = dict(status.get("progress") or {})
    old.pop("lastUpdate", None)
    if old == new:
        return Plan()
    new["lastUpdate"] = st.fmt_time(_now())
    return Plan(status={"progress": new, "summary": f"{percent:.0f}%"})


def reachability(
    body: Mapping[str, Any], status: Mapping[str, Any], reachable: bool, message: str
) -> Plan:
    """The RunnerReachable condition (and an Event when it changes); never fails a run."""
    conditions = list(status.get("conditions") or [])
    current = next((c for c in conditions if c.get("type") == R.RUNNER_REACHABLE), None)
    wanted = "True" if reachable else "False"
    if current is not None and current.get("status") == wanted:
        return Plan()
    if current is None and reachable:
        return Plan()
    generation = int(body["metadata"].get("generation") or 1)
    cond = Condition(
        type=R.RUNNER_REACHABLE,
        status="True" if reachable else "False",
        reason=R.SCRAPED if reachable else R.SCRAPE_FAILED,
        message=message[:1000],
        last_transition_time=st.fmt_time(_now()),
        observed_generation=generation,
    ).to_wire()
    others = [c for c in conditions if c.get("type") != R.RUNNER_REACHABLE]
    event = Event(
        "Normal" if reachable else "Warning",
        R.RUNNER_REACHABLE if reachable else R.RUNNER_UNREACHABLE,
        message,
    )
    return Plan(status={"conditions": [*others, cond]}, events=[event])


# -- fan-out: one pod per shard -------------------------------------------------------------
def shards_progress_plan(
    status: Mapping[str, Any],
    answers: Mapping[int, RunnerProgress],
    pods: Mapping[int, str] | None = None,
) -> Plan:
    """status.shards (each shard's pod, phase and documents) and the run's overall
    progress, from the shards' runners that answered this scrape (``pods``: their pods'
    names); a shard whose runner is gone counts as done once its results are kept, else
    as it last answered."""
    shards = [dict(s) for s in status.get("shards") or []]
    parts: dict[int, RunnerProgress] = {}
    for entry in shards:
        i = int(entry.get("index", 0))
        answer = answers.get(i)
        if answer is not None:
            entry.update(
                phase=answer.phase,
                percent=round(answer.percent, 1),
                done=answer.done,
                total=answer.total,
            )
            if pods and i in pods:
                entry["pod"] = pods[i]
            parts[i] = answer
        elif entry.get("resultsCollected") or entry.get("phase") is not None:
            collected = bool(entry.get("resultsCollected"))
            parts[i] = RunnerProgress(
                phase="done" if collected else entry.get("phase") or "starting",
                percent=100.0 if collected else float(entry.get("percent") or 0.0),
                done=int(entry.get("done") or 0),
                total=int(entry.get("total") or 0),
            )
    plan = progress_plan(status, shard_plan.aggregate(parts, len(shards)))
    if shards != list(status.get("shards") or []):
        plan.status["shards"] = shards
    return plan
