"""A model or judge served by reference (``spec.model.endpoint``, ``spec.judge``): when it
is ready, where the runner reaches it, how Leaderboards name it, and what a spec may ask
of it. Pure: readiness is read from API objects (``reads.endpoint_readiness``), never by
contacting the server; the operator never connects to a model's server at all.

- **A Service** (in the run's namespace) is ready once one of its EndpointSlices
  (``kubernetes.io/service-name=<name>``) has an endpoint whose ``conditions.ready`` is
  not false. The runner reaches ``http://<name>.<namespace>.svc:<port><path>``.
- **A KServe InferenceService** (``serving.kserve.io/v1beta1``) is ready once its
  ``Ready`` condition is True and it has an address: ``status.address.url`` (the
  cluster-local one), else ``status.url``. The runner reaches it followed by the path
  (``/openai/v1`` by default, KServe's Hugging Face runtime's OpenAI route).
- **A URL** (only where the admin's allow-list admits it, ``modelurls``) is ready at once.

A missing Service or InferenceService waits like an unready one (it may be created
later); so does an InferenceService whose API is not installed, with a message that says
so. Past ``waitSeconds`` the run fails with reason ModelNotReady, naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..api import EndpointRef, EvalRunSpec
from ..api.endpointid import identity as identity
from ..api.endpointid import judge_identity as judge_identity
from ..concurrency import OPENAI_COMPATIBLE
from ..errors import Problem
from .endpoints import check_runner_url
from .modelurls import UrlRule, url_problem

MODEL_FIELD = "spec.model.endpoint"
JUDGE_FIELD = "spec.judge"
#: Seconds between two reads of an endpoint that is not ready yet, at first; a run that
#: has waited longer is looked at every tenth of its wait so far, at most every
#: ``MAX_RETRY`` s (a thousand runs waiting a day do not keep the operator's workers busy).
RETRY = 5.0
MAX_RETRY = 60.0
#: The most EndpointSlices of one Service read per look (anyone who may write them in the
#: namespace may add more, with the label, and a waiting run looks every few seconds).
MAX_SLICES = 50
#: The label that ties an EndpointSlice to its Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
ISVC_API = "serving.kserve.io/v1beta1"


@dataclass(frozen=True)
class Readiness:
    """One endpoint as its API objects show it: ready with the URL the runner reaches,
    or what it waits for."""

    ready: bool
    url: str | None = None
    waiting: str = ""
    wait_seconds: int = 600
    where: str = ""  # the field below the endpoint's that names what is waited for


@dataclass(frozen=True)
class Observed:
    """The API objects behind one reference (read by ``reads``)."""

    service: Mapping[str, Any] | None = None
    slices: Sequence[Mapping[str, Any]] = ()
    inference_service: Mapping[str, Any] | None = None
    #: Why the InferenceService could not be read (its API not installed, not allowed).
    unreadable: str | None = None


def references(spec: EvalRunSpec) -> list[tuple[str, EndpointRef]]:
    """The endpoints a spec names, with their fields."""
    found: list[tuple[str, EndpointRef]] = []
    if spec.model.endpoint is not None:
        found.append((MODEL_FIELD, spec.model.endpoint))
    if spec.judge is not None:
        found.append((JUDGE_FIELD, spec.judge))
    return found


def service_url(name: str, namespace: str, port: int, path: str) -> str:
    return f"http://{name}.{namespace}.svc:{port}{path}"


def readiness(ref: EndpointRef, namespace: str, seen: Observed) -> Readiness:
    """Whether the endpoint is ready, from what its API objects show."""
    wait = ref.wait_seconds
    if ref.url is not None:
        return Readiness(True, ref.url, wait_seconds=wait)
    if ref.service is not None:
        svc, where = ref.service, ".service.name"
        if seen.service is None:
            return Readiness(False, None, f"Service {svc.name!r} not found", wait, where)
        if (seen.service.get("spec") or {}).get("type") == "ExternalName":
            # Its name resolves (CNAME) to a host outside the namespace, wherever the
            # tenant says: not a Service in the run's namespace.
            why = (
                f"Service {svc.name!r} is an ExternalName Service: name one with endpoints "
                "in the run's namespace (or a url the admin admits)"
            )
            return Readiness(False, None, why, wait, where)
        if not any(_slice_ready(s) for s in seen.slices):
            why = f"Service {svc.name!r} has no ready endpoint"
            return Readiness(False, None, why, wait, where)
        return Readiness(True, service_url(svc.name, namespace, svc.port, svc.path), "", wait)
    assert ref.inference_service is not None
    name, where = ref.inference_service.name, ".inferenceService.name"
    if seen.unreadable is not None:
        why = f"InferenceService {name!r}: {seen.unreadable}"
        return Readiness(False, None, why, wait, where)
    isvc = seen.inference_service
    if isvc is None:
        return Readiness(False, None, f"InferenceService {name!r} not found", wait, where)
    status = isvc.get("status") or {}
    ready = next(
        (
            c
            for c in status.get("conditions") or []
            if isinstance(c, dict) and c.get("type") == "Ready"
        ),
        None,
    )
    if ready is None or ready.get("status") != "True":
        why = str((ready or {}).get("reason") or "no Ready condition yet")[:200]
        why = f"InferenceService {name!r} is not Ready ({why})"
        return Readiness(False, None, why, wait, where)
    base = str(((status.get("address") or {}).get("url")) or status.get("url") or "")
    if not base.startswith(("http://", "https://")):
        why = f"InferenceService {name!r} has no address yet"
        return Readiness(False, None, why, wait, where)
    refused = _address_problem(base)
    if refused is not None:  # its status is the tenant's to write
        why = f"InferenceService {name!r}: its address cannot be used: {refused}"[:400]
        return Readiness(False, None, why, wait, where)
    return Readiness(True, base.rstrip("/") + ref.inference_service.path, "", wait)


def _address_problem(base: str) -> str | None:
    """Why an InferenceService's address may not reach the runner (None: it may): the
    rule of every URL the runner is given (no link-local, metadata or unspecified host,
    no user information), and no query or fragment (the path is appended to it)."""
    problem = check_runner_url("", base)
    if problem is not None:
        return problem.message
    if any(c in base for c in "?#"):
        return "a query (?) or fragment (#)"
    return None


def _slice_ready(endpoint_slice: Mapping[str, Any]) -> bool:
    # EndpointSlice: conditions.ready unset means ready (discovery.k8s.io/v1).
    for ep in endpoint_slice.get("endpoints") or []:
        if not isinstance(ep, dict) or not ep.get("addresses"):
            continue
        if (ep.get("conditions") or {}).get("ready") is not False:
            return True
    return False


#: Backends that send OPENAI_API_KEY to the model's server when their args name no key.
OPENAI_KEY_BACKENDS = OPENAI_COMPATIBLE | frozenset(
    {
        "gpt4v",
        "batch_gpt4",
        "gpt4o_audio",
        # api_key or OPENAI_API_KEY, to whatever provider the model names (LiteLLM)
        "litellm",
        "litellm_chat",
        "litellm_compatible",
        "whisper_tt",  # OPENAI_API_KEY as its bearer token
    }
)


def problems(spec: EvalRunSpec, rules: tuple[UrlRule, ...]) -> list[Problem]:
    """What the schema cannot check about a run's endpoints and judge."""
    found: list[Problem] = []
    for field, ref in references(spec):
        named = (ref.service, ref.inference_service, ref.url)
        if sum(x is not None for x in named) != 1:  # the CRD's CEL rule, checked here too
            found.append(Problem(field, "name exactly one of service, inferenceService and url"))
            continue
        if ref.url is not None:
            problem = url_problem(f"{field}.url", ref.url, rules)
            found += [problem] if problem else []
    if rules:
        # Where the admin lists the URLs runs may reach, a URL in the model's args (an
        # openai run's base_url) is held to the same list as an endpoint's.
        for key, value in spec.model.args.items():
            if "://" in value:
                problem = url_problem(f"spec.model.args.{key}", value, rules)
                found += [problem] if problem else []
    endpoint = spec.model.endpoint
    if endpoint is not None:
        if spec.model.type != "openai":
            found.append(
                Problem(
                    "spec.model.type",
                    "a model served at spec.model.endpoint is evaluated with type openai "
                    "(lmms-eval's OpenAI-compatible backend)",
                )
            )
        for key in ("base_url", "api_base"):
            if key in spec.model.args:
                found.append(
                    Problem(
                        f"spec.model.args.{key}",
                        "spec.model.endpoint names the server: leave the URL out of the args",
                    )
                )
        if spec.model.engine is not None:
            found.append(
                Problem(
                    "spec.model.engine",
                    "a model served at spec.model.endpoint needs no engine: name one or the other",
                )
            )
        if spec.resources.nodes > 1:
            found.append(
                Problem(
                    "spec.resources.nodes",
                    "a model served at spec.model.endpoint runs in one pod per shard, "
                    "without GPUs: resources.nodes must be 1",
                )
            )
    found += _key_problems(spec)
    return found


