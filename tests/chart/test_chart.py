"""The Helm chart and its assets, checked with the real tools: `helm lint` and `helm
template` over several value sets, least-privilege RBAC, `promtool check rules` and
`promtool test rules` for every alert, and the Argo CD health checks run by lua5.1."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from lmms_devcluster import devcluster

pytestmark = pytest.mark.chart

REPO = Path(__file__).parents[2]
CHART = REPO / "helm" / "lmms-operator"
KUBE_VERSION = "1.34.4"

VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "selected-namespaces": ["--set", "watch.namespaces={team-a,team-b}"],
    "monitoring": [
        "--set",
        "serviceMonitor.enabled=true,podMonitor.enabled=true,prometheusRule.enabled=true",
    ],
    "no-crds-no-extras": [
        "--set",
        "crds.install=false,grafanaDashboard.enabled=false,networkPolicy.enabled=false",
    ],
    "restricted-features": [
        "--set",
        "settings.allowedFeatures={multiNode,customTasks}",
        "--set",
        "serviceAccount.create=false,serviceAccount.name=existing",
    ],
    "one-replica": ["--set", "replicaCount=1"],
    "no-leader-election": ["--set", "replicaCount=1,leaderElection.enabled=false"],
    "renamed": ["--set", "nameOverride=evals,fullnameOverride=platform-evals"],
    "by-digest": ["--set", f"image.digest=sha256:{'ab' * 32},image.tag=ignored"],
    "openshift": [
        "--set-json",
        'podSecurityContext={"runAsNonRoot":true,"seccompProfile":{"type":"RuntimeDefault"}}',
        "--set",
        "podAntiAffinity=hard",
    ],
    "gpu-memory": [
        "--set-json",
        'settings.gpuMemory={"nvidia.com/gpu":"80Gi","nvidia.com/mig-1g.10gb":"10Gi"}',
    ],
    "runner-defaults": [
        "--set-json",
        'runnerPodDefaults={"imagePullSecrets":["regcred"],"tolerations":[{"key":'
        '"nvidia.com/gpu","operator":"Exists","effect":"NoSchedule"}],"nodeSelector":'
        '{"gpu":"a100"},"priorityClassName":"gpu-batch","runtimeClassName":"nvidia",'
        '"labels":{"team":"ml"},"annotations":{"cost-center":"42"}}',
    ],
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [devcluster.find_helm(), *args], capture_output=True, text=True, check=False
    )


def render(*args: str) -> list[dict[str, Any]]:
    out = helm(
        "template", "lmms", str(CHART), "-n", "lmms-system", "--kube-version", KUBE_VERSION, *args
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def test_the_chart_renders_and_lints_with_no_flags() -> None:
    """As a user runs it: helm knows the Kubernetes version of its own client-go (the
    ldflags of upstream's release builds), so the chart's kubeVersion is satisfied."""
    out = helm("template", "lmms", str(CHART))
    assert out.returncode == 0, out.stderr
    assert "kind: Deployment" in out.stdout
    out = helm("lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr


def test_helm_lint_passes_strict() -> None:
    out = helm("lint", "--strict", str(CHART), "--kube-version", KUBE_VERSION)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_value_set_renders_a_secure_operator(name: str) -> None:
    docs = render(*VALUE_SETS[name])
    (deploy,) = by_kind(docs, "Deployment")
    spec = deploy["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    # Two replicas and a leader by default; without leader election, one and Recreate.
    if name == "no-leader-election":
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
        assert "--leader-elect" not in container["args"]
    else:
        assert spec["replicas"] == (1 if name == "one-replica" else 2)
        assert spec["strategy"]["type"] == "RollingUpdate"
        assert "--leader-elect" in container["args"]
    # One PodDisruptionBudget exactly when there is more than one replica.
    assert len(by_kind(docs, "PodDisruptionBudget")) == (spec["replicas"] > 1)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert (
        container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    )
    # Pod Security "restricted", and no fixed user id (OpenShift assigns one).
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
    for context in (pod["securityContext"], sc):
        assert not {"runAsUser", "runAsGroup", "fsGroup"} & context.keys(), context
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["LMMS_SCRAPE_INTERVAL"] == "5" and env["LMMS_HOLD_TIMEOUT"] == "600"
    if name == "restricted-features":
        assert env["LMMS_ALLOWED_FEATURES"] == "multiNode,customTasks"
        assert pod["serviceAccountName"] == "existing" and not by_kind(docs, "ServiceAccount")
    else:
        assert "LMMS_ALLOWED_FEATURES" not in env  # all features
    crds = by_kind(docs, "CustomResourceDefinition")
    if name == "no-crds-no-extras":
        assert not crds and not by_kind(docs, "NetworkPolicy") and not by_kind(docs, "ConfigMap")
    else:
        assert {c["metadata"]["name"] for c in crds} == {
            "evalruns.eval.lmms.dev",
            "leaderboards.eval.lmms.dev",
        }
        for crd in crds:  # upgraded with the release, never deleted by it
            assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
            source = yaml.safe_load(
                (REPO / "crds" / f"eval.lmms.dev_{crd['spec']['names']['plural']}.yaml").read_text()
            )
            assert crd["spec"] == source["spec"]
    monitors = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    assert bool(monitors & {d["kind"] for d in docs}) == (name == "monitoring")
    for monitor in by_kind(docs, "ServiceMonitor"):
        # The EvalRun's namespace label stays the series' own (not exported_namespace).
        assert all(e["honorLabels"] is True for e in monitor["spec"]["endpoints"])
    if name == "selected-namespaces":
        args = container["args"]
        assert "--namespace=team-a" in args and "--namespace=team-b" in args
        # Cluster-wide, the operator reads Kueue's ClusterQueues only: nothing namespaced.
        cluster_rules = _operator_rules(docs, "ClusterRole")
        assert cluster_rules == [
            {
                "apiGroups": ["kueue.x-k8s.io"],
                "resources": ["clusterqueues"],
                "verbs": ["get", "list", "watch"],
            }
        ]
        roles = by_kind(docs, "Role")
        assert sorted(r["metadata"]["namespace"] for r in roles) == [
            "lmms-system",  # the Lease
            "team-a",
            "team-b",
        ]
        policies = by_kind(docs, "NetworkPolicy")
        assert sorted(p["metadata"]["namespace"] for p in policies) == [
            "lmms-system",
            "team-a",
            "team-b",
        ]


def _rules(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rules the operator's ServiceAccount holds (not the tenants' roles)."""
    return _operator_rules(docs, "ClusterRole") + _operator_rules(docs, "Role")


def _operator_rules(
    docs: list[dict[str, Any]], kind: str, sa: str = "lmms-lmms-operator"
) -> list[dict[str, Any]]:
    bound = {
        (b["metadata"].get("namespace"), b["roleRef"]["name"])
        for b in by_kind(docs, f"{kind}Binding")
        if any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in b["subjects"])
    }
    return [
        rule
        for role in by_kind(docs, kind)
        if (role["metadata"].get("namespace"), role["metadata"]["name"]) in bound
        for rule in role["rules"]
    ]


