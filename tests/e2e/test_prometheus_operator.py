"""The chart's monitoring objects through the real Prometheus Operator, as a platform
team runs them.

The Prometheus Operator (v0.85.0, built from its Go module by ``build-netmon.sh``) runs
in the devcluster as a pod with the ClusterRole from its module, against the chart
rendered with ``serviceMonitor``, ``podMonitor`` and ``prometheusRule`` enabled (the
operator's pod is the chart's Deployment, run from the devcluster's own Python
environment rather than the operator image). A ``Prometheus`` resource makes it write
the scrape configuration (the ``prometheus-<name>`` Secret, gzipped) and the rule files
(``prometheus-<name>-rulefiles-0``); a real Prometheus (Debian's) runs as a pod with
exactly those, mounted where the operator's StatefulSet would mount them, and its
in-cluster ServiceAccount for Kubernetes service discovery. (The StatefulSet the
Prometheus Operator makes names images that are not in the executor's store: its pod
lands on a kwok node and does nothing; ``spec.version`` names Debian's Prometheus, so
the configuration is generated for the binary that reads it.)

Targets are found by service discovery, so the pods need addresses that a Service's
endpoints take: each executor pod has its own network namespace on the devcluster's
bridge (``podnet``). NetworkPolicies are created (the chart's and the operator's
``lmms-runner``, which admits the Prometheus pods) but not enforced: the devcluster has
no policy engine."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from lmms_devcluster import devcluster, podnet
from lmms_devcluster.imagestore import HOST_IMAGE
from tests import evalruns as er
from tests.e2e.test_operator_runner import colors_run
from tests.e2e.test_runner import ModelServer
from tests.helpers import CHART, system_and_tenant_namespaces, wait_for
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.chart]

REPO = Path(__file__).resolve().parents[2]
DASHBOARD = CHART / "files" / "dashboard.json"
PROMETHEUS = "k8s"  # the Prometheus resource
RELEASE = "lmms"
#: The Prometheus that build-netmon.sh builds (the release the Prometheus Operator's
#: go.mod names): the configuration is generated for it.
PROMETHEUS_VERSION = "v3.5.0"
ON_EXECUTOR: dict[str, Any] = {
    "nodeSelector": {devcluster.EXECUTOR_LABEL: "true"},
    "tolerations": [{"key": devcluster.EXECUTOR_LABEL, "operator": "Exists"}],
}


def _kubectl_apply(cluster: devcluster.DevCluster, docs: list[dict[str, Any]]) -> None:
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(docs)
    )


def _running(core: client.CoreV1Api, namespace: str, name: str) -> client.V1Pod | None:
    pod = core.read_namespaced_pod(name, namespace)
    return pod if pod.status.phase == "Running" and pod.status.pod_ip else None


def _log(cluster: devcluster.DevCluster, pod: client.V1Pod) -> str:
    path = cluster.directory / "executor" / "pods" / pod.metadata.uid / "container.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def _rbac(binaries: Path, role_file: str, namespace: str, account: str) -> list[dict[str, Any]]:
    """The module's example ClusterRole, bound to ``account`` (a binding of its own)."""
    (role,) = yaml.safe_load_all((binaries / "rbac" / role_file).read_text())
    return [
        role,
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": namespace},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"{account}-{namespace}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": role["metadata"]["name"],
            },
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    ]


