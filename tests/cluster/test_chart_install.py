"""The Helm chart on the real control plane: `helm install`, the operator running with
the chart's ServiceAccount token (not an admin credential) in both RBAC modes, runner
pods admitted under Pod Security "restricted", kstatus computed by the real kstatus
library over what the operator wrote, and `helm uninstall` keeping the CRDs."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from lmms_devcluster import devcluster
from tests import evalruns as er
from tests.helpers import CHART, adopt_crds, helm, system_and_tenant_namespaces, wait_for
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.chart]


def _can_i(cluster: devcluster.DevCluster, who: str, *args: str) -> bool:
    out = cluster.kubectl("auth", "can-i", *args, f"--as={who}", check=False)
    return out.strip() == "yes"


def _allowed(
    api: client.ApiClient, who: str, verb: str, group: str, resource: str, namespace: str
) -> bool:
    review = client.V1SubjectAccessReview(
        spec=client.V1SubjectAccessReviewSpec(
            user=who,
            groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, group=group, resource=resource, namespace=namespace
            ),
        )
    )
    answer = client.AuthorizationV1Api(api).create_subject_access_review(review)
    return bool(answer.status.allowed)


_TIMESTAMP = re.compile(r"^\[[\d:, -]+\]")
_REFUSED = re.compile(r"forbidden|unauthorized|\b40[13]\b", re.IGNORECASE)


def _refusals(log: str) -> list[str]:
    """The operator log's lines that report a refused request (401/403, "forbidden"),
    read past each line's timestamp, whose milliseconds can be any three digits."""
    return [line for line in log.splitlines() if _REFUSED.search(_TIMESTAMP.sub("", line, count=1))]


def _scripted(name: str, value: float, exit_code: int = 0, sleep: float = 0) -> dict[str, Any]:
    message = (
        {"v": 1, "ok": True, "truncated": False, "tasks": {"mme": {"score": value}}}
        if exit_code == 0
        else {"v": 1, "ok": False, "reason": "EvaluationFailed", "message": "model crashed"}
    )
    args = {
        "scripted_message_b64": base64.b64encode(json.dumps(message).encode()).decode().rstrip("="),
        "scripted_exit": str(exit_code),
        "scripted_sleep": str(sleep),
    }
    return er.manifest(
        name,
        er.EXECUTOR,
        model={"type": "dummy", "pretrained": f"org/{name}", "args": args},
        leaderboard="chart",
        retries=0,
    )


def _kstatus(*objs: dict[str, Any]) -> list[str]:
    out = subprocess.run(
        [devcluster.find_kstatus_check()],
        input=json.dumps(list(objs)),
        capture_output=True,
        text=True,
        check=True,
    )
    return [r["status"] for r in json.loads(out.stdout)]


