"""The EvalRun lifecycle: validate, create the Job, keep the status truthful.

Handlers (``handlers/``) call these functions; the pure decisions live in
``reconcile/`` and every API call goes through ``k8s``.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from . import errors, k8s, leaderboards, metrics, objectstore
from .api import EvalRunSpec, Progress, S3Output, TaskProgress
from .api.runner import ResultsSummary, RunnerProgress
from .config import Settings
from .errors import InvalidSpec, Problem, RetryLater
from .reconcile import job as jobs
from .reconcile import reasons as R
from .reconcile import results as res
from .reconcile import status as st
from .reconcile.validate import validate

log = logging.getLogger("lmms.controller")

TERMINAL = st.TERMINAL


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _meta(body: Mapping[str, Any]) -> tuple[str, str, str, int]:
    m = body["metadata"]
    return m["name"], m["namespace"], m["uid"], int(m.get("generation") or 1)


def run_selector(uid: str) -> str:
    return f"{jobs.LABEL_RUN_UID}={uid}"


# -- spec changes (create, update, resume) ----------------------------------------------
def ensure(body: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """Makes the cluster match the spec; returns the status fields to write."""
    name, namespace, uid, generation = _meta(body)
    status = dict(body.get("status") or {})
    run = jobs.RunRef(name, namespace, uid)

    try:
        spec = validate(body.get("spec"), settings.allowed_features)
    except InvalidSpec as exc:
        return _invalid(body, status, exc.problems, generation)

    hash_ = jobs.spec_hash(spec)
    if spec.cancel:
        stopped = k8s.delete_run_children(namespace, run_selector(uid))
        if status.get("phase") == "Cancelled" and status.get("observedGeneration") == generation:
            return {}
        ob = st.Observation(
            "Cancelled",
            R.CANCELLED,
            "spec.cancel is true: the evaluation was stopped"
            + (" and its Job deleted" if stopped else ""),
            completion_time=st.fmt_time(_now()),
        )
        return _write(body, status, ob, generation, hash_, job_name=status.get("jobName"))

    stale = f"{run_selector(uid)},{jobs.LABEL_SPEC_HASH}!={hash_}"
    # A run that never had a status nor another spec has nothing of another spec to stop
    # (saves three list calls per new run).
    fresh = not status and generation == 1
    replaced = 0 if fresh else k8s.delete_run_children(namespace, stale)
    if replaced:
        k8s.event(
            body,
            "Normal",
            R.JOB_REPLACED,
            "the spec changed: the previous evaluation's Job was deleted",
        )

    same_evaluation = status.get("specHash") == hash_
    if same_evaluation and status.get("phase") in TERMINAL:
        # Finished: never start it again (its Job may be gone after ttlSecondsAfterFinished).
        if status.get("observedGeneration") != generation:
            return {
                "observedGeneration": generation,
                "conditions": [
                    dict(c, observedGeneration=generation) for c in status.get("conditions") or []
                ],
            }
        return {}

    _check_references(spec, namespace)
    desired_name = jobs.job_name(name, hash_)
    token_name = f"{desired_name}-token"
    # A new run has no Job yet: create first and read only on conflict (an earlier
    # attempt that stopped before writing the status), two requests fewer per run.
    job = None if fresh else k8s.get_job(namespace, desired_name)
    pods: list[dict[str, Any]] = []
    if job is None:
        if same_evaluation and status.get("jobName") == desired_name:
            ob = _job_deleted(desired_name)
            return _write(body, status, ob, generation, hash_, job_name=desired_name)
        token = None if fresh else k8s.read_secret_value(namespace, token_name, "token")
        desired = jobs.build(run, spec, settings.runner, token or secrets.token_urlsafe(32))
        try:
            if not k8s.create(desired.token_secret) and token is None:
                # The Secret is there already: the Job must carry its token.
                token = k8s.read_secret_value(namespace, token_name, "token")
                desired = jobs.build(run, spec, settings.runner, token or secrets.token_urlsafe(32))
            k8s.create(desired.config_map)
            if desired.service is not None:
                k8s.create(desired.service)
            created = k8s.create(desired.job)
        except errors.Invalid as exc:
            problem = Problem("spec", f"the API server refused the Job: {exc.message}")
            k8s.delete_secret(namespace, token_name)  # nothing half-created
            return _invalid(body, status, [problem], generation)
        if created:
            k8s.event(body, "Normal", R.JOB_CREATED, f"created Job {desired_name}")
            job = desired.job
        else:
            job = k8s.get_job(namespace, desired_name) or desired.job
    else:
        _sync_suspend(body, spec, job)
        pods = k8s.list_pods(namespace, f"job-name={desired_name}")

    if not same_evaluation:
        status = {"conditions": status.get("conditions") or []}
    ob = _observe_spec(spec, job, pods, settings)
    return _write(body, status, ob, generation, hash_, job_name=desired_name)


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


def _check_references(spec: EvalRunSpec, namespace: str) -> None:
    """Objects the run references must exist before its Job is created."""
    missing: list[str] = []
    for i, source in enumerate(spec.custom_tasks):
        if not k8s.config_map_exists(namespace, source.config_map):
            missing.append(
                f"spec.customTasks[{i}].configMap: ConfigMap {source.config_map!r} not found"
            )
    if spec.model.api_key is not None:
        ref = spec.model.api_key.secret_key_ref
        has = k8s.secret_has_key(namespace, ref.name, ref.key)
        if not has:
            missing.append(
                f"spec.model.apiKey.secretKeyRef: Secret {ref.name!r} "
                + ("not found" if has is None else f"has no key {ref.key!r}")
            )
    if spec.hugging_face_token is not None:
        ref = spec.hugging_face_token.secret_key_ref
        has = k8s.secret_has_key(namespace, ref.name, ref.key)
        if has is None:
            missing.append(f"spec.huggingFaceToken.secretKeyRef: Secret {ref.name!r} not found")
        elif not has:
            missing.append(
                f"spec.huggingFaceToken.secretKeyRef: Secret {ref.name!r} has no key {ref.key!r}"
            )
    if spec.cache is not None and not k8s.pvc_exists(namespace, spec.cache.persistent_volume_claim):
        missing.append(
            f"spec.cache.persistentVolumeClaim: PersistentVolumeClaim "
            f"{spec.cache.persistent_volume_claim!r} not found"
        )
    s3 = spec.output.s3 if spec.output else None
    if (
        s3 is not None
        and s3.credentials_secret
        and k8s.secret_has_key(namespace, s3.credentials_secret, "AWS_ACCESS_KEY_ID") is None
    ):
        missing.append(
            f"spec.output.s3.credentialsSecret: Secret {s3.credentials_secret!r} not found"
        )
    if missing:
        raise RetryLater("; ".join(missing))


def _sync_suspend(body: Mapping[str, Any], spec: EvalRunSpec, job: dict[str, Any]) -> None:
    suspended = bool((job.get("spec") or {}).get("suspend"))
    if spec.suspend and not suspended:
        k8s.patch_job_suspend(job["metadata"]["namespace"], job["metadata"]["name"], True)
        k8s.event(body, "Normal", R.JOB_SUSPENDED, "spec.suspend is true: the Job is suspended")
        job.setdefault("spec", {})["suspend"] = True
    elif not spec.suspend and suspended and not spec.scheduling.queue_name:
        # With a queue, Kueue decides when the Job runs.
        k8s.patch_job_suspend(job["metadata"]["namespace"], job["metadata"]["name"], False)
        k8s.event(body, "Normal", R.JOB_RESUMED, "spec.suspend is false: the Job is resumed")
        job.setdefault("spec", {})["suspend"] = False


def waiting_for_references(body: Mapping[str, Any], message: str) -> dict[str, Any]:
    """Status while referenced objects are missing (the handler retries)."""
    _, _, _, generation = _meta(body)
    status = dict(body.get("status") or {})
    ob = st.Observation("Pending", R.WAITING_FOR_REFERENCES, message)
    return _write(
        body, status, ob, generation, status.get("specHash"), job_name=status.get("jobName")
    )


def _invalid(
    body: Mapping[str, Any], status: dict[str, Any], problems: list[Problem], generation: int
) -> dict[str, Any]:
    _, namespace, uid, _ = _meta(body)
    # The spec no longer describes a runnable evaluation: stop whatever ran before.
    k8s.delete_run_children(namespace, run_selector(uid))
    message = "; ".join(str(p) for p in problems)
    ob = st.Observation("Failed", R.INVALID_SPEC, message, completion_time=st.fmt_time(_now()))
    return _write(
        body,
        {"conditions": status.get("conditions") or [], "phase": status.get("phase")},
        ob,
        generation,
        None,
        job_name=None,
    )


def _job_deleted(job_name: str) -> st.Observation:
    return st.Observation(
        "Failed",
        R.JOB_DELETED,
        f"Job {job_name} was deleted while the run was active; edit the spec or re-create "
        "the EvalRun to run the evaluation again",
        completion_time=st.fmt_time(_now()),
    )


def _write(
    body: Mapping[str, Any],
    status: dict[str, Any],
    ob: st.Observation,
    generation: int,
    hash_: str | None,
    job_name: str | None,
) -> dict[str, Any]:
    """The status fields for an observation, and an Event when the phase changes."""
    now = _now()
    new: dict[str, Any] = {
        "phase": ob.phase,
        "reason": ob.reason,
        "message": ob.message,
        "observedGeneration": generation,
        "specHash": hash_,
        "jobName": job_name,
        "podName": ob.pod_name or status.get("podName"),
        "startTime": ob.start_time or status.get("startTime"),
        "completionTime": ob.completion_time if ob.phase in TERMINAL else None,
        "conditions": st.conditions(status.get("conditions") or [], ob, generation, now),
    }
    if ob.phase == "Succeeded":
        new["summary"] = "100%"
    elif ob.phase in TERMINAL:
        new["summary"] = None
    changed = {k: v for k, v in new.items() if status.get(k) != v}
    quiet = ob.phase == "Pending" and ob.reason in (R.JOB_PENDING, R.SCHEDULING, R.STARTING)
    if quiet:
        pass  # JobCreated already said it; the pod's own events say the rest
    elif "phase" in changed or ("reason" in changed and ob.phase in TERMINAL):
        warn = ob.phase == "Failed" or ob.reason in (
            R.UNSCHEDULABLE,
            R.IMAGE_PULL_BACKOFF,
            R.CONTAINER_CONFIG_ERROR,
        )
        k8s.event(body, "Warning" if warn else "Normal", ob.reason, f"{ob.phase}: {ob.message}")
    elif "reason" in changed and ob.reason in (R.UNSCHEDULABLE, R.IMAGE_PULL_BACKOFF):
        k8s.event(body, "Warning", ob.reason, ob.message)
    if set(changed) <= {"conditions"} and _same_conditions(
        status.get("conditions"), new["conditions"]
    ):
        return {}
    return changed


def _same_conditions(old: Iterable[dict[str, Any]] | None, new: list[dict[str, Any]]) -> bool:
    def key(c: dict[str, Any]) -> tuple[Any, ...]:
        return (
            c.get("type"),
            c.get("status"),
            c.get("reason"),
            c.get("message"),
            c.get("observedGeneration"),
        )

    return sorted(map(key, old or [])) == sorted(map(key, new))


# -- observed changes (Job and pod events, resync) ------------------------------------------
def observe(
    body: Mapping[str, Any],
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    settings: Settings,
    *,
    periodic: bool = True,
) -> tuple[dict[str, Any], str | None]:
    """The status fields that changed, given the run's current Job and its pods, and
    the label selector of children to delete once that status is written (or None).
    An event-driven pass (``periodic`` False) does not write a passing state within the
    same phase: the periodic resync writes it if it lasts."""
    _, namespace, uid, generation = _meta(body)
    status = dict(body.get("status") or {})
    if status.get("phase") in TERMINAL or status.get("phase") is None:
        return {}, None
    if status.get("observedGeneration") != generation:
        return {}, None  # the spec handler has not seen this generation yet
    job_name = status.get("jobName")
    if not job_name:
        return {}, None
    try:
        spec = EvalRunSpec.model_validate(body.get("spec") or {})
    except ValueError:
        return {}, None
    if job is None:
        job = k8s.get_job(namespace, job_name)
        if job is None:
            ob = _job_deleted(job_name)
            return _write(body, status, ob, generation, status.get("specHash"), job_name), None
    ob = _observe_spec(spec, job, pods, settings)
    if ob.passing and not periodic and ob.phase == status.get("phase"):
        return {}, None
    fields = _write(body, status, ob, generation, status.get("specHash"), job_name)
    if ob.phase == "Succeeded" and not status.get("resultsConfigMap"):
        fields.update(publish_results(body, status, None, _termination_message(pods)))
    stop = None
    if ob.stop_job:
        # A run that failed before it started must not hold its GPUs any longer. The
        # caller deletes the Job after writing the status, so the deletion does not read
        # as JobDeleted.
        stop = f"{run_selector(uid)},{jobs.LABEL_SPEC_HASH}={status.get('specHash')}"
    return fields, stop


def stop_children(body: Mapping[str, Any], selector: str, reason: str) -> None:
    namespace = body["metadata"]["namespace"]
    if k8s.delete_run_children(namespace, selector):
        k8s.event(body, "Normal", R.JOB_STOPPED, f"deleted the Job of the run: {reason}")


# -- progress and results from the runner -------------------------------------------------
def progress_fields(status: Mapping[str, Any], progress: RunnerProgress) -> dict[str, Any]:
    """status.progress (the typed ``Progress``) and the Progress column, when they changed
    (lastUpdate aside)."""
    percent = round(progress.percent, 1)
    new = Progress(
        percent=percent,
        tasks=[TaskProgress(name=t.name, done=t.done, total=t.total) for t in progress.tasks],
        samples_per_second=round(progress.samples_per_second, 3)
        if progress.samples_per_second is not None
        else None,
        eta_seconds=round(progress.eta_seconds) if progress.eta_seconds is not None else None,
        phase=progress.phase,
    ).to_wire()
    old = dict(status.get("progress") or {})
    old.pop("lastUpdate", None)
    if old == new:
        return {}
    new["lastUpdate"] = st.fmt_time(_now())
    return {"progress": new, "summary": f"{percent:.0f}%"}


def reachability_fields(
    body: Mapping[str, Any], status: Mapping[str, Any], reachable: bool, message: str
) -> dict[str, Any]:
    """The RunnerReachable condition (and an Event when it changes); never fails a run."""
    conditions = list(status.get("conditions") or [])
    current = next((c for c in conditions if c.get("type") == R.RUNNER_REACHABLE), None)
    wanted = "True" if reachable else "False"
    if current is not None and current.get("status") == wanted:
        return {}
    if current is None and reachable:
        return {}
    generation = int(body["metadata"].get("generation") or 1)
    cond = {
        "type": R.RUNNER_REACHABLE,
        "status": wanted,
        "reason": R.SCRAPED if reachable else R.SCRAPE_FAILED,
        "message": message[:1000],
        "lastTransitionTime": st.fmt_time(_now()),
        "observedGeneration": generation,
    }
    others = [c for c in conditions if c.get("type") != R.RUNNER_REACHABLE]
    k8s.event(
        body,
        "Normal" if reachable else "Warning",
        R.RUNNER_REACHABLE if reachable else R.RUNNER_UNREACHABLE,
        message,
    )
    return {"conditions": [*others, cond]}


def publish_results(
    body: Mapping[str, Any],
    status: Mapping[str, Any],
    summary: ResultsSummary | None,
    termination: str | None,
) -> dict[str, Any]:
    """Writes the results ConfigMap (owned by the run) and returns the status fields.
    The results come from the runner (``summary``); when it could not be reached, from
    the object store the runner uploaded to, then from its termination message.
    Idempotent: a ConfigMap that exists already is the one published before."""
    if status.get("resultsConfigMap"):
        return {}
    location = summary.s3_location if summary is not None else None
    source = "runner"
    if summary is None:
        location = res.location_from_termination_message(termination)
        summary = _summary_from_object_store(body, location)
        source = "object store"
    if summary is not None:
        primaries = res.primary_results(summary)
        summary_json = summary.model_dump_json(by_alias=True, indent=1)
    else:
        primaries = res.from_termination_message(termination) or []
        source = "termination message"
        summary_json = None
        if not primaries:
            return {}
    meta = body["metadata"]
    job_name = status.get("jobName") or meta["name"]
    name = f"{job_name}-results"
    cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "labels": {
                jobs.LABEL_MANAGED_BY: jobs.MANAGED_BY,
                f"{jobs.LABEL_PREFIX}/results-of": meta["uid"],
            },
            "ownerReferences": [
                jobs.RunRef(meta["name"], meta["namespace"], meta["uid"]).owner_reference()
            ],
        },
        "data": res.config_map_data(summary_json, primaries, source, location),
    }
    k8s.create(cm)
    fields: dict[str, Any] = {"results": primaries, "resultsConfigMap": name}
    board = (body.get("spec") or {}).get("leaderboard")
    if board and primaries:
        # Before the status says "published": a failure here is retried, and publishing
        # the same run again changes nothing.
        entries = leaderboards.entries_for_run(body, primaries, st.fmt_time(_now()))
        leaderboards.publish(meta["namespace"], board, entries)
        metrics.published(board, entries)
        fields["leaderboardPublished"] = True
    if location:
        fields["resultsLocation"] = location
    k8s.event(
        body,
        "Normal",
        R.RESULTS_COLLECTED,
        f"results of {len(primaries)} task(s) in ConfigMap {name} (from the {source})",
    )
    return fields


def _summary_from_object_store(
    body: Mapping[str, Any], location: str | None
) -> ResultsSummary | None:
    """The summary the runner uploaded next to its output, or None (with an Event
    saying why) when there is none to read."""
    s3 = ((body.get("spec") or {}).get("output") or {}).get("s3")
    if not location or not s3:
        return None
    url = location.rstrip("/") + "/" + objectstore.SUMMARY_KEY
    try:
        doc = objectstore.get_json(body["metadata"]["namespace"], S3Output.model_validate(s3), url)
        return ResultsSummary.model_validate(doc)
    except (errors.ObjectStoreError, ValueError) as exc:
        message = str(exc).splitlines()[0][:300]
        meta = body["metadata"]
        log.warning(
            "results of %s/%s not read from the object store: %s",
            meta["namespace"],
            meta["name"],
            message,
        )
        k8s.event(
            body,
            "Warning",
            R.RESULTS_NOT_IN_OBJECT_STORE,
            f"falling back to the termination message: {message}",
        )
        return None


def _termination_message(pods: list[dict[str, Any]]) -> str | None:
    for pod in sorted(
        pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True
    ):
        if (pod.get("status") or {}).get("phase") != "Succeeded":
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("message"):
                return str(term["message"])
    return None
