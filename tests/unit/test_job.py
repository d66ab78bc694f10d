"""spec -> Job: what users and cluster admins rely on in the generated objects."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from lmms_operator.config import Settings
from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile import multigpu
from lmms_operator.reconcile.placement import PlacementPolicy
from lmms_operator.reconcile.validate import Policy, validate

RUN = jobs.RunRef("qwen2vl-mme", "team-a", "0b8e6f5c-1111-2222-3333-444455556666")


def build(**over: Any) -> jobs.Desired:
    raw: dict[str, Any] = {"model": {"type": "qwen2_vl"}, "tasks": ["mme"]}
    raw.update(over)
    return jobs.build(RUN, validate(raw, POLICY), Settings().runner, token="t0ken")


#: The admin lets runs use the priority class the scheduling test names.
POLICY = Policy(placement=PlacementPolicy(priority_classes=frozenset({"batch-low"})))


def pod(desired: jobs.Desired) -> dict[str, Any]:
    return dict(desired.job["spec"]["template"]["spec"])


def container(desired: jobs.Desired) -> dict[str, Any]:
    return dict(pod(desired)["containers"][0])


def env(desired: jobs.Desired) -> dict[str, Any]:
    return {e["name"]: e for e in container(desired)["env"]}


def test_name_is_deterministic_and_short() -> None:
    a, b = build(), build()
    assert a.job["metadata"]["name"] == b.job["metadata"]["name"]
    long = jobs.RunRef("x" * 253, "ns", RUN.uid)
    name = jobs.build(
        long, validate({"model": {"type": "qwen2_vl"}, "tasks": ["mme"]}), Settings().runner, "t"
    ).job["metadata"]["name"]
    assert len(name) <= 63


def test_names_are_unique_per_run_even_when_names_collide() -> None:
    spec = validate({"model": {"type": "qwen2_vl"}, "tasks": ["mme"]})
    shared = "a-very-long-run-name-that-two-teams-might-both-choose-v"  # > 52 characters
    names = {
        jobs.build(jobs.RunRef(name, ns, uid), spec, Settings().runner, "t").job["metadata"]["name"]
        for name, ns, uid in [
            (shared + "1", "team-a", "uid-1"),
            (shared + "2", "team-a", "uid-2"),  # same first 52 characters
            (shared + "1", "team-b", "uid-3"),  # same name, another namespace
        ]
    }
    assert len(names) == 3 and all(len(n) <= 63 for n in names)


def test_suspend_does_not_change_the_evaluation_but_other_fields_do() -> None:
    base = validate({"model": {"type": "qwen2_vl"}, "tasks": ["mme"]})
    assert jobs.spec_hash(base) == jobs.spec_hash(base.model_copy(update={"suspend": True}))
    other = validate({"model": {"type": "qwen2_vl"}, "tasks": ["mme", "textvqa_val"]})
    assert jobs.spec_hash(base) != jobs.spec_hash(other)


def test_owner_reference_and_labels() -> None:
    d = build()
    for obj in (d.job, d.config_map, d.token_secret):
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {
            "apiVersion": "eval.lmms.dev/v1alpha1",
            "kind": "EvalRun",
            "name": RUN.name,
            "uid": RUN.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
        assert obj["metadata"]["labels"][jobs.LABEL_RUN_UID] == RUN.uid
    assert "kueue.x-k8s.io/queue-name" not in d.job["metadata"]["labels"]


def test_gpu_cpu_memory_requests_and_limits() -> None:
    d = build(
        model={"type": "qwen2_vl", "multiGPU": "DataParallel"},
        resources={"gpus": 2, "gpuResourceName": "amd.com/gpu", "cpu": "8", "memory": "64Gi"},
    )
    res = container(d)["resources"]
    assert res["requests"] == res["limits"] == {"amd.com/gpu": "2", "cpu": "8", "memory": "64Gi"}


def test_job_limits_from_the_spec() -> None:
    d = build(timeoutSeconds=3600, retries=3, ttlSecondsAfterFinished=600)
    spec = d.job["spec"]
    assert (
        spec["activeDeadlineSeconds"],
        spec["backoffLimit"],
        spec["ttlSecondsAfterFinished"],
    ) == (3600, 3, 600)
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "FailJob" and rules[0]["onExitCodes"]["values"] == [2]


def test_pod_passes_pod_security_restricted() -> None:
    p = pod(build())
    c = p["containers"][0]
    assert p["automountServiceAccountToken"] is False
    assert p["securityContext"]["runAsNonRoot"] is True
    assert p["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["readOnlyRootFilesystem"] is True
    mounted = {m["mountPath"] for m in c["volumeMounts"]}
    assert {"/tmp", jobs.HF_HOME, jobs.OUTPUT_DIR, jobs.CONFIG_DIR} <= mounted
    config = next(m for m in c["volumeMounts"] if m["mountPath"] == jobs.CONFIG_DIR)
    assert config["readOnly"] is True


def test_secrets_reach_the_pod_only_through_secret_key_refs() -> None:
    d = build(
        huggingFaceToken={"secretKeyRef": {"name": "hf", "key": "token"}},
        output={"s3": {"bucket": "evals", "credentialsSecret": "s3-creds"}},
    )
    e = env(d)
    assert e["HF_TOKEN"] == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}},
    }
    assert e["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert e["LMMS_RUNNER_TOKEN"]["valueFrom"]["secretKeyRef"]["key"] == "token"
    text = json.dumps([d.job, d.config_map])
    assert "t0ken" not in text  # the token lives in its Secret only
    assert d.token_secret["stringData"] == {"token": "t0ken"}


def test_cache_pvc_is_hf_home_and_custom_tasks_are_mounted() -> None:
    d = build(
        cache={"persistentVolumeClaim": "hf-cache"},
        tasks=["mme", "colors"],
        customTasks=[{"configMap": "colors-task", "tasks": ["colors"]}],
    )
    vols = {v["name"]: v for v in pod(d)["volumes"]}
    assert vols["hf-home"] == {
        "name": "hf-home",
        "persistentVolumeClaim": {"claimName": "hf-cache"},
    }
    assert env(d)["HF_HOME"]["value"] == jobs.HF_HOME
    assert vols["tasks-0"]["configMap"]["name"] == "colors-task"
    mounts = {m["name"]: m for m in container(d)["volumeMounts"]}
    assert mounts["tasks-0"]["mountPath"] == f"{jobs.TASKS_DIR}/colors-task"


def test_shared_memory_only_for_multi_gpu() -> None:
    assert "dshm" not in {v["name"] for v in pod(build())["volumes"]}
    four = build(model={"type": "qwen2_vl", "multiGPU": "ModelParallel"}, resources={"gpus": 4})
    vols = {v["name"]: v for v in pod(four)["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}


def test_scheduling_fields_and_kueue() -> None:
    d = build(
        scheduling={
            "nodeSelector": {"gpu": "h100"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "priorityClassName": "batch-low",
            "queueName": "team-a",
        }
    )
    p = pod(d)
    assert p["nodeSelector"] == {"gpu": "h100"}
    assert p["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert p["priorityClassName"] == "batch-low"
    assert d.job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert d.job["spec"]["suspend"] is True  # Kueue admits it by unsuspending


def test_multi_node_is_an_indexed_job_with_rendezvous() -> None:
    d = build(resources={"gpus": 8, "nodes": 2})
    spec = d.job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert d.service is not None and d.service["spec"]["clusterIP"] == "None"
    name = d.job["metadata"]["name"]
    e = env(d)
    assert e["LMMS_MASTER_ADDR"]["value"] == f"{name}-0.{name}-rdzv"
    assert e["LMMS_NNODES"]["value"] == "2" and e["LMMS_NPROC_PER_NODE"]["value"] == "8"
    assert "job-completion-index" in e["LMMS_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert pod(d)["subdomain"] == f"{name}-rdzv"


def test_run_config_carries_the_resolved_preset() -> None:
    d = build()
    config = json.loads(d.config_map["data"]["config.json"])
    assert config["kind"] == "EvalRun"
    assert config["spec"]["model"]["pretrained"] == "Qwen/Qwen2-VL-7B-Instruct"
    assert config["spec"]["model"]["args"]["max_pixels"] == "12845056"
    assert "multiGPU" not in config["spec"]["model"]  # one GPU: no question


def test_run_config_carries_the_multi_gpu_mode_the_operator_decided() -> None:
    raw: dict[str, Any] = {"model": {"type": "qwen2_vl"}, "tasks": ["mme"]}
    raw["resources"] = {"gpus": 4, "gpuResourceName": "nvidia.com/mig-1g.10gb"}
    memory = multigpu.parse_gpu_memory("nvidia.com/mig-1g.10gb=10Gi,nvidia.com/gpu=80Gi")
    spec = validate(raw, dataclasses.replace(POLICY, gpu_memory=memory))
    runner = dataclasses.replace(Settings().runner, gpu_memory=memory)

    def mode(spec: Any) -> Any:
        config = json.loads(jobs.build(RUN, spec, runner, "t").config_map["data"]["config.json"])
        return config["spec"]["model"].get("multiGPU")

    assert mode(spec) == "ModelParallel"  # 8.3B parameters do not fit on 10 GiB
    on_h100 = spec.resources.model_copy(update={"gpu_resource_name": "nvidia.com/gpu"})
    assert mode(spec.model_copy(update={"resources": on_h100})) == "DataParallel"
    # The Job is the spec's, not the decision's: the same name whatever the admin declares.
    assert (
        jobs.build(RUN, spec, runner, "t").job["metadata"]["name"]
        == (jobs.build(RUN, spec, Settings().runner, "t").job["metadata"]["name"])
    )


def test_runners_admit_the_operator_and_only_a_multi_node_runs_own_pods() -> None:
    runner = dataclasses.replace(Settings().runner, operator_namespace="lmms-system")
    ns_policy = jobs.namespace_network_policy("team-a", runner)
    assert ns_policy is not None and ns_policy["metadata"]["namespace"] == "team-a"
    (rule,) = ns_policy["spec"]["ingress"]  # the operator only: runners never reach runners
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "lmms-system"
    }
    single = jobs.build(
        RUN, validate({"model": {"type": "qwen2_vl"}, "tasks": ["mme"]}), runner, "t"
    )
    selected = ns_policy["spec"]["podSelector"]["matchLabels"]
    assert selected.items() <= single.job["spec"]["template"]["metadata"]["labels"].items()
    assert single.network_policy is None  # one policy per namespace, no write per run
    multi = jobs.build(
        RUN,
        validate(
            {"model": {"type": "qwen2_vl"}, "tasks": ["mme"], "resources": {"gpus": 1, "nodes": 2}}
        ),
        runner,
        "t",
    )
    policy = multi.network_policy
    assert policy is not None
    own = policy["spec"]["podSelector"]["matchLabels"]
    assert own[jobs.LABEL_RUN_UID] == RUN.uid
    assert own.items() <= multi.job["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["ingress"] == [{"from": [{"podSelector": {"matchLabels": own}}]}]
    assert policy["metadata"]["ownerReferences"][0]["uid"] == RUN.uid
    off = dataclasses.replace(runner, network_policy=False)
    assert jobs.namespace_network_policy("team-a", off) is None
