"""Attacks from the second review of issue 32 (a model served by reference, a judge):
a hostile tenant's specs and API objects, and what a platform engineer relies on.

Each test either guards a defence that held, or shows a defect (``DEFECT`` in its
comment, with whether it is fixed in this branch)."""

from __future__ import annotations

import datetime as dt
import http.server
import ipaddress
import json
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmms_operator import errors, reads
from lmms_operator.api import EndpointRef
from lmms_operator.reconcile import identity, modelendpoint, modelwait
from lmms_operator.reconcile.envvars import RESERVED_ENV
from lmms_operator.reconcile.modelendpoint import Observed, Readiness
from lmms_operator.reconcile.modelurls import parse_rules, url_problem
from lmms_operator.reconcile.validate import Policy, validate
from lmms_runner.config import ConfigError
from lmms_runner.served import ModelServer, ServedError, checked_id
from tests.crdschema import conforms, evalrun_spec_schema

ROOT = Path(__file__).resolve().parents[2]
NS = "team-a"

# --- the admin's allow-list: prefixes and hosts match on boundaries ----------------------

_LABEL = st.from_regex(r"[a-z][a-z0-9]{0,10}", fullmatch=True)
_HOST = st.lists(_LABEL, min_size=2, max_size=4).map(".".join)


@settings(max_examples=300, deadline=None)
@given(host=_HOST, extra=_LABEL, sep=st.sampled_from([".", "-", ""]))
def test_a_listed_host_admits_no_name_that_merely_starts_or_ends_with_it(
    host: str, extra: str, sep: str
) -> None:
    rules = parse_rules(f"https://{host}/v1, {host}:8443, *.{host}")
    # good.example.com.evil.net, good.example.comevil, evilgood.example.com (no dot)
    for other in (f"{host}{sep}{extra}", f"{extra}{host}"):
        if other == host or other.endswith("." + host):
            continue  # below the wildcard: admitted by design
        assert url_problem("spec.model.endpoint.url", f"https://{other}/v1", rules) is not None
    # the wildcard admits names below the domain, never the domain itself on another port
    assert url_problem("f", f"https://{extra}.{host}:8443/v1", rules) is None
    assert url_problem("f", f"https://{host}/v1x", rules) is not None


@settings(max_examples=200, deadline=None)
@given(host=_HOST, evil=_HOST, sep=st.sampled_from(["@", "\\@", ":x@", "%40", "\\", "#@", "?@"]))
def test_user_information_and_its_disguises_never_pass(host: str, evil: str, sep: str) -> None:
    """``https://good@evil`` (a client reaches evil), and the spellings some parsers read
    otherwise (backslash, percent-encoded @, @ after a fragment or query)."""
    rules = parse_rules(f"{host} {evil}")
    problem = url_problem("spec.judge.url", f"https://{host}{sep}{evil}/v1", rules)
    assert problem is not None and problem.field == "spec.judge.url"
    # ... and the CRD's own pattern refuses them before the operator sees them
    schema = evalrun_spec_schema()["properties"]["judge"]
    assert conforms(schema, {"url": f"https://{host}{sep}{evil}/v1", "model": "j"})


def _spellings(address: int) -> list[str]:
    """Ways the C resolver (and so the runner's client) reads one IPv4 address."""
    a, b, c, d = address.to_bytes(4, "big")
    return [
        str(address),
        hex(address),
        f"0{address:o}",
        f"{a}.{(b << 16) | (c << 8) | d}",
        f"{a}.{b}.{(c << 8) | d}",
        f"0x{a:x}.0x{b:x}.0x{c:x}.0x{d:x}",
        f"0{a:o}.0{b:o}.0{c:o}.0{d:o}",
        f"{a}.{b}.{c}.{d}.",
    ]


