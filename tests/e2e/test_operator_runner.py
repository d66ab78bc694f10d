"""An EvalRun through the real operator, the real Job controller and scheduler, the
process executor and the real runner running real lmms-eval 0.7.3 (offline)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from lmms_devcluster.devcluster import DevCluster
from tests import evalruns as er
from tests.e2e.test_runner import ModelServer, _free_port
from tests.fixtures import colortask
from tests.helpers import local_tasks, wait_for
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator_process")]

TASK_DIR = "/etc/lmms/tasks/colors-task"


@pytest.fixture()
def prometheus(tmp_path: Path, operator_process: OperatorProcess) -> Iterator[str]:
    """A real Prometheus (Debian's package) on loopback, scraping the operator."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not installed (make test installs Debian's prometheus)")
    port = _free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: lmms-operator\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{operator_process.metrics_port}']}}]\n"
    )
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def promql(base: str, query: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return list(json.load(resp)["data"]["result"])


def promql_range(base: str, query: str, start: float, end: float) -> list[dict[str, Any]]:
    params = {"query": query, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": "1"}
    url = f"{base}/api/v1/query_range?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return list(json.load(resp)["data"]["result"])


DASHBOARD = Path(__file__).parents[2] / "helm" / "lmms-operator" / "files" / "dashboard.json"
#: What Grafana puts in for the dashboard's variables ("All") and its interval macros.
GRAFANA_VARIABLES = {
    "$namespace": ".*",
    "$leaderboard": ".*",
    "$__rate_interval": "1m",
    "$__range": "1h",
}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target of every panel, variables filled in."""
    out = []
    for panel in json.loads(DASHBOARD.read_text())["panels"]:
        for target in panel["targets"]:
            expr = target["expr"]
            for name, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(name, value)
            assert "$" not in expr, (panel["title"], expr)
            out.append((panel["title"], expr))
    return out


def dashboard_variables(namespace: str) -> dict[str, str]:
    """The dashboard's query variables, with this namespace chosen."""
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    return {
        v["name"]: v["query"]["query"].replace("$namespace", namespace)
        for v in variables
        if v["type"] == "query"
    }


@pytest.fixture()
def model_server() -> Iterator[ModelServer]:
    server = ModelServer(delay=0.4, wrong_every=5)
    yield server
    server.stop()


def colors_run(
    core: client.CoreV1Api, namespace: str, name: str, model_server: ModelServer, api_key: str
) -> dict[str, Any]:
    """The custom "colors" task in a ConfigMap, the model's key in a Secret, and an
    EvalRun (not yet created) on the executor node that evaluates it offline."""
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="colors-task"),
            data=colortask.files("colors", samples=10, data_dir=TASK_DIR),
        ),
    )
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="model-key", labels=er.USABLE),
            string_data={"key": api_key},
        ),
    )
    body = er.manifest(
        name,
        er.EXECUTOR,
        model={
            "type": "openai",
            "args": {"model_version": "local", "base_url": model_server.url, "num_concurrent": "1"},
            "apiKey": {"secretKeyRef": {"name": "model-key", "key": "key"}},
        },
        customTasks=[{"configMap": "colors-task", "tasks": ["colors"]}],
        env=[
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "HF_DATASETS_OFFLINE", "value": "1"},
        ],
    )
    body["spec"]["tasks"] = []
    return body


