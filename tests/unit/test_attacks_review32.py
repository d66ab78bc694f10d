"""Attacks from the review of issue 32 (the engine sidecar, served models, logged samples
and the paired comparison, concurrency, multiGPU): a hostile tenant controls its runner's
answers (``/results``, ``/samples``), the engine's log text, and every ConfigMap of its
namespace. Each test shows what a platform or another tenant relies on.

Tests marked ``DEFECT`` fail on the code they were written against and name the fix."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import json
import threading
import tracemalloc
import unicodedata
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from lmms_operator import errors
from lmms_operator.api.runner import (
    SAMPLES_MAX_RECORDS,
    SAMPLES_MAX_RESPONSE,
    SampleRecord,
    SamplesReport,
    TaskSamples,
)
from lmms_operator.cli import samples as cli_samples
from lmms_operator.config import Settings
from lmms_operator.errors import InvalidSpec
from lmms_operator.k8s.writes import Writer
from lmms_operator.reconcile import inference
from lmms_operator.reconcile import job as jobs
from lmms_operator.reconcile import pods as pod_facts
from lmms_operator.reconcile import results as run_results
from lmms_operator.reconcile import samples as sample_maps
from lmms_operator.reconcile.credentials import masked
from lmms_operator.reconcile.grammar import hidden
from lmms_operator.reconcile.results import CONFIG_MAP_BUDGET
from lmms_operator.reconcile.validate import Policy, validate
from lmms_operator.runnerprotocol import Scraper
from lmms_runner import served

RUN = jobs.RunRef("big-model", "team-a", "0b8e6f5c-1111-2222-3333-444455556666")
IMAGES = (("vllm", "registry.example/vllm:1"), ("sglang", "registry.example/sglang:1"))
POLICY = Policy(engines=frozenset({"vllm", "sglang"}))
RUNNER = dataclasses.replace(Settings().runner, engine_images=IMAGES)
NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
#: The Kubernetes limit on a ConfigMap's data (keys and values together).
CONFIG_MAP_LIMIT = 1024 * 1024
#: The chart's memory limit of the operator (helm values: resources.limits.memory).
OPERATOR_MEMORY = 256 * 1024 * 1024


def engine_raw(**model: Any) -> dict[str, Any]:
    base = {"type": "openai", "pretrained": "Qwen/Qwen2-VL-72B-Instruct", "engine": "vllm"}
    return {
        "model": {**base, **model},
        "tasks": ["mme"],
        "resources": {"gpus": 4, "memory": "200Gi", "cpu": "16"},
        "huggingFaceToken": {"secretKeyRef": {"name": "hf", "key": "token"}},
        "output": {"s3": {"bucket": "evals", "credentialsSecret": "s3"}},
    }


def pod_spec(spec: dict[str, Any]) -> dict[str, Any]:
    desired = jobs.build(RUN, validate(spec, POLICY), RUNNER, token="t0ken")
    return dict(desired.job["spec"]["template"]["spec"])


def report(tasks: list[TaskSamples]) -> SamplesReport:
    return SamplesReport(tasks=tasks)


def map_size(data: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in data.items())


# --- the engine sidecar ---------------------------------------------------------------------


def test_the_engine_gets_the_runners_lockdown_and_none_of_its_secrets() -> None:
    """Held: the engine runs locked down like the runner, in a pod without a service
    account token, and only with the secrets it needs (the Hub token): not the runner's
    token, not the object store's keys."""
    pod = pod_spec(engine_raw())
    [engine] = pod["initContainers"]
    [runner] = pod["containers"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert engine["securityContext"] == runner["securityContext"]
    assert engine["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert engine["securityContext"]["allowPrivilegeEscalation"] is False
    secrets = {
        e["name"]: e["valueFrom"]["secretKeyRef"]["name"]
        for e in engine["env"]
        if "secretKeyRef" in (e.get("valueFrom") or {})
    }
    assert secrets == {"HF_TOKEN": "hf"}
    assert not any(m["name"] in ("run-config", "output") for m in engine["volumeMounts"])


def test_the_pods_gpus_are_requested_once_by_the_engine() -> None:
    """Held: a sidecar's requests add to the regular containers'; the pod asks for the
    run's GPUs once, all of them the engine's."""
    pod = pod_spec(engine_raw())
    [engine] = pod["initContainers"]
    [runner] = pod["containers"]
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert "nvidia.com/gpu" not in json.dumps(runner["resources"])


def test_an_engine_command_cannot_take_an_option_from_the_checkpoint_name() -> None:
    """Held: pretrained and revision cannot start with "-" (the schema's patterns), so
    ``vllm serve <pretrained>`` never reads the tenant's text as an option such as
    --trust-remote-code."""
    for field in ("pretrained", "revision"):
        with pytest.raises(InvalidSpec):
            validate(engine_raw(**{field: "--trust-remote-code"}), POLICY)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.text(max_size=6000))
def test_an_engines_last_lines_are_bounded_and_show_nothing_hidden(text: str) -> None:
    """Held: whatever the engine printed (the termination message is tenant-influenced
    log text), the status shows at most MAX_LINES lines of MAX_CHARS characters, with no
    control, bidi or invisible character but the line breaks it keeps."""
    shown = inference.redact(text)
    assert len(shown) <= inference.MAX_CHARS
    assert len(shown.splitlines()) <= inference.MAX_LINES
    assert not any(hidden(c) for c in shown if c != "\n")
    message = inference.failure_message("vllm", "p", {"exitCode": 1, "message": text})
    assert not any(hidden(c) for c in message if c != "\n")


def test_an_engines_last_lines_mask_credentials_hidden_behind_escapes() -> None:
    """Held: an ANSI colour code or a bidi override around a Hub token does not keep it
    from being masked, and URL user-info is masked."""
    token = "hf_" + "A" * 34
    text = f"\x1b[31mError: token {token}\x1b[0m\nproxy https://user:pw@proxy.example/\u202e"
    shown = inference.redact(text)
    assert token not in shown and "user:pw" not in shown
    assert "\x1b" not in shown and "\u202e" not in shown


# --- the served model's id ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(hs.text(min_size=1, max_size=600))
def test_a_served_model_id_that_model_args_cannot_carry_is_refused(model_id: str) -> None:
    """DEFECT, fixed (low; found by hypothesis): the id a model server lists goes into
    --model_args (model_version=<id>) and the provenance only when lmms-eval's splitter
    keeps it whole: no , = quotes brackets spaces or controls. ``MODEL_ID.match`` with
    ``$`` let one final newline through ("m\n"): ``$`` also matches before it."""
    try:
        kept = served.checked_id(model_id)
    except served.ServedError:
        return
    assert kept == model_id and len(kept) <= 512
    assert not set(kept) & set(",=\"'[]{}() \t\n")
    assert all(unicodedata.category(c)[0] in "LNP" or c in "+" for c in kept)


# --- logged samples: what the runner serves, what the operator keeps -------------------------


class _Samples(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


def _read_samples(body: bytes) -> tuple[Any, int]:
    """What the operator makes of a runner's /samples answer (the scraper's fetch and
    read, then the ConfigMaps and the pointer), and the peak of the memory it took."""
    _Samples.body = body
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Samples)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    async def main() -> Any:
        scraper = Scraper(Settings(scrape_timeout=30))
        try:
            return await scraper.samples(f"http://127.0.0.1:{httpd.server_address[1]}/", "t")
        finally:
            await scraper.close()

    tracemalloc.start()
    try:
        logged = asyncio.run(main())
        kept = sample_maps.keep("job-abc", logged)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        httpd.shutdown()
    return (logged, kept), peak


def test_a_runners_samples_answer_of_tiny_records_fits_the_operators_memory() -> None:
    """DEFECT, fixed (high: one tenant could crash-loop the operator every tenant shares).

    The scraper bounded a runner's answer at 4 MiB (MAX_RESPONSE), but not the number of
    records in it: ``{"id":0}`` is 9 bytes, and 466,000 such records became 466,000
    dicts, then 466,000 pydantic models (SampleRecord, with its scores dict), held while
    the run's plan was made. Measured: a 347 MB peak and 257 MB held for one answer, over
    the chart's 256 MiB limit of the operator; the operator restarted, scraped the same
    runner again (it still held its results) and was killed again.

    Now the runner serves JSON Lines (``SamplesReport.jsonl``), and the operator reads
    at most SAMPLES_MAX_RESPONSE bytes (below MAX_RESPONSE) a line at a time, keeping each
    record as its ConfigMap line (text), at most SAMPLES_MAX_RECORDS of them (the rest
    counted, not parsed), never one object per record; a line longer than
    SAMPLES_MAX_LINE (the old one-document answer) is not parsed. What the bound left out
    is said: the task's note, and ``left_out`` (the SamplesKept Event)."""
    n = (SAMPLES_MAX_RESPONSE - 100) // 9
    body = b'{"task":"t","count":0}\n' + b'{"id":0}\n' * n
    (logged, (maps, pointer)), peak = _read_samples(body)
    assert peak < OPERATOR_MEMORY // 8, f"{peak / 2**20:.0f} MiB to read one /samples answer"
    [task] = logged.tasks
    assert len(task.lines) == SAMPLES_MAX_RECORDS and task.lines[0] == '{"id":0}\n'
    assert logged.left_out and str(n - SAMPLES_MAX_RECORDS) in logged.left_out
    [entry] = pointer["tasks"]
    assert entry["truncated"] and "over the operator's bound" in entry["note"]
    assert 0 < entry["kept"] <= SAMPLES_MAX_RECORDS
    # The answer as one JSON document (what the runner served before): one line over
    # SAMPLES_MAX_LINE, not parsed, nothing kept.
    doc = b'{"tasks":[{"task":"t","count":0,"records":[' + b",".join([b'{"id":0}'] * n) + b"]}]}"
    (logged, (maps, _)), peak = _read_samples(doc[: SAMPLES_MAX_RESPONSE - 1])
    assert peak < OPERATOR_MEMORY // 8, f"{peak / 2**20:.0f} MiB to read one /samples answer"
    assert logged.tasks == () and maps == {}


def test_status_samples_stays_small_whatever_the_runner_serves() -> None:
    """DEFECT, fixed (medium: a tenant's runner made its own run's status unwritable; the
    pass failed on every scrape until the runner's hold timeout).

    ``status.samples`` has an entry per task (up to MAX_TASKS = 256) with the task's name
    (253 characters) and note (1024 characters) after escaping, each character up to 4
    bytes of UTF-8 (12 as a JSON \\u escape pair): 1.3 MB of UTF-8, 3.9 MB as ASCII JSON,
    from a runner that serves 256 tasks of one record each. The EvalRun object would pass
    etcd's 1.5 MiB request limit with the results beside it, and the patch passes the API
    server's 3 MiB body limit as ASCII JSON: the status patch is refused.

    Fix: bound the pointer as a whole (e.g. 64 KiB): notes cut to ~200 characters and
    dropped first, then the task entries past the bound summed into one "n more tasks"
    entry."""
    name = "\U0001f600" * 300
    tasks = [
        TaskSamples(
            task=f"{name}{i}",
            count=1,
            note="\U0001f600" * 2000,
            records=[SampleRecord(id=i, scores={"acc": 1.0})],
        )
        for i in range(256)
    ]
    _, pointer = sample_maps.keep("job-abc", report(tasks))
    size = len(json.dumps(pointer, ensure_ascii=False).encode())
    assert size <= 256 * 1024, f"status.samples is {size} bytes"
    # (fixed: at most MAX_POINTER; the tasks past it are one entry that counts them, and
    # names no ConfigMap, so that compare never reads another task's key under its name)
    assert size <= sample_maps.MAX_POINTER
    folded = pointer["tasks"][-1]
    assert folded["configMaps"] == [] and "more task(s)" in folded["note"]
    assert sum(t["kept"] for t in pointer["tasks"]) == 256
    assert all(len(t.get("note", "")) <= sample_maps.MAX_NOTE for t in pointer["tasks"][:-1])


def test_samples_of_another_run_never_share_config_maps() -> None:
    """Held: the samples' ConfigMaps are named after the Job, whose name hashes the run's
    uid: two runs of one name (in two namespaces, or one deleted and made again) and two
    runs whose names share their first 52 characters never write each other's samples."""
    spec = validate({"model": {"type": "dummy", "pretrained": "x"}, "tasks": ["mme"]}, Policy())
    h = jobs.spec_hash(spec)
    a = jobs.job_name("r" * 60 + "a", "uid-1", h)
    b = jobs.job_name("r" * 60 + "b", "uid-2", h)
    c = jobs.job_name("r" * 60 + "a", "uid-3", h)
    assert len({a, b, c}) == 3
    rec = [SampleRecord(id=1, scores={"acc": 1.0})]
    names = [
        set(sample_maps.keep(j, report([TaskSamples(task="t", count=1, records=rec)]))[0])
        for j in (a, b, c)
    ]
    assert not names[0] & names[1] and not names[0] & names[2]
    assert all(len(n) <= 253 for ns in names for n in ns)


@settings(max_examples=200, deadline=None)
@given(hs.text(max_size=3000))
def test_compare_reads_only_records_from_a_tenants_config_map(text: str) -> None:
    """Held: compare's parser takes anything a tenant wrote in a samples ConfigMap and
    keeps only records with a bounded id and finite float scores; a doc id seen twice is
    left out (which line counts is not knowable)."""
    docs = cli_samples.parse_lines(text)
    for doc, scores in docs.items():
        assert isinstance(doc, int | str) and not isinstance(doc, bool)
        assert all(
            isinstance(v, float) and v == v and abs(v) != float("inf") for v in scores.values()
        )


def test_compare_ignores_a_doc_id_written_twice() -> None:
    lines = "\n".join(
        json.dumps(r)
        for r in (
            {"id": 1, "scores": {"acc": 1}},
            {"id": 1, "scores": {"acc": 0}},
            {"id": 2, "scores": {"acc": float("nan")}},
            {"id": True, "scores": {"acc": 1}},
            {"id": 3, "scores": {"acc": 1e400}},
        )
    )
    assert cli_samples.parse_lines(lines) == {2: {}, 3: {}}


# --- the CRD's bounds on the new fields ------------------------------------------------------


def _crd_model() -> dict[str, Any]:
    with open("crds/eval.lmms.dev_evalruns.yaml") as fh:
        crd = yaml.safe_load(fh)
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return dict(spec["properties"])


def test_the_crd_bounds_the_new_fields() -> None:
    """Held: the API server itself refuses an unknown engine, a concurrency outside
    1..256, a multiGPU mode or a verbosity it does not know."""
    props = _crd_model()
    model = props["model"]["properties"]
    assert model["engine"]["enum"] == ["vllm", "sglang"]
    assert (model["concurrency"]["minimum"], model["concurrency"]["maximum"]) == (1, 256)
    assert sorted(model["multiGPU"]["enum"]) == ["DataParallel", "ModelParallel"]
    evaluation = props["evaluation"]["properties"]
    assert sorted(evaluation["verbosity"]["enum"]) == ["DEBUG", "ERROR", "INFO", "WARNING"]
    assert evaluation["logSamples"]["type"] == "boolean"


def test_masked_catches_the_credential_shapes_an_engine_could_print() -> None:
    """Held: the shapes the engine's last lines are masked by."""
    for secret in ("hf_" + "a1" * 17, "sk-" + "x" * 40, "AKIA" + "A" * 16):
        assert secret not in masked(f"key={secret} done")


def test_the_runner_beside_an_engine_has_limits_of_its_own() -> None:
    """DEFECT, fixed (medium: engine runs could not start in a namespace whose
    ResourceQuota counts limits, and elsewhere the runner's memory was unbounded on a
    shared GPU node). Now the runner has a request = limit of its own, added to the
    engine's (LMMS_ENGINE_RUNNER_CPU, LMMS_ENGINE_RUNNER_MEMORY: 1 CPU, 4Gi).

    ``inference.attach`` moves the run's resources to the engine and leaves the runner
    ``resources: {}``. A ResourceQuota on ``limits.memory``/``limits.cpu`` (the usual
    multi-tenant setup) makes the API server refuse every pod with a container without
    limits ("must specify limits.cpu for: runner") unless a LimitRange gives defaults:
    the Job never gets a pod. Without a quota the runner (lmms-eval, the dataset, the
    images it decodes) may take the node's memory without limit and be counted nowhere.

    Fix: the runner keeps a small fixed request = limit of its own (an operator setting,
    e.g. 1 CPU and 4Gi), taken out of what the spec gives the engine (or added to it,
    and documented), so that the pod is Guaranteed and counted once."""
    pod = pod_spec(engine_raw())
    [runner] = pod["containers"]
    limits = (runner.get("resources") or {}).get("limits") or {}
    assert "memory" in limits and "cpu" in limits


# --- GPUs for a container that requests none --------------------------------------------------


def _env(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container["env"]}


def test_a_runner_that_requests_no_gpu_sees_none() -> None:
    """DEFECT, fixed (high on a node with NVIDIA's container runtime in its default
    configuration: the runner, which requests no GPU beside an engine, saw every GPU of
    the node, those of other tenants' pods included).

    The runner image's base (nvidia/cuda) sets ``NVIDIA_VISIBLE_DEVICES=all``; the
    runtime honours the variable in unprivileged containers unless the admin turned
    ``accept-nvidia-visible-devices-envvar-when-unprivileged`` off. A container that
    requests no GPU gets ``NVIDIA_VISIBLE_DEVICES=void`` (the runtime acts as runc); a
    container that requests GPUs gets the device plugin's list, as before."""
    pod = pod_spec(engine_raw())
    [engine] = pod["initContainers"]
    [runner] = pod["containers"]
    assert _env(runner)["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "NVIDIA_VISIBLE_DEVICES" not in _env(engine)
    served_run = {"model": {"type": "openai", "args": {"base_url": "http://m:8000/v1"}}}
    cpu_raw = {**served_run, "tasks": ["mme"], "resources": {"gpus": 0}}
    cpu = jobs.build(RUN, validate(cpu_raw, POLICY), RUNNER, token="t")
    [cpu_runner] = cpu.job["spec"]["template"]["spec"]["containers"]
    assert _env(cpu_runner)["NVIDIA_VISIBLE_DEVICES"] == "void"
    gpu = jobs.build(
        RUN,
        validate({"model": {"type": "qwen2_vl"}, "tasks": ["mme"], "resources": {"gpus": 1}}),
        RUNNER,
        token="t",
    )
    [gpu_runner] = gpu.job["spec"]["template"]["spec"]["containers"]
    assert "NVIDIA_VISIBLE_DEVICES" not in _env(gpu_runner)


# --- the samples' ConfigMaps within the API server's limit ------------------------------------


def test_each_samples_config_map_fits_the_api_servers_limit() -> None:
    """DEFECT, fixed (low: a tenant's runner could lose its own samples, all or none).

    ``keep`` kept each ConfigMap's records within CONFIG_MAP_BUDGET less 64 KiB "for
    index.json", but the index names the task of every key in the map: 256 tasks of
    253-character names, written by ``json.dumps`` as \\u escapes (12 bytes for a
    character outside the BMP), is 777 KB. With records of all 256 tasks in the first
    map, it was 1.6 MB: over the 1 MiB a ConfigMap may hold, refused by the API server.
    Now the index's own bytes count against the map's budget as keys are added."""
    name = "\U0001f600" * 300
    tasks = [
        TaskSamples(
            task=f"{i}{name}",
            count=1,
            records=[SampleRecord(id=i, target="\U0001f600" * 900, scores={"acc": 1.0})],
        )
        for i in range(256)
    ]
    maps, pointer = sample_maps.keep("job-abc", report(tasks))
    assert maps
    for data in maps.values():
        assert map_size(data) <= CONFIG_MAP_BUDGET
        index = json.loads(data[sample_maps.INDEX_KEY])
        assert set(index) == set(data) - {sample_maps.INDEX_KEY}
    assert sum(t["kept"] for t in pointer["tasks"]) == 256


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    hs.lists(
        hs.tuples(
            hs.text(min_size=1, max_size=300),
            hs.lists(hs.text(max_size=1000), min_size=1, max_size=40),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_samples_config_maps_stay_within_their_bounds(tasks: list[tuple[str, list[str]]]) -> None:
    """Held (with the fix above): any report makes at most MAX_CONFIG_MAPS ConfigMaps,
    each within the budget, whose lines are JSON records with nothing hidden."""
    rep = report(
        [
            TaskSamples(
                task=name,
                count=len(texts),
                records=[SampleRecord(id=j, target=t, response=t) for j, t in enumerate(texts)],
            )
            for name, texts in tasks
        ]
    )
    maps, pointer = sample_maps.keep("job-abc", rep)
    assert len(maps) <= sample_maps.MAX_CONFIG_MAPS
    for data in maps.values():
        assert map_size(data) <= CONFIG_MAP_BUDGET
        for key, text in data.items():
            if key == sample_maps.INDEX_KEY:
                continue
            for line in text.splitlines():
                record = json.loads(line)
                assert not any(hidden(c) for c in record.get("target", ""))
    for entry in pointer["tasks"]:
        assert not any(hidden(c) for c in entry["task"])


# --- a runner's answer nested too deep --------------------------------------------------------


class _Deep(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"[" * 200_000  # 200 KB: well within MAX_RESPONSE
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_an_answer_nested_too_deep_is_a_scrape_error() -> None:
    """DEFECT, fixed (low: a tenant's runner kept its own run from recording its
    results, on every scrape until its hold timeout; a CPU cost on each).

    ``json.loads`` raises RecursionError, not ValueError, for JSON nested deeper than the
    interpreter's recursion limit. The scraper turned only ValueError into ScrapeError,
    so ``/samples`` answering ``[[[[…`` escaped ``samples()`` ("a failure costs the
    samples") and the scrape of the run stopped before its results were kept."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Deep)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    async def main() -> None:
        scraper = Scraper(Settings(scrape_timeout=10))
        try:
            with pytest.raises(errors.ScrapeError, match="RecursionError"):
                await scraper.request("GET", f"http://127.0.0.1:{httpd.server_address[1]}/samples")
        finally:
            await scraper.close()

    try:
        asyncio.run(main())
    finally:
        httpd.shutdown()


def test_a_termination_message_nested_too_deep_is_not_a_document() -> None:
    """DEFECT, fixed (low, older than issue 32: a tenant's runner turned its own run's
    end into InternalError). The runner's termination message (4096 bytes, whatever the
    container wrote) is read as JSON for its results and for the failures it names; 4096
    ``[`` raised RecursionError through the pass."""
    assert pod_facts.runner_failure("[" * 4096) is None
    assert run_results._termination_doc("[" * 4096) is None


# --- a ConfigMap of the samples' name made before them ---------------------------------------


class _Cluster:
    """The writes and reads ``Applier._samples`` makes, over a dict of ConfigMaps."""

    def __init__(self, existing: dict[str, dict[str, Any]], refuse: set[str]) -> None:
        self.maps, self.refuse, self.deleted = dict(existing), refuse, []  # type: ignore[var-annotated]

    def create(self, obj: dict[str, Any]) -> bool:
        name = obj["metadata"]["name"]
        if name in self.refuse:
            raise errors.Invalid(f"ConfigMap {name} is too long")
        if name in self.maps:
            return False
        self.maps[name] = obj
        return True

    create_owned = Writer.create_owned  # the check under test, over this fake

    @property
    def api(self) -> _Cluster:
        return self

    def read_config_map(self, _namespace: str, name: str) -> dict[str, Any] | None:
        return self.maps.get(name)

    def delete_config_map(self, _namespace: str, name: str) -> None:
        self.deleted.append(name)
        self.maps.pop(name, None)


def _keep(cluster: _Cluster, names: list[str]) -> Any:
    from lmms_operator.applier import Applier
    from lmms_operator.reconcile.plan import KeepSamples
    from lmms_operator.reconcile.publishing import owned_config_map

    run = {"metadata": {"name": "r", "namespace": "team-a", "uid": "run-uid"}}
    step = KeepSamples(tuple(owned_config_map(run, n, {}, {"0.jsonl": "{}"}) for n in names))
    applier = Applier.__new__(Applier)
    applier.writes = cluster  # type: ignore[assignment]
    return applier._samples("team-a", step)


def test_a_tenants_config_map_of_the_samples_name_is_never_deleted_nor_taken() -> None:
    """DEFECT, fixed (low: within the tenant's own namespace). The samples' ConfigMaps
    have names anyone can compute (``<job>-samples-<n>``, the Job's name is in the run's
    status). One made before them by someone else was (1) counted as kept: status.samples
    pointed at it and the run said SamplesKept, and compare, which reads only the run's
    own, silently fell back to the unpaired test; (2) deleted when a later one was
    refused ("all or none" deleted every name, not only the run's). Now the writer
    reads an existing one and takes only the run's own; a refusal deletes only those."""
    foreign = {"metadata": {"name": "j-samples-0", "namespace": "team-a"}, "data": {}}
    cluster = _Cluster({"j-samples-0": foreign}, refuse=set())
    replan = _keep(cluster, ["j-samples-0", "j-samples-1"])
    assert replan is not None and "j-samples-0 exists and is not the run's" in str(
        replan.samples_failed
    )
    assert cluster.maps["j-samples-0"] is foreign and cluster.deleted == []

    cluster = _Cluster({"j-samples-0": foreign}, refuse={"j-samples-1"})
    replan = _keep(cluster, ["j-samples-2", "j-samples-1", "j-samples-0"])
    assert replan is not None and cluster.deleted == ["j-samples-2"]
    assert cluster.maps["j-samples-0"] is foreign


def test_the_runs_own_config_maps_made_by_an_earlier_pass_count_as_kept() -> None:
    """Held: a pass that made the maps and failed before the status patch is repeated;
    the maps it finds are the run's own, and they are kept."""
    cluster = _Cluster({}, refuse=set())
    assert _keep(cluster, ["j-samples-0"]) is None
    assert _keep(cluster, ["j-samples-0", "j-samples-1"]) is None
    assert set(cluster.maps) == {"j-samples-0", "j-samples-1"} and cluster.deleted == []


# --- concurrency and multiGPU ----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    hs.sampled_from(["openai", "async_openai", "openai_compatible_chat", "qwen2_vl"]),
    hs.one_of(hs.none(), hs.integers(1, 256)),
    hs.dictionaries(
        hs.sampled_from(
            ["num_concurrent", "num_cpus", "adaptive_max_concurrency", "adaptive_concurrency"]
        ),
        hs.one_of(hs.text(max_size=20), hs.just("9" * 5000), hs.just("-5")),
    ),
    hs.integers(0, 512),
)
def test_requests_in_flight_are_a_positive_bound_whatever_the_args_say(
    model_type: str, concurrency: int | None, args: dict[str, str], cpus: int
) -> None:
    """Held: the runner's checkpoint interval reads the requests in flight from the
    tenant's args: a number too long for int(), a negative one, or text never raises
    and never gives less than one."""
    from lmms_operator import concurrency as conc

    n = conc.in_flight(model_type, concurrency, args, cpus)
    assert n is None or n >= 1
    if concurrency is not None and n is not None:
        assert n == concurrency


@pytest.mark.parametrize(
    ("model", "resources"),
    [
        ({"multiGPU": "ModelParallel"}, {"gpus": 2, "nodes": 2}),
        ({"multiGPU": "ModelParallel"}, {"gpus": 0}),
        ({"multiGPU": "ModelParallel", "engine": "vllm"}, {"gpus": 2}),
        ({"engine": "vllm"}, {"gpus": 0}),
        ({"engine": "vllm"}, {"gpus": 2, "nodes": 2}),
    ],
)
def test_gpu_modes_that_cannot_work_are_refused(
    model: dict[str, Any], resources: dict[str, Any]
) -> None:
    """Held: no run holds GPUs in a mode that cannot use them."""
    raw = engine_raw(**model)
    raw["resources"] = resources
    if "engine" not in model:
        raw["model"] = {"type": "qwen2_vl", **model}
    with pytest.raises(InvalidSpec):
        validate(raw, POLICY)


def test_the_runner_never_sends_its_own_token_to_the_engine() -> None:
    """DEFECT, fixed (low, defence in depth): the runner's OpenAI client key in an engine pod was
    the runner's own token (``OPENAI_API_KEY`` from the token Secret), so every request
    to the engine carries the bearer token that opens the runner's ``/results``,
    ``/samples`` and ``POST /ack``. The engine checks no key; whatever it logs about a
    request (a debug level is allowed: VLLM_LOGGING_LEVEL) reaches its termination
    message, which the operator masks by credential shapes only, and a 43-character
    urlsafe token has none: the token would be in status.message and an Event.

    Fix: set no OPENAI_API_KEY in an engine pod; the runner already gives lmms-eval's
    client the placeholder ``EMPTY`` when a model server has no key (evaluation.py)."""
    pod = pod_spec(engine_raw())
    [runner] = pod["containers"]
    token = next(e["valueFrom"] for e in runner["env"] if e["name"] == "LMMS_RUNNER_TOKEN")
    key = next((e for e in runner["env"] if e["name"] == "OPENAI_API_KEY"), None)
    assert key is None or key.get("valueFrom") != token