@settings(max_examples=200, deadline=None)
@given(low=st.integers(0, 0xFFFF))
def test_link_local_is_refused_in_every_spelling_even_when_the_admin_lists_it(low: int) -> None:
    address = int(ipaddress.IPv4Address("169.254.0.0")) + low
    v4 = ipaddress.IPv4Address(address)
    rules = parse_rules(f"{v4} 169.254.169.254 *.nip.io")
    forms = [
        *_spellings(address),
        f"[::ffff:{v4}]",
        f"[64:ff9b::{v4}]",  # NAT64
        f"[2002:{address >> 16:x}:{address & 0xFFFF:x}::]",  # 6to4
        f"[::{v4}]",  # IPv4-compatible
    ]
    for host in forms:
        problem = url_problem("spec.model.endpoint.url", f"http://{host}/v1", rules)
        assert problem is not None, host
        assert "link-local or metadata" in problem.message, (host, problem.message)


@pytest.mark.parametrize(
    "url",
    [
        "http://metadata.google.internal/computeMetadata/v1",
        "http://METADATA.google.internal./v1",
        "http://metadata/v1",
        "http://instance-data.ec2.internal/v1",
        "http://[fd00:ec2::254]/v1",
        "http://[fd20:ce::254]/v1",  # Google Cloud over IPv6 (fixed in this branch)
        "http://[fd00:ec2::23]/v1",  # AWS's EKS Pod Identity agent over IPv6 (fixed)
        "http://[fd00:42::42]/v1",  # Scaleway over IPv6 (fixed)
        "http://100.100.100.200/v1",
        "http://[fe80::a9fe:a9fe]/v1",
        "http://[fe80::1%25eth0]/v1",  # a zone id
        "http://0/v1",
        "http://[::]/v1",
    ],
)
def test_metadata_services_are_refused_whatever_the_list_says(url: str) -> None:
    rules = parse_rules(
        "*.internal metadata 0.0.0.0 [fd00:ec2::254] 100.100.100.200 [fe80::a9fe:a9fe] [::] "
        "[fd20:ce::254] [fd00:ec2::23] [fd00:42::42]"
    )
    assert url_problem("spec.model.endpoint.url", url, rules) is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://good.example.com:0/v1",
        "https://good.example.com:65536/v1",
        "https://good.example.com:+443/v1",
        "https://good.example.com:\uff14\uff14\uff13/v1",  # full-width digits
        "https://gööd.example.com/v1",  # IDN, not in its xn-- form
        "https://good.example.com/v1/../admin",
        "https://good.example.com/v1/%2e%2e/admin",
        "https://good.example.com/v1?x=1",
        "ftp://good.example.com/v1",
        "https://good.example.com\t/v1",
    ],
)
def test_odd_spellings_of_an_admitted_url_are_refused_naming_the_field(url: str) -> None:
    rules = parse_rules("https://good.example.com/v1")
    problem = url_problem("spec.model.endpoint.url", url, rules)
    assert problem is not None and problem.field == "spec.model.endpoint.url"


def test_an_admitted_url_in_another_case_or_with_its_default_port_stays_admitted() -> None:
    rules = parse_rules("https://good.example.com/v1")
    for url in ("https://GOOD.example.com./v1", "https://good.example.com:443/v1/"):
        assert url_problem("f", url, rules) is None


# --- the operator never connects; readiness comes from API objects only --------------------


def test_the_operator_sends_nothing_to_a_served_model() -> None:
    """No module of the operator opens a connection but the object-store client (netguard)
    and the runner-report client: the endpoint modules import no network library."""
    for name in ("modelendpoint.py", "modelurls.py", "modelwait.py", "endpoints.py"):
        text = (ROOT / "operator/lmms_operator/reconcile" / name).read_text()
        assert not re.search(r"^\s*(import|from)\s+(socket|http|urllib|requests|httpx)", text, re.M)


def _isvc(address: str) -> dict[str, Any]:
    return {
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "address": {"url": address},
        }
    }


@pytest.mark.parametrize(
    "address",
    [
        "http://169.254.169.254",  # the cloud metadata service
        "http://metadata.google.internal",
        "http://[fe80::1]",
        "http://user:password@judge.team-a.svc.cluster.local",  # credentials in the pod spec
        "http://judge.team-a.svc.cluster.local/?redirect=",  # the path would go in a query
    ],
)
def test_an_inference_service_address_the_tenant_wrote_is_checked_like_a_runner_url(
    address: str,
) -> None:
    # DEFECT (fixed in this branch): an InferenceService's status is the tenant's to write
    # (a tenant may own KServe objects, or run no KServe controller at all); its address
    # went to LMMS_MODEL_URL / OPENAI_API_URL unchecked: metadata and link-local addresses,
    # credentials, a query. Now it waits (then ModelNotReady) with a message saying why.
    ref = EndpointRef.model_validate({"inferenceService": {"name": "judge"}})
    ready = modelendpoint.readiness(ref, NS, Observed(inference_service=_isvc(address)))
    assert not ready.ready and ready.url is None
    assert ready.where == ".inferenceService.name"
    assert "InferenceService 'judge'" in ready.waiting