def test_an_evalrun_with_a_custom_task_runs_real_lmms_eval(
    cluster: DevCluster,
    api: client.ApiClient,
    namespace: str,
    model_server: ModelServer,
    operator_process: OperatorProcess,
    prometheus: str,
) -> None:
    started = time.time()
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="hf", labels=er.USABLE),
            string_data={"token": "hf_e2eSECRETe2eSECRETe2e"},
        ),
    )
    body = colors_run(core, namespace, "colors-e2e", model_server, "sk-e2e-0123456789abcdef")
    body["spec"]["huggingFaceToken"] = {"secretKeyRef": {"name": "hf", "key": "token"}}
    body["spec"]["resources"] = {"gpus": 1}
    er.create(api, namespace, body)
    er.wait_phase(api, namespace, "colors-e2e", "Running", timeout=120)
    # The operator scrapes the runner: status.progress rises through intermediate values.
    seen: list[float] = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        run = er.get(api, namespace, "colors-e2e")
        status = run.get("status") or {}
        if status.get("progress"):
            seen.append(status["progress"]["percent"])
        if status.get("phase") in ("Succeeded", "Failed"):
            break
        time.sleep(0.3)
    assert status["phase"] == "Succeeded", status
    assert any(0 < p < 100 for p in seen), seen
    assert seen == sorted(seen)
    assert status["summary"] == "100%"
    assert model_server.requests() == 10
    # Results: in status (primary metric per task) and in a ConfigMap owned by the run.
    (result,) = status["results"]
    assert (result["task"], result["metric"]) == ("colors", "exact_match")
    assert result["value"] == pytest.approx(0.8) and result["higherIsBetter"] is True
    cm = core.read_namespaced_config_map(status["resultsConfigMap"], namespace)
    assert cm.metadata.owner_references[0].uid == run["metadata"]["uid"]
    assert cm.data["source"] == "runner"
    full = json.loads(cm.data["results.json"])
    assert full["provenance"]["lmmsEvalVersion"] == "0.7.3"
    assert er.wait_event(api, namespace, "colors-e2e", "ResultsCollected")
    # Published to the Leaderboard the spec names ("default"), created on first use.
    assert status["leaderboardPublished"] is True
    board = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "eval.lmms.dev", "v1alpha1", namespace, "leaderboards", "default"
    )
    assert board["status"]["entries"] == 1
    (best,) = board["status"]["top"]
    assert (best["task"], best["rank"], best["run"]) == ("colors", 1, f"{namespace}/colors-e2e")
    assert best["value"] == pytest.approx(0.8)
    # The command-line views.
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))

    def cli(*args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "lmms_operator", *args],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout

    shown = cli("leaderboard", "show", "default", "-n", namespace)
    assert "colors" in shown and "exact_match" in shown and "0.8" in shown
    # The model's identity: its name at the endpoint's host, not the backend type.
    model = "local@" + model_server.url.split("://")[1].split("/")[0]
    assert model in shown and best["model"] == model
    assert "lmms-eval=0.7.3" in shown and best["settings"] == "lmms-eval=0.7.3"
    listed = cli("runs", "-n", namespace)
    assert "colors-e2e" in listed and "Succeeded" in listed and "colors=0.8" in listed
    # lmms-eval's standard error reached the status, and compare uses it: a run against
    # itself differs by nothing, with the standard error of the difference shown.
    assert result["stderr"] == pytest.approx(0.4 / 3, abs=1e-3)  # sqrt(0.8 * 0.2 / 9)
    (row,) = json.loads(cli("compare", "colors-e2e", "colors-e2e", "-n", namespace, "-o", "json"))
    assert row["diff"] == 0 and row["significant"] is False
    assert row["stderr"] == pytest.approx(math.sqrt(2) * result["stderr"])
    (entry,) = json.loads(
        cli("compare", "-n", namespace, "--leaderboard", "default", model, model, "-o", "json")
    )
    assert entry["a"] == pytest.approx(0.8) and entry["significant"] is False
    # The operator's own /metrics: the score gauge, transitions, runs by phase, work done.
    text = operator_process.metrics()
    assert (
        'lmms_operator_score{direction="higher",leaderboard="default",metric="exact_match",'
        f'model="{model}",namespace="{namespace}",task="colors"}} 0.8'
    ) in text
    assert (
        'lmms_operator_evalrun_transitions_total{from_phase="Running",'
        f'namespace="{namespace}",to_phase="Succeeded"}}'
    ) in text
    assert f'lmms_operator_evalruns{{namespace="{namespace}",phase="Succeeded"}}' in text
    assert 'lmms_operator_scrapes_total{result="ok"}' in text
    gpu = next(
        line
        for line in text.splitlines()
        if line.startswith("lmms_operator_gpu_seconds_total{")
        and f'model="{model}"' in line
        and f'namespace="{namespace}"' in line
    )
    assert float(gpu.split()[-1]) > 0  # from the runner pod's own start and end
    assert (
        f'lmms_operator_evalrun_progress_ratio{{name="colors-e2e",namespace="{namespace}"}}'
        not in text
    )  # the per-run series went when the run ended
    # A real Prometheus scraped the operator: PromQL answers with the score...
    score = wait_for(
        lambda: promql(prometheus, 'lmms_operator_score{task="colors",leaderboard="default"}'),
        timeout=60,
    )
    assert float(score[0]["value"][1]) == pytest.approx(0.8)
    # ...and every panel of the Grafana dashboard has data over the run (Grafana asks
    # query_range for time series panels; the per-run series existed while it ran).
    time.sleep(3)  # two scrapes after the end, for the rates
    empty = [
        (title, expr)
        for title, expr in dashboard_queries()
        if not promql_range(prometheus, expr, started, time.time())
    ]
    assert not empty, f"dashboard panels without data: {empty}"
    # The variables offer this run's namespace, and its Leaderboard under that namespace
    # (Grafana's label_values(SELECTOR, LABEL) is the LABEL values of the series).
    offered = {}
    for name, query in dashboard_variables(namespace).items():
        selector, label = query.removeprefix("label_values(").removesuffix(")").rsplit(", ", 1)
        offered[name] = {s["metric"][label] for s in promql(prometheus, selector)}
    assert namespace in offered["namespace"] and offered["leaderboard"] == {"default"}
    (pod,) = core.list_namespaced_pod(
        namespace, label_selector=f"job-name={run['status']['jobName']}"
    ).items
    term = pod.status.container_statuses[0].state.terminated
    assert term.exit_code == 0
    summary = json.loads(term.message)
    assert summary["ok"] is True
    assert summary["tasks"]["colors"]["exact_match"] == pytest.approx(0.8)  # 2 of 10 wrong
    for secret in ("hf_e2eSECRETe2eSECRETe2e", "sk-e2e-0123456789abcdef"):
        assert secret not in term.message
        assert secret not in json.dumps(run["status"])
    config_maps = core.list_namespaced_config_map(
        namespace, label_selector="app.kubernetes.io/managed-by=lmms-operator"
    ).items
    for cm in config_maps:
        for secret in ("hf_e2eSECRETe2eSECRETe2e", "sk-e2e-0123456789abcdef"):
            assert secret not in json.dumps(cm.data)
    # ...nor in the Events of the namespace, the operator's log or its metrics.
    texts = [e.message or "" for e in core.list_namespaced_event(namespace).items]
    texts += [operator_process.log(), operator_process.metrics()]
    assert len(texts) > 3 and any("Succeeded" in t or "score" in t for t in texts)
    for secret in ("hf_e2eSECRETe2eSECRETe2e", "sk-e2e-0123456789abcdef"):
        leaks = [t[:200] for t in texts if secret in t]
        assert not leaks, f"{secret[:6]}... leaked into {leaks}"