def _key_problems(spec: EvalRunSpec) -> list[Problem]:
    """lmms-eval 0.7.3 reads one OPENAI_API_KEY for the OpenAI-compatible model backends
    and for the judge: a key given for one must not reach the other's server."""
    judge = spec.judge
    if judge is None:
        return []
    model_key, judge_key = spec.model.api_key, judge.api_key
    if model_key is not None and judge_key != model_key:
        return [
            Problem(
                "spec.judge.apiKey",
                "must name the same Secret key as spec.model.apiKey: lmms-eval 0.7.3 reads "
                "one OPENAI_API_KEY for the model and the judge, so the model's key would "
                "be sent to the judge's server",
            )
        ]
    if judge_key is not None and model_key is None and spec.model.type in OPENAI_KEY_BACKENDS:
        return [
            Problem(
                "spec.model.apiKey",
                "required with spec.judge.apiKey for an OpenAI-compatible model, and the same "
                "Secret key: lmms-eval 0.7.3 reads one OPENAI_API_KEY for the model and the "
                "judge, so the judge's key would be sent to the model's server",
            )
        ]
    return []


#: The variables lmms-eval 0.7.3's judged tasks read for their judge's model name
#: (docs/judge.md lists which tasks read which).
JUDGE_MODEL_ENV = (
    "MODEL_VERSION",
    "GPT_EVAL_MODEL_NAME",
    "JUDGE_MODEL_VERSION",
    "OPENAI_JUDGE_MODEL",
)
#: The OpenAI SDK's base URL (and the older SDK's): tasks that build ``openai.OpenAI()``
#: without a base URL of their own send OPENAI_API_KEY there, api.openai.com by default.
#: With a judge they point at the judge, so its key stays with it.
SDK_BASE_ENV = ("OPENAI_BASE_URL", "OPENAI_API_BASE")
#: Every variable the operator sets for a judge (refused in spec.env).
JUDGE_ENV = frozenset(
    {"API_TYPE", "OPENAI_API_URL", "OPENAI_API_KEY", *JUDGE_MODEL_ENV, *SDK_BASE_ENV}
)
#: The key lmms-eval's judge sends where no Secret gives one: its judge refuses an empty
#: key (``is_available``), and a server without authentication ignores it.
NO_KEY = "EMPTY"