def test_an_inference_service_at_a_cluster_address_stays_ready() -> None:
    ref = EndpointRef.model_validate({"inferenceService": {"name": "judge"}})
    address = "http://judge-predictor.team-a.svc.cluster.local"
    ready = modelendpoint.readiness(ref, NS, Observed(inference_service=_isvc(address)))
    assert ready.ready and ready.url == address + "/openai/v1"


def test_an_external_name_service_is_not_a_service_in_the_run_namespace() -> None:
    # DEFECT (fixed in this branch): an ExternalName Service and an EndpointSlice written
    # by hand with its service-name label looked ready, and the runner's
    # <name>.<namespace>.svc then resolved (CNAME) to wherever externalName says: another
    # namespace's Service, the API server, a host the URL allow-list refuses.
    ref = EndpointRef.model_validate({"service": {"name": "qwen", "port": 80}})
    service = {"spec": {"type": "ExternalName", "externalName": "evil.example.net"}}
    forged = {"endpoints": [{"addresses": ["10.9.9.9"], "conditions": {"ready": True}}]}
    ready = modelendpoint.readiness(ref, NS, Observed(service=service, slices=(forged,)))
    assert not ready.ready and ready.url is None
    assert ready.where == ".service.name" and "ExternalName" in ready.waiting


def test_a_hand_written_endpoint_slice_cannot_send_the_runner_out_of_the_service_name() -> None:
    """A tenant's own EndpointSlice may make its own Service look ready (kube-proxy routes
    to it too), but the runner's URL is always the Service's name in the run's namespace."""
    ref = EndpointRef.model_validate({"service": {"name": "qwen", "port": 80, "path": "/v1"}})
    forged = {"endpoints": [{"addresses": ["169.254.169.254"]}]}
    ready = modelendpoint.readiness(ref, NS, Observed(service={"spec": {}}, slices=(forged,)))
    assert ready.url == "http://qwen.team-a.svc:80/v1"


# --- exactly one form, checked by the operator too ---------------------------------------


@pytest.mark.parametrize(
    "endpoint",
    [
        {"service": {"name": "a", "port": 80}, "url": "https://x.example.com/v1"},
        {"service": {"name": "a", "port": 80}, "inferenceService": {"name": "b"}},
        {},
    ],
)
@pytest.mark.parametrize("where", ["model", "judge"])
def test_an_endpoint_naming_two_forms_or_none_is_refused_by_the_operator_too(
    endpoint: dict[str, Any], where: str
) -> None:
    # DEFECT (fixed in this branch): only the CRD's CEL rule said "exactly one"; the
    # operator's own validation accepted two forms (identity named the Service while the
    # runner was sent to the URL: a Leaderboard entry naming what did not run) or none
    # (readiness then failed an assert on every pass). An operator that meets such a spec
    # (a CRD applied before the rule, a cluster without CEL) must refuse it.
    raw: dict[str, Any] = {"model": {"type": "openai"}, "tasks": ["mme"]}
    if where == "model":
        raw["model"]["endpoint"] = endpoint
        field = "spec.model.endpoint"
    else:
        raw["model"] = {"type": "qwen2_vl"}
        raw["judge"] = {**endpoint, "model": "j"}
        field = "spec.judge"
    policy = Policy(model_urls=parse_rules("https://x.example.com"))
    with pytest.raises(errors.InvalidSpec) as caught:
        validate(raw, policy)
    assert field in {p.field for p in caught.value.problems}


