"""The operator as a platform team runs it: `helm install` of the chart with the operator
image built from operator/Dockerfile, running in-cluster as the chart's Deployment pod
(the executor runs it inside the image: the chart's user, read-only root, in-cluster
config from the projected ServiceAccount token, probes served and checked). It runs an
EvalRun in the runner image built from runner-image/Dockerfile (real lmms-eval 0.7.3,
offline) against a loopback OpenAI-compatible model, and a real Prometheus scrapes the
operator pod."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from lmms_devcluster import devcluster
from tests import evalruns as er
from tests.e2e.test_operator_runner import colors_run, promql
from tests.e2e.test_runner import ModelServer, _free_port
from tests.helpers import CHART, adopt_crds, helm, system_and_tenant_namespaces, wait_for
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.chart]


@pytest.fixture()
def model_server() -> Iterator[ModelServer]:
    server = ModelServer(delay=0.2, wrong_every=5)
    yield server
    server.stop()


def _digest(image: str) -> str:
    out = subprocess.run(
        ["buildah", "--storage-driver", "vfs", "inspect", "--type", "image", image],
        capture_output=True,
        text=True,
        check=True,
    )
    return f"{image.rsplit(':', 1)[0]}@{json.loads(out.stdout)['FromImageDigest']}"


def _container_log(cluster: devcluster.DevCluster, pod: client.V1Pod) -> str:
    path = cluster.directory / "executor" / "pods" / pod.metadata.uid / "container.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else "(no log)"


def _ready(pod: client.V1Pod) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def test_the_chart_runs_the_operator_image_which_runs_the_runner_image(
    cluster: devcluster.DevCluster,
    api: client.ApiClient,
    images: dict[str, str],
    operator_process: OperatorProcess,
    model_server: ModelServer,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(api)
    system, evals = system_and_tenant_namespaces(api)
    adopt_crds(cluster, "lmms", system)
    operator_image, runner_image = images["lmms-operator"], images["lmms-operator-runner"]
    metrics_port, health_port = _free_port(), _free_port()
    # One operator at a time: the in-process one of the other tests steps aside.
    operator_process.stop()
    installed = False
    prometheus: subprocess.Popen[bytes] | None = None
    try:
        values = {
            "image": {
                "repository": operator_image.rsplit(":", 1)[0],
                "tag": operator_image.rsplit(":", 1)[1],
            },
            # One replica (it still leads, on its Lease): the test reads that pod's log,
            # restarts and metrics. Two replicas and a takeover: tests/cluster (HA).
            "replicaCount": 1,
            "metricsPort": metrics_port,
            "healthPort": health_port,
            "nodeSelector": {devcluster.EXECUTOR_LABEL: "true"},
            "tolerations": [{"key": devcluster.EXECUTOR_LABEL, "operator": "Exists"}],
            "settings": {"runnerImage": runner_image, "scrapeInterval": 1, "resyncInterval": 2},
        }
        values_file = tmp_path / "values.yaml"
        values_file.write_text(json.dumps(values))
        helm(cluster, "install", "lmms", str(CHART), "-n", system, "-f", str(values_file))
        installed = True

        def operator_pod() -> client.V1Pod | None:
            pods = core.list_namespaced_pod(
                system, label_selector="app.kubernetes.io/component=operator"
            ).items
            return next((p for p in pods if p.status.phase == "Running" and _ready(p)), None)

        try:
            pod = wait_for(operator_pod, timeout=120)
        except AssertionError:
            pods = core.list_namespaced_pod(system).items
            logs = [_container_log(cluster, p) for p in pods]
            raise AssertionError(f"the operator pod is not Ready: {pods!r}\n{logs}") from None
        (status,) = pod.status.container_statuses
        assert status.image_id == _digest(operator_image)
        assert status.restart_count == 0
        # In-cluster configuration: the ServiceAccount token the API server projected
        # into the pod (TokenRequest, bound to the pod), not a kubeconfig.
        projected = [v for v in pod.spec.volumes if v.name.startswith("kube-api-access-")]
        assert projected and projected[0].projected.sources[0].service_account_token
        assert pod.spec.containers[0].security_context.read_only_root_filesystem

        prometheus, prometheus_url = _prometheus(tmp_path, f"{pod.status.pod_ip}:{metrics_port}")

        body = colors_run(core, evals, "colors", model_server, "sk-incluster-0123456789")
        body["spec"]["resources"] = {"gpus": 1}
        er.create(api, evals, body)
        try:
            run = er.wait_phase(api, evals, "colors", "Succeeded", timeout=600)
        except AssertionError:
            pods = [*core.list_namespaced_pod(evals).items, pod]
            raise AssertionError(
                f"{er.get(api, evals, 'colors').get('status')}\n"
                + "\n".join(_container_log(cluster, p) for p in pods)
            ) from None
        (result,) = run["status"]["results"]
        assert (result["task"], result["metric"]) == ("colors", "exact_match")
        assert result["value"] == pytest.approx(0.8)
        assert model_server.requests() == 10
        # The runner ran from its image: the kubelet's imageID is the image's digest, and
        # the results name it, with the image's own lock.
        (runner_pod,) = core.list_namespaced_pod(
            evals, label_selector=f"job-name={run['status']['jobName']}"
        ).items
        assert runner_pod.status.container_statuses[0].image_id == _digest(runner_image)
        cm = core.read_namespaced_config_map(run["status"]["resultsConfigMap"], evals)
        assert cm.data["image"] == _digest(runner_image)
        provenance = json.loads(cm.data["results.json"])["provenance"]
        assert provenance["lmmsEvalVersion"] == "0.7.3"
        lock = (Path(__file__).parents[2] / "requirements" / "runner-py311.txt").read_text()
        assert provenance["locked"]["lmms-eval"] == "0.7.3" and "torch" in provenance["locked"]
        assert all(f"{name}==" in lock or f"{name}[" in lock for name in provenance["locked"])
        # Published by the in-cluster operator, with its ServiceAccount's rights.
        wait_for(lambda: er.get(api, evals, "colors")["status"].get("leaderboardPublished"))
        board = client.CustomObjectsApi(api).get_namespaced_custom_object(
            "eval.lmms.dev", "v1alpha1", evals, "leaderboards", "default"
        )
        assert board["status"]["entries"] == 1
        # A real Prometheus scraped the operator pod.
        score = wait_for(
            lambda: promql(
                prometheus_url, f'lmms_operator_score{{task="colors",namespace="{evals}"}}'
            ),
            timeout=60,
        )
        assert float(score[0]["value"][1]) == pytest.approx(0.8)
        # Still the same container: no probe failed meanwhile.
        pod = core.read_namespaced_pod(pod.metadata.name, system)
        assert pod.status.container_statuses[0].restart_count == 0 and _ready(pod)
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        if installed:
            helm(cluster, "uninstall", "lmms", "-n", system, "--wait", "--timeout", "60s")
        operator_process.start()
        for ns in (system, evals):
            core.delete_namespace(ns, propagation_policy="Background")


def _prometheus(tmp_path: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's Prometheus, scraping ``target`` every second."""
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: lmms-operator\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return proc, f"http://127.0.0.1:{port}"
