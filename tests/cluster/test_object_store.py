"""The operator and an S3-compatible store (moto's server on loopback), on the real
control plane: results read from the store when the runner cannot be reached, results
too large for a ConfigMap, Leaderboard tables and the evaluation index copied to the
store.

The stand-in runner exits at once with a termination message that points at the
store, as the real runner does after uploading; the test puts the summary there."""

from __future__ import annotations

import base64
import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from lmms_operator import catalogue
from lmms_operator.api import GROUP, VERSION
from lmms_operator.api.runner import RESULTS_SUMMARY_FILE
from tests import evalruns as er
from tests.fixtures.s3 import SECRET_KEY, S3Server, s3_server
from tests.helpers import wait_for
from tests.operator_process import OperatorProcess

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator_process")]


@pytest.fixture()
def store() -> Iterator[S3Server]:
    with s3_server("evals", "boards") as server:
        yield server


def _credentials(api: client.ApiClient, namespace: str, store: S3Server) -> None:
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        {
            "metadata": {
                "name": "s3-creds",
                "labels": {"eval.lmms.dev/usable-by-evalruns": "true"},
            },
            "stringData": store.env,
        },
    )


def _summary(task: str, value: float, extra_metrics: int = 0) -> dict[str, Any]:
    metrics = [{"name": "exact_match", "value": value, "higherIsBetter": True}]
    # Long metric names make a summary past the 1 MiB ConfigMap limit.
    metrics += [
        {"name": f"breakdown_{i:06d}_" + "x" * 80, "value": 0.5} for i in range(extra_metrics)
    ]
    return {
        "tasks": [{"task": task, "primary": "exact_match", "samples": 12, "metrics": metrics}],
        "provenance": {"model": "dummy", "configHash": "abc"},
    }


def _run(name: str, store: Any, key_prefix: str, termination_value: float) -> dict[str, Any]:
    """An EvalRun whose runner says (termination message) it uploaded to key_prefix."""
    message = {
        "v": 1,
        "ok": True,
        "truncated": False,
        "tasks": {"colors": {"exact_match": termination_value}},
        "s3": f"s3://evals/{key_prefix}",
    }
    return er.manifest(
        name,
        er.EXECUTOR,
        model={
            "type": "dummy",
            "pretrained": f"org/{name}",  # one model per run: each keeps its own entry
            "args": {
                "scripted_message_b64": base64.b64encode(json.dumps(message).encode())
                .decode()
                .rstrip("=")
            },
        },
        output={
            "s3": {"bucket": "evals", "endpoint": store.endpoint, "credentialsSecret": "s3-creds"}
        },
        leaderboard="board",
    )


def _results_config_map(api: client.ApiClient, namespace: str, run: dict[str, Any]) -> Any:
    name = run["status"]["resultsConfigMap"]
    return client.CoreV1Api(api).read_namespaced_config_map(name, namespace).data