def test_the_crd_bounds_the_endpoint_fields() -> None:
    spec = evalrun_spec_schema()["properties"]
    for node in (spec["model"]["properties"]["endpoint"], spec["judge"]):
        rules = [r["rule"] for r in node.get("x-kubernetes-validations") or []]
        assert any("size() == 1" in r for r in rules)
        props = node["properties"]
        assert props["waitSeconds"]["minimum"] == 0 and props["waitSeconds"]["maximum"] == 86400
        assert props["url"]["maxLength"] <= 2048
        assert props["service"]["properties"]["port"]["maximum"] == 65535
        assert props["service"]["properties"]["name"]["maxLength"] == 63
        for bad in ("HTTPS://x.example.com/v1", "https://x.example.com/v1 ", "file:///etc"):
            assert conforms(node, {"url": bad, "model": "j"}), bad
    assert spec["judge"]["properties"]["model"]["maxLength"] <= 256


# --- identity: what a Leaderboard entry and the reuse key name ---------------------------


def test_a_url_never_has_the_identity_of_an_inference_service_or_a_service() -> None:
    # DEFECT (fixed in this branch, low): a URL's identity was its host and path without
    # the scheme, so url http://isvc/m/openai/v1 (a host "isvc" the admin admits) was
    # named "isvc/m/openai/v1", as InferenceService m is; http:// and https:// on one host
    # were one entry too. A URL's identity now keeps its scheme, which no other form
    # can spell.
    url = modelendpoint.identity({"url": "http://isvc/m/openai/v1"})
    assert url != modelendpoint.identity({"inferenceService": {"name": "m"}})
    assert modelendpoint.identity({"url": "http://h.example.com/v1"}) != modelendpoint.identity(
        {"url": "https://h.example.com/v1"}
    )


def test_an_identity_has_one_at_sign_boundary_that_no_endpoint_can_move() -> None:
    """``<id>@<endpoint>``: no endpoint identity holds an ``@``, so a served id such as
    ``gpt-4o@svc/real:80/v1`` never names another endpoint's entry."""
    spec = {"model": {"type": "openai", "endpoint": {"service": {"name": "fake", "port": 80}}}}
    forged = identity.model_identity(spec, served="gpt-4o@svc/real:80/v1")
    real = {"model": {"type": "openai", "endpoint": {"service": {"name": "real", "port": 80}}}}
    assert forged != identity.model_identity(real, served="gpt-4o")
    assert forged.rpartition("@")[2] == "svc/fake:80/v1"


@pytest.mark.parametrize("served", ["x | y", "a\nb", "m\n", "x" * 600, "m\u202e", "a,b=c"])
def test_a_served_id_the_runner_would_refuse_never_names_a_leaderboard_entry(served: str) -> None:
    # DEFECT (fixed in this branch): the operator took provenance.servedModel as given
    # (a results summary read back from the tenant's bucket, or a runner of the tenant's
    # image): a "|" or a newline broke the Leaderboard's Markdown table, a bidi control
    # disguised the name. The operator now applies the runner's own rule (served.MODEL_ID).
    with pytest.raises(ServedError):
        checked_id(served)
    spec = {"model": {"type": "openai", "endpoint": {"service": {"name": "a", "port": 80}}}}
    named = identity.model_identity(spec, served=served)
    assert served not in named and named == "openai@svc/a:80/v1"


# --- keys: never in the clear, never to the other server ---------------------------------


def test_the_judge_key_reaches_the_pod_by_reference_only_and_never_in_an_identity() -> None:
    spec = validate(
        {
            "model": {"type": "qwen2_vl"},
            "tasks": ["mme"],
            "judge": {
                "url": "https://judge.example.com/v1",
                "model": "j",
                "apiKey": {"secretKeyRef": {"name": "judge-key", "key": "token"}},
            },
        },
        Policy(model_urls=parse_rules("judge.example.com")),
    )
    env = modelendpoint.env(spec, {modelendpoint.JUDGE_FIELD: "https://judge.example.com/v1"})
    key = next(e for e in env if e["name"] == "OPENAI_API_KEY")
    assert "value" not in key and key["valueFrom"]["secretKeyRef"]["name"] == "judge-key"
    wire = spec.to_wire()
    assert "judge-key" not in (modelendpoint.judge_identity(wire) or "")
    assert "judge-key" not in identity.settings_label(wire, "0.7.3")