@pytest.mark.parametrize("name", ["defaults", "selected-namespaces"])
def test_rbac_is_least_privilege(name: str) -> None:
    docs = render(*VALUE_SETS[name])
    rules = _rules(docs)
    assert rules
    for rule in rules:
        for key in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule.get(key, []), rule
        assert "pods/exec" not in rule["resources"] and "pods/attach" not in rule["resources"]
        assert "escalate" not in rule["verbs"] and "bind" not in rule["verbs"]
        assert "nodes" not in rule["resources"]
    secret_verbs = {v for r in rules if "secrets" in r["resources"] for v in r["verbs"]}
    assert secret_verbs == {"get", "create", "delete"}  # never list or watch
    evalrun_verbs = {v for r in rules if "evalruns" in r["resources"] for v in r["verbs"]}
    assert evalrun_verbs == {"get", "list", "watch"}  # the spec belongs to its users
    # A served model's readiness: read-only, by label (EndpointSlices) or by name (KServe).
    for resource, group, verbs in (
        ("endpointslices", "discovery.k8s.io", {"list"}),
        ("inferenceservices", "serving.kserve.io", {"get"}),
    ):
        granted = [r for r in rules if resource in r["resources"]]
        assert granted and all(r["apiGroups"] == [group] for r in granted), granted
        assert {v for r in granted for v in r["verbs"]} == verbs
    for binding in by_kind(docs, "ClusterRoleBinding") + by_kind(docs, "RoleBinding"):
        (subject,) = binding["subjects"]
        assert subject == {
            "kind": "ServiceAccount",
            "name": "lmms-lmms-operator",
            "namespace": "lmms-system",
        }


def test_network_policy_lets_only_the_operator_reach_the_scrape_port() -> None:
    docs = render()
    runners = next(
        d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"].endswith("-runners")
    )
    assert runners["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": "lmms-operator"
    }
    scrape = runners["spec"]["ingress"][0]
    assert scrape["ports"] == [{"port": 8080, "protocol": "TCP"}]
    (peer,) = scrape["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "lmms-system"
    }
    assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"
    (deploy,) = by_kind(docs, "Deployment")
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert peer["podSelector"]["matchLabels"].items() <= pod_labels.items()
    # Runners of different runs do not reach each other: the namespace-wide policy has
    # no runner-to-runner rule (each run's own policy, made with its Job, allows its pods).
    assert len(runners["spec"]["ingress"]) == 1
    # The per-run policies name the operator's pods by the labels the pod carries.
    env = {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}
    pairs = dict(p.split("=") for p in env["LMMS_OPERATOR_POD_LABELS"]["value"].split(","))
    assert pairs.items() <= pod_labels.items() and len(pairs) == 3
    assert env["LMMS_OPERATOR_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace"
    )
    assert env["LMMS_RUNNER_NETWORK_POLICY"]["value"] == "true"
    rules = _rules(docs)
    assert {"create", "delete"} <= {
        v for r in rules if "networkpolicies" in r["resources"] for v in r["verbs"]
    }


