"""The operator's own checks: the lmms-eval catalogue, presets, field paths."""

from __future__ import annotations

from typing import Any

import pytest

from lmms_operator import catalogue, presets
from lmms_operator.reconcile.validate import FEATURES, InvalidSpec, Policy, validate


def spec(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"type": "qwen2_vl"}, "tasks": ["mme"]}
    base.update(over)
    return base


def problems(raw: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidSpec) as exc:
        validate(raw)
    return [str(p) for p in exc.value.problems]


def test_a_good_spec_passes_with_defaults() -> None:
    parsed = validate(spec())
    assert parsed.evaluation.batch_size == 1 and parsed.resources.gpus == 1


def test_unknown_model_type_suggests_the_closest() -> None:
    (p,) = problems(spec(model={"type": "qwen2vl"}))
    assert p.startswith("spec.model.type:") and "did you mean 'qwen2_vl'?" in p


def test_unknown_tasks_name_their_index_and_suggest() -> None:
    got = problems(spec(tasks=["mme", "textvqa_vall", "zzzzzzzzzz"]))
    assert got[0].startswith("spec.tasks[1]:") and "did you mean 'textvqa_val'?" in got[0]
    assert got[1].startswith("spec.tasks[2]:") and "did you mean" not in got[1]


def test_custom_task_names_are_allowed() -> None:
    validate(spec(tasks=["colors"], customTasks=[{"configMap": "c", "tasks": ["colors"]}]))


def test_schema_errors_name_the_field_in_camel_case() -> None:
    (p,) = problems(spec(evaluation={"batchSize": 0}))
    assert p.startswith("spec.evaluation.batchSize:")
    (p,) = problems(spec(resources={"gpuz": 1}))
    assert p == "spec.resources.gpuz: unknown field"


def test_a_model_without_preset_needs_pretrained() -> None:
    (p,) = problems(spec(model={"type": "mantis"}))
    assert p.startswith("spec.model.pretrained: required")
    validate(spec(model={"type": "mantis", "pretrained": "TIGER-Lab/Mantis-8B-siglip-llama3"}))


@pytest.mark.parametrize("bad", [None, "x", 3, []])
def test_garbage_never_crashes(bad: Any) -> None:
    with pytest.raises(InvalidSpec):
        validate(bad)


def test_catalogue_comes_from_lmms_eval_0_7_3() -> None:
    cat = catalogue.load()
    assert cat.lmms_eval_version == "0.7.3"
    assert {"qwen2_vl", "llava_onevision", "dummy", "openai"} <= cat.models
    assert {"mme", "textvqa_val", "mmmu_val"} <= cat.task_names
    assert len(cat.tasks) > 500


def test_presets_cover_the_models_users_name_most() -> None:
    cat = catalogue.load()
    wanted = {
        "llava",
        "llava_onevision",
        "qwen2_vl",
        "qwen2_5_vl",
        "llama_vision",
        "instructblip",
        "whisper",
        "llava_vid",
        "longva",
        "video_llava",
    }
    assert wanted <= set(presets.PRESETS)
    assert set(presets.PRESETS) <= cat.models
    assert any(p.video for p in presets.PRESETS.values())


def test_user_values_win_over_the_preset() -> None:
    pretrained, args = presets.resolve("qwen2_vl", None, {"max_pixels": "1003520"})
    assert pretrained == "Qwen/Qwen2-VL-7B-Instruct" and args["max_pixels"] == "1003520"
    pretrained, _ = presets.resolve("qwen2_vl", "/models/mine", {})
    assert pretrained == "/models/mine"


def test_features_the_operator_does_not_allow_are_refused_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lmms_operator.config import Settings

    risky = spec(image="registry.example/custom:1", resources={"gpus": 1, "nodes": 2})
    assert validate(risky).image == "registry.example/custom:1"  # allowed by default
    with pytest.raises(InvalidSpec) as exc:
        validate(risky, Policy(features=frozenset({"multiNode"})))
    [problem] = exc.value.problems
    assert problem.field == "spec.image" and "imageOverride is not allowed" in str(problem)
    monkeypatch.setenv("LMMS_ALLOWED_FEATURES", "multiNode, s3Output")
    assert Settings.from_env().allowed_features == {"multiNode", "s3Output"}
    monkeypatch.setenv("LMMS_ALLOWED_FEATURES", "")
    assert Settings.from_env().allowed_features == frozenset()
    monkeypatch.delenv("LMMS_ALLOWED_FEATURES")
    assert Settings.from_env().allowed_features == set(FEATURES) - {"remoteCode"}
    monkeypatch.setenv("LMMS_ALLOWED_FEATURES", "gpuSharing")
    with pytest.raises(ValueError, match=r"unknown feature.*gpuSharing"):
        Settings.from_env()