def test_the_operator_sets_every_judge_variable_and_the_tenant_none() -> None:
    for name in modelendpoint.JUDGE_ENV:
        assert name in RESERVED_ENV


def test_the_judge_key_is_sent_nowhere_but_the_judge(tmp_path: Path) -> None:
    # DEFECT (open, medium): lmms-eval 0.7.3 tasks that read OPENAI_API_KEY but not
    # OPENAI_API_URL build openai.OpenAI() with the SDK's default base URL (OPENAI_BASE_URL,
    # else https://api.openai.com/v1) or post to a fixed api.openai.com URL: aime, gpqa,
    # openai_math, step2_audio_paralinguistic, videomme (convert_mcq_oe), live_bench,
    # megabench, WISE, seephys, unig2u, charxiv. With spec.judge.apiKey (or spec.model.apiKey
    # of an in-cluster server) such a task sends that key to a third party.
    # The same holds without a judge: spec.model.apiKey (an in-cluster server's key) is
    # OPENAI_API_KEY, and a judged task (mmbench, videochatgpt, ...) run without
    # spec.judge posts it to its default https://api.openai.com/v1/chat/completions.
    # docs/judge.md lists them as readers of OPENAI_API_KEY without saying so. Proposed
    # fix: set OPENAI_BASE_URL (and OPENAI_API_BASE) to the judge's base URL as well
    # (reserved, like the other judge variables), or document the tasks whose key goes to
    # api.openai.com and refuse a judge key for them.
    text = (ROOT / "docs/judge.md").read_text()
    assert "OPENAI_BASE_URL" in text
    assert "api.openai.com" in text.split("OPENAI_BASE_URL", 1)[1]


# --- the runner: the URL it is given, and no redirect with the key -----------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@judge.team-a.svc/v1",
        "http://judge.team-a.svc/v1?key=x",
        "http://judge.team-a.svc/v1#x",
        "file:///etc/passwd",
        "gopher://judge/",
    ],
)
def test_the_runner_refuses_a_model_url_with_credentials_or_another_scheme(url: str) -> None:
    with pytest.raises(ConfigError, match="LMMS_MODEL_URL"):
        ModelServer.from_env({"LMMS_MODEL_URL": url})


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str | None]] = []
    target: ClassVar[str] = ""

    def do_GET(self) -> None:
        type(self).seen.append(self.headers.get("Authorization"))
        if self.target:
            self.send_response(302)
            self.send_header("Location", self.target)
            self.end_headers()
            return
        body = json.dumps({"data": [{"id": "m"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def two_servers() -> Iterator[tuple[str, type[_Recorder], type[_Recorder]]]:
    elsewhere = type("Elsewhere", (_Recorder,), {"seen": [], "target": ""})
    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), elsewhere)
    redirecting = type(
        "Redirecting",
        (_Recorder,),
        {"seen": [], "target": f"http://127.0.0.1:{other.server_address[1]}/v1/models"},
    )
    first = http.server.ThreadingHTTPServer(("127.0.0.1", 0), redirecting)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (first, other)]
    for t in threads:
        t.start()
    try:
        yield f"http://127.0.0.1:{first.server_address[1]}/v1", redirecting, elsewhere
    finally:
        for s in (first, other):
            s.shutdown()
            s.server_close()


def test_a_redirect_never_carries_the_key_elsewhere(
    two_servers: tuple[str, type[_Recorder], type[_Recorder]],
) -> None:
    url, redirecting, elsewhere = two_servers
    server = ModelServer.from_env({"LMMS_MODEL_URL": url, "OPENAI_API_KEY": "sk-secret"})
    assert server is not None
    with pytest.raises(ServedError) as caught:
        server.model_ids(timeout=5)
    assert redirecting.seen == ["Bearer sk-secret"] and elsewhere.seen == []
    assert "sk-secret" not in str(caught.value)


# --- the wait: what one look costs the operator ------------------------------------------


class _ManySlices:
    """A namespace where the tenant wrote thousands of EndpointSlices with the Service's
    label (none ready): the API server would answer ``limit`` of them."""

    def __init__(self) -> None:
        self.limits: list[int | None] = []

    def get_service(self, namespace: str, name: str) -> dict[str, Any]:
        return {"spec": {"type": "ClusterIP"}}

    def list_objects(
        self, kind: str, namespace: str, selector: str, limit: int | None = None
    ) -> list[dict[str, Any]]:
        self.limits.append(limit)
        unready = {"endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": False}}]}
        return [unready] * min(limit or 10_000, 10_000)