def test_killing_the_operator_mid_run_loses_nothing_and_publishes_once(
    api: client.ApiClient,
    namespace: str,
    model_server: ModelServer,
    operator_process: OperatorProcess,
) -> None:
    core = client.CoreV1Api(api)
    body = colors_run(core, namespace, "survivor", model_server, "sk-local-0123456789")
    body["spec"]["leaderboard"] = "survivors"
    er.create(api, namespace, body)
    er.wait_phase(api, namespace, "survivor", "Running", timeout=120)
    operator_process.stop(signal.SIGKILL)  # no chance to clean up
    time.sleep(5)
    operator_process.start()
    run = er.wait_phase(api, namespace, "survivor", "Succeeded", timeout=300)
    status = run["status"]
    assert status["results"][0]["value"] == pytest.approx(0.8)
    board = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "eval.lmms.dev", "v1alpha1", namespace, "leaderboards", "survivors"
    )
    assert board["status"]["entries"] == 1
    assert (
        er.wait_event(api, namespace, "survivor", "ResultsCollected").count("ResultsCollected") == 1
    )
    results_cms = core.list_namespaced_config_map(
        namespace, label_selector=f"eval.lmms.dev/results-of={run['metadata']['uid']}"
    ).items
    assert [c.metadata.name for c in results_cms] == [status["resultsConfigMap"]]
    assert model_server.requests() == 10  # the evaluation itself ran once
    # Restarted once more, the operator rebuilds the score gauges from the Leaderboards
    # before anything new is published.
    operator_process.stop()
    operator_process.start()
    wait_for(
        lambda: (
            'leaderboard="survivors"' in operator_process.metrics()
            and "lmms_operator_score{" in operator_process.metrics()
        ),
        timeout=30,
    )


