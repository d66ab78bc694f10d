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
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert (
        container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    )
    # Pod Security "restricted".
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert sc["readOnlyRootFilesystem"] is True
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
        assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
        assert sorted(r["metadata"]["namespace"] for r in by_kind(docs, "Role")) == [
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
    return [rule for d in docs if d["kind"] in ("ClusterRole", "Role") for rule in d["rules"]]


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
    binding_kind = "ClusterRoleBinding" if name == "defaults" else "RoleBinding"
    for binding in by_kind(docs, binding_kind):
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
    runner = RunnerDefaults(prometheus_pod_selector=env["LMMS_PROMETHEUS_POD_SELECTOR"])
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
        prometheus_namespace_selector=env["LMMS_PROMETHEUS_NAMESPACE_SELECTOR"],
        prometheus_pod_selector=env["LMMS_PROMETHEUS_POD_SELECTOR"],
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
    assert alerts == {"EvalRunFailed", "EvalRunStalled", "LmmsOperatorDown", "ScoreRegression"}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(Path(__file__).parent / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    check = subprocess.run(
        [_promtool(), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 4 rules found" in check.stdout
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
    assert f"USER {pod['securityContext']['runAsUser']}:" in dockerfile  # non-root, as run
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
    rules = "\n".join(v["expression"] for v in spec["validations"])
    for needle in (
        "priorityClassName in variables.allowedPriorityClasses",
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