def test_with_the_pod_monitor_prometheus_reaches_the_runner_metrics_port() -> None:
    """The runner PodMonitor scrapes the runner port: with podMonitor.enabled the chart's
    runner policy and the operator's own per-namespace policy (through the env the chart
    sets) admit the Prometheus pods of networkPolicy.prometheus there, and agree."""
    from lmms_operator.reconcile import netpol
    from lmms_operator.reconcile.job import RunnerDefaults

    assert "LMMS_PROMETHEUS_POD_SELECTOR" not in json.dumps(render())  # off: operator only
    docs = render(*VALUE_SETS["monitoring"])
    runners = next(
        d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"].endswith("-runners")
    )
    (scrape,) = runners["spec"]["ingress"]
    prometheus = {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert scrape["from"][1] == prometheus
    (monitor,) = by_kind(docs, "PodMonitor")
    assert [e["targetPort"] for e in monitor["spec"]["podMetricsEndpoints"]] == [
        p["port"] for p in scrape["ports"]
    ]
    (deploy,) = by_kind(docs, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "LMMS_PROMETHEUS_NAMESPACE_SELECTOR" not in env  # {}: every namespace
    runner = RunnerDefaults(
        prometheus=netpol.PrometheusScrapers(pod_selector=env["LMMS_PROMETHEUS_POD_SELECTOR"])
    )
    assert netpol.prometheus_peer(runner) == prometheus
    selectors = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {
            "matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]
        },
    }
    docs = render(
        *VALUE_SETS["monitoring"],
        "--set-json",
        f"networkPolicy.prometheus={json.dumps(selectors)}",
        "--set",
        "networkPolicy.prometheus.podSelector.matchLabels=null",
    )
    (deploy,) = by_kind(docs, "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    runner = RunnerDefaults(
        prometheus=netpol.PrometheusScrapers(
            env["LMMS_PROMETHEUS_NAMESPACE_SELECTOR"], env["LMMS_PROMETHEUS_POD_SELECTOR"]
        ),
    )
    assert netpol.prometheus_peer(runner) == selectors
    runners = next(
        d for d in by_kind(docs, "NetworkPolicy") if d["metadata"]["name"].endswith("-runners")
    )
    assert runners["spec"]["ingress"][0]["from"][1] == selectors


def test_only_prometheus_may_scrape_the_operator_by_default() -> None:
    docs = render()
    operator = next(
        d for d in by_kind(docs, "NetworkPolicy") if not d["metadata"]["name"].endswith("-runners")
    )
    metrics_rule = operator["spec"]["ingress"][0]
    assert metrics_rule["from"] == [
        {
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]


def test_the_dashboard_ships_in_a_grafana_configmap() -> None:
    (cm,) = by_kind(render(), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(cm["data"]["lmms-operator.json"])
    titles = {p["title"] for p in dashboard["panels"]}
    assert {
        "Runs by phase",
        "Progress per active run",
        "Throughput (samples/s)",
        "GPU-hours by namespace and model",
        "Failures by reason",
        "Leaderboard",
        "Score history",
    } <= titles


def test_the_dashboard_reads_each_tenants_namespace_and_survives_restarts() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    # The Leaderboard variable lists the boards of the chosen namespaces only.
    assert variables["leaderboard"]["query"]["query"] == (
        'label_values(lmms_operator_score{namespace=~"$namespace"}, leaderboard)'
    )
    assert "lmms_operator_evalruns" in variables["namespace"]["query"]["query"]
    panels = {p["title"]: p for p in dashboard["panels"]}
    # GPU-hours: what the counter grew by over the dashboard's range (a restart resets the
    # counter; increase() sees through it), not the raw counter.
    (gpu,) = panels["GPU-hours by namespace and model"]["targets"]
    assert "increase(lmms_operator_gpu_seconds_total{" in gpu["expr"]
    assert "[$__range]" in gpu["expr"] and gpu["instant"] is True
    # Every panel about runs follows the namespace variable; only the operator's own work
    # is for the whole operator.
    for title, panel in panels.items():
        for target in panel["targets"]:
            if title == "Operator work":
                assert "$namespace" not in target["expr"]
            else:
                assert 'namespace=~"$namespace"' in target["expr"], (title, target["expr"])


def _leaves(values: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in ("resources",):
            out += _leaves(value, path + ".")
        else:
            out.append(path)
    return out


def test_every_value_is_described_in_the_schema_and_bad_values_are_refused() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path in _leaves(values):
        node = schema
        for part in path.split("."):
            props = node.get("properties")
            if props is None:  # a free-form map (labels, resources)
                break
            assert part in props, f"{path} is not in values.schema.json"
            node = props[part]
        assert node.get("description"), f"{path} has no description"
    bad = helm(
        "template",
        "x",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "settings.scrapeInterval=0",
        "--set",
        "watch.namespaces={Not_A_Name}",
    )
    assert bad.returncode != 0
    assert "/settings/scrapeInterval" in bad.stderr and "/watch/namespaces/0" in bad.stderr


# -- alerts ------------------------------------------------------------------------------
def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not installed (make test installs Debian's prometheus)")
    return path


def test_alert_rules_pass_promtool_check_and_unit_tests(tmp_path: Path) -> None:
    (rule,) = by_kind(
        render(
            "--set",
            "prometheusRule.enabled=true,prometheusRule.stalledMinutes=20,"
            "prometheusRule.operatorJob=lmms-operator",
        ),
        "PrometheusRule",
    )
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "EvalRunFailed",
        "EvalRunStalled",
        "LmmsOperatorDown",
        "LmmsOperatorNoLeader",
        "ScoreRegression",
    }
    # Every alert links its runbook section, and the section is there.
    runbooks = (REPO / "docs" / "runbooks.md").read_text()
    for r in (r for g in rule["spec"]["groups"] for r in g["rules"]):
        url = r["annotations"]["runbook_url"]
        assert url.endswith(f"/docs/runbooks.md#{r['alert'].lower()}"), url
        assert f"\n## {r['alert']}\n" in runbooks, r["alert"]
    assert "namespace" in next(
        r["expr"]
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if r["alert"] == "EvalRunFailed"
    )
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(Path(__file__).parent / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    check = subprocess.run(
        [_promtool(), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 5 rules found" in check.stdout
    tested = subprocess.run(
        [_promtool(), "test", "rules", "alerts_test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


# -- Argo CD health checks ------------------------------------------------------------------
ARGOCD = REPO / "docs" / "argocd"


def _lua(value: Any) -> str:
    """A Python value as a Lua literal (null becomes nil, as Argo CD's JSON decoding)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON string escapes are valid Lua escapes here
    if isinstance(value, list):
        return "{" + ", ".join(_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{json.dumps(k)}] = {_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def argocd_health(script: Path, obj: dict[str, Any]) -> tuple[str, str]:
    lua = shutil.which("lua5.1")
    if lua is None:
        pytest.fail("lua5.1 is not installed (make test installs Debian's lua5.1)")
    harness = f"obj = {_lua(obj)}\nlocal hs = dofile({json.dumps(str(script))})\n"
    harness += 'io.write(hs.status, "\\t", hs.message or "")\n'
    out = subprocess.run([lua, "-"], input=harness, capture_output=True, text=True, check=True)
    status, _, message = out.stdout.partition("\t")
    return status, message


def _run(generation: int, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r", "namespace": "ns", "generation": generation},
        "spec": {"model": {"type": "dummy"}, "tasks": ["mme"]},
        "status": status,
    }


EVALRUN_SAMPLES = [
    (_run(1), "Progressing", "observe generation 1"),
    (
        _run(2, observedGeneration=1, phase="Succeeded", reason="Succeeded"),
        "Progressing",
        "generation 2",
    ),
    (
        _run(1, observedGeneration=1, phase="Pending", reason="Scheduling", message="waiting"),
        "Progressing",
        "Pending (Scheduling): waiting",
    ),
    (
        _run(
            1, observedGeneration=1, phase="Running", reason="Running", summary="42%", message="x"
        ),
        "Progressing",
        "Running 42%",
    ),
    (
        _run(
            1,
            observedGeneration=1,
            phase="Succeeded",
            reason="Succeeded",
            results=[{"task": "mme", "metric": "score", "value": 1450.5}],
        ),
        "Healthy",
        "mme score=1450.5",
    ),
    (
        _run(1, observedGeneration=1, phase="Failed", reason="OOMKilled", message="out of memory"),
        "Degraded",
        "OOMKilled: out of memory",
    ),
    (
        _run(3, observedGeneration=3, phase="Queued", reason="Suspended", message="suspended"),
        "Suspended",
        "Suspended",
    ),
    (
        _run(2, observedGeneration=2, phase="Cancelled", reason="Cancelled", message="stopped"),
        "Suspended",
        "Cancelled: stopped",
    ),
]


@pytest.mark.parametrize(("obj", "status", "message"), EVALRUN_SAMPLES)
def test_argocd_health_check_of_evalruns(obj: dict[str, Any], status: str, message: str) -> None:
    got_status, got_message = argocd_health(ARGOCD / "evalrun-health.lua", obj)
    assert (got_status, message in got_message) == (status, True), got_message


def test_argocd_health_check_of_leaderboards() -> None:
    script = ARGOCD / "leaderboard-health.lua"
    empty = {"metadata": {"name": "b"}, "spec": {}}
    assert argocd_health(script, empty)[0] == "Progressing"
    full = {**empty, "status": {"entries": 3, "models": 2}}
    assert argocd_health(script, full) == ("Healthy", "3 entries, 2 models")
    broken = {
        **empty,
        "status": {
            "entries": 3,
            "conditions": [{"type": "ObjectStoreSynced", "status": "False", "message": "denied"}],
        },
    }
    assert argocd_health(script, broken) == ("Degraded", "denied")


def test_the_gitops_docs_carry_the_tested_scripts() -> None:
    doc = (REPO / "docs" / "gitops.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    data = yaml.safe_load(block)["data"]
    for kind, script in (
        ("EvalRun", "evalrun-health.lua"),
        ("Leaderboard", "leaderboard-health.lua"),
    ):
        key = f"resource.customizations.health.eval.lmms.dev_{kind}"
        assert data[key].strip() == (ARGOCD / script).read_text().strip()


def test_the_operator_image_fits_the_deployment() -> None:
    dockerfile = (REPO / "operator" / "Dockerfile").read_text()
    (deploy,) = by_kind(render(), "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert 'ENTRYPOINT ["lmms-operator"]' in dockerfile  # the chart passes `run ...` args
    assert pod["containers"][0]["args"][0] == "run"
    # No user id in the chart: the image's USER runs, numeric and not root, so that the
    # kubelet can check runAsNonRoot (a name it cannot), or OpenShift assigns one.
    assert "runAsUser" not in pod["securityContext"]
    (user,) = [line.split()[1] for line in dockerfile.splitlines() if line.startswith("USER ")]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    for line in dockerfile.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), src


# -- the runner placement policy ------------------------------------------------------------
def _admission(*args: str) -> tuple[dict[str, Any], dict[str, Any]]:
    docs = render(*args)
    (policy,) = by_kind(docs, "ValidatingAdmissionPolicy")
    (binding,) = by_kind(docs, "ValidatingAdmissionPolicyBinding")
    return policy, binding


def test_the_admission_policy_denies_runner_jobs_against_the_placement_policy() -> None:
    from lmms_operator.reconcile import job as jobs
    from lmms_operator.reconcile import kueue

    policy, binding = _admission()
    assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert binding["spec"] == {
        "policyName": policy["metadata"]["name"],
        "validationActions": ["Deny"],
    }
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    (rule,) = spec["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["batch"] and rule["resources"] == ["jobs"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE"}
    # It matches the label the operator really puts on its Jobs, and its service account.
    (match,) = spec["matchConditions"]
    assert f"'{jobs.LABEL_MANAGED_BY}'" in match["expression"]
    assert f"== '{jobs.MANAGED_BY}'" in match["expression"]
    assert "system:serviceaccount:lmms-system:lmms-lmms-operator" in match["expression"]
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert variables["allowedPriorityClasses"] == "[]"  # by default: none
    assert variables["allowedWorkloadPriorityClasses"] == "[]"
    # Kueue's priority: the label the operator really puts on a queued Job.
    assert f"'{kueue.PRIORITY_LABEL}'" in variables["workloadPriorityClass"]
    rules = "\n".join(v["expression"] for v in spec["validations"])
    for needle in (
        "priorityClassName in variables.allowedPriorityClasses",
        "workloadPriorityClass in variables.allowedWorkloadPriorityClasses",
        "has(t.key) && t.key != ''",
        "['kubernetes.io', 'k8s.io']",
        "!has(t.namespaceSelector)",
        "n == request.namespace",
        "node-role.kubernetes.io",
        "hostNetwork",
        "hostPID",
        "hostIPC",
        "hostPath",
        "privileged",
    ):
        assert needle in rules, needle
    assert "allowedTolerationKeys.exists" not in rules  # no list: any key outside the domains
    assert all(v.get("reason") == "Forbidden" for v in spec["validations"])


def test_the_placement_values_reach_the_policy_and_the_operator() -> None:
    args = (
        "--set",
        "placement.allowedPriorityClasses={batch-low,batch-high}",
        "--set",
        "placement.allowedTolerationKeys={nvidia.com/gpu,lmms.dev/*}",
        "--set",
        "placement.crossNamespaceAffinity=true",
    )
    policy, _ = _admission(*args)
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    assert json.loads(variables["allowedPriorityClasses"]) == ["batch-low", "batch-high"]
    assert json.loads(variables["allowedWorkloadPriorityClasses"]) == ["batch-low", "batch-high"]
    assert json.loads(variables["allowedTolerationKeys"]) == ["nvidia.com/gpu", "lmms.dev/*"]
    rules = "\n".join(v["expression"] for v in policy["spec"]["validations"])
    assert "allowedTolerationKeys.exists" in rules and "namespaceSelector" not in rules
    (deploy,) = by_kind(render(*args), "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["LMMS_ALLOWED_PRIORITY_CLASSES"] == "batch-low,batch-high"
    assert env["LMMS_ALLOWED_TOLERATION_KEYS"] == "nvidia.com/gpu,lmms.dev/*"
    assert env["LMMS_ALLOW_CROSS_NAMESPACE_AFFINITY"] == "true"
    (deploy,) = by_kind(render(), "Deployment")
    env = {
        e["name"]: e.get("value")
        for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert "LMMS_ALLOWED_PRIORITY_CLASSES" not in env and "LMMS_ALLOWED_TOLERATION_KEYS" not in env
    assert env["LMMS_ALLOW_CROSS_NAMESPACE_AFFINITY"] == "false"
    docs = render("--set", "admissionPolicy.enabled=false")
    assert not by_kind(docs, "ValidatingAdmissionPolicy")
    assert not by_kind(docs, "ValidatingAdmissionPolicyBinding")
    bad = helm(
        "template",
        "x",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "--set",
        "placement.allowedPriorityClasses={Not A Class}",
    )
    assert bad.returncode != 0 and "/placement/allowedPriorityClasses/0" in bad.stderr


# -- high availability -------------------------------------------------------------------
def _env(deploy: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in deploy["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_two_replicas_elect_a_leader_on_a_lease_they_may_write() -> None:
    docs = render()
    (deploy,) = by_kind(docs, "Deployment")
    spec = deploy["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert spec["replicas"] == 2
    # A new pod starts before an old one stops: safe, since only the leader works.
    assert spec["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    args = container["args"]
    assert "--leader-elect" in args
    assert "--lease-name=lmms-lmms-operator" in args
    assert "--lease-namespace=lmms-system" in args
    env = _env(deploy)
    # The identity is the pod's name (stable across restarts of that pod).
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    # The Lease: created by any replica, read and renewed by name, in the release namespace.
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["namespace"] == "lmms-system"]
    lease_rules = [r for r in role["rules"] if "leases" in r["resources"]]
    assert all(r["apiGroups"] == ["coordination.k8s.io"] for r in lease_rules)
    verbs = {(v, tuple(r.get("resourceNames", []))) for r in lease_rules for v in r["verbs"]}
    assert verbs == {
        ("create", ()),
        ("get", ("lmms-lmms-operator",)),
        ("update", ("lmms-lmms-operator",)),
    }
    (binding,) = [
        b for b in by_kind(docs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]
    ]
    assert binding["metadata"]["namespace"] == "lmms-system"
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    # A drain evicts one replica at a time; replicas prefer different nodes.
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    labels = spec["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= labels.items()


def test_one_replica_has_no_pdb_and_no_leader_election_means_one_replica() -> None:
    assert not by_kind(render("--set", "replicaCount=1"), "PodDisruptionBudget")
    assert not by_kind(render("--set", "podDisruptionBudget.enabled=false"), "PodDisruptionBudget")
    docs = render(*VALUE_SETS["no-leader-election"])
    assert not [r for r in _rules(docs) if "leases" in r["resources"]]
    (deploy,) = by_kind(docs, "Deployment")
    assert "POD_NAME" in _env(deploy)  # still there: the operator's identity in Events
    two = helm(
        "template", "x", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", "leaderElection.enabled=false",
    )  # fmt: skip
    assert two.returncode != 0 and "replicaCount > 1 needs leaderElection.enabled" in two.stderr
    (deploy,) = by_kind(render("--set", "leaderElection.leaseName=evals-leader"), "Deployment")
    assert (
        "--lease-name=evals-leader" in deploy["spec"]["template"]["spec"]["containers"][0]["args"]
    )
    (deploy,) = by_kind(render(*VALUE_SETS["openshift"]), "Deployment")
    affinity = deploy["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    assert affinity["requiredDuringSchedulingIgnoredDuringExecution"][0]["topologyKey"] == (
        "kubernetes.io/hostname"
    )
    (deploy,) = by_kind(render("--set", "podAntiAffinity=none"), "Deployment")
    assert "affinity" not in deploy["spec"]["template"]["spec"]


# -- names, images, security contexts, subchart ---------------------------------------------
def test_name_overrides_reach_every_object_and_selector() -> None:
    docs = render(*VALUE_SETS["renamed"])
    namespaced = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    for doc in namespaced:
        assert doc["metadata"]["name"].startswith("platform-evals"), doc["metadata"]["name"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "evals"
    (deploy,) = by_kind(docs, "Deployment")
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert deploy["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (service,) = by_kind(docs, "Service")
    assert service["spec"]["selector"].items() <= labels.items()
    pairs = dict(p.split("=") for p in _env(deploy)["LMMS_OPERATOR_POD_LABELS"]["value"].split(","))
    assert pairs["app.kubernetes.io/name"] == "evals" and pairs.items() <= labels.items()
    assert deploy["spec"]["template"]["spec"]["serviceAccountName"] == "platform-evals"
    # nameOverride alone: RELEASE-NAME.
    (deploy,) = by_kind(render("--set", "nameOverride=evals"), "Deployment")
    assert deploy["metadata"]["name"] == "lmms-evals"


def test_the_image_by_digest_wins_over_the_tag_and_the_runner_follows_app_version() -> None:
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    (deploy,) = by_kind(render(), "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"lmms-operator:{app_version}"
    assert _env(deploy)["LMMS_RUNNER_IMAGE"]["value"] == f"lmms-operator-runner:{app_version}"
    (deploy,) = by_kind(render(*VALUE_SETS["by-digest"]), "Deployment")
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == (
        f"lmms-operator@sha256:{'ab' * 32}"
    )
    (deploy,) = by_kind(render("--set", "settings.runnerImage=reg.example/runner:v9"), "Deployment")
    assert _env(deploy)["LMMS_RUNNER_IMAGE"]["value"] == "reg.example/runner:v9"
    bad = helm(
        "template", "x", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", "image.digest=latest",
    )  # fmt: skip
    assert bad.returncode != 0 and "/image/digest" in bad.stderr


def test_security_contexts_are_values_with_no_user_id() -> None:
    """A platform that needs a user id sets one; Helm merges it into the defaults, and a
    null removes a default."""
    docs = render(
        "--set-json",
        'podSecurityContext={"runAsUser":1000680000,"fsGroup":1000680000}',
        "--set-json",
        'securityContext={"readOnlyRootFilesystem":null,"runAsUser":1000680000}',
    )
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000680000,
        "fsGroup": 1000680000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    sc = pod["containers"][0]["securityContext"]
    assert sc["runAsUser"] == 1000680000 and "readOnlyRootFilesystem" not in sc
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False


def test_extra_env_comes_after_the_charts_own() -> None:
    (deploy,) = by_kind(
        render(
            "--set-json",
            'extraEnv=[{"name":"HTTPS_PROXY","value":"http://proxy:3128"},'
            '{"name":"TOKEN","valueFrom":{"secretKeyRef":{"name":"s","key":"k"}}}]',
        ),
        "Deployment",
    )
    env = deploy["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [e["name"] for e in env[-2:]] == ["HTTPS_PROXY", "TOKEN"]
    assert env[-1]["valueFrom"]["secretKeyRef"] == {"name": "s", "key": "k"}


def test_the_chart_works_as_a_subchart_with_global_values(tmp_path: Path) -> None:
    """A parent chart passes `global` to every subchart: the schema must allow it."""
    parent = tmp_path / "platform"
    (parent / "charts").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "lmms-operator")
    (parent / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "dependencies": [{"name": "lmms-operator", "version": "0.1.0"}],
            }
        )
    )
    (parent / "values.yaml").write_text(
        yaml.safe_dump(
            {
                "global": {
                    "imageRegistry": "registry.example.com/mirror",
                    "imagePullSecrets": [{"name": "mirror-credentials"}],
                    "storageClass": "fast",  # another subchart's global: allowed
                },
                "lmms-operator": {"fullnameOverride": "evals", "replicaCount": 3},
            }
        )
    )
    out = helm("template", "p", str(parent), "-n", "platform", "--kube-version", KUBE_VERSION)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    (deploy,) = by_kind(docs, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert deploy["metadata"]["name"] == "evals" and deploy["spec"]["replicas"] == 3
    assert pod["containers"][0]["image"].startswith("registry.example.com/mirror/lmms-operator:")
    assert _env(deploy)["LMMS_RUNNER_IMAGE"]["value"].startswith(
        "registry.example.com/mirror/lmms-operator-runner:"
    )
    assert pod["imagePullSecrets"] == [{"name": "mirror-credentials"}]
    lint = helm("lint", "--strict", str(parent), "--kube-version", KUBE_VERSION)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    # A repository that names its own registry keeps it.
    (deploy,) = by_kind(
        render(
            "--set",
            "global.imageRegistry=mirror.example,image.repository=quay.example/team/op",
        ),
        "Deployment",
    )
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "quay.example/team/op:"
    )


# -- platform defaults of runner pods -------------------------------------------------------
def test_runner_pod_defaults_reach_the_operator_and_the_admission_policy() -> None:
    docs = render(*VALUE_SETS["runner-defaults"])
    (deploy,) = by_kind(docs, "Deployment")
    env = {k: str(v.get("value")) for k, v in _env(deploy).items()}
    assert json.loads(env["LMMS_RUNNER_IMAGE_PULL_SECRETS"]) == ["regcred"]
    assert json.loads(env["LMMS_RUNNER_TOLERATIONS"]) == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert json.loads(env["LMMS_RUNNER_NODE_SELECTOR"]) == {"gpu": "a100"}
    assert env["LMMS_RUNNER_PRIORITY_CLASS_NAME"] == "gpu-batch"
    assert env["LMMS_RUNNER_RUNTIME_CLASS_NAME"] == "nvidia"
    assert json.loads(env["LMMS_RUNNER_LABELS"]) == {"team": "ml"}
    assert json.loads(env["LMMS_RUNNER_ANNOTATIONS"]) == {"cost-center": "42"}
    # The platform's own defaults pass the placement policy the API server enforces.
    (policy,) = by_kind(docs, "ValidatingAdmissionPolicy")
    variables = {v["name"]: json.loads(v["expression"]) for v in policy["spec"]["variables"][1:3]}
    assert variables["allowedPriorityClasses"] == ["gpu-batch"]
    # The pod's default priority class is no Kueue WorkloadPriorityClass a run may name.
    workload = next(
        v["expression"]
        for v in policy["spec"]["variables"]
        if v["name"] == "allowedWorkloadPriorityClasses"
    )
    assert json.loads(workload) == []
    assert "nvidia.com/gpu" in variables["allowedTolerationKeys"]
    # Nothing set, nothing passed: the operator's own defaults stand.
    (deploy,) = by_kind(render(), "Deployment")
    assert not [k for k in _env(deploy) if k.startswith("LMMS_RUNNER_") and k not in (
        "LMMS_RUNNER_IMAGE", "LMMS_RUNNER_PORT", "LMMS_RUNNER_NETWORK_POLICY"
    )]  # fmt: skip
    # A default toleration must have a key outside Kubernetes' own domains.
    for toleration, field in (
        ('{"operator":"Exists"}', "/runnerPodDefaults/tolerations/0"),
        ('{"key":"node.kubernetes.io/unreachable"}', "/runnerPodDefaults/tolerations/0/key"),
    ):
        bad = helm(
            "template", "x", str(CHART), "--kube-version", KUBE_VERSION,
            "--set-json", f"runnerPodDefaults.tolerations=[{toleration}]",
        )  # fmt: skip
        assert bad.returncode != 0 and field in bad.stderr, bad.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_operator_reads_the_runner_pod_defaults_the_chart_renders(name: str) -> None:
    """The chart's env goes through the operator's own parser (``poddefaults.parse``,
    what ``Settings.from_env`` calls at start-up) and onto a real runner Job: a value the
    chart renders that the operator would refuse, or read differently, fails here."""
    import dataclasses

    from lmms_operator.api import parse_spec
    from lmms_operator.config import Settings
    from lmms_operator.reconcile import job as jobs
    from lmms_operator.reconcile import poddefaults

    (deploy,) = by_kind(render(*VALUE_SETS[name]), "Deployment")
    env = {k: str(v["value"]) for k, v in _env(deploy).items() if "value" in v}
    defaults = poddefaults.parse(env)  # raises ValueError naming a variable it refuses
    if name != "runner-defaults":
        assert not defaults, defaults
        return
    assert defaults.image_pull_secrets == ("regcred",)
    assert [t.to_wire() for t in defaults.tolerations] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert dict(defaults.node_selector) == {"gpu": "a100"}
    assert (defaults.priority_class_name, defaults.runtime_class_name) == ("gpu-batch", "nvidia")
    assert (dict(defaults.labels), dict(defaults.annotations)) == (
        {"team": "ml"},
        {"cost-center": "42"},
    )
    runner = dataclasses.replace(Settings().runner, pod=defaults)
    spec = parse_spec({"model": {"type": "dummy", "pretrained": "local"}, "tasks": ["mme"]})
    run = jobs.RunRef(name="r", namespace="team-a", uid="00000000-0000-0000-0000-000000000001")
    job = jobs.build(run, spec, runner, token="t").job
    pod = job["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"]["gpu"] == "a100" and pod["runtimeClassName"] == "nvidia"
    assert pod["priorityClassName"] == "gpu-batch"
    assert job["metadata"]["labels"]["team"] == "ml"
    assert job["spec"]["template"]["metadata"]["annotations"]["cost-center"] == "42"


# -- tenants and Kueue ------------------------------------------------------------------------
def test_tenants_get_evalruns_through_the_built_in_roles_with_status_read_only() -> None:
    docs = render()
    roles = {
        r["metadata"]["name"]: r
        for r in by_kind(docs, "ClusterRole")
        if any(
            k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in r["metadata"]["labels"]
        )
    }
    assert set(roles) == {"lmms-lmms-operator-edit", "lmms-lmms-operator-view"}

    def grants(role: dict[str, Any]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for rule in role["rules"]:
            assert rule["apiGroups"] == ["eval.lmms.dev"], rule
            for resource in rule["resources"]:
                out.setdefault(resource, set()).update(rule["verbs"])
        return out

    edit, view = roles["lmms-lmms-operator-edit"], roles["lmms-lmms-operator-view"]
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert edit["metadata"]["labels"][aggregate + "edit"] == "true"
    assert edit["metadata"]["labels"][aggregate + "admin"] == "true"
    assert view["metadata"]["labels"][aggregate + "view"] == "true"
    writes = {"create", "update", "patch", "delete"}
    for resource in ("evalruns", "leaderboards"):
        assert writes <= grants(edit)[resource]
        assert grants(view)[resource] == {"get", "list", "watch"}
        for role in (edit, view):
            assert not writes & grants(role)[f"{resource}/status"], role["metadata"]["name"]
            assert "get" in grants(role)[f"{resource}/status"]
    assert not [
        r for r in by_kind(render("--set", "rbac.aggregatedRoles=false"), "ClusterRole")
        if "aggregate-to-edit" in str(r["metadata"]["labels"])
    ]  # fmt: skip


def test_the_operator_may_follow_and_hold_kueue_workloads_when_kueue_is_on() -> None:
    def kueue(docs: list[dict[str, Any]]) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for rule in _rules(docs):
            if rule["apiGroups"] == ["kueue.x-k8s.io"]:
                for resource in rule["resources"]:
                    out.setdefault(resource, set()).update(rule["verbs"])
        return out

    read = {"get", "list", "watch"}
    expected = {"workloads": read | {"patch", "update"}, "localqueues": read, "clusterqueues": read}
    assert kueue(render()) == expected
    assert kueue(render(*VALUE_SETS["selected-namespaces"])) == expected
    assert kueue(render("--set", "kueue.enabled=false")) == {}


# -- the chart's README ------------------------------------------------------------------------
def _value_rows(
    values: dict[str, Any], schema: dict[str, Any], prefix: str = ""
) -> list[tuple[str, Any]]:
    """Every value the schema describes as a property, with its default (free-form maps
    such as resources or labels as one value)."""
    rows = []
    for key, value in values.items():
        node = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict) and value and "properties" in node:
            rows += _value_rows(value, node, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value))
    return rows


def test_the_chart_readme_lists_every_value_with_its_default() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    rows = {
        line.split("|")[1].strip().strip("`"): line
        for line in readme.splitlines()
        if line.startswith("| `")
    }
    missing = []
    for path, default in _value_rows(values, schema):
        cell = f"`{json.dumps(default, separators=(',', ':'))}`"
        row = rows.get(path)
        if row is None or row.split("|")[2].strip() != cell:
            missing.append(f"| `{path}` | {cell} | ... |")
    assert not missing, "README.md's values table lacks or misstates:\n" + "\n".join(missing)
    # ...and lists no value that values.yaml does not have.
    described = {path for path, _ in _value_rows(values, schema)}
    extra = {p for p in rows if "." in p or p in values} - described
    assert not {p for p in extra if p.split(".")[0] in values}, extra


def test_the_gpu_memory_the_chart_declares_is_what_the_operator_reads() -> None:
    """settings.gpuMemory reaches LMMS_GPU_MEMORY, and the operator's own parser reads it
    back (spec.model.multiGPU's default); unset, nothing is declared."""
    from lmms_operator.reconcile import multigpu

    (deploy,) = by_kind(render(*VALUE_SETS["gpu-memory"]), "Deployment")
    env = {k: str(v.get("value")) for k, v in _env(deploy).items()}
    memory = multigpu.parse_gpu_memory(env["LMMS_GPU_MEMORY"])
    assert dict(memory.per_resource) == {
        "nvidia.com/gpu": 80 * 2**30,
        "nvidia.com/mig-1g.10gb": 10 * 2**30,
    }
    (deploy,) = by_kind(render(), "Deployment")
    assert "LMMS_GPU_MEMORY" not in _env(deploy)
    for bad, field in (
        ('{"gpu":"80Gi"}', "invalid propertyName 'gpu'"),  # helm names no path here
        ('{"nvidia.com/gpu":"80 GB"}', "/settings/gpuMemory/nvidia.com~1gpu"),
    ):
        out = helm(
            "template", "x", str(CHART), "--kube-version", KUBE_VERSION,
            "--set-json", f"settings.gpuMemory={bad}",
        )  # fmt: skip
        assert out.returncode != 0 and field in out.stderr, out.stderr


# -- inference engines -------------------------------------------------------------------
def test_the_engine_images_reach_the_operator_only_when_set() -> None:
    (deploy,) = by_kind(render(), "Deployment")
    assert not {n for n in _env(deploy) if n.startswith("LMMS_ENGINE_IMAGE_")}
    (deploy,) = by_kind(
        render("--set", "engines.vllm.image=reg.example/lmms-engine-vllm:0.1.0"), "Deployment"
    )
    env = _env(deploy)
    assert env["LMMS_ENGINE_IMAGE_VLLM"]["value"] == "reg.example/lmms-engine-vllm:0.1.0"
    assert "LMMS_ENGINE_IMAGE_SGLANG" not in env
    bad = helm(
        "template", "x", str(CHART), "--kube-version", KUBE_VERSION,
        "--set", "engines.sglang.image=not an image",
    )  # fmt: skip
    assert bad.returncode != 0 and "/engines/sglang/image" in bad.stderr