def test_the_chart_installs_and_its_service_account_runs_evalruns(
    cluster: devcluster.DevCluster,
    api: client.ApiClient,
    operator_process: OperatorProcess,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(api)
    system, evals = system_and_tenant_namespaces(api)
    adopt_crds(cluster, "lmms", system)
    # The admin-credential operator of the other tests steps aside meanwhile.
    operator_process.stop()
    chart_operator: OperatorProcess | None = None
    installed = False
    try:
        helm(cluster, "install", "lmms", str(CHART), "-n", system, "--wait=false")
        installed = True
        sa = f"system:serviceaccount:{system}:lmms-lmms-operator"
        # Least privilege, as the API server's authorizer sees it.
        assert _can_i(
            cluster, sa, "patch", "evalruns.eval.lmms.dev", "--subresource=status", "-n", evals
        )
        assert _can_i(cluster, sa, "create", "jobs.batch", "-n", evals)
        assert _can_i(cluster, sa, "get", "secrets", "-n", evals)
        assert not _can_i(cluster, sa, "list", "secrets", "--all-namespaces")
        assert not _can_i(cluster, sa, "watch", "secrets", "-n", evals)
        assert not _can_i(cluster, sa, "create", "pods", "--subresource=exec", "-n", evals)
        assert not _can_i(cluster, sa, "patch", "evalruns.eval.lmms.dev", "-n", evals)
        assert not _can_i(cluster, sa, "delete", "nodes")
        # Served models and judges: readiness read from the API, read-only.
        assert _can_i(cluster, sa, "list", "endpointslices.discovery.k8s.io", "-n", evals)
        for verb in ("watch", "create", "delete"):
            assert not _can_i(cluster, sa, verb, "endpointslices.discovery.k8s.io", "-n", evals)
        # (A SubjectAccessReview: kubectl cannot name a resource whose CRD is not installed.)
        isvc = ("serving.kserve.io", "inferenceservices")
        assert _allowed(api, sa, "get", *isvc, evals)
        for verb in ("list", "watch", "patch"):
            assert not _allowed(api, sa, verb, *isvc, evals)
        # Leader election: the Lease in the release namespace, by name; nowhere else.
        lease = "leases.coordination.k8s.io/lmms-lmms-operator"
        assert _can_i(cluster, sa, "create", "leases.coordination.k8s.io", "-n", system)
        assert _can_i(cluster, sa, "update", lease, "-n", system)
        assert not _can_i(cluster, sa, "update", "leases.coordination.k8s.io/other", "-n", system)
        assert not _can_i(cluster, sa, "update", lease, "-n", evals)
        policy = client.PolicyV1Api(api)
        pdb = policy.read_namespaced_pod_disruption_budget("lmms-lmms-operator", system)
        assert pdb.spec.max_unavailable == 1
        # Tenants: the built-in roles, bound in their namespace, now cover EvalRuns and
        # Leaderboards (the API server's aggregation controller fills them in).
        cluster.kubectl("create", "rolebinding", "alice-edit", "--clusterrole=edit",
                        "--user=alice", "-n", evals)  # fmt: skip
        cluster.kubectl("create", "rolebinding", "bob-view", "--clusterrole=view",
                        "--user=bob", "-n", evals)  # fmt: skip
        wait_for(lambda: _can_i(cluster, "alice", "create", "evalruns.eval.lmms.dev", "-n", evals))
        for verb in ("update", "delete"):
            assert _can_i(cluster, "alice", verb, "evalruns.eval.lmms.dev", "-n", evals)
            assert _can_i(cluster, "alice", verb, "leaderboards.eval.lmms.dev", "-n", evals)
        assert _can_i(cluster, "alice", "create", "leaderboards.eval.lmms.dev", "-n", evals)
        assert not _can_i(cluster, "alice", "create", "evalruns.eval.lmms.dev", "-n", system)
        wait_for(lambda: _can_i(cluster, "bob", "list", "evalruns.eval.lmms.dev", "-n", evals))
        assert _can_i(cluster, "bob", "get", "leaderboards.eval.lmms.dev", "-n", evals)
        assert not _can_i(cluster, "bob", "create", "evalruns.eval.lmms.dev", "-n", evals)
        for who in ("alice", "bob"):  # status is the operator's
            for resource in ("evalruns.eval.lmms.dev", "leaderboards.eval.lmms.dev"):
                assert not _can_i(
                    cluster, who, "patch", resource, "--subresource=status", "-n", evals
                )
        # The Deployment's pod passes Pod Security "restricted" in the release namespace.
        wait_for(
            lambda: (
                core.list_namespaced_pod(
                    system, label_selector="app.kubernetes.io/component=operator"
                ).items
            ),
            timeout=60,
        )

        # The operator with the chart ServiceAccount's token, watching every namespace.
        token = cluster.kubectl("create", "token", "lmms-lmms-operator", "-n", system).strip()
        config = yaml.safe_load(cluster.kubeconfig.read_text())
        config["users"] = [{"name": "admin", "user": {"token": token}}]
        sa_kubeconfig = tmp_path / "sa-kubeconfig"
        sa_kubeconfig.write_text(yaml.safe_dump(config))
        chart_operator = OperatorProcess(cluster, tmp_path, kubeconfig=sa_kubeconfig)
        chart_operator.start()

        er.create(api, evals, _scripted("ok", 0.9, sleep=4))
        running = er.wait_phase(api, evals, "ok", "Running", timeout=60)
        er.create(api, evals, _scripted("broken", 0.0, exit_code=3))
        done = er.wait_phase(api, evals, "ok", "Succeeded", timeout=60)
        done = wait_for(lambda: (r := er.get(api, evals, "ok"))["status"].get("results") and r)
        assert done["status"]["results"][0]["value"] == 0.9
        failed = er.wait_phase(api, evals, "broken", "Failed", timeout=60)
        board = wait_for(
            lambda: client.CustomObjectsApi(api).get_namespaced_custom_object(
                "eval.lmms.dev", "v1alpha1", evals, "leaderboards", "chart"
            )["status"]
        )
        assert board["entries"] == 1  # created by the operator, with the chart's rights

        # kstatus (the library Flux, kpt and cli-utils use) reads what the operator wrote.
        edited = json.loads(json.dumps(done))
        edited["metadata"]["generation"] += 1  # an edit the operator has not seen yet
        assert _kstatus(running, done, failed, edited) == [
            "InProgress",
            "Current",
            "Failed",
            "InProgress",
        ]

        # Selected-namespaces mode: Roles instead of the ClusterRole.
        chart_operator.stop()
        helm(
            cluster,
            "upgrade",
            "lmms",
            str(CHART),
            "-n",
            system,
            "--set",
            f"watch.namespaces={{{evals}}}",
        )
        rbac = client.RbacAuthorizationV1Api(api)
        assert not [
            r for r in rbac.list_cluster_role().items if r.metadata.name == "lmms-lmms-operator"
        ]
        assert rbac.read_namespaced_role("lmms-lmms-operator", evals).rules
        assert not _can_i(cluster, sa, "list", "jobs.batch", "-n", "default")
        chart_operator = OperatorProcess(
            cluster, tmp_path, kubeconfig=sa_kubeconfig, args=["--namespace", evals]
        )
        chart_operator.start()
        er.create(api, evals, _scripted("scoped", 0.7))
        er.wait_phase(api, evals, "scoped", "Succeeded", timeout=60)
        wait_for(lambda: er.get(api, evals, "scoped")["status"].get("leaderboardPublished"))
        log = chart_operator.log()  # both runs of the chart-credential operator
        assert not _refusals(log), _refusals(log)

        # Uninstalling keeps the CRDs and so everyone's EvalRuns.
        chart_operator.stop()
        helm(cluster, "uninstall", "lmms", "-n", system)
        installed = False
        assert "evalruns.eval.lmms.dev" in cluster.kubectl("get", "crd", "-o", "name")
        assert er.get(api, evals, "ok")["status"]["phase"] == "Succeeded"
    finally:
        if chart_operator is not None:
            chart_operator.stop()
        if installed:
            helm(cluster, "uninstall", "lmms", "-n", system)
        operator_process.start()
        for ns in (system, evals):
            core.delete_namespace(ns, propagation_policy="Background")