def test_a_waiting_run_reads_a_bounded_number_of_endpoint_slices() -> None:
    # DEFECT (fixed in this branch, low): every look (each 5 s per waiting run) listed
    # every EndpointSlice carrying the Service's label, unpaged: a tenant who writes
    # thousands of them makes the shared operator read them all, again and again.

    spec = validate(
        {
            "model": {"type": "openai", "endpoint": {"service": {"name": "q", "port": 80}}},
            "tasks": ["mme"],
        }
    )
    api = _ManySlices()
    found = reads.endpoint_readiness(api, spec, NS)  # type: ignore[arg-type]
    assert api.limits == [modelendpoint.MAX_SLICES] and modelendpoint.MAX_SLICES <= 100
    assert not found["spec.model.endpoint"].ready


def test_a_long_wait_is_looked_at_less_often_than_a_short_one() -> None:
    # DEFECT (fixed in this branch, low-medium): a run waits up to waitSeconds (86400
    # allowed) and was looked at every 5 s throughout: one spec pass (a Job list, its references, the
    # Service get and the EndpointSlice list, or the InferenceService get and a discovery
    # read) on the shared pool of LMMS_WORKERS (16) that also admits every tenant's new
    # runs. A tenant with a thousand runs waiting for a Service that never comes keeps
    # that pool busy. Now a run is looked at every tenth of its wait so far, between
    # 5 s and 60 s. Still open: waking waiting runs from a watch of Services,
    # EndpointSlices and InferenceServices instead of polling, and a per-namespace bound
    # on runs in WaitingForModel.

    run = {"metadata": {"name": "r", "namespace": NS, "uid": "u", "generation": 1}}
    unready = {"spec.model.endpoint": Readiness(False, None, "Service 'q' not found", 86_400)}

    now = dt.datetime(2026, 12, 8, tzinfo=dt.UTC)
    early = modelwait.plan(run, unready, 10, now)
    late = modelwait.plan(run, unready, 20_000, now)
    assert early is not None and late is not None
    assert late.retry_after is not None and early.retry_after is not None
    assert early.retry_after == modelendpoint.RETRY
    assert late.retry_after == modelendpoint.MAX_RETRY


def test_a_service_in_another_namespace_cannot_be_named() -> None:
    for name in ("db.team-b", "db.team-b.svc", "DB", "a/b"):
        raw = {"model": {"type": "openai", "endpoint": {"service": {"name": name, "port": 80}}}}
        with pytest.raises(errors.InvalidSpec) as caught:
            validate({**raw, "tasks": ["mme"]})
        assert any(p.field.startswith("spec.model.endpoint") for p in caught.value.problems)


def test_the_url_allow_list_is_not_bypassed_by_a_base_url_in_the_args() -> None:
    # DEFECT (open, medium; a design gap): the admin's allow-list governs only
    # spec.model.endpoint.url and spec.judge.url. A run of type openai without an
    # endpoint names any URL that is not link-local in spec.model.args.base_url (an
    # allowed arg by default), so "the admin decides which URLs runs reach"
    # (docs/security.md, chart settings.allowedModelUrls) is not what happens: the list
    # is no egress control, and the runner's NetworkPolicy allows all but metadata.
    # Proposed fix: where the admin sets the list, check URLs in model args against it
    # too (runner_url_problems gets the rules), and say in docs/security.md that with no
    # list, args URLs are only kept off link-local and metadata addresses.
    policy = Policy(model_urls=parse_rules("https://llm.example.com/v1"))
    raw = {
        "model": {
            "type": "openai",
            "args": {"base_url": "https://elsewhere.example.net/v1", "model_version": "m"},
        },
        "tasks": ["mme"],
    }
    with pytest.raises(errors.InvalidSpec) as caught:
        validate(raw, policy, NS)
    assert "spec.model.args.base_url" in {p.field for p in caught.value.problems}