@pytest.fixture(scope="module")
def prometheus_operator(cluster: devcluster.DevCluster, api: client.ApiClient) -> Iterator[str]:
    """The Prometheus Operator as a pod in a namespace of its own (returned), with its
    CRDs and its ClusterRole from its Go module."""
    if not (cluster.directory / "executor" / "cni").exists():
        pytest.fail(
            "executor pods have no addresses of their own here (podnet needs root): the "
            "Prometheus Operator's service discovery cannot find them"
        )
    binaries = devcluster.find_netmon()
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(binaries / "crds"))
    kinds = ("prometheuses", "servicemonitors", "podmonitors", "prometheusrules")
    wait_for(  # (a CRD just made has no conditions yet, which kubectl wait refuses)
        lambda: cluster.kubectl(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            *[f"crd/{kind}.monitoring.coreos.com" for kind in kinds],
        ),
        timeout=90,
    )
    core = client.CoreV1Api(api)
    namespace = f"monitoring-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": namespace}})
    wait_for(lambda: core.read_namespaced_service_account("default", namespace), timeout=30)
    docs = _rbac(
        binaries,
        "prometheus-operator/prometheus-operator-cluster-role.yaml",
        namespace,
        "prometheus-operator",
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "prometheus-operator",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "prometheus-operator"},
        },
        "spec": {
            "serviceAccountName": "prometheus-operator",
            **ON_EXECUTOR,
            "containers": [
                {
                    "name": "prometheus-operator",
                    "image": HOST_IMAGE,
                    "command": [str(binaries / "prometheus-operator")],
                    "args": ["--web.listen-address=:8080", "--log-level=info"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/healthz", "port": 8080},
                        "periodSeconds": 1,
                    },
                }
            ],
        },
    }
    _kubectl_apply(cluster, [*docs, pod])

    def ready() -> client.V1Pod | None:
        p = core.read_namespaced_pod("prometheus-operator", namespace)
        conds = {c.type: c.status for c in p.status.conditions or []}
        return p if conds.get("Ready") == "True" else None

    try:
        wait_for(ready, timeout=90)
    except AssertionError:
        p = core.read_namespaced_pod("prometheus-operator", namespace)
        raise AssertionError(f"the Prometheus Operator is not ready:\n{_log(cluster, p)}") from None
    yield namespace
    core.delete_namespace(namespace, propagation_policy="Background")


def _render_chart(system: str, metrics_port: int) -> list[dict[str, Any]]:
    """The chart with its monitoring objects; the operator's container runs from the
    devcluster's environment (``HOST_IMAGE``) with this checkout on its path."""
    values = {
        "crds": {"install": False},
        "metricsPort": metrics_port,
        "serviceMonitor": {"enabled": True, "interval": "1s"},
        "podMonitor": {"enabled": True, "interval": "1s"},
        "prometheusRule": {"enabled": True},
        **ON_EXECUTOR,
        "settings": {"runnerImage": HOST_IMAGE, "scrapeInterval": 1, "resyncInterval": 2},
    }
    out = subprocess.run(
        [
            devcluster.find_helm(),
            "template",
            RELEASE,
            str(CHART),
            "-n",
            system,
            "-f",
            "-",
        ],
        input=json.dumps(values),
        capture_output=True,
        text=True,
        check=True,
    )
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["image"] = HOST_IMAGE
            container["command"] = [sys.executable, "-m", "lmms_operator"]
            container["env"].append(
                {"name": "PYTHONPATH", "value": os.environ.get("PYTHONPATH", "")}
            )
    return docs


def _prometheus_pod(namespace: str, account: str) -> dict[str, Any]:
    """Prometheus with the configuration and rule files the Prometheus Operator wrote,
    where its StatefulSet mounts them; what its config reloader does first (unzip the
    configuration, put in the pod's name for ``$(POD_NAME)`` and its shard for
    ``$(SHARD)``, which the targets' ``hashmod`` keeps) is done by the container's
    shell."""
    rules = f"prometheus-{PROMETHEUS}-rulefiles-0"
    binary = devcluster.find_netmon() / "prometheus"
    script = (
        "gunzip -c /etc/prometheus/config/prometheus.yaml.gz "
        "| sed -e 's/[$](POD_NAME)/'\"$POD_NAME\"'/g' -e 's/[$](SHARD)/0/g' "
        "> $HOME/prometheus.yaml && "
        f"exec {binary} --config.file=$HOME/prometheus.yaml --storage.tsdb.path=/prometheus "
        "--web.listen-address=$(POD_IP):9090"
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "prometheus",
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "prometheus", "prometheus": PROMETHEUS},
        },
        "spec": {
            "serviceAccountName": account,
            **ON_EXECUTOR,
            "containers": [
                {
                    "name": "prometheus",
                    "image": HOST_IMAGE,
                    "command": ["sh", "-c", script],
                    "env": [
                        {
                            "name": "POD_IP",
                            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                        },
                        {
                            "name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                    ],
                    "ports": [{"name": "web", "containerPort": 9090}],
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/prometheus/config", "readOnly": True},
                        {
                            "name": "rules",
                            "mountPath": f"/etc/prometheus/rules/{rules}",
                            "readOnly": True,
                        },
                        {"name": "tsdb", "mountPath": "/prometheus"},
                    ],
                }
            ],
            "volumes": [
                {"name": "config", "secret": {"secretName": f"prometheus-{PROMETHEUS}"}},
                {"name": "rules", "configMap": {"name": rules}},
                {"name": "tsdb", "emptyDir": {}},
            ],
        },
    }


