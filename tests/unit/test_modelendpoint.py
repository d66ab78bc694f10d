"""A model or judge served by reference: the admin's URL allow-list, readiness from API
objects, the wait before any Job, the runner's environment, and the identity of what was
evaluated (``reconcile.modelendpoint``, ``modelurls``, ``modelwait``)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmms_operator import errors
from lmms_operator.api import EvalRunSpec
from lmms_operator.config import Settings
from lmms_operator.reconcile import admission, identity, leaderboard, modelendpoint, reuse
from lmms_operator.reconcile import reasons as R
from lmms_operator.reconcile.modelendpoint import Observed, Readiness
from lmms_operator.reconcile.modelurls import parse_rules, url_problem
from lmms_operator.reconcile.validate import Policy, validate

NOW = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)
RULES = admission.Rules(Settings().policy, Settings().runner, Settings().timeouts)
SERVICE = {"service": {"name": "qwen", "port": 8000}}
KEY = {"secretKeyRef": {"name": "llm", "key": "token"}}


def _spec(**model: Any) -> dict[str, Any]:
    return {
        "model": {"type": "openai", "endpoint": dict(SERVICE), **model},
        "tasks": ["mme"],
        "resources": {"gpus": 2},
    }


def _run(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r", "namespace": "team-a", "uid": "u-1", "generation": 1},
        "spec": spec,
        "status": {},
    }


def _problems(raw: dict[str, Any], policy: Policy | None = None) -> dict[str, str]:
    try:
        validate(raw, policy)
    except errors.InvalidSpec as exc:
        return {p.field: p.message for p in exc.problems}
    return {}


# --- the admin's allow-list --------------------------------------------------------------


def test_the_allow_list_admits_its_prefixes_and_host_patterns_only() -> None:
    rules = parse_rules("https://llm.example.com/v1, *.models.example.org:8443 10.0.0.7")
    admitted = [
        "https://llm.example.com/v1",
        "https://llm.example.com:443/v1/",
        "https://LLM.example.com./v1/x",
        "https://a.models.example.org:8443/v1",
        "http://a.b.models.example.org:8443",
        "http://10.0.0.7:9000/v1",
        "http://0x0a.0.0.7/v1",  # the same address, spelled otherwise
        "http://167772167/v1",
    ]
    refused = [
        "http://llm.example.com/v1",  # another scheme
        "https://llm.example.com:8443/v1",  # another port
        "https://llm.example.com/v10",  # not below /v1
        "https://llm.example.com/",
        "https://models.example.org:8443/v1",  # the domain itself is not below it
        "https://a.models.example.org/v1",  # the pattern names a port
        "http://10.0.0.8/v1",
        "https://llm.example.com.evil.io/v1",
    ]
    for url in admitted:
        assert url_problem("f", url, rules) is None, url
    for url in refused:
        problem = url_problem("spec.model.endpoint.url", url, rules)
        assert problem is not None and problem.field == "spec.model.endpoint.url", url


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("ftp://files.example.com", "scheme"),
        ("https://user:pw@llm.example.com", "user information"),
        ("https://llm.example.com/v1/../admin", "'.' or '..'"),
        ("https://llm.example.com/v1?x=1", "query"),
        ("*.10.0.0.7", "wildcard over an IP"),
        ("llm.example.com/v1", "neither a URL prefix"),
        ("*", "neither a URL prefix"),
        ("llm.example.com:99999", "port"),
        ("bad_host!", "neither a valid host name"),
    ],
)
def test_an_entry_that_cannot_be_read_stops_the_operator_naming_it(entry: str, words: str) -> None:
    with pytest.raises(ValueError, match="LMMS_ALLOWED_MODEL_URLS") as caught:
        parse_rules(f"https://ok.example.com, {entry}")
    assert words in str(caught.value) and entry[:20] in str(caught.value)


def test_settings_check_refuses_a_bad_list_at_start_up() -> None:
    with pytest.raises(ValueError, match="LMMS_ALLOWED_MODEL_URLS"):
        Settings(allowed_model_urls="https://ok, ftp://x").check()
    assert Settings(allowed_model_urls="https://llm.example.com/v1").policy.model_urls


def test_metadata_and_link_local_stay_refused_whatever_the_list_says() -> None:
    rules = parse_rules("169.254.169.254 metadata.google.internal *.internal [fd00:ec2::254]")
    for url in (
        "http://169.254.169.254/latest",
        "http://0xa9fea9fe/",
        "http://metadata.google.internal/v1",
        "http://[::ffff:169.254.169.254]/",
        "http://[fd00:ec2::254]/",
        "http://0.0.0.0:8000/v1",
    ):
        assert url_problem("f", url, rules) is not None, url


def test_no_list_admits_no_url_and_says_where_the_admin_lists_them() -> None:
    problem = url_problem("spec.judge.url", "https://llm.example.com/v1", ())
    assert problem is not None and "LMMS_ALLOWED_MODEL_URLS" in problem.message


_LABEL = st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True)
_HOST = st.lists(_LABEL, min_size=2, max_size=4).map(".".join)
_SEGMENT = st.from_regex(r"[A-Za-z0-9_~\-][A-Za-z0-9._~\-]{0,6}", fullmatch=True)
_PATH = st.lists(_SEGMENT, max_size=3).map(lambda s: "".join("/" + x for x in s))


@settings(max_examples=300, deadline=None)
@given(
    host=_HOST,
    port=st.integers(1, 65535),
    prefix=_PATH,
    below=_PATH,
    scheme=st.sampled_from(["http", "https"]),
)
def test_a_prefix_admits_exactly_the_urls_at_or_below_it(
    host: str, port: int, prefix: str, below: str, scheme: str
) -> None:
    rules = parse_rules(f"{scheme}://{host}:{port}{prefix}")
    assert url_problem("f", f"{scheme}://{host.upper()}:{port}{prefix}{below}", rules) is None
    other = "https" if scheme == "http" else "http"
    assert url_problem("f", f"{other}://{host}:{port}{prefix}{below}", rules) is not None
    assert url_problem("f", f"{scheme}://x{host}:{port}{prefix}{below}", rules) is not None
    if prefix:  # a sibling path (the prefix's last segment + "x") is outside it
        assert url_problem("f", f"{scheme}://{host}:{port}{prefix}x", rules) is not None


@settings(max_examples=300, deadline=None)
@given(number=st.integers(0, 2**32 - 1), port=st.integers(1, 65535))
def test_an_ipv4_entry_admits_the_address_in_every_spelling_and_nothing_else(
    number: int, port: int
) -> None:
    address = ipaddress.IPv4Address(number)
    rules = parse_rules(f"{address}:{port}")
    spellings = [str(address), str(number), hex(number)]
    verdicts = {url_problem("f", f"http://{s}:{port}/v1", rules) is None for s in spellings}
    assert len(verdicts) == 1  # one verdict, whatever the spelling
    admitted = verdicts.pop()
    refused_anyway = address.is_link_local or address.is_unspecified or number >> 24 == 0
    assert admitted == (not refused_anyway and str(address) != "100.100.100.200")
    neighbour = ipaddress.IPv4Address(number ^ 1)
    assert url_problem("f", f"http://{neighbour}:{port}/v1", rules) is not None


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=80))
def test_any_text_is_a_problem_or_admitted_never_an_exception(text: str) -> None:
    rules = parse_rules("https://llm.example.com/v1 *.example.org")
    problem = url_problem("spec.model.endpoint.url", text, rules)
    assert problem is None or problem.field == "spec.model.endpoint.url"
    if problem is None:
        assert text.lower().startswith(("http://", "https://"))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_any_list_is_read_or_refused_with_its_setting_named(text: str) -> None:
    try:
        parse_rules(text)
    except ValueError as exc:
        assert str(exc).startswith("LMMS_ALLOWED_MODEL_URLS: ")


# --- readiness from API objects -----------------------------------------------------------


def _ref(spec: dict[str, Any]) -> Any:
    return EvalRunSpec.model_validate(spec).model.endpoint


def test_a_service_is_ready_once_an_endpoint_slice_has_a_ready_endpoint() -> None:
    ref = _ref(_spec())
    missing = modelendpoint.readiness(ref, "team-a", Observed())
    assert not missing.ready and "not found" in missing.waiting
    service = {"metadata": {"name": "qwen"}}
    unready = [{"endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": False}}]}]
    assert not modelendpoint.readiness(ref, "team-a", Observed(service, unready)).ready
    assert not modelendpoint.readiness(ref, "team-a", Observed(service, [{}])).ready
    ready = [{"endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": True}}]}]
    got = modelendpoint.readiness(ref, "team-a", Observed(service, unready + ready))
    assert got == Readiness(True, "http://qwen.team-a.svc:8000/v1", "", 600)
    assert missing.where == ".service.name"


def test_an_inference_service_is_ready_on_its_ready_condition_with_an_address() -> None:
    spec = _spec(endpoint={"inferenceService": {"name": "llm"}, "waitSeconds": 30})
    ref = _ref(spec)
    absent = modelendpoint.readiness(ref, "team-a", Observed(unreadable="API not installed"))
    assert not absent.ready and "API not installed" in absent.waiting
    loading = {"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "Load"}]}}
    got = modelendpoint.readiness(ref, "team-a", Observed(inference_service=loading))
    assert not got.ready and "(Load)" in got.waiting and got.wait_seconds == 30
    ready = {
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "url": "https://llm.team-a.example.com",
            "address": {"url": "http://llm-predictor.team-a.svc.cluster.local"},
        }
    }
    got = modelendpoint.readiness(ref, "team-a", Observed(inference_service=ready))
    assert got.ready and got.url == "http://llm-predictor.team-a.svc.cluster.local/openai/v1"


# --- admission: the wait, the failure, the Job ------------------------------------------


def _decide(spec: dict[str, Any], ready: dict[str, Readiness], waited: float = 0.0) -> Any:
    run = _run(spec)
    snap = admission.Snapshot(
        run=run,
        spec=validate(spec),
        now=NOW,
        new_token="t",
        waited=waited,
        endpoints=ready,
        references=admission.References(secrets={"llm": {"token": b"k"}}),
    )
    return admission.decide(snap, RULES)


def test_an_unready_endpoint_waits_with_no_job_and_fails_past_its_wait() -> None:
    spec = _spec()
    spec["model"]["endpoint"]["waitSeconds"] = 60
    missing = Readiness(False, None, "Service 'qwen' not found", 60, ".service.name")
    unready = {"spec.model.endpoint": missing}
    plan = _decide(spec, unready, waited=10)
    assert plan.evaluation is None and not plan.create
    assert plan.status["phase"] == R.PENDING and plan.status["reason"] == R.WAITING_FOR_MODEL
    assert plan.status["message"] == (
        "spec.model.endpoint.service.name: Service 'qwen' not found; waiting up to 60s, "
        "with no Job meanwhile"
    )
    assert plan.retry_after == modelendpoint.RETRY
    late = _decide(spec, unready, waited=61)
    assert late.evaluation is None
    assert late.status["phase"] == R.FAILED and late.status["reason"] == R.MODEL_NOT_READY
    assert late.status["message"] == (
        "spec.model.endpoint.service.name: Service 'qwen' not found after 61s (waitSeconds: 60)"
    )


def test_a_ready_endpoint_gets_a_job_with_its_url_and_no_gpu() -> None:
    url = "http://qwen.team-a.svc:8000/v1"
    plan = _decide(_spec(), {"spec.model.endpoint": Readiness(True, url)})
    assert plan.evaluation is not None
    (runner,) = plan.evaluation.job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in runner["env"]}
    assert env["LMMS_MODEL_URL"] == url and env["LMMS_MODEL_WAIT_SECONDS"] == "600"
    assert "nvidia.com/gpu" not in runner["resources"]["requests"]
    assert "nvidia.com/gpu" not in runner["resources"]["limits"]
    # One lmms-eval process, whatever resources.gpus (2) says: no accelerate launch.
    from lmms_runner import command, config

    doc = json.loads(plan.evaluation.before_job[-1]["data"]["config.json"])
    dist = command.Distributed.from_env(config.from_document(doc), env)
    assert command.launcher(dist, "python") == ["python", "-m", "lmms_runner.lmms_eval_main"]


def test_the_judge_reaches_lmms_eval_through_its_variables_and_its_key_by_reference() -> None:
    spec = {
        "model": {"type": "qwen2_vl"},
        "tasks": ["mme"],
        "judge": {
            "service": {"name": "judge", "port": 80},
            "model": "Qwen/Qwen2.5-72B",
            "apiKey": KEY,
        },
    }
    url = "http://judge.team-a.svc:80/v1"
    plan = _decide(spec, {"spec.judge": Readiness(True, url)})
    assert plan.evaluation is not None
    (runner,) = plan.evaluation.job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in runner["env"]}
    assert env["API_TYPE"]["value"] == "openai" and env["OPENAI_API_URL"]["value"] == url
    # Tasks that use the OpenAI SDK's default address reach the judge, not api.openai.com.
    assert env["OPENAI_BASE_URL"]["value"] == env["OPENAI_API_BASE"]["value"] == url
    for name in modelendpoint.JUDGE_MODEL_ENV:
        assert env[name]["value"] == "Qwen/Qwen2.5-72B"
    assert env["OPENAI_API_KEY"] == {
        "name": "OPENAI_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": "llm", "key": "token"}},
    }
    assert runner["resources"]["requests"]["nvidia.com/gpu"] == "1"  # the model is local
    refs = admission.secret_refs(validate(spec))
    assert ("spec.judge.apiKey.secretKeyRef", "llm", ("token",)) in refs


def test_a_judge_secret_without_the_label_is_waited_for_then_fails_naming_the_field() -> None:
    spec = {
        "model": {"type": "qwen2_vl"},
        "tasks": ["mme"],
        "judge": {"url": "https://x.example.com/v1", "model": "j", "apiKey": KEY},
    }
    policy = Policy(model_urls=parse_rules("https://x.example.com"))
    parsed = validate(spec, policy)
    missing, _ = admission.check_references(parsed, admission.References(secrets={"llm": None}))
    assert missing == [
        "spec.judge.apiKey.secretKeyRef: Secret 'llm' " + admission.SECRET_NOT_USABLE
    ]


# --- what a spec may ask ------------------------------------------------------------------


def test_bad_endpoint_specs_are_refused_naming_the_field() -> None:
    url_spec = _spec(endpoint={"url": "https://llm.example.com/v1"})
    assert "spec.model.endpoint.url" in _problems(url_spec)
    allowed = Policy(model_urls=parse_rules("https://llm.example.com/v1"))
    assert _problems(url_spec, allowed) == {}
    assert "spec.model.type" in _problems(
        {**_spec(), "model": {**_spec()["model"], "type": "qwen2_vl"}}
    )
    with_base = _spec(args={"base_url": "http://other:80/v1"})
    assert "spec.model.args.base_url" in _problems(with_base)
    nodes = {**_spec(), "resources": {"gpus": 1, "nodes": 2}}
    assert "spec.resources.nodes" in _problems(nodes)
    engine = _spec(engine="vllm", pretrained="Qwen/Qwen2-VL-7B-Instruct")
    assert "spec.model.engine" in _problems(engine)


def test_one_openai_key_may_not_reach_the_other_server() -> None:
    judge = {"service": {"name": "j", "port": 80}, "model": "j"}
    other = {"secretKeyRef": {"name": "other", "key": "token"}}
    both = {**_spec(apiKey=KEY), "judge": {**judge, "apiKey": other}}
    assert "spec.judge.apiKey" in _problems(both)
    model_only = {**_spec(apiKey=KEY), "judge": judge}
    assert "spec.judge.apiKey" in _problems(model_only)
    judge_only = {**_spec(), "judge": {**judge, "apiKey": KEY}}
    assert "spec.model.apiKey" in _problems(judge_only)
    assert _problems({**_spec(apiKey=KEY), "judge": {**judge, "apiKey": KEY}}) == {}
    local = {"model": {"type": "qwen2_vl"}, "tasks": ["mme"], "judge": {**judge, "apiKey": KEY}}
    assert _problems(local) == {}


@pytest.mark.parametrize("name", sorted(modelendpoint.JUDGE_ENV))
def test_the_judge_variables_are_refused_in_spec_env_even_when_an_admin_allows_them(
    name: str,
) -> None:
    raw = {"model": {"type": "qwen2_vl"}, "tasks": ["mme"], "env": [{"name": name, "value": "x"}]}
    assert "spec.env[0].name" in _problems(raw, Policy(env=("*",)))


# --- identity -----------------------------------------------------------------------------


def test_the_served_id_and_the_endpoint_name_the_model_and_the_judge_is_a_setting() -> None:
    spec = _spec()
    assert identity.model_identity(spec) == "openai@svc/qwen:8000/v1"
    assert (
        identity.model_identity(spec, served="Qwen/Qwen2-VL-7B")
        == "Qwen/Qwen2-VL-7B@svc/qwen:8000/v1"
    )
    named = _spec(args={"model_version": "qwen-7b"})
    assert identity.model_identity(named, served="other") == "qwen-7b@svc/qwen:8000/v1"
    url = _spec(endpoint={"url": "https://u:p@llm.example.com/v1"})
    assert identity.model_identity(url, served="m") == "m@https://llm.example.com/v1"
    judged = {**spec, "judge": {"inferenceService": {"name": "j"}, "model": "J"}}
    assert identity.settings_label(judged, "0.7.3") == "judge=J@isvc/j/openai/v1 lmms-eval=0.7.3"


def _entry(spec: dict[str, Any], served: str) -> tuple[str, ...]:
    run = _run(spec)
    run["status"] = {"specHash": "h"}
    (row,) = leaderboard.entries_for_run(
        run, [{"task": "mme", "metric": "acc", "value": 1.0}], "t", "0.7.3", None, served
    )
    return leaderboard.key(row)


def test_another_endpoint_served_id_or_judge_is_another_leaderboard_entry() -> None:
    base = _entry(_spec(), "m")
    assert _entry(_spec(), "m") == base
    assert _entry(_spec(), "n") != base
    assert _entry(_spec(endpoint={"service": {"name": "qwen", "port": 8001}}), "m") != base
    judge = {"service": {"name": "j", "port": 80}, "model": "J"}
    judged = _entry({**_spec(), "judge": judge}, "m")
    assert judged != base
    assert _entry({**_spec(), "judge": {**judge, "model": "K"}}, "m") != judged


def test_the_reuse_key_holds_the_endpoint_and_the_judge_and_needs_a_named_served_id() -> None:
    pinned = _spec(args={"model_version": "qwen-7b"}, version="2026-12")
    parsed = validate(pinned)
    assert reuse.not_pinned(parsed) is None
    assert "served model's id" in (reuse.not_pinned(validate(_spec(version="2026-12"))) or "")
    key = reuse.reuse_key(parsed, "0.7.3", None)
    assert key["endpoint"] == "svc/qwen:8000/v1" and "judge" not in key
    judge = {"service": {"name": "j", "port": 80}, "model": "J"}
    judged = reuse.reuse_key(validate({**pinned, "judge": judge}), "0.7.3", None)
    assert judged["judge"] == "J@svc/j:80/v1" and reuse.key_label(judged) != reuse.key_label(key)
    plain = reuse.reuse_key(
        validate({"model": {"type": "qwen2_vl"}, "tasks": ["mme"]}), "0.7.3", None
    )
    assert "endpoint" not in plain and "judge" not in plain  # earlier entries' keys stand


def test_the_runner_records_the_judge_in_the_provenance() -> None:
    from lmms_runner import config, provenance
    from lmms_runner.redact import Redactor

    judge = {"url": "https://j.example.com/v1", "model": "J"}
    spec = {"model": {"type": "qwen2_vl"}, "tasks": ["mme"], "judge": judge}
    doc = {"apiVersion": "eval.lmms.dev/v1alpha1", "kind": "EvalRun", "spec": spec}
    doc["metadata"] = {"name": "r", "namespace": "team-a", "uid": "u"}
    cfg = config.from_document(doc)
    found = provenance.provenance(cfg, {}, ["lmms-eval"], Redactor())
    assert found.judge == "J@https://j.example.com/v1"


class _Reads:
    """The reads ``reads.endpoint_readiness`` makes, answering as the API server would."""

    def __init__(self, forbidden: bool = False) -> None:
        self.forbidden = forbidden
        self.calls: list[tuple[str, ...]] = []

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", "services", namespace, name))
        if self.forbidden:
            raise errors.api_error(403, "forbidden", "Forbidden")
        return {"metadata": {"name": name}}

    def list_objects(
        self, kind: str, namespace: str, selector: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        self.calls.append(("list", kind, namespace, selector))
        assert limit == modelendpoint.MAX_SLICES  # a bounded read, however many there are
        return [{"endpoints": [{"addresses": ["10.0.0.9"]}]}]

    def get_inference_service(
        self, namespace: str, name: str
    ) -> tuple[dict[str, Any] | None, str | None]:
        self.calls.append(("get", "inferenceservices", namespace, name))
        return None, "the InferenceService API (serving.kserve.io/v1beta1) is not installed"


def test_readiness_is_read_by_name_and_label_in_the_run_namespace_only() -> None:
    from lmms_operator import reads

    spec = validate({**_spec(), "judge": {"inferenceService": {"name": "j"}, "model": "J"}})
    api = _Reads()
    found = reads.endpoint_readiness(api, spec, "team-a")  # type: ignore[arg-type]
    assert api.calls == [
        ("get", "services", "team-a", "qwen"),
        ("list", "EndpointSlice", "team-a", "kubernetes.io/service-name=qwen"),
        ("get", "inferenceservices", "team-a", "j"),
    ]
    assert found["spec.model.endpoint"].url == "http://qwen.team-a.svc:8000/v1"
    assert "not installed" in found["spec.judge"].waiting
    denied = reads.endpoint_readiness(_Reads(forbidden=True), spec, "team-a")  # type: ignore[arg-type]
    assert not denied["spec.model.endpoint"].ready
    assert "may not read Services" in denied["spec.model.endpoint"].waiting