def adapt(job: dict[str, Any], spec: EvalRunSpec, ready: Mapping[str, Readiness]) -> None:
    """The Job of a run with an endpoint or a judge (``job.build``'s, changed in place):
    its runner container learns where they are (``env``), and a served model's runner
    requests no GPU (resources.gpus is ignored: the server holds the GPUs)."""
    if spec.model.endpoint is None and spec.judge is None:
        return
    urls = {f: r.url for f, r in ready.items() if r.url}
    pod = job["spec"]["template"]["spec"]
    for container in pod.get("containers") or []:
        if container.get("name") != "runner":
            continue
        container["env"] = list(container.get("env") or []) + env(spec, urls)
        if spec.model.endpoint is not None:
            resources = container.get("resources") or {}
            name = spec.resources.gpu_resource_name
            for part in ("requests", "limits"):
                (resources.get(part) or {}).pop(name, None)


def env(spec: EvalRunSpec, urls: Mapping[str, str]) -> list[dict[str, Any]]:
    """LMMS_MODEL_URL, LMMS_MODEL_WAIT_SECONDS and one process for the runner (the served
    model);
    lmms-eval's judge variables (docs/judge.md), the key by secretKeyRef only
    (spec.model.apiKey's OPENAI_API_KEY is the same key: ``problems``)."""
    found: list[dict[str, Any]] = []
    endpoint = spec.model.endpoint
    if endpoint is not None and urls.get(MODEL_FIELD):
        found += [
            {"name": "LMMS_MODEL_URL", "value": urls[MODEL_FIELD]},
            {"name": "LMMS_MODEL_WAIT_SECONDS", "value": str(endpoint.wait_seconds)},
            # One lmms-eval process: the pod has no GPU to spread over (resources.gpus
            # would start one accelerate process per GPU).
            {"name": "LMMS_NPROC_PER_NODE", "value": "1"},
        ]
    judge = spec.judge
    if judge is not None and urls.get(JUDGE_FIELD):
        found += [
            {"name": "API_TYPE", "value": "openai"},
            {"name": "OPENAI_API_URL", "value": urls[JUDGE_FIELD]},
        ]
        base = urls[JUDGE_FIELD].removesuffix("/chat/completions")
        found += [{"name": n, "value": base} for n in SDK_BASE_ENV]
        found += [{"name": n, "value": judge.model} for n in JUDGE_MODEL_ENV]
        if spec.model.api_key is None and judge.api_key is not None:
            ref = {
                "name": judge.api_key.secret_key_ref.name,
                "key": judge.api_key.secret_key_ref.key,
            }
            found.append({"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": ref}})
        elif spec.model.api_key is None:
            found.append({"name": "OPENAI_API_KEY", "value": NO_KEY})
    return found


def secret_refs(spec: EvalRunSpec) -> list[tuple[str, str, tuple[str, ...]]]:
    """The judge's Secret (``admission.secret_refs``): labelled like every other."""
    if spec.judge is None or spec.judge.api_key is None:
        return []
    ref = spec.judge.api_key.secret_key_ref
    return [("spec.judge.apiKey.secretKeyRef", ref.name, (ref.key,))]