def test_results_come_from_the_object_store_when_the_runner_is_gone(
    api: client.ApiClient,
    namespace: str,
    store: S3Server,
    operator_process: OperatorProcess,
) -> None:
    _credentials(api, namespace, store)
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "leaderboards",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Leaderboard",
            "metadata": {"name": "board"},
            "spec": {
                "storage": {
                    "s3": {
                        "bucket": "boards",
                        "prefix": "tables",
                        "endpoint": store.endpoint,
                        "credentialsSecret": "s3-creds",
                    }
                }
            },
        },
    )
    # small: the full summary fits in the ConfigMap; big: only the primaries do.
    store.client.put_object(
        Bucket="evals",
        Key=f"{namespace}/small/c0ffee/{RESULTS_SUMMARY_FILE}",
        Body=json.dumps(_summary("colors", 0.75)).encode(),
    )
    big_summary = json.dumps(_summary("colors", 0.5, extra_metrics=12_000))
    assert len(big_summary) > 1024 * 1024
    store.client.put_object(
        Bucket="evals",
        Key=f"{namespace}/big/c0ffee/{RESULTS_SUMMARY_FILE}",
        Body=big_summary.encode(),
    )
    # The termination message says 0.1: the store's value wins when it can be read.
    small_at = f"s3://evals/{namespace}/small/c0ffee/"
    big_at = f"s3://evals/{namespace}/big/c0ffee/"
    er.create(api, namespace, _run("small", store, small_at[11:], termination_value=0.1))
    er.create(api, namespace, _run("big", store, big_at[11:], termination_value=0.1))
    er.create(api, namespace, _run("gone", store, f"{namespace}/gone/0/", termination_value=0.25))
    # A runner (the tenant's code) naming another run's output is not believed: the
    # operator reads only under the run's own bucket and prefix.
    er.create(api, namespace, _run("thief", store, small_at[11:], termination_value=0.05))

    small = er.wait_phase(api, namespace, "small", "Succeeded", timeout=90)
    wait_for(lambda: er.get(api, namespace, "small")["status"].get("leaderboardPublished"))
    small = er.get(api, namespace, "small")
    assert small["status"]["results"][0]["value"] == 0.75
    assert small["status"]["resultsLocation"] == small_at
    data = _results_config_map(api, namespace, small)
    assert data["source"] == "object store" and data["location"] == small_at
    assert json.loads(data["results.json"])["tasks"][0]["metrics"][0]["value"] == 0.75

    er.wait_phase(api, namespace, "big", "Succeeded", timeout=90)
    big = wait_for(lambda: (r := er.get(api, namespace, "big"))["status"].get("results") and r)
    assert big["status"]["results"][0]["value"] == 0.5
    data = _results_config_map(api, namespace, big)
    assert "results.json" not in data
    assert big_at in data["note"] and data["location"] == big_at
    assert sum(len(v) for v in data.values()) < 1024 * 1024

    # No summary in the store: the termination message's primaries, and a Warning.
    er.wait_phase(api, namespace, "gone", "Succeeded", timeout=90)
    gone = wait_for(lambda: (r := er.get(api, namespace, "gone"))["status"].get("results") and r)
    assert gone["status"]["results"] == [{"task": "colors", "metric": "exact_match", "value": 0.25}]
    assert _results_config_map(api, namespace, gone)["source"] == "termination message"
    assert er.wait_event(api, namespace, "gone", "ResultsNotInObjectStore")
    er.wait_phase(api, namespace, "thief", "Succeeded", timeout=90)
    thief = wait_for(lambda: (r := er.get(api, namespace, "thief"))["status"].get("results") and r)
    assert thief["status"]["results"][0]["value"] == 0.05  # its own message, not small's 0.75
    assert er.wait_event(api, namespace, "thief", "ResultsNotInObjectStore")

    # The Leaderboard's whole table is in the store too, and status says where.
    def board_synced() -> dict[str, Any] | None:
        board = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "leaderboards", "board"
        )
        status = board.get("status") or {}
        return board if status.get("entries") == 4 and status.get("tableLocation") else None

    board = wait_for(board_synced, timeout=60)
    location = f"s3://boards/tables/{namespace}/board/"
    assert board["status"]["tableLocation"] == location
    synced = board["status"]["conditions"][0]
    assert (synced["type"], synced["status"]) == ("ObjectStoreSynced", "True")
    table = json.loads(store.text("boards", f"tables/{namespace}/board/table.json"))
    assert sorted((e["run"], e["value"]) for e in table) == [
        (f"{namespace}/big", 0.5),
        (f"{namespace}/gone", 0.25),
        (f"{namespace}/small", 0.75),
        (f"{namespace}/thief", 0.05),
    ]
    assert [e["rank"] for e in sorted(table, key=lambda e: -e["value"])] == [1, 2, 3, 4]
    assert "| 1 | colors |" in store.text("boards", f"tables/{namespace}/board/table.md")
    assert store.text("boards", f"tables/{namespace}/board/table.csv").count("\n") == 5

    # The key never leaves its Secret: not in statuses, ConfigMaps, events or the log.
    core = client.CoreV1Api(api)
    texts = [json.dumps(er.get(api, namespace, n)) for n in ("small", "big", "gone", "thief")]
    texts += [json.dumps(cm.data) for cm in core.list_namespaced_config_map(namespace).items]
    texts += [e.message or "" for e in core.list_namespaced_event(namespace).items]
    texts.append(operator_process.log_path.read_text(errors="replace"))
    texts.append(operator_process.metrics())
    for bucket in ("evals", "boards"):
        for obj in store.client.list_objects_v2(Bucket=bucket).get("Contents", []):
            texts.append(store.text(bucket, obj["Key"]))
    assert len(texts) > 10
    assert not [t for t in texts if SECRET_KEY in t]


