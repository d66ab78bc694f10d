"""The placement policy on the real API server: the typed, bounded scheduling schema of
the CRD (a nested affinity is refused, within the CEL cost budget), and the chart's
ValidatingAdmissionPolicy refusing a runner Job that breaks the policy while the
operator's own Job is admitted."""

from __future__ import annotations

import copy
import json
import subprocess
from typing import Any

import pytest
import yaml

from lmms_devcluster import devcluster
from lmms_operator.api import parse_spec
from lmms_operator.config import Settings
from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile.kueue import PRIORITY_LABEL
from tests.helpers import CHART, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.chart, pytest.mark.usefixtures("crds")]

RELEASE_NS = "lmms-system"
#: The policy and its binding are cluster-scoped: a release name of this test's own, so
#: that the chart install test's release does not find them (they are deleted after).
RELEASE = "vaptest"


def _create(cluster: devcluster.DevCluster, namespace: str, obj: dict[str, Any]) -> str:
    """Server-side dry run of a create: '' when admitted, else the API server's refusal."""
    try:
        cluster.kubectl(
            "create", "--dry-run=server", "-n", namespace, "-f", "-", input=json.dumps(obj)
        )
    except devcluster.DevClusterError as exc:
        return str(exc)
    return ""


def _evalrun(scheduling: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "placed"},
        "spec": {"model": {"type": "dummy"}, "tasks": ["mme"], "scheduling": scheduling},
    }


def test_the_scheduling_schema_is_typed_and_bounded(cluster: Any, namespace: str) -> None:
    deep: dict[str, Any] = {"topologyKey": "zone"}
    for _ in range(50):
        deep = {"x": deep}
    assert _create(cluster, namespace, _evalrun({"affinity": {"podAffinity": deep}}))
    terms = [{"matchExpressions": [{"key": "k", "operator": "Exists"}]}] * 20
    pod_terms = [{"topologyKey": "zone"}] * 20
    too_many = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        },
        "podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": pod_terms},
    }
    refusal = _create(cluster, namespace, _evalrun({"affinity": too_many}))
    assert "at most 32 terms" in refusal, refusal
    refusal = _create(cluster, namespace, _evalrun({"tolerations": [{"operator": "Exists"}]}))
    assert "needs a key" in refusal, refusal
    ok = {
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms[:8]}
            }
        },
    }
    assert _create(cluster, namespace, _evalrun(ok)) == ""


def _runner_job(namespace: str, scheduling: dict[str, Any]) -> dict[str, Any]:
    spec = parse_spec(
        {
            "model": {"type": "dummy", "pretrained": "local"},
            "tasks": ["mme"],
            "scheduling": scheduling,
        }
    )
    run = jobs.RunRef(
        name="placed", namespace=namespace, uid="00000000-0000-0000-0000-000000000001"
    )
    job = jobs.build(run, spec, Settings().runner, token="t").job
    job["metadata"].pop("ownerReferences", None)  # no EvalRun to own it in a dry run
    return job


def _install_policy(cluster: devcluster.DevCluster) -> str:
    """Applies the chart's policy and binding; returns their manifests (to delete)."""
    out = subprocess.run(
        [
            devcluster.find_helm(),
            "template",
            RELEASE,
            str(CHART),
            "-n",
            RELEASE_NS,
            "--show-only",
            "templates/admissionpolicy.yaml",
            "--set",
            "placement.allowedPriorityClasses={batch-high}",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    cluster.kubectl("apply", "--server-side", "-f", "-", input=out.stdout)
    return out.stdout


def _edit(job: dict[str, Any], change: Any) -> dict[str, Any]:
    job = copy.deepcopy(job)
    change(job["spec"]["template"]["spec"])
    return job


def test_the_admission_policy_refuses_runner_jobs_against_the_placement_policy(
    cluster: Any, namespace: str
) -> None:
    manifests = _install_policy(cluster)
    try:
        _check_the_policy(cluster, namespace)
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "-f", "-", input=manifests)


def _check_the_policy(cluster: Any, namespace: str) -> None:
    good = _runner_job(
        namespace,
        {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "affinity": {
                "podAntiAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": [
                        {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {"a": "b"}},
                        }
                    ]
                }
            },
        },
    )
    keyless = _edit(good, lambda p: p.update(tolerations=[{"operator": "Exists"}]))
    # The policy takes a moment to load: wait until it refuses, then check the rest.
    wait_for(lambda: _create(cluster, namespace, keyless), timeout=60, message="policy active")
    assert _create(cluster, namespace, good) == ""
    bad = {
        "priority": lambda p: p.update(priorityClassName="system-cluster-critical"),
        "control-plane": lambda p: p.update(
            tolerations=[{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]
        ),
        "unreachable": lambda p: p.update(
            tolerations=[{"key": "node.kubernetes.io/unreachable", "operator": "Exists"}]
        ),
        "node-role": lambda p: p.update(nodeSelector={"node-role.kubernetes.io/control-plane": ""}),
        "all-namespaces": lambda p: p["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ][0].update(namespaceSelector={}),
        "other-namespace": lambda p: p["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ][0].update(namespaces=["kube-system"]),
        "host-network": lambda p: p.update(hostNetwork=True),
        "host-pid": lambda p: p.update(hostPID=True),
        "host-path": lambda p: p["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "privileged": lambda p: (
            p["containers"][0]
            .setdefault("securityContext", {})
            .update(privileged=True, allowPrivilegeEscalation=True, capabilities={})
        ),
    }
    for name, change in bad.items():
        refusal = _create(cluster, namespace, _edit(good, change))
        assert "denied request" in refusal or "ValidatingAdmissionPolicy" in refusal, (
            name,
            refusal,
        )
    # Kueue's WorkloadPriorityClass, the Job's label (as the operator sets it for
    # spec.scheduling.workloadPriorityClassName): only the admin's classes.
    for klass, admitted in (("batch-high", True), ("urgent", False)):
        labelled = copy.deepcopy(good)
        labelled["metadata"]["labels"][PRIORITY_LABEL] = klass
        refusal = _create(cluster, namespace, labelled)
        if admitted:
            assert refusal == "", refusal
        else:
            assert "may not use Kueue priority class urgent" in refusal, refusal
    # A Job that is not a runner's is not the policy's business.
    other = _edit(good, lambda p: p.update(priorityClassName="system-cluster-critical"))
    other["metadata"]["labels"] = {"app": "mine"}
    other["spec"]["template"]["metadata"]["labels"] = {"app": "mine"}
    other["spec"].pop("selector", None)
    refusal = _create(cluster, namespace, other)
    assert "ValidatingAdmissionPolicy" not in refusal, refusal
    policy = yaml.safe_load(cluster.kubectl("get", "validatingadmissionpolicy", "-o", "yaml"))
    (item,) = [i for i in policy["items"] if i["metadata"]["name"].startswith(RELEASE)]
    assert not (item.get("status") or {}).get("typeChecking", {}).get("expressionWarnings"), item[
        "status"
    ]