def test_a_two_node_run_succeeds_with_results_from_node_0(
    api: client.ApiClient,
    namespace: str,
    model_server: ModelServer,
    operator_process: OperatorProcess,
) -> None:
    """nodes: 2 through the operator on the process executor: an Indexed Job, torchrun
    with gloo on CPU across both pods (they find node 0 by its rendezvous name), real
    lmms-eval sharding the documents over two processes, results from node 0 only."""
    core = client.CoreV1Api(api)
    body = colors_run(core, namespace, "two-nodes", model_server, "sk-local-0123456789")
    body["spec"]["resources"] = {"gpus": 1, "nodes": 2}
    er.create(api, namespace, body)
    run = er.wait_phase(api, namespace, "two-nodes", "Succeeded", timeout=420)
    status = run["status"]
    assert status["results"][0]["task"] == "colors"
    assert status["results"][0]["value"] == pytest.approx(0.8)
    assert model_server.requests() == 10  # each document once, shared by the two nodes
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={status['jobName']}")
    by_index = {
        p.metadata.labels["batch.kubernetes.io/job-completion-index"]: p for p in pods.items
    }
    assert sorted(by_index) == ["0", "1"]
    assert all(p.status.phase == "Succeeded" for p in by_index.values())
    other = json.loads(by_index["1"].status.container_statuses[0].state.terminated.message)
    assert other == {"v": 1, "ok": True, "truncated": False, "tasks": {}, "node": 1}


#: Four local tasks whose scores differ and do not depend on the order of requests:
#: name -> (documents, mislabelled), so the score is (documents - mislabelled) / documents.
FAN_OUT_TASKS = {"colors_a": (10, 2), "colors_b": (6, 3), "colors_c": (8, 0), "colors_d": (4, 1)}


def test_parallelism_3_gives_the_scores_of_one_pod(
    api: client.ApiClient, namespace: str, operator_process: OperatorProcess
) -> None:
    """The same spec with parallelism 1 and 3, side by side, through the executor and
    real lmms-eval: three pods of one Indexed Job, whole tasks balanced by their
    documents, every shard scraped, and one merged result set equal to the single pod's."""
    server = ModelServer(delay=0.05)
    try:
        core = client.CoreV1Api(api)
        data: dict[str, str] = {}
        for name, (docs, wrong) in FAN_OUT_TASKS.items():
            data.update(colortask.files(name, docs, TASK_DIR, mislabelled=wrong))
        local_tasks(core, namespace, "colors-task", data)
        for name, parallelism in (("one-pod", 1), ("three-pods", 3)):
            body = er.manifest(
                name,
                er.EXECUTOR,
                model={
                    "type": "openai",
                    "args": {"model_version": "local", "base_url": server.url},
                    "apiKey": {"secretKeyRef": {"name": "model-key", "key": "key"}},
                },
                tasks=[],
                customTasks=[{"configMap": "colors-task", "tasks": list(FAN_OUT_TASKS)}],
                env=[{"name": "HF_HUB_OFFLINE", "value": "1"}],
                parallelism=parallelism,
                leaderboard=name,
            )
            er.create(api, namespace, body)
        one = er.wait_phase(api, namespace, "one-pod", "Succeeded", timeout=420)["status"]
        three = er.wait_phase(api, namespace, "three-pods", "Succeeded", timeout=420)["status"]
    finally:
        requests = server.requests()
        server.stop()

    def scores(status: dict[str, Any]) -> dict[str, tuple[str, float, float | None]]:
        return {r["task"]: (r["metric"], r["value"], r.get("stderr")) for r in status["results"]}

    expected = {t: (d - w) / d for t, (d, w) in FAN_OUT_TASKS.items()}
    assert {t: v for t, (_, v, _) in scores(one).items()} == pytest.approx(expected)
    assert scores(three) == scores(one)  # metric, value and standard error alike
    assert requests == 2 * sum(d for d, _ in FAN_OUT_TASKS.values())  # every document once

    assert not one.get("shards")  # one pod: no assignment
    assert [(s["tasks"], s.get("expectedDocuments")) for s in three["shards"]] == [
        (["colors_a"], 10),
        (["colors_c"], 8),
        (["colors_b", "colors_d"], 10),
    ]
    assert all(s["resultsCollected"] and s["percent"] == 100 for s in three["shards"])
    # Each shard names its pod, the one of its Job index.
    assert all(
        s["pod"].startswith(three["jobName"]) and s["total"] == s["expectedDocuments"]
        for s in three["shards"]
    )
    assert three["summary"] == "100%"
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={three['jobName']}")
    indexes = sorted(
        p.metadata.labels["batch.kubernetes.io/job-completion-index"] for p in pods.items
    )
    assert indexes == ["0", "1", "2"]
    cm = core.read_namespaced_config_map(three["resultsConfigMap"], namespace)
    assert cm.data["source"] == "runner, 3 shards"
    merged = json.loads(cm.data["results.json"])
    assert sorted(t["task"] for t in merged["tasks"]) == sorted(FAN_OUT_TASKS)
    assert merged["provenance"]["lmmsEvalVersion"] == "0.7.3"
    assert (
        er.wait_event(api, namespace, "three-pods", "ResultsCollected").count("ResultsCollected")
        == 1
    )
    board = client.CustomObjectsApi(api).get_namespaced_custom_object(
        "eval.lmms.dev", "v1alpha1", namespace, "leaderboards", "three-pods"
    )
    assert board["status"]["entries"] == len(FAN_OUT_TASKS)