def test_secret_looking_env_vars_are_refused_but_ordinary_ones_pass() -> None:
    ok = spec(env=[{"name": "TOKENIZERS_PARALLELISM", "value": "false"}])
    assert validate(ok).env[0].name == "TOKENIZERS_PARALLELISM"
    bad = spec(
        env=[
            {"name": "HF_HUB_OFFLINE", "value": "1"},
            {"name": "WANDB_API_KEY", "value": "abc"},
            {"name": "MY_TOKEN", "value": "abc"},
        ]
    )
    found = problems(bad)
    assert [p.split(":")[0] for p in found] == ["spec.env[1].name", "spec.env[2].name"]
    assert all("looks like a secret" in p and "abc" not in p for p in found)


def _hf(value: str) -> dict[str, Any]:
    return {"type": "huggingface", "pretrained": "org/m", "args": {"trust_remote_code": value}}


@pytest.mark.parametrize(
    ("case", "field"),
    [
        # Any value but an explicit false counts as on: lmms-eval reads them all truthy.
        *(
            ({"model": _hf(v)}, "spec.model.args.trust_remote_code")
            for v in ("True", "1", "yes", "on", "2", "enabled", "")
        ),
        # Backends that always load repository code, or inherit that from a parent
        # (internvl3_5 from internvl3), or execute the model's output (thyme, async_openai).
        ({"model": {"type": "internvl2"}}, "spec.model.type"),
        ({"model": {"type": "phi3v"}}, "spec.model.type"),
        ({"model": {"type": "internvl3_5", "pretrained": "org/m"}}, "spec.model.type"),
        ({"model": {"type": "thyme", "pretrained": "org/m"}}, "spec.model.type"),
        ({"model": {"type": "async_openai"}}, "spec.model.type"),
    ],
)
def test_remote_code_is_off_until_an_admin_turns_it_on(case: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidSpec) as exc:
        validate(spec(**case))
    [problem] = exc.value.problems
    assert problem.field == field and "remoteCode is not allowed" in str(problem)
    assert validate(spec(**case), Policy(features=frozenset(FEATURES))).model.type


def test_a_task_that_runs_the_models_output_is_remote_code() -> None:
    # auxsolidmath evals the answer, megabench (a group) holds tasks that exec it: each
    # is named, with the reason; a task of ordinary scoring code is not.
    raw = spec(tasks=["mme", "auxsolidmath_easy", "megabench"])
    found = problems(raw)
    assert [p.split(":")[0] for p in found] == ["spec.tasks[1]", "spec.tasks[2]"]
    assert all("runs the model's output as Python" in p for p in found)
    assert validate(raw, Policy(features=frozenset(FEATURES))).tasks == raw["tasks"]


@pytest.mark.parametrize(
    "task",
    [
        "mme",
        "mmmu_val",
        "ai2d",
        "chartqa",
        "textvqa_val",
        "docvqa_val",
        "mathvista_testmini",
        "videomme",
        "scienceqa_img",
        "ocrbench",
        "gqa",
        "pope",
    ],
)
def test_common_tasks_are_not_remote_code(task: str) -> None:
    assert task not in catalogue.load().remote_code_tasks
    assert validate(spec(tasks=[task])).tasks == [task]


@pytest.mark.parametrize("value", ["false", "False", "FALSE"])
def test_an_explicit_false_is_not_remote_code(value: str) -> None:
    assert validate(spec(model=_hf(value))).model.args["trust_remote_code"] == value


@pytest.mark.parametrize(
    "name",
    [
        "PYTHONPATH",
        "PYTHONSTARTUP",
        "PYTHONWARNINGS",
        "BROWSER",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "HF_ENDPOINT",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "NO_PROXY",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "CURL_CA_BUNDLE",
        "HF_DATASETS_TRUST_REMOTE_CODE",
        "NCCL_NET_PLUGIN",
        "VLLM_PLUGINS",
        "TRANSFORMERS_CACHE",
    ],
)
def test_env_that_could_change_code_or_endpoints_is_refused(name: str) -> None:
    bad = spec(env=[{"name": "NCCL_DEBUG", "value": "INFO"}, {"name": name, "value": "x"}])
    found = problems(bad)
    assert [p.split(":")[0] for p in found] == ["spec.env[1].name"], found
    assert "not an allowed variable" in found[0]
    # An admin can open a name, or a prefix.
    assert validate(bad, Policy(env=(name,))).env[1].name == name
    assert validate(bad, Policy(env=(name[:3] + "*",))).env[1].name == name


@pytest.mark.parametrize(
    "name", ["OPENAI_API_BASE", "OPENAI_BASE_URL", "OPENAI_API_URL", "API_TYPE", "MODEL_VERSION"]
)
def test_the_judges_settings_are_the_operators_even_where_the_admin_opens_them(name: str) -> None:
    """The judge's address and key are set from spec.judge: a tenant's value would send the
    key elsewhere, so no admin policy lets spec.env override them."""
    bad = spec(env=[{"name": name, "value": "http://elsewhere.example/v1"}])
    for policy in (Policy(), Policy(env=(name,)), Policy(env=("OPENAI_*", "API_*", "MODEL_*"))):
        with pytest.raises(InvalidSpec) as exc:
            validate(bad, policy)
        found = [str(p) for p in exc.value.problems]
        assert [p.split(":")[0] for p in found] == ["spec.env[0].name"], found
        assert "set by the operator" in found[0]


