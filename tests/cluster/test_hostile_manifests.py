"""Hostile EvalRuns, as a tenant trying to reach beyond its namespace would write them
(docs/security.md): each is refused by the API server naming the field, or ends Failed
naming the field with no Job, and the operator goes on serving the other runs."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from kubernetes import client

from lmms_operator.k8s import jsonsplit
from tests import evalruns as er
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.usefixtures("operator_process")]

BASE: dict[str, Any] = {"model": {"type": "qwen2_vl"}, "tasks": ["mme"]}
HF = "spec.huggingFaceToken.secretKeyRef"


def _model(**model: Any) -> dict[str, Any]:
    return {"model": {"type": "qwen2_vl", **model}}


def _hf(secret: str, key: str = "token") -> dict[str, Any]:
    return {"huggingFaceToken": {"secretKeyRef": {"name": secret, "key": key}}}


def _env(*names: str) -> dict[str, Any]:
    return {"env": [{"name": n, "value": "x"} for n in names]}


_TERMS = [{"matchExpressions": [{"key": "k", "operator": "Exists"}]}] * 40

# (case, spec overrides, the field the error names). Classes: injection into lmms-eval's
# command line, task grammar, numbers, sizes, resource names, leaderboard names,
# unbounded lists, remote code, the environment, Secrets, object stores, images.
CORPUS: list[tuple[str, dict[str, Any], str]] = [
    # --model_args injection
    ("pretrained-comma", _model(pretrained="Org/M,trust_remote_code=True"), "pretrained"),
    ("pretrained-equals", _model(pretrained="Org/M=x"), "pretrained"),
    ("pretrained-quote", _model(pretrained='Org/M"'), "pretrained"),
    ("pretrained-newline", _model(pretrained="Org/M\nx"), "pretrained"),
    ("pretrained-bidi", _model(pretrained="Org/\u202eM"), "pretrained"),
    ("pretrained-parent", _model(pretrained="/models/../../etc"), "pretrained"),
    ("revision-comma", _model(revision="main,trust_remote_code=True"), "revision"),
    ("revision-space", _model(revision="main x"), "revision"),
    ("arg-comma", _model(args={"a": "1,trust_remote_code=True"}), "spec.model.args"),
    ("arg-equals", _model(args={"a": "b=c"}), "spec.model.args"),
    ("arg-quote", _model(args={"a": "x'y"}), "spec.model.args"),
    ("arg-control", _model(args={"a": "x\x07y"}), "spec.model.args"),
    ("arg-zero-width", _model(args={"a": "x\u200by"}), "spec.model.args"),
    ("arg-key-equals", _model(args={"a=b": "x"}), "spec.model.args"),
    ("arg-key-space", _model(args={"a b": "x"}), "spec.model.args"),
    ("arg-pretrained", _model(args={"pretrained": "evil/model"}), "spec.model.args.pretrained"),
    # Remote code, off by default
    (
        "trust-remote-code",
        _model(args={"trust_remote_code": "True"}),
        "spec.model.args.trust_remote_code",
    ),
    ("backend-internvl2", {"model": {"type": "internvl2"}}, "spec.model.type"),
    ("backend-phi3v", {"model": {"type": "phi3v"}}, "spec.model.type"),
    # Task grammar
    ("task-glob", {"tasks": ["mme*"]}, "spec.tasks"),
    ("task-comma", {"tasks": ["mme,textvqa_val"]}, "spec.tasks"),
    ("task-empty", {"tasks": [""]}, "spec.tasks"),
    ("task-parent", {"tasks": ["../x"]}, "spec.tasks"),
    ("task-slash", {"tasks": ["a/b"]}, "spec.tasks"),
    (
        "custom-task-comma",
        {"tasks": [], "customTasks": [{"configMap": "c", "tasks": ["x,y"]}]},
        "spec.customTasks[0].tasks",
    ),
    (
        "custom-task-glob",
        {"tasks": [], "customTasks": [{"configMap": "c", "tasks": ["*"]}]},
        "spec.customTasks[0].tasks",
    ),
    # Numbers and sizes
    ("seed-beyond-uint32", {"evaluation": {"seed": 2**32}}, "spec.evaluation.seed"),
    (
        "model-args-over-arg-max",
        _model(args={f"k{i}": "v" * 4000 for i in range(20)}),
        "spec.model.args",
    ),
    (
        "env-over-arg-max",
        {"env": [{"name": "NCCL_DEBUG", "value": "x" * 4096}] * 64},
        "spec.env",
    ),
    # Resource names
    ("gpu-resource-bare", {"resources": {"gpuResourceName": "gpu"}}, "gpuResourceName"),
    ("gpu-resource-cpu", {"resources": {"gpuResourceName": "cpu"}}, "gpuResourceName"),
    (
        "gpu-resource-k8s-domain",
        {"resources": {"gpuResourceName": "kubernetes.io/gpu"}},
        "gpuResourceName",
    ),
    # Leaderboard names are label values
    ("leaderboard-64", {"leaderboard": "a" * 64}, "spec.leaderboard"),
    ("leaderboard-dots", {"leaderboard": "team.board"}, "spec.leaderboard"),
    # Unbounded lists
    (
        "tolerations-33",
        {"scheduling": {"tolerations": [{"key": "k", "operator": "Exists"}] * 33}},
        "spec.scheduling.tolerations",
    ),
    (
        "affinity-40-terms",
        {
            "scheduling": {
                "affinity": {
                    "nodeAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": _TERMS
                        }
                    }
                }
            }
        },
        "spec.scheduling.affinity",
    ),
    (
        "node-selector-long-value",
        {"scheduling": {"nodeSelector": {"zone": "a" * 64}}},
        "spec.scheduling.nodeSelector",
    ),
    ("env-65", {"env": [{"name": "NCCL_DEBUG", "value": "x"}] * 65}, "spec.env"),
    ("args-65", _model(args={f"k{i}": "v" for i in range(65)}), "spec.model.args"),
    ("tasks-201", {"tasks": [f"t{i}" for i in range(201)]}, "spec.tasks"),
    # The environment: nothing that changes what code runs or where requests go
    ("env-pythonpath", _env("PYTHONPATH"), "spec.env[0].name"),
    ("env-pythonwarnings-browser", _env("PYTHONWARNINGS", "BROWSER"), "spec.env[0].name"),
    ("env-ld-preload", _env("LD_PRELOAD"), "spec.env[0].name"),
    ("env-hf-endpoint", _env("HF_ENDPOINT"), "spec.env[0].name"),
    ("env-proxy", _env("HTTPS_PROXY"), "spec.env[0].name"),
    ("env-ca-bundle", _env("REQUESTS_CA_BUNDLE"), "spec.env[0].name"),
    ("env-remote-datasets", _env("HF_DATASETS_TRUST_REMOTE_CODE"), "spec.env[0].name"),
    # Secrets: only those marked usable by EvalRuns, and usable ones must serve
    ("secret-unlabelled", _hf("plain"), HF),
    ("secret-missing", _hf("no-such-secret"), HF),
    (
        "api-key-unlabelled",
        _model(apiKey={"secretKeyRef": {"name": "plain", "key": "token"}}),
        "apiKey",
    ),
    ("secret-binary", _hf("usable", "binary"), HF),
    ("secret-empty", _hf("usable", "empty"), HF),
    ("secret-no-key", _hf("usable", "absent"), HF),
    # Object stores: the operator never takes its own identity to a tenant's endpoint
    (
        "s3-endpoint-without-credentials",
        {"output": {"s3": {"bucket": "evals", "endpoint": "http://169.254.169.254"}}},
        "spec.output.s3.credentialsSecret",
    ),
    (
        "s3-endpoint-userinfo",
        {"output": {"s3": {"bucket": "evals", "endpoint": "http://u:p@evil.example"}}},
        "spec.output.s3.endpoint",
    ),
    (
        "s3-endpoint-file",
        {"output": {"s3": {"bucket": "evals", "endpoint": "file:///etc"}}},
        "spec.output.s3.endpoint",
    ),
    # Images
    ("image-shell", {"image": "img;rm -rf /"}, "spec.image"),
    # Issue 30: what got through the lists of refused spellings.
    # Remote code: any value but an explicit false; backends flagged by class hierarchy.
    ("remote-code-enabled", _model(args={"trust_remote_code": "enabled"}), "trust_remote_code"),
    ("remote-code-empty", _model(args={"trust_remote_code": ""}), "trust_remote_code"),
    ("backend-inherited-remote-code", {"model": {"type": "internvl3_5"}}, "spec.model.type"),
    ("backend-evals-model-output", {"model": {"type": "async_openai"}}, "spec.model.type"),
    ("arg-not-taken", _model(args={"code_revision": "x"}), "spec.model.args.code_revision"),
    # The splitter's special characters and other categories.
    ("arg-bracket", _model(args={"max_pixels": "[1"}), "spec.model.args"),
    ("arg-brace", _model(args={"max_pixels": "{1}"}), "spec.model.args"),
    ("arg-bidi-isolate", _model(args={"max_pixels": "1\u2066"}), "spec.model.args"),
    ("arg-soft-hyphen", _model(args={"max_pixels": "1\u00ad2"}), "spec.model.args"),
    ("arg-not-nfkc", _model(args={"max_pixels": "\uff11"}), "spec.model.args"),
    ("arg-numeric-not-int", _model(args={"max_pixels": "\u4e09"}), "spec.model.args"),
    ("env-value-bidi", {"env": [{"name": "NCCL_DEBUG", "value": "x\u061cy"}]}, "spec.env[0]"),
    ("arg-secret-value", _model(args={"system_prompt": "hf_" + "A1b2" * 9}), "spec.model.args"),
    # Quadratic "did you mean": 200 long unknown task names cost milliseconds now.
    ("tasks-200-unknown", {"tasks": [f"zz{i:03d}" + "q" * 190 for i in range(200)]}, "spec.tasks"),
    # Kernel limits: the joined --tasks of custom tasks beyond one argument.
    (
        "tasks-argv-overflow",
        {
            "tasks": [],
            "customTasks": [
                {"configMap": f"c{j}", "tasks": [f"t{j}x{i:03d}" + "y" * 180 for i in range(100)]}
                for j in range(8)
            ],
        },
        "spec.tasks",
    ),
    # The operator's network position: the metadata service in several spellings.
    (
        "s3-endpoint-metadata-octal",
        {
            "output": {
                "s3": {
                    "bucket": "evals",
                    "endpoint": "http://0251.0376.0251.0376",
                    "credentialsSecret": "usable",
                }
            }
        },
        "spec.output.s3.endpoint",
    ),
    (
        "s3-endpoint-metadata-mapped",
        {
            "output": {
                "s3": {
                    "bucket": "evals",
                    "endpoint": "http://[::ffff:169.254.169.254]",
                    "credentialsSecret": "usable",
                }
            }
        },
        "spec.output.s3.endpoint",
    ),
    ("runner-url-metadata", _model(args={"base_url": "http://169.254.169.254/v1"}), "base_url"),
    # Placement against other tenants.
    (
        "priority-system",
        {"scheduling": {"priorityClassName": "system-cluster-critical"}},
        "spec.scheduling.priorityClassName",
    ),
    (
        "toleration-control-plane",
        {
            "scheduling": {
                "tolerations": [
                    {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}
                ]
            }
        },
        "spec.scheduling.tolerations[0]",
    ),
    (
        "toleration-keyless",
        {"scheduling": {"tolerations": [{"operator": "Exists"}]}},
        "spec.scheduling.tolerations[0]",
    ),
    (
        "affinity-all-namespaces",
        {
            "scheduling": {
                "affinity": {
                    "podAntiAffinity": {
                        "requiredDuringSchedulingIgnoredDuringExecution": [
                            {"topologyKey": "kubernetes.io/hostname", "namespaceSelector": {}}
                        ]
                    }
                }
            }
        },
        "spec.scheduling.affinity",
    ),
    (
        "node-selector-control-plane",
        {"scheduling": {"nodeSelector": {"node-role.kubernetes.io/control-plane": ""}}},
        "spec.scheduling.nodeSelector",
    ),
]

#: What a run hears about a Secret it may not use, whether or not it exists.
NOT_USABLE = "is not usable by EvalRuns"


def _body(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    spec = json.loads(json.dumps(BASE))
    spec.update(overrides)
    return {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": spec,
    }


def _secrets(core: client.CoreV1Api, namespace: str) -> None:
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "plain"}, "stringData": {"token": "hf_SENTINELplain"}}
    )
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "usable", "labels": er.USABLE},
            "data": {
                "binary": base64.b64encode(b"\xff\xfe\x00token").decode(),
                "empty": "",
                "token": base64.b64encode(b"hf_SENTINELusable").decode(),
            },
        },
    )


def test_the_corpus_covers_every_class() -> None:
    assert len(CORPUS) >= 40
    assert len({name for name, _, _ in CORPUS}) == len(CORPUS)


def test_every_hostile_run_is_refused_or_fails_naming_the_field_with_no_job(
    api: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api)
    _secrets(core, namespace)
    # A well-behaved run of another team is admitted alongside.
    er.create(api, namespace, er.manifest("neighbour", er.KWOK))
    accepted = er.apply_corpus(api, namespace, CORPUS, _body)
    er.wait_phase(api, namespace, "neighbour", "Succeeded", timeout=60)
    reasons = {}
    for name, field in accepted.items():
        run = wait_failed(api, namespace, name)
        message = run["status"]["message"]
        assert field in message, (name, message)
        assert not er.jobs_of(api, namespace, run), f"{name}: a Job was created"
        selector = f"eval.lmms.dev/run-uid={run['metadata']['uid']}"
        assert not core.list_namespaced_config_map(namespace, label_selector=selector).items
        assert not core.list_namespaced_secret(namespace, label_selector=selector).items
        reasons[name] = run["status"]["reason"]
        # Secret values never reach the status.
        assert "SENTINEL" not in json.dumps(run["status"]), name
    # Both layers are exercised: the schema and the operator's own checks.
    assert len(accepted) >= 15, sorted(accepted)
    # An unlabelled Secret and a missing one read alike.
    for name in ("secret-unlabelled", "secret-missing"):
        assert reasons[name] == "ReferencesNotFound", reasons
        message = er.get(api, namespace, name)["status"]["message"]
        assert NOT_USABLE in message and "not found" not in message, message
    for name in ("secret-binary", "secret-empty", "secret-no-key"):
        assert reasons[name] == "InvalidSecret", reasons
    # And the operator still serves new runs.
    er.create(api, namespace, er.manifest("after", er.KWOK))
    er.wait_phase(api, namespace, "after", "Succeeded", timeout=60)


def wait_failed(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    # Secret references wait LMMS_REFERENCE_TIMEOUT (20 s in tests) before failing.
    return er.wait_phase(api, namespace, name, "Failed", timeout=90)


def test_a_leaderboard_cannot_point_the_operator_at_a_store_without_credentials(
    api: client.ApiClient, namespace: str
) -> None:
    board = {
        "apiVersion": "eval.lmms.dev/v1alpha1",
        "kind": "Leaderboard",
        "metadata": {"name": "ssrf"},
        "spec": {"storage": {"s3": {"bucket": "evals", "endpoint": "http://169.254.169.254"}}},
    }
    with pytest.raises(client.ApiException) as exc:
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            "eval.lmms.dev", "v1alpha1", namespace, "leaderboards", board
        )
    assert exc.value.status == 422
    assert "spec.storage.s3.credentialsSecret" in json.loads(exc.value.body)["message"]


# -- one object that cannot be decoded stops nothing else --------------------------------
DEPTH = 5000


def _raw(
    api: client.ApiClient, method: str, path: str, body: str | None = None
) -> tuple[int, bytes]:
    """A request whose answer is not decoded by the client (it would recurse as deep):
    the status and the body."""
    method_, url, headers, _, _ = api.param_serialize(
        method,
        path,
        query_params=[("fieldValidation", "Strict")] if body is not None else [],
        header_params={"Content-Type": "application/json", "Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    # The body as it is: the client would encode it again (and recurse to decode it).
    response = api.rest_client.pool_manager.request(
        method_, url, body=body.encode() if body is not None else None, headers=headers
    )
    return int(response.status), bytes(response.data)


def _status(api: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    _, data = _raw(
        api, "GET", f"/apis/eval.lmms.dev/v1alpha1/namespaces/{namespace}/evalruns/{name}"
    )
    for key, start, end in jsonsplit.members(data):
        if key == "status":
            return dict(json.loads(data[start:end]))
    return {}


def test_a_run_nested_too_deep_to_decode_fails_alone(
    api: client.ApiClient, namespace: str, other_namespace: str
) -> None:
    """An affinity nested 5000 deep: refused by the API server naming the field (the
    affinity is typed), or, where the schema keeps unknown fields, stored; then the
    operator's informer skips it (Failed, a Warning Event) and keeps serving the others."""
    body = json.dumps(er.manifest("deep", {**er.KWOK, "affinity": "DEEP"}))
    deep = '{"x":' * DEPTH + "1" + "}" * DEPTH
    path = f"/apis/eval.lmms.dev/v1alpha1/namespaces/{namespace}/evalruns"
    code, answer = _raw(api, "POST", path, body.replace('"DEEP"', deep))
    stored = code < 300
    if not stored:
        assert code in (400, 422), (code, answer[:2000])
        assert b"spec.scheduling.affinity" in answer, answer[:2000]
    er.create(api, other_namespace, er.manifest("neighbour", er.KWOK))
    er.wait_phase(api, other_namespace, "neighbour", "Succeeded", timeout=60)
    if stored:

        def failed() -> dict[str, Any] | None:
            status = _status(api, namespace, "deep")
            return status if status.get("phase") == "Failed" else None

        status = wait_for(failed, timeout=60)
        assert status["reason"] == "InvalidSpec", status
        assert "spec.scheduling.affinity" in status["message"], status
        er.wait_event(api, namespace, "deep", "InvalidSpec")
    # A run in the same namespace is served too.
    er.create(api, namespace, er.manifest("after", er.KWOK))
    er.wait_phase(api, namespace, "after", "Succeeded", timeout=60)