def _api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = json.load(resp)
    except urllib.error.HTTPError as exc:
        body = json.load(exc)
    return body


def _query(base: str, expr: str) -> dict[str, Any]:
    body = _api(base, "/api/v1/query", query=expr)
    assert body["status"] == "success", (expr, body)
    return dict(body["data"])


def _targets(base: str) -> list[dict[str, Any]]:
    return list(_api(base, "/api/v1/targets", state="active")["data"]["activeTargets"])


#: What Grafana puts in for its macros over the dashboard's default range.
GRAFANA_MACROS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "${__range}": "1h",
    "$__range_s": "3600",
}


def _dashboard_queries(namespace: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(title, PromQL) of every panel target, and (variable, PromQL) of every query
    variable, read from the chart's dashboard as it is now: the namespace variable is
    the EvalRun's namespace, every other variable its "All" value."""
    board = json.loads(DASHBOARD.read_text())
    variables = {}
    var_queries = []
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        name = var["name"]
        variables[name] = namespace if name == "namespace" else var.get("allValue", ".*")
        query = var.get("query")
        query = query.get("query") if isinstance(query, dict) else query
        var_queries.append((name, query or var.get("definition", "")))

    def fill(expr: str) -> str:
        for macro, value in GRAFANA_MACROS.items():
            expr = expr.replace(macro, value)
        for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
            for form in (f"${{{name}}}", f"${name}", f"[[{name}]]"):
                expr = expr.replace(form, value)
        assert "$" not in expr, f"a dashboard variable is left in {expr!r}"
        return expr

    panels = []
    for panel in board["panels"]:
        for sub in [panel, *panel.get("panels", [])]:
            for target in sub.get("targets", []):
                if target.get("expr"):
                    panels.append((sub["title"], fill(target["expr"])))
    out_vars = []
    for name, query in var_queries:
        query = fill(query)
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query, re.S)
        if m:  # Grafana's label_values(selector, label): the label's values
            query = f"group by ({m.group(2)}) ({m.group(1)})"
        out_vars.append((name, query))
    return panels, out_vars