def test_an_identical_run_reuses_results_and_a_partial_one_evaluates_only_the_rest(
    api: client.ApiClient, namespace: str, operator_process: OperatorProcess
) -> None:
    """spec.reuse (IfIdentical, the default) with a pinned model (spec.model.version):
    the evaluation index outlives the run that filled it; an identical run ends Reused
    with no Job and no model request; a run with one more task evaluates that task only
    and merges; reuse: Never evaluates again."""
    server = ModelServer(delay=0.02)
    core = client.CoreV1Api(api)
    tasks = {"colors_a": (10, 2), "colors_b": (6, 3), "colors_c": (8, 0)}
    data: dict[str, str] = {}
    for name, (docs, wrong) in tasks.items():
        data.update(colortask.files(name, docs, TASK_DIR, mislabelled=wrong))
    local_tasks(core, namespace, "colors-task", data)

    def run(name: str, names: list[str], **extra: Any) -> dict[str, Any]:
        body = er.manifest(
            name,
            er.EXECUTOR,
            model={
                "type": "openai",
                "version": "loopback-1",
                "args": {"model_version": "local", "base_url": server.url},
                "apiKey": {"secretKeyRef": {"name": "model-key", "key": "key"}},
            },
            tasks=[],
            customTasks=[{"configMap": "colors-task", "tasks": names}],
            env=[{"name": "HF_HUB_OFFLINE", "value": "1"}],
            **extra,
        )
        er.create(api, namespace, body)
        return er.wait_phase(api, namespace, name, "Succeeded", timeout=300)

    def scores(r: dict[str, Any]) -> dict[str, float]:
        return {x["task"]: x["value"] for x in r["status"]["results"]}

    expected = {t: (d - w) / d for t, (d, w) in tasks.items()}
    try:
        first = run("first", ["colors_a", "colors_b"])
        assert scores(first) == pytest.approx({t: expected[t] for t in ("colors_a", "colors_b")})
        assert server.requests() == 16
        index = core.list_namespaced_config_map(
            namespace, label_selector="eval.lmms.dev/evaluation-index=true"
        ).items
        assert len(index) == 2 and all(not cm.metadata.owner_references for cm in index)
        er.delete(api, namespace, "first")
        wait_for(lambda: not er.jobs_of(api, namespace, first), timeout=60)

        started = time.monotonic()
        again = run("again", ["colors_a", "colors_b"])
        assert time.monotonic() - started < 10
        assert again["status"]["reason"] == "Reused"
        assert scores(again) == scores(first)
        assert server.requests() == 16  # no model request
        assert not er.jobs_of(api, namespace, again) and not again["status"].get("jobName")
        assert {(r["task"], r["run"]) for r in again["status"]["reused"]} == {
            ("colors_a", f"{namespace}/first"),
            ("colors_b", f"{namespace}/first"),
        }
        cm = core.read_namespaced_config_map(again["status"]["resultsConfigMap"], namespace)
        assert cm.data["source"] == "evaluation index"
        assert json.loads(cm.data["results.json"])["provenance"]["lmmsEvalVersion"] == "0.7.3"
        assert again["status"]["leaderboardPublished"] is True

        more = run("more", ["colors_a", "colors_b", "colors_c"])
        assert more["status"]["reason"] == "Succeeded"
        assert server.requests() == 16 + 8  # colors_c alone
        assert scores(more) == pytest.approx(expected)
        assert {r["task"] for r in more["status"]["reused"]} == {"colors_a", "colors_b"}
        assert er.wait_event(api, namespace, "more", "Reused")
        full = json.loads(
            core.read_namespaced_config_map(more["status"]["resultsConfigMap"], namespace).data[
                "results.json"
            ]
        )
        assert [t["task"] for t in full["tasks"]] == ["colors_a", "colors_b", "colors_c"]

        never = run("never", ["colors_a"], reuse="Never")
        assert never["status"]["reason"] == "Succeeded" and not never["status"].get("reused")
        assert server.requests() == 16 + 8 + 10
        assert scores(never) == pytest.approx({"colors_a": expected["colors_a"]})
    finally:
        server.stop()