_NAME = st.from_regex(r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
_PATH = st.lists(
    st.from_regex(r"[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,5}", fullmatch=True), max_size=3
).map(lambda parts: "".join("/" + p for p in parts))
_REF = st.one_of(
    st.builds(
        lambda n, p, path: {"service": {"name": n, "port": p, "path": path}},
        _NAME,
        st.integers(1, 65535),
        _PATH,
    ),
    st.builds(lambda n, path: {"inferenceService": {"name": n, "path": path}}, _NAME, _PATH),
    st.builds(
        lambda s, h, path: {"url": f"{s}://{h}{path}"},
        st.sampled_from(["http", "https"]),
        st.one_of(_NAME, st.builds(lambda a, b: f"{a}.{b}", _NAME, _NAME)),
        _PATH,
    ),
)


@settings(max_examples=500, deadline=None)
@given(a=_REF, b=_REF)
def test_two_endpoints_never_share_an_identity(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Whatever a tenant names (in the forms the CRD admits), one Leaderboard entry, score
    series and reuse key never stands for two endpoints, and no ``@`` moves the boundary
    between the served id and its endpoint."""
    parsed_a = EndpointRef.model_validate(a).to_wire()
    parsed_b = EndpointRef.model_validate(b).to_wire()
    ida, idb = modelendpoint.identity(parsed_a), modelendpoint.identity(parsed_b)
    assert "@" not in ida
    if parsed_a != parsed_b:
        assert ida != idb, (parsed_a, parsed_b)


@pytest.mark.parametrize(
    ("mtype", "args"),
    [
        ("litellm", {"model": "anthropic/claude-3-5-sonnet"}),
        ("litellm_chat", {"model": "m"}),
        ("litellm_compatible", {"model": "m"}),
        ("whisper_tt", {}),
    ],
)
def test_the_judge_key_never_reaches_a_model_backend_that_reads_openai_api_key(
    mtype: str, args: dict[str, str]
) -> None:
    # DEFECT (fixed in this branch): lmms-eval 0.7.3's litellm backend (and its aliases)
    # takes ``api_key or os.getenv("OPENAI_API_KEY")`` and hands it to whatever provider
    # the model names; whisper_tt sends OPENAI_API_KEY as its bearer token. Neither was
    # in OPENAI_KEY_BACKENDS, so a judge's key (spec.judge.apiKey) with no model key was
    # sent to the model's provider. It is refused as for the openai backend.
    raw = {
        "model": {"type": mtype, "args": args},
        "tasks": ["mme"],
        "judge": {
            "service": {"name": "judge", "port": 80},
            "model": "J",
            "apiKey": {"secretKeyRef": {"name": "judge-key", "key": "token"}},
        },
    }
    with pytest.raises(errors.InvalidSpec) as caught:
        validate(raw)
    assert "spec.model.apiKey" in {p.field for p in caught.value.problems}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"model": {"type": "openai", "engine": "tgi", "pretrained": "x"}}, "spec.model.engine"),
        (
            {"model": {"type": "openai", "endpoint": {"url": "https://evil.example.net/v1"}}},
            "spec.model.endpoint.url",
        ),
        (
            {
                "model": {"type": "qwen2_vl"},
                "judge": {"url": "https://evil.example.net/v1", "model": "j"},
            },
            "spec.judge.url",
        ),
        (
            {"model": {"type": "openai", "endpoint": {"service": {"name": "q", "port": 0}}}},
            "spec.model.endpoint.service.port",
        ),
        (
            {
                "model": {
                    "type": "openai",
                    "endpoint": {"service": {"name": "q", "port": 80}, "waitSeconds": 86_401},
                }
            },
            "spec.model.endpoint.waitSeconds",
        ),
    ],
)
def test_bad_input_names_its_field(raw: dict[str, Any], field: str) -> None:
    policy = Policy(model_urls=parse_rules("https://llm.example.com/v1"))
    with pytest.raises(errors.InvalidSpec) as caught:
        validate({**raw, "tasks": ["mme"]}, policy)
    assert field in {p.field for p in caught.value.problems}