@pytest.mark.parametrize(
    ("case", "loc"),
    [
        (
            {"model": {"type": "qwen2_vl", "pretrained": "Org/M,trust_remote_code=True"}},
            "model.pretrained",
        ),
        ({"model": {"type": "qwen2_vl", "pretrained": 'Org/M"x'}}, "model.pretrained"),
        ({"model": {"type": "qwen2_vl", "pretrained": "Org/M\u202e"}}, "model.pretrained"),
        (
            {"model": {"type": "qwen2_vl", "revision": "main,trust_remote_code=True"}},
            "model.revision",
        ),
        ({"model": {"type": "qwen2_vl", "revision": "a b"}}, "model.revision"),
        ({"model": {"type": "qwen2_vl", "args": {"a": "1=2"}}}, "model.args"),
        ({"model": {"type": "qwen2_vl", "args": {"a": "x'y"}}}, "model.args"),
        ({"model": {"type": "qwen2_vl", "args": {"a": "x\ny"}}}, "model.args"),
        ({"model": {"type": "qwen2_vl", "args": {"a": "x\u2066y"}}}, "model.args"),
        ({"model": {"type": "qwen2_vl", "args": {"a=b": "x"}}}, "model.args"),
        ({"tasks": ["mme*"]}, "tasks"),
        ({"tasks": ["mme,textvqa_val"]}, "tasks"),
        ({"tasks": [""]}, "tasks"),
        ({"tasks": ["../etc"]}, "tasks"),
        ({"tasks": ["a/b"]}, "tasks"),
        ({"tasks": [], "customTasks": [{"configMap": "c", "tasks": ["x,y"]}]}, "customTasks"),
        ({"evaluation": {"seed": 2**32}}, "evaluation"),
        ({"resources": {"gpuResourceName": "gpu"}}, "resources"),
        ({"leaderboard": "a" * 64}, "leaderboard"),
        ({"scheduling": {"tolerations": [{"key": "k"}] * 33}}, "scheduling"),
        ({"env": [{"name": "NCCL_DEBUG", "value": "x" * 5000}]}, "env"),
    ],
)
def test_grammar_refuses_injection_and_unbounded_input(case: dict[str, Any], loc: str) -> None:
    with pytest.raises(InvalidSpec) as exc:
        validate(spec(**case))
    assert any(p.field.startswith(f"spec.{loc}") for p in exc.value.problems), exc.value


def test_argument_lists_and_affinity_are_bounded() -> None:
    # dummy takes any key: the one-argument limit is what refuses these.
    args = {f"k{i}": "v" * 4000 for i in range(40)}
    found = problems(spec(model={"type": "dummy", "args": args}))
    assert found and found[0].startswith("spec.model.args:") and "kernel" in found[0]
    terms = [{"matchExpressions": [{"key": "k", "operator": "Exists"}]}] * 40
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms}
        }
    }
    found = problems(spec(scheduling={"affinity": affinity}))
    assert found and found[0].startswith("spec.scheduling.affinity")
    found = problems(spec(model={"type": "qwen2_vl", "args": {"pretrained": "x"}}))
    assert found and found[0].startswith("spec.model.args.pretrained:")


def test_a_tenant_endpoint_needs_its_own_credentials() -> None:
    found = problems(spec(output={"s3": {"bucket": "evals", "endpoint": "http://10.0.0.1:9000"}}))
    assert found and found[0].startswith("spec.output.s3.credentialsSecret:")
    ok = spec(
        output={
            "s3": {"bucket": "evals", "endpoint": "http://minio:9000", "credentialsSecret": "s3"}
        }
    )
    assert validate(ok).output


@pytest.mark.parametrize("word", ["list", "list_groups", "list_tags", "list_subtasks"])
def test_lmms_evals_listing_words_are_no_task_names(word: str) -> None:
    # lmms-eval reads `--tasks list` as "list the tasks and exit 0": nothing is evaluated.
    spec = {
        "model": {"type": "qwen2_vl"},
        "tasks": ["mme"],
        "customTasks": [{"configMap": "cm", "tasks": [word]}],
    }
    with pytest.raises(InvalidSpec) as exc:
        validate(spec)
    assert [p.field for p in exc.value.problems] == ["spec.customTasks[0].tasks[0]"]


def test_digits_that_lmms_eval_reads_as_numbers_are_refused() -> None:
    for model, field in [
        ({"type": "llava_hf", "pretrained": "org/m", "revision": "0123"}, "spec.model.revision"),
        ({"type": "qwen2_vl", "args": {"max_pixels": "\u0663"}}, "spec.model.args.max_pixels"),
    ]:
        with pytest.raises(InvalidSpec) as exc:
            validate({"model": model, "tasks": ["mme"]})
        assert any(p.field == field for p in exc.value.problems), exc.value
