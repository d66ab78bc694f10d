"""The chart's ValidatingAdmissionPolicy on the real API server, attacked by a tenant who
may edit Jobs (the built-in ``edit`` role) and edits the operator's runner Job:

- a Kueue ``kueue.x-k8s.io/priority-class`` label outside the admin's list (Kueue 0.17
  lets a Job's WorkloadPriorityClass label change while it waits, and re-prioritises its
  Workload: jobframework.UpdateWorkloadPriority) would let the run preempt other tenants;
- dropping the operator's ``app.kubernetes.io/managed-by`` label in the same edit must not
  take the Job out of the policy's sight."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lmms_devcluster import devcluster
from tests.cluster.test_admission_policy import _install_policy, _runner_job
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.chart, pytest.mark.usefixtures("crds")]

WPC_LABEL = "kueue.x-k8s.io/priority-class"


def _patch(cluster: devcluster.DevCluster, namespace: str, name: str, patch: Any) -> str:
    """Server-side dry run of a merge patch of the Job: '' when admitted, else the refusal."""
    try:
        cluster.kubectl(
            "patch",
            "job",
            name,
            "-n",
            namespace,
            "--type=merge",
            "--dry-run=server",
            "-p",
            json.dumps(patch),
        )
    except devcluster.DevClusterError as exc:
        return str(exc)
    return ""


def test_a_tenant_cannot_edit_a_runner_job_past_the_placement_policy(
    cluster: Any, namespace: str
) -> None:
    manifests = _install_policy(cluster)
    try:
        job = _runner_job(
            namespace, {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]}
        )
        job["spec"]["suspend"] = True  # waits, as a queued Job does: its placement is mutable
        name = job["metadata"]["name"]
        keyless = {"spec": {"template": {"spec": {"tolerations": [{"operator": "Exists"}]}}}}
        cluster.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(job))
        wait_for(
            lambda: _patch(cluster, namespace, name, keyless), timeout=60, message="policy active"
        )
        # The admin's list is empty: no WorkloadPriorityClass for runs.
        refusal = _patch(cluster, namespace, name, {"metadata": {"labels": {WPC_LABEL: "top"}}})
        assert "ValidatingAdmissionPolicy" in refusal or "denied" in refusal, refusal
        # The same edits, with the operator's label dropped at once.
        unlabel: dict[str, Any] = {"app.kubernetes.io/managed-by": None}
        for patch in (
            {"metadata": {"labels": {**unlabel, WPC_LABEL: "top"}}},
            {"metadata": {"labels": unlabel}, **keyless},
        ):
            refusal = _patch(cluster, namespace, name, patch)
            assert "ValidatingAdmissionPolicy" in refusal or "denied" in refusal, (patch, refusal)
    finally:
        cluster.kubectl("delete", "--ignore-not-found", "-f", "-", input=manifests)
