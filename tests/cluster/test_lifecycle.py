"""The EvalRun lifecycle against the real control plane and the real operator process.

Pods on the executor node run the scripted stand-in runner as real processes; pods on
kwok nodes are simulated; pods on the manual node get the status a kubelet would write.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from kubernetes import client

from lmms_devcluster import devcluster
from tests import evalruns as er
from tests.helpers import wait_for
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator_process")]


def scripted(**args: str) -> dict[str, Any]:
    return {
        "type": "dummy",
        "pretrained": "local",
        "args": {f"scripted_{k}": v for k, v in args.items()},
    }


def _pods(api: client.ApiClient, ns: str, job: str) -> list[client.V1Pod]:
    return list(
        client.CoreV1Api(api).list_namespaced_pod(ns, label_selector=f"job-name={job}").items
    )


def test_a_run_succeeds_and_says_so(api: client.ApiClient, namespace: str) -> None:
    er.create(api, namespace, er.manifest("ok", er.EXECUTOR, model=scripted(sleep="2")))
    running = er.wait_phase(api, namespace, "ok", "Running", timeout=60)
    assert er.condition(running, "Reconciling")["status"] == "True"
    assert er.condition(running, "Ready")["status"] == "False"
    done = er.wait_phase(api, namespace, "ok", "Succeeded", timeout=60)
    status = done["status"]
    assert status["observedGeneration"] == done["metadata"]["generation"]
    ready = er.condition(done, "Ready")
    assert ready["status"] == "True" and ready["reason"] == "Succeeded"
    assert ready["observedGeneration"] == done["metadata"]["generation"]
    assert er.condition(done, "Reconciling")["status"] == "False"
    assert er.condition(done, "Stalled")["status"] == "False"
    assert status["jobName"].startswith("ok-") and status["podName"].startswith(status["jobName"])
    assert status["startTime"] and status["completionTime"]
    # Kopf's bookkeeping stays out of the status.
    assert not {k for k in status if k.startswith("evalrun_") or k == "kopf"}
    # Nothing on the object but its status: no finalizer (deleting never waits for the
    # operator) and no bookkeeping annotations (GitOps tools see no drift).
    assert not done["metadata"].get("finalizers")
    assert not done["metadata"].get("annotations")
    reasons = er.wait_event(api, namespace, "ok", "Succeeded")
    assert reasons.index("JobCreated") < reasons.index("Running") < reasons.index("Succeeded")
    job = client.BatchV1Api(api).read_namespaced_job(status["jobName"], namespace)
    owner = job.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("EvalRun", "ok", True)


def test_runner_failure_is_reported_with_its_message(api: client.ApiClient, namespace: str) -> None:
    model = scripted(exit="3", message="task mme: no results: dataset download failed")
    er.create(api, namespace, er.manifest("rerr", er.EXECUTOR, model=model, retries=0))
    run = er.wait_phase(api, namespace, "rerr", "Failed", timeout=60, reason="RunnerError")
    assert "exit code 3" in run["status"]["message"]
    assert "dataset download failed" in run["status"]["message"]
    stalled = er.condition(run, "Stalled")
    assert stalled["status"] == "True" and stalled["reason"] == "RunnerError"
    assert er.wait_event(api, namespace, "rerr", "RunnerError")


def test_crashing_pods_use_up_retries(api: client.ApiClient, namespace: str) -> None:
    er.create(
        api, namespace, er.manifest("crash", er.EXECUTOR, model=scripted(exit="1"), retries=1)
    )
    run = er.wait_phase(api, namespace, "crash", "Failed", timeout=90)
    assert run["status"]["reason"] == "BackoffLimitExceeded"
    assert "failed 2 time(s)" in run["status"]["message"]
    assert "exited with code 1" in run["status"]["message"]
    assert len(_pods(api, namespace, run["status"]["jobName"])) == 2


def test_configuration_errors_are_not_retried(api: client.ApiClient, namespace: str) -> None:
    er.create(api, namespace, er.manifest("cfg", er.EXECUTOR, model=scripted(exit="2"), retries=3))
    run = er.wait_phase(api, namespace, "cfg", "Failed", timeout=60)
    assert run["status"]["reason"] == "RunnerError"
    assert "configuration error" in run["status"]["message"]
    assert len(_pods(api, namespace, run["status"]["jobName"])) == 1  # podFailurePolicy


def test_a_run_past_its_timeout_fails_with_deadline_exceeded(
    api: client.ApiClient, namespace: str
) -> None:
    body = er.manifest("slow", er.EXECUTOR, model=scripted(sleep="60"), timeoutSeconds=3)
    er.create(api, namespace, body)
    run = er.wait_phase(api, namespace, "slow", "Failed", timeout=60)
    assert run["status"]["reason"] == "DeadlineExceeded"
    assert "timeoutSeconds (3s)" in run["status"]["message"]


def test_too_many_gpus_ends_unschedulable_with_the_schedulers_message(
    api: client.ApiClient, namespace: str
) -> None:
    body = er.manifest("big", er.KWOK, resources={"gpus": devcluster.GPUS_PER_NODE + 1})
    er.create(api, namespace, body)
    pending = er.wait_phase(api, namespace, "big", "Pending", timeout=30, reason="Unschedulable")
    assert er.condition(pending, "PodScheduled")["status"] == "False"
    run = er.wait_phase(api, namespace, "big", "Failed", timeout=60)
    assert run["status"]["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in run["status"]["message"]
    # The failed run no longer holds a Job (nor its GPU reservation).
    wait_for(lambda: not er.jobs_of(api, namespace, run), timeout=30)


def _scheduled_pod(api: client.ApiClient, ns: str, name: str) -> client.V1Pod:
    def probe() -> client.V1Pod | None:
        run = er.get(api, ns, name)
        job = (run.get("status") or {}).get("jobName")
        pods = _pods(api, ns, job) if job else []
        return next((p for p in pods if p.spec.node_name), None)

    return wait_for(probe, timeout=30)


def test_an_image_that_cannot_be_pulled_fails_the_run(
    api: client.ApiClient, namespace: str
) -> None:
    # The executor's kubelet finds no such image in its store: ErrImagePull, then
    # ImagePullBackOff, as a kubelet reports a failed pull.
    er.create(api, namespace, er.manifest("pull", er.EXECUTOR, image="registry.invalid/none:1"))
    pending = er.wait_phase(
        api, namespace, "pull", "Pending", timeout=30, reason="ImagePullBackOff"
    )
    assert "registry.invalid/none:1" in pending["status"]["message"]
    run = er.wait_phase(api, namespace, "pull", "Failed", timeout=30)
    assert run["status"]["reason"] == "ImagePullError"
    assert "registry.invalid/none:1" in run["status"]["message"]
    wait_for(lambda: not er.jobs_of(api, namespace, run), timeout=30)


def test_an_oom_killed_runner_fails_with_oomkilled(api: client.ApiClient, namespace: str) -> None:
    er.create(api, namespace, er.manifest("oom", er.MANUAL, retries=0))
    pod = _scheduled_pod(api, namespace, "oom")
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    term = {
        "terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": now, "finishedAt": now}
    }
    client.CoreV1Api(api).patch_namespaced_pod_status(
        pod.metadata.name,
        namespace,
        {
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "runner",
                        "image": "x",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": term,
                    }
                ],
            }
        },
    )
    run = er.wait_phase(api, namespace, "oom", "Failed", timeout=60)
    assert run["status"]["reason"] == "OOMKilled"
    assert "spec.resources.memory" in run["status"]["message"]


def test_deleting_the_job_fails_the_run(api: client.ApiClient, namespace: str) -> None:
    er.create(api, namespace, er.manifest("orphan", er.EXECUTOR, model=scripted(sleep="60")))
    run = er.wait_phase(api, namespace, "orphan", "Running", timeout=60)
    client.BatchV1Api(api).delete_namespaced_job(
        run["status"]["jobName"], namespace, propagation_policy="Background"
    )
    run = er.wait_phase(api, namespace, "orphan", "Failed", timeout=30)
    assert run["status"]["reason"] == "JobDeleted"
    assert run["status"]["jobName"] in run["status"]["message"]
    # Documented choice: the operator does not recreate it.
    assert not er.jobs_of(api, namespace, run)


def test_suspend_and_resume(api: client.ApiClient, namespace: str) -> None:
    er.create(api, namespace, er.manifest("pause", er.EXECUTOR, model=scripted(sleep="60")))
    run = er.wait_phase(api, namespace, "pause", "Running", timeout=60)
    job_name = run["status"]["jobName"]
    er.patch_spec(api, namespace, "pause", {"suspend": True})
    run = er.wait_phase(api, namespace, "pause", "Queued", timeout=30)
    assert run["status"]["reason"] == "Suspended"
    assert er.condition(run, "Suspended")["status"] == "True"
    assert run["status"]["observedGeneration"] == run["metadata"]["generation"]
    assert run["status"]["jobName"] == job_name  # suspend pauses, it does not replace
    assert client.BatchV1Api(api).read_namespaced_job(job_name, namespace).spec.suspend
    wait_for(
        lambda: (
            not [
                p
                for p in _pods(api, namespace, job_name)
                if p.status.phase in ("Pending", "Running")
            ]
        ),
        timeout=30,
    )
    er.patch_spec(api, namespace, "pause", {"suspend": False})
    run = er.wait_phase(api, namespace, "pause", "Running", timeout=60)
    assert run["status"]["jobName"] == job_name


def test_editing_the_spec_starts_a_new_evaluation(api: client.ApiClient, namespace: str) -> None:
    er.create(api, namespace, er.manifest("edit", er.EXECUTOR, model=scripted(sleep="60")))
    first = er.wait_phase(api, namespace, "edit", "Running", timeout=60)
    er.patch_spec(api, namespace, "edit", {"model": scripted(sleep="1")})

    def new_generation() -> dict[str, Any] | None:
        run = er.get(api, namespace, "edit")
        s = run.get("status") or {}
        gen = run["metadata"]["generation"]
        return run if s.get("observedGeneration") == gen and s.get("phase") == "Succeeded" else None

    second = wait_for(new_generation, timeout=60)
    assert second["metadata"]["generation"] > first["metadata"]["generation"]
    assert second["status"]["jobName"] != first["status"]["jobName"]
    names = [j.metadata.name for j in er.jobs_of(api, namespace, second)]
    assert names == [second["status"]["jobName"]]  # the old Job was replaced
    assert er.wait_event(api, namespace, "edit", "JobReplaced")


def test_cancel_stops_the_run(api: client.ApiClient, namespace: str) -> None:
    er.create(api, namespace, er.manifest("stop", er.EXECUTOR, model=scripted(sleep="60")))
    er.wait_phase(api, namespace, "stop", "Running", timeout=60)
    er.patch_spec(api, namespace, "stop", {"cancel": True})
    run = er.wait_phase(api, namespace, "stop", "Cancelled", timeout=30)
    assert run["status"]["reason"] == "Cancelled"
    wait_for(lambda: not er.jobs_of(api, namespace, run), timeout=30)


def test_deleting_the_run_removes_its_job_and_pods(api: client.ApiClient, namespace: str) -> None:
    er.create(api, namespace, er.manifest("gone", er.EXECUTOR, model=scripted(sleep="60")))
    run = er.wait_phase(api, namespace, "gone", "Running", timeout=60)
    job = run["status"]["jobName"]
    er.delete(api, namespace, "gone")
    core = client.CoreV1Api(api)
    wait_for(lambda: not er.jobs_of(api, namespace, run), timeout=60, message="Job left behind")
    wait_for(
        lambda: not core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items,
        timeout=60,
        message="pods left behind",
    )
    left = core.list_namespaced_config_map(
        namespace, label_selector=f"eval.lmms.dev/run-uid={run['metadata']['uid']}"
    )
    wait_for(
        lambda: (
            not core.list_namespaced_config_map(
                namespace, label_selector=f"eval.lmms.dev/run-uid={run['metadata']['uid']}"
            ).items
        ),
        timeout=60,
    )
    del left


def test_a_missing_custom_task_configmap_waits_then_runs(
    api: client.ApiClient, namespace: str
) -> None:
    body = er.manifest(
        "custom",
        er.EXECUTOR,
        model=scripted(sleep="1"),
        tasks=[],
        customTasks=[{"configMap": "my-task", "tasks": ["my_task"]}],
    )
    er.create(api, namespace, body)
    run = er.wait_phase(
        api, namespace, "custom", "Pending", timeout=30, reason="WaitingForReferences"
    )
    assert "spec.customTasks[0].configMap" in run["status"]["message"]
    assert not er.jobs_of(api, namespace, run)
    client.CoreV1Api(api).create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="my-task"), data={"my_task.yaml": "task: my_task\n"}
        ),
    )
    er.wait_phase(api, namespace, "custom", "Succeeded", timeout=90)


def test_a_multi_node_run_is_an_indexed_job_with_a_rendezvous_service(
    api: client.ApiClient, namespace: str
) -> None:
    body = er.manifest("multi", er.KWOK, resources={"gpus": 8, "nodes": 2})
    er.create(api, namespace, body)
    run = er.wait_phase(api, namespace, "multi", "Succeeded", timeout=60)
    job = client.BatchV1Api(api).read_namespaced_job(run["status"]["jobName"], namespace)
    assert job.spec.completion_mode == "Indexed"
    assert job.spec.completions == job.spec.parallelism == 2
    svc = client.CoreV1Api(api).read_namespaced_service(f"{job.metadata.name}-rdzv", namespace)
    assert svc.spec.cluster_ip == "None"
    nodes = {p.spec.node_name for p in _pods(api, namespace, job.metadata.name)}
    assert nodes == set(devcluster.KWOK_NODES)  # 8 GPUs each: one pod per node


def test_a_sharded_run_retries_a_failed_shard_alone_and_merges_its_results(
    api: client.ApiClient, namespace: str
) -> None:
    """parallelism: 3 on the executor: an Indexed Job; shard 1's first pod crashes and
    only shard 1 runs again; the results of the three shards (their termination
    messages: the stand-in serves nothing) become one result set, published once."""
    tasks = ["mme", "mmmu_val", "ai2d", "chartqa"]
    model = scripted(sleep="1", shard_scores="1", fail_shard="1")
    er.create(
        api, namespace, er.manifest("fan", er.EXECUTOR, model=model, tasks=tasks, parallelism=3)
    )
    run = er.wait_phase(api, namespace, "fan", "Succeeded", timeout=120)
    status = run["status"]
    assignment = [(s["index"], s["tasks"]) for s in status["shards"]]
    assert assignment == [(0, ["mme", "chartqa"]), (1, ["mmmu_val"]), (2, ["ai2d"])]
    assert {r["task"]: r["value"] for r in status["results"]} == {
        t: round(len(t) / 100, 2) for t in tasks
    }
    job = client.BatchV1Api(api).read_namespaced_job(status["jobName"], namespace)
    assert (job.spec.completion_mode, job.spec.completions) == ("Indexed", 3)
    assert job.spec.backoff_limit_per_index == 1
    phases: dict[str, list[str]] = {}
    for pod in sorted(_pods(api, namespace, job.metadata.name), key=lambda p: p.metadata.name):
        index = pod.metadata.labels["batch.kubernetes.io/job-completion-index"]
        phases.setdefault(index, []).append(pod.status.phase)
    assert sorted(phases["1"]) == ["Failed", "Succeeded"]  # shard 1 alone ran again
    assert phases["0"] == phases["2"] == ["Succeeded"]
    cm = client.CoreV1Api(api).read_namespaced_config_map(status["resultsConfigMap"], namespace)
    assert cm.data["source"] == "termination message, 3 shards"
    assert er.wait_event(api, namespace, "fan", "ResultsCollected").count("ResultsCollected") == 1


def test_parallelism_with_several_nodes_is_refused_by_the_api_server(
    api: client.ApiClient, namespace: str
) -> None:
    body = er.manifest("both", er.KWOK, parallelism=2, resources={"gpus": 1, "nodes": 2})
    with pytest.raises(client.ApiException) as exc:
        er.create(api, namespace, body)
    assert exc.value.status == 422
    assert "spec.parallelism" in exc.value.body and "resources.nodes" in exc.value.body


def test_runner_pods_pass_pod_security_restricted(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    ns = "restricted-" + dt.datetime.now().strftime("%H%M%S%f")
    core.create_namespace(
        client.V1Namespace(
            metadata=client.V1ObjectMeta(
                name=ns, labels={"pod-security.kubernetes.io/enforce": "restricted"}
            )
        )
    )
    try:
        wait_for(lambda: core.read_namespaced_service_account("default", ns), timeout=30)
        er.create(api, ns, er.manifest("secure", er.KWOK))
        run = er.wait_phase(api, ns, "secure", "Succeeded", timeout=60)
        assert _pods(api, ns, run["status"]["jobName"])
    finally:
        core.delete_namespace(ns)


def test_restarting_the_operator_does_not_redo_finished_runs(
    api: client.ApiClient, namespace: str, operator_process: OperatorProcess
) -> None:
    er.create(api, namespace, er.manifest("once", er.KWOK))
    run = er.wait_phase(api, namespace, "once", "Succeeded", timeout=60)
    operator_process.stop()
    operator_process.start()
    # A resync of the finished run must neither create a Job nor change its status.
    import time

    time.sleep(3)
    again = er.get(api, namespace, "once")
    assert again["status"] == run["status"]
    assert [j.metadata.name for j in er.jobs_of(api, namespace, again)] == [
        run["status"]["jobName"]
    ]