def test_the_operator_contacts_no_store_at_a_refused_address(
    api: client.ApiClient, namespace: str, store: S3Server
) -> None:
    """The operator lends no network position (the tests allow only 127.0.0.0/8:
    LMMS_OBJECT_STORE_ALLOWED_CIDRS). An EvalRun whose output endpoint is the metadata
    service, in an octal spelling, fails InvalidSpec naming the field, with no Job; a
    Leaderboard whose storage is there keeps its table in ConfigMaps, says why the
    copy is missing (ObjectStoreSynced False, naming spec.storage.s3.endpoint), and the
    run that publishes to it is published, once."""
    _credentials(api, namespace, store)
    imds = _run("imds", store, f"{namespace}/imds/0/", termination_value=0.5)
    imds["spec"]["output"]["s3"]["endpoint"] = "http://0251.0376.0251.0376"
    imds["spec"]["leaderboard"] = None
    er.create(api, namespace, imds)
    run = er.wait_phase(api, namespace, "imds", "Failed", timeout=60, reason="InvalidSpec")
    assert "spec.output.s3.endpoint" in run["status"]["message"]
    assert "169.254.169.254" in run["status"]["message"]
    assert not er.jobs_of(api, namespace, run)

    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        "leaderboards",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Leaderboard",
            "metadata": {"name": "board"},
            "spec": {
                "storage": {
                    "s3": {
                        "bucket": "boards",
                        "endpoint": "http://[::ffff:169.254.169.254]",
                        "credentialsSecret": "s3-creds",
                    }
                }
            },
        },
    )
    er.create(api, namespace, _run("pub", store, f"{namespace}/pub/0/", termination_value=0.5))
    er.wait_phase(api, namespace, "pub", "Succeeded", timeout=90)

    def refused() -> dict[str, Any] | None:
        board = client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "leaderboards", "board"
        )
        conditions = (board.get("status") or {}).get("conditions") or []
        return board if conditions else None

    board = wait_for(refused, timeout=60)
    (synced,) = board["status"]["conditions"]
    assert (synced["type"], synced["status"]) == ("ObjectStoreSynced", "False")
    assert synced["message"].startswith("spec.storage.s3.endpoint: "), synced["message"]
    assert board["status"]["entries"] == 1 and "tableLocation" not in board["status"]
    pub = wait_for(
        lambda: (r := er.get(api, namespace, "pub"))["status"].get("resultsConfigMap") and r
    )
    assert pub["status"]["leaderboardPublished"] is True
    assert "LeaderboardPublished" not in [c["type"] for c in pub["status"].get("conditions", [])]


class _HostileStore:
    """An S3 endpoint that answers GetObject either one byte per second (``drip`` in the
    key) or with 200 MiB as fast as it can (``huge``), both without a Content-Length."""

    def __init__(self) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                try:
                    if "drip" in self.path:
                        for _ in range(120):
                            self.wfile.write(b" ")
                            self.wfile.flush()
                            time.sleep(1)
                    else:
                        chunk = b" " * (1024 * 1024)
                        for _ in range(200):
                            self.wfile.write(chunk)
                except OSError:
                    pass  # the operator hung up, as it should

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def test_the_evaluation_index_is_copied_to_the_bucket_and_restored_from_it(
    api: client.ApiClient, namespace: str, store: S3Server
) -> None:
    """A pinned model's results go to the namespace's evaluation index and, with
    spec.output.s3, to the run's bucket; with the cluster's entry gone, an identical run
    is served from the bucket (Reused, no Job) and the entry is restored."""
    _credentials(api, namespace, store)
    summary = _summary("colors", 0.75)
    summary["provenance"]["lmmsEvalVersion"] = catalogue.load().lmms_eval_version
    store.client.put_object(
        Bucket="evals",
        Key=f"{namespace}/first/c0ffee/{RESULTS_SUMMARY_FILE}",
        Body=json.dumps(summary).encode(),
    )
    first = _run("first", store, f"{namespace}/first/c0ffee/", termination_value=0.1)
    first["spec"]["model"]["version"] = "v1"
    er.create(api, namespace, first)
    done = er.wait_phase(api, namespace, "first", "Succeeded", timeout=90)
    assert done["status"]["results"][0]["value"] == 0.75
    core = client.CoreV1Api(api)
    selector = "eval.lmms.dev/evaluation-index=true"
    (entry,) = core.list_namespaced_config_map(namespace, label_selector=selector).items
    copies = store.client.list_objects_v2(
        Bucket="evals", Prefix=f"{namespace}/_evaluation-index/"
    ).get("Contents")
    assert [c["Key"].rsplit("/", 1)[1] for c in copies] == [f"{entry.metadata.name}.json"]

    core.delete_namespaced_config_map(entry.metadata.name, namespace)
    second = copy.deepcopy(first)
    second["metadata"]["name"] = "second"
    er.create(api, namespace, second)
    again = er.wait_phase(api, namespace, "second", "Succeeded", timeout=30)
    assert again["status"]["reason"] == "Reused"
    assert again["status"]["results"][0]["value"] == 0.75
    assert again["status"]["reused"][0]["run"] == f"{namespace}/first"
    assert not er.jobs_of(api, namespace, again)
    (restored,) = core.list_namespaced_config_map(namespace, label_selector=selector).items
    assert restored.metadata.name == entry.metadata.name


