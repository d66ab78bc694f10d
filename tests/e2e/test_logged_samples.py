"""Logged samples without an object store, a paired comparison, and a failed upload, end
to end: the real operator, the real Job controller, the process executor and the real
runner running real lmms-eval 0.7.3 (offline) against two loopback models.

- Run ``right`` logs its samples and names an object store whose bucket does not exist:
  the upload fails after lmms-eval finished. The operator had the results by then (it
  acknowledged them), so the runner exits 0: the Job runs one pod, never a second
  evaluation, and the run says ``ResultsNotUploaded``. Its samples are kept all the same.
- Run ``wrong`` logs its samples too, against a model that answers every other document
  wrong. ``kubectl lmms compare`` pairs the two runs' documents by doc id.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from lmms_devcluster.devcluster import DevCluster
from tests import evalruns as er
from tests.e2e.test_operator_runner import colors_run
from tests.e2e.test_runner import ModelServer
from tests.fixtures.s3 import SECRET_KEY, S3Server, s3_server
from tests.helpers import wait_for
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("operator_process")]

API_KEY = "sk-samples-0123456789abcdef"


@pytest.fixture()
def models() -> Iterator[tuple[ModelServer, ModelServer]]:
    right, wrong = ModelServer(delay=0.05, wrong_every=5), ModelServer(delay=0.05, wrong_every=2)
    yield right, wrong
    right.stop()
    wrong.stop()


@pytest.fixture()
def store() -> Iterator[S3Server]:
    with s3_server("evals") as server:
        yield server


def _scores(core: client.CoreV1Api, namespace: str, run: dict[str, Any]) -> dict[int, float]:
    """The run's logged samples as status.samples points at them: doc id -> exact_match."""
    (task,) = run["status"]["samples"]["tasks"]
    assert (task["task"], task["count"], task["kept"], task["truncated"]) == (
        "colors",
        10,
        10,
        False,
    )
    scores: dict[int, float] = {}
    for name in task["configMaps"]:
        cm = core.read_namespaced_config_map(name, namespace)
        assert cm.metadata.owner_references[0].uid == run["metadata"]["uid"]
        assert cm.metadata.labels["eval.lmms.dev/samples-of"] == run["metadata"]["uid"]
        assert json.loads(cm.data["index.json"]) == {"0.jsonl": "colors"}
        for line in cm.data["0.jsonl"].splitlines():
            record = json.loads(line)
            assert set(record) <= {"id", "target", "response", "scores", "cut"}
            assert record["target"] and "response" in record
            scores[record["id"]] = record["scores"]["exact_match"]
    return scores


def test_samples_are_kept_without_s3_paired_by_compare_and_a_failed_upload_runs_once(
    cluster: DevCluster,
    api: client.ApiClient,
    namespace: str,
    models: tuple[ModelServer, ModelServer],
    store: S3Server,
    operator_process: OperatorProcess,
) -> None:
    core = client.CoreV1Api(api)
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="s3-creds", labels=er.USABLE), string_data=store.env
        ),
    )
    right = colors_run(core, namespace, "right", models[0], API_KEY)
    right["spec"]["evaluation"] = {"logSamples": True}
    wrong = copy.deepcopy(right)
    wrong["metadata"]["name"] = "wrong"
    wrong["spec"]["model"]["args"]["base_url"] = models[1].url
    right["spec"]["output"] = {
        "s3": {"bucket": "missing", "endpoint": store.endpoint, "credentialsSecret": "s3-creds"}
    }
    er.create(api, namespace, right)
    er.create(api, namespace, wrong)

    def with_samples(name: str) -> dict[str, Any] | None:
        run = er.get(api, namespace, name)
        return run if run["status"].get("samples") else None

    runs: dict[str, dict[str, Any]] = {}
    for name in ("right", "wrong"):
        er.wait_phase(api, namespace, name, "Succeeded", timeout=420)
        runs[name] = wait_for(functools.partial(with_samples, name), timeout=30)

    # The failed upload: reported, the results kept, one pod that exited 0, no re-run.
    run = runs["right"]
    assert er.wait_event(api, namespace, "right", "ResultsNotUploaded")
    assert run["status"]["results"][0]["value"] == pytest.approx(0.8)
    assert "resultsLocation" not in run["status"]
    (job,) = er.jobs_of(api, namespace, run)
    assert (job.status.succeeded, job.status.failed or 0) == (1, 0)
    (pod,) = core.list_namespaced_pod(
        namespace, label_selector=f"job-name={job.metadata.name}"
    ).items
    assert pod.status.container_statuses[0].state.terminated.exit_code == 0
    assert models[0].requests() == 10  # lmms-eval evaluated once
    assert store.keys("evals") == []

    # The samples, kept in ConfigMaps owned by each run: they match its score.
    right_scores = _scores(core, namespace, run)
    wrong_scores = _scores(core, namespace, runs["wrong"])
    assert sorted(right_scores) == sorted(wrong_scores) == list(range(10))
    assert sum(right_scores.values()) / 10 == pytest.approx(0.8)
    assert sum(wrong_scores.values()) / 10 == pytest.approx(
        runs["wrong"]["status"]["results"][0]["value"]
    )
    assert er.wait_event(api, namespace, "wrong", "SamplesKept")

    # compare pairs them: the paired t-test over the 10 shared documents, as lmms-eval's
    # own paired_ttest computes it on these scores.
    env = dict(os.environ, KUBECONFIG=str(cluster.kubeconfig))
    shown = subprocess.run(
        [
            sys.executable,
            "-m",
            "lmms_operator",
            "compare",
            "right",
            "wrong",
            "-n",
            namespace,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    (row,) = json.loads(shown.stdout)
    assert (row["test"], row["paired"]) == ("paired-t", 10)
    from lmms_eval.api.metrics import paired_ttest

    ids = sorted(right_scores)
    reference = paired_ttest([right_scores[i] for i in ids], [wrong_scores[i] for i in ids])
    assert row["diff"] == pytest.approx(reference["mean_diff"])
    assert row["p"] == pytest.approx(float(reference["p_value"]))
    table = subprocess.run(
        [sys.executable, "-m", "lmms_operator", "compare", "right", "wrong", "-n", namespace],
        capture_output=True,
        text=True,
        env=env,
    ).stdout
    assert "paired n=10" in table and "(10 paired)" in table

    # No secret in the samples' ConfigMaps, the status or the Events.
    texts = [json.dumps(cm.data) for cm in core.list_namespaced_config_map(namespace).items]
    texts += [json.dumps(r["status"]) for r in runs.values()]
    texts += [e.message or "" for e in core.list_namespaced_event(namespace).items]
    assert not [t for t in texts if API_KEY in t or SECRET_KEY in t]
