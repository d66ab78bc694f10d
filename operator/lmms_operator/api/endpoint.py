"""Secrets and servers an EvalRun names: a Secret's key, and an OpenAI-compatible server
by reference (``spec.model.endpoint``, ``spec.judge``: a Service, a KServe
InferenceService or an allowed URL). The operator reads their readiness from API objects
(``reconcile.modelendpoint``); only the runner connects to them.
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from .base import DNS_LABEL, DNS_SUBDOMAIN, ApiModel
from .grammar import MODEL_ID


class SecretKeyRef(ApiModel):
    """A key of a Secret in the run's namespace."""

    name: str = Field(description="Secret name.", max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(description="Key in the Secret.", max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")


class SecretSource(ApiModel):
    """Where a secret value comes from. It reaches the pod only through secretKeyRef."""

    secret_key_ref: SecretKeyRef = Field(description="The Secret key holding the value.")


#: A URL path under a server: segments of unreserved characters, no "." or ".." segment.
URL_PATH = r"^(/[A-Za-z0-9_~\-][A-Za-z0-9._~\-]*)*/?$"
#: An http(s) URL a run may name (the admin's allow-list decides which: see ``endpoint``).
ENDPOINT_URL = r"^https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/\-]*)?$"


class ServiceEndpoint(ApiModel):
    """A Service in the run's namespace that serves an OpenAI-compatible API."""

    name: str = Field(
        description="Service name (in the run's namespace).", max_length=63, pattern=DNS_LABEL
    )
    port: int = Field(ge=1, le=65535, description="The Service's port.")
    path: str = Field(
        default="/v1",
        description="The API's base path on the server (the runner adds /models, "
        "/chat/completions).",
        max_length=256,
        pattern=URL_PATH,
    )


class InferenceServiceRef(ApiModel):
    """A KServe InferenceService (serving.kserve.io/v1beta1) in the run's namespace."""

    name: str = Field(
        description="InferenceService name (in the run's namespace).",
        max_length=63,
        pattern=DNS_LABEL,
    )
    path: str = Field(
        default="/openai/v1",
        description="The OpenAI-compatible API's base path under the InferenceService's "
        "address: /openai/v1 for KServe's Hugging Face runtime (its default "
        "KSERVE_OPENAI_ROUTE_PREFIX), /v1 for a runtime serving vLLM's routes unprefixed.",
        max_length=256,
        pattern=URL_PATH,
    )


class EndpointRef(ApiModel):
    """Where an OpenAI-compatible server is: exactly one of service, inferenceService
    and url. The operator reads readiness from the API objects only; it never connects
    to the server (the runner does)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.service), has(self.inferenceService), has(self.url)]"
                    ".filter(x, x).size() == 1",
                    "message": "name exactly one of service, inferenceService and url",
                }
            ]
        }
    )

    service: ServiceEndpoint | None = Field(
        default=None,
        description="A Service in the run's namespace: ready once one of its EndpointSlices "
        "has a ready endpoint. The runner reaches http://<name>.<namespace>.svc:<port><path>.",
    )
    inference_service: InferenceServiceRef | None = Field(
        default=None,
        description="A KServe InferenceService in the run's namespace: ready once its Ready "
        "condition is True. The runner reaches its status.address.url (else status.url) "
        "followed by its path.",
    )
    url: str | None = Field(
        default=None,
        description="The server's base URL (http or https, ending where /models is found, "
        "e.g. .../v1). Only URLs the operator's allow-list admits "
        "(settings.allowedModelUrls); none are by default. Ready at once: the operator "
        "never contacts it.",
        max_length=1024,
        pattern=ENDPOINT_URL,
    )
    wait_seconds: int = Field(
        default=600,
        ge=0,
        le=86_400,
        description="How long the run waits (Pending, reason WaitingForModel, no Job and no "
        "GPU held) for the endpoint to be ready before it fails (reason ModelNotReady); "
        "the runner then waits as long for the server's /models to answer.",
    )


class JudgeSpec(EndpointRef):
    """The LLM judge of judged tasks (lmms-eval's API_TYPE, OPENAI_API_URL,
    OPENAI_API_KEY, MODEL_VERSION...; docs/judge.md lists the tasks)."""

    model: str = Field(
        description="The judge model's id on its server (MODEL_VERSION and the other "
        "judge-model variables of lmms-eval's tasks).",
        min_length=1,
        max_length=256,
        pattern=MODEL_ID,
    )
    api_key: SecretSource | None = Field(
        default=None,
        description="The judge server's API key (OPENAI_API_KEY), from a Secret labelled "
        "eval.lmms.dev/usable-by-evalruns=true. lmms-eval 0.7.3 reads one OPENAI_API_KEY "
        "for the model and the judge: with an API model, it must be spec.model.apiKey's.",
    )