def test_a_hostile_store_neither_grows_the_operator_nor_delays_other_runs(
    api: client.ApiClient, namespace: str, operator_process: OperatorProcess
) -> None:
    hostile = _HostileStore()
    try:
        core = client.CoreV1Api(api)
        core.create_namespaced_secret(
            namespace,
            {
                "metadata": {"name": "s3-creds", "labels": er.USABLE},
                "stringData": {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"},
            },
        )
        assert operator_process.proc is not None
        before = _rss_mib(operator_process.proc.pid)
        for name in ("drip", "huge"):
            body = _run(name, _Endpoint(hostile.endpoint), f"{namespace}/{name}/0/", 0.5)
            body["spec"]["leaderboard"] = None
            er.create(api, namespace, body)
        # While the operator reads those, another team's runs go through unhindered.
        started = time.monotonic()
        for i in range(3):
            er.create(api, namespace, er.manifest(f"other-{i}", er.KWOK))
        for i in range(3):
            er.wait_phase(api, namespace, f"other-{i}", "Succeeded", timeout=30)
        others = time.monotonic() - started
        # The hostile runs end too, from their termination messages, within the read
        # deadline (20 s) and its timeouts.
        for name in ("drip", "huge"):

            def with_results(n: str = name) -> dict[str, Any] | None:
                run = er.get(api, namespace, n)
                return run if run["status"].get("results") else None

            run = wait_for(with_results, timeout=60)
            assert run["status"]["results"][0]["value"] == 0.5
            assert er.wait_event(api, namespace, name, "ResultsNotInObjectStore")
        after = _rss_mib(operator_process.proc.pid)
        assert others < 30
        # 200 MiB offered: the operator read at most its 8 MiB cap.
        assert after - before < 40, (before, after)
    finally:
        hostile.close()


def test_a_runner_answering_200_mib_neither_grows_the_operator_nor_delays_others(
    api: client.ApiClient, namespace: str, operator_process: OperatorProcess
) -> None:
    assert operator_process.proc is not None
    before = _rss_mib(operator_process.proc.pid)
    message = {"v": 1, "ok": True, "truncated": False, "tasks": {"mme": {"acc": 0.5}}}
    flood = er.manifest(
        "flood",
        er.EXECUTOR,
        model={
            "type": "dummy",
            "pretrained": "org/flood",
            "args": {
                "scripted_flood_mib": "200",
                "scripted_sleep": "15",
                "scripted_message_b64": base64.b64encode(json.dumps(message).encode())
                .decode()
                .rstrip("="),
            },
        },
        leaderboard=None,
    )
    errors_before = _scrape_errors(operator_process)
    er.create(api, namespace, flood)
    er.wait_phase(api, namespace, "flood", "Running", timeout=60)
    # The operator has tried the runner twice, and refused its answers.
    wait_for(lambda: _scrape_errors(operator_process) >= errors_before + 2, timeout=30)
    started = time.monotonic()
    for i in range(3):
        er.create(api, namespace, er.manifest(f"beside-{i}", er.KWOK))
    for i in range(3):
        er.wait_phase(api, namespace, f"beside-{i}", "Succeeded", timeout=30)
    assert time.monotonic() - started < 30
    run = er.wait_phase(api, namespace, "flood", "Succeeded", timeout=60)
    assert run["status"].get("progress") is None  # nothing of the flood reached the status
    after = _rss_mib(operator_process.proc.pid)
    assert after - before < 40, (before, after)


def _scrape_errors(operator_process: OperatorProcess) -> float:
    for line in operator_process.metrics().splitlines():
        if line.startswith('lmms_operator_scrapes_total{result="error"}'):
            return float(line.split()[-1])
    return 0.0


class _Endpoint:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