def test_the_prometheus_operator_turns_the_charts_monitors_and_rules_into_prometheus_config(
    cluster: devcluster.DevCluster,
    api: client.ApiClient,
    operator_process: OperatorProcess,
    prometheus_operator: str,
    tmp_path: Path,
) -> None:
    core = client.CoreV1Api(api)
    custom = client.CustomObjectsApi(api)
    monitoring = prometheus_operator
    system, evals = system_and_tenant_namespaces(api)
    subnet = podnet.identity(cluster.directory / "executor")[1]
    operator_process.stop()  # one lmms-operator at a time: the chart's pod, here
    model_server = ModelServer(delay=1.5, wrong_every=5)
    docs = _render_chart(system, metrics_port=9090)
    try:
        _kubectl_apply(cluster, docs)
        _kubectl_apply(
            cluster,
            _rbac(
                devcluster.find_netmon(),
                "prometheus/prometheus-cluster-role.yaml",
                monitoring,
                "prometheus",
            ),
        )
        everything: dict[str, Any] = {}
        custom.create_namespaced_custom_object(
            "monitoring.coreos.com",
            "v1",
            monitoring,
            "prometheuses",
            {
                "apiVersion": "monitoring.coreos.com/v1",
                "kind": "Prometheus",
                "metadata": {"name": PROMETHEUS, "namespace": monitoring},
                "spec": {
                    "version": PROMETHEUS_VERSION,
                    "replicas": 1,
                    "serviceAccountName": "prometheus",
                    "scrapeInterval": "1s",
                    "evaluationInterval": "1s",
                    "serviceMonitorSelector": everything,
                    "serviceMonitorNamespaceSelector": everything,
                    "podMonitorSelector": everything,
                    "podMonitorNamespaceSelector": everything,
                    "ruleSelector": everything,
                    "ruleNamespaceSelector": everything,
                },
            },
        )
        full = f"{RELEASE}-lmms-operator"
        service_job = f"serviceMonitor/{system}/{full}/0"
        pod_job = f"podMonitor/{system}/{full}-runners/0"

        def generated() -> str | None:
            try:
                secret = core.read_namespaced_secret(f"prometheus-{PROMETHEUS}", monitoring)
            except client.ApiException:
                return None
            raw = (secret.data or {}).get("prometheus.yaml.gz")
            if not raw:
                return None
            import base64

            text = gzip.decompress(base64.b64decode(raw)).decode()
            return text if service_job in text and pod_job in text else None

        config = wait_for(generated, timeout=90, message="the Prometheus Operator's config")
        (tmp_path / "prometheus.yaml").write_text(config)  # for a failure's post-mortem
        parsed = yaml.safe_load(config)
        jobs = {j["job_name"]: j for j in parsed["scrape_configs"]}
        # Discovery through the Service's endpoints (ServiceMonitor) and the pods
        # (PodMonitor), in-cluster; the operator's series keep their own labels.
        assert jobs[service_job]["honor_labels"] is True
        assert {c["role"] for c in jobs[service_job]["kubernetes_sd_configs"]} <= {
            "endpoints",
            "endpointslice",
        }
        assert [c["role"] for c in jobs[pod_job]["kubernetes_sd_configs"]] == ["pod"]
        rules_cm = wait_for(
            lambda: core.read_namespaced_config_map(
                f"prometheus-{PROMETHEUS}-rulefiles-0", monitoring
            ),
            timeout=60,
        )
        (rule_file,) = [k for k in rules_cm.data if system in k]
        rendered_rule = next(d for d in docs if d["kind"] == "PrometheusRule")
        expected_rules = {
            r["alert"] for g in rendered_rule["spec"]["groups"] for r in g["rules"] if "alert" in r
        }
        assert {
            r["alert"]
            for g in yaml.safe_load(rules_cm.data[rule_file])["groups"]
            for r in g["rules"]
            if "alert" in r
        } == expected_rules

        _kubectl_apply(cluster, [_prometheus_pod(monitoring, "prometheus")])
        try:
            pod = wait_for(lambda: _running(core, monitoring, "prometheus"), timeout=60)
        except AssertionError:
            raise AssertionError(
                _log(cluster, core.read_namespaced_pod("prometheus", monitoring))
            ) from None
        base = f"http://{pod.status.pod_ip}:9090"
        try:
            wait_for(lambda: _reachable(base) or None, timeout=60)
        except AssertionError:
            raise AssertionError(f"Prometheus is not ready:\n{_log(cluster, pod)}") from None

        # The chart's operator pod, found through its Service's endpoints, on the bridge.
        def operator_target() -> dict[str, Any] | None:
            for t in _targets(base):
                if t["scrapePool"] == service_job and t["health"] == "up":
                    return t
            return None

        try:
            target = wait_for(operator_target, timeout=120)
        except AssertionError:
            operator_pods = core.list_namespaced_pod(system).items
            dropped = _api(base, "/api/v1/targets", state="dropped")["data"]["droppedTargets"]
            raise AssertionError(
                f"{_targets(base)}\ndropped: {[d for d in dropped if d['scrapePool'] == service_job]}\n"
                + cluster.kubectl(
                    "get", "endpoints,endpointslices,pods", "-o", "wide", "-n", system
                )
                + "\n".join(_log(cluster, p)[-1000:] for p in operator_pods)
            ) from None
        host = target["labels"]["instance"].rsplit(":", 1)[0]
        assert podnet_address(host, subnet), target

        body = colors_run(core, evals, "colors", model_server, "sk-promop-0123456789")
        er.create(api, evals, body)

        # The runner PodMonitor's target is up while the run runs: the runner pod's
        # address on the bridge, its metrics port (which the lmms-runner policy opens to
        # the Prometheus pods; created, not enforced here).
        def runner_target() -> dict[str, Any] | None:
            for t in _targets(base):
                if t["scrapePool"] == pod_job and t["health"] == "up":
                    return t
            return None

        try:
            runner = wait_for(runner_target, timeout=240, interval=0.5)
        except AssertionError:
            raise AssertionError(
                f"{_targets(base)}\n{er.get(api, evals, 'colors').get('status')}"
            ) from None
        assert runner["labels"]["namespace"] == evals
        assert podnet_address(runner["labels"]["instance"].rsplit(":", 1)[0], subnet)
        policy = client.NetworkingV1Api(api).read_namespaced_network_policy("lmms-runner", evals)
        peers = [p.to_dict() for r in policy.spec.ingress for p in r._from]
        assert any(
            (p.get("pod_selector") or {}).get("match_labels")
            == {"app.kubernetes.io/name": "prometheus"}
            for p in peers
        ), peers
        assert pod.metadata.labels["app.kubernetes.io/name"] == "prometheus"
        # The runner's own series carry its namespace (the pod's, from discovery).
        assert _query(base, f'up{{job=~".*runners.*", namespace="{evals}", pod!=""}} == 1')[
            "result"
        ]

        er.wait_phase(api, evals, "colors", "Succeeded", timeout=600)
        wait_for(lambda: er.get(api, evals, "colors")["status"].get("leaderboardPublished"))
        # The operator's per-run series carry the EvalRun's namespace, not the operator's
        # (honorLabels), and no exported_namespace.
        score = wait_for(
            lambda: (
                _query(base, f'lmms_operator_score{{task="colors",namespace="{evals}"}}')["result"]
                or None
            ),
            timeout=60,
        )
        assert float(score[0]["value"][1]) == pytest.approx(0.8)
        exported = _query(base, '{exported_namespace!=""}')["result"]
        assert not exported, exported
        time.sleep(3)  # a few evaluations of every rule after the run

        panels, variables = _dashboard_queries(evals)
        assert panels
        shown = []
        for title, expr in panels:
            result = _query(base, expr)["result"]  # valid, else _query fails naming it
            if result:
                shown.append(title)
            if "lmms_operator_score" in expr:  # the published score is there to show
                assert result, (title, expr)
            for series in result:  # never the operator's own namespace
                assert series.get("metric", {}).get("namespace") != system, (title, series)
        assert any(
            s.get("metric", {}).get("namespace") == evals
            for _, expr in panels
            for s in _query(base, expr)["result"]
        ), panels
        for name, expr in variables:
            values = {s["metric"].get(name) for s in _query(base, expr)["result"]}
            assert values, (name, expr)
            if name == "namespace":
                assert evals in values and system not in values, (expr, values)
        print(f"dashboard panels with data: {shown}; variables: {variables}")

        # Every alert rule, loaded from the Prometheus Operator's rule files, evaluates.
        def evaluated() -> list[dict[str, Any]] | None:
            groups = _api(base, "/api/v1/rules")["data"]["groups"]
            rules = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
            done = all(not r.get("lastEvaluation", "0001").startswith("0001") for r in rules)
            return rules if rules and done else None

        rules = wait_for(evaluated, timeout=60)
        assert {r["name"] for r in rules} == expected_rules
        for rule in rules:
            assert rule["health"] == "ok", rule
            assert not rule.get("lastError"), rule
        # The down alert's job is the one the ServiceMonitor's targets get.
        firing = {a["labels"]["alertname"] for r in rules for a in r.get("alerts", [])}
        assert "LmmsOperatorDown" not in firing, rules
        assert _query(base, f'up{{job="{target["labels"]["job"]}"}} == 1')["result"]
    finally:
        model_server.stop()
        core.delete_namespace(system, propagation_policy="Background")
        core.delete_namespace(evals, propagation_policy="Background")
        for kind in ("prometheuses",):
            with contextlib.suppress(client.ApiException):
                custom.delete_namespaced_custom_object(
                    "monitoring.coreos.com", "v1", monitoring, kind, PROMETHEUS
                )
        with contextlib.suppress(client.ApiException):
            core.delete_namespaced_pod("prometheus", monitoring, grace_period_seconds=1)
        for doc in docs:  # the chart's cluster-scoped objects (roles, admission policy)
            if "namespace" not in doc["metadata"]:
                cluster.kubectl(
                    "delete",
                    doc["kind"],
                    doc["metadata"]["name"],
                    "--ignore-not-found",
                    check=False,
                )
        operator_process.start()


def podnet_address(host: str, subnet: Any) -> bool:
    import ipaddress

    return ipaddress.ip_address(host) in subnet


def _reachable(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False
