"""Several GPUs in one pod (spec.model.multiGPU): the default the operator decides from a
preset's size and the GPU memory the admin declares, what it refuses, and the setting
LMMS_GPU_MEMORY. The command each mode runs is in test_cmdline.py."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmms_operator import __main__ as cli_main
from lmms_operator import presets
from lmms_operator.api import parse_spec
from lmms_operator.config import Settings
from lmms_operator.reconcile import multigpu
from lmms_operator.reconcile.validate import FEATURES, InvalidSpec, Policy, validate

MEMORY = multigpu.parse_gpu_memory(
    "nvidia.com/gpu=80Gi,nvidia.com/mig-3g.40gb=40Gi,nvidia.com/mig-1g.10gb=10Gi,amd.com/gpu=24Gi"
)
ALL = Policy(features=frozenset(FEATURES), gpu_memory=MEMORY)


def spec(model: dict[str, Any], gpus: int = 4, resource: str = "nvidia.com/gpu", **res: Any) -> Any:
    raw = {
        "model": model,
        "tasks": ["mme"],
        "resources": {"gpus": gpus, "gpuResourceName": resource, **res},
    }
    return parse_spec(raw)


def decided(model: dict[str, Any], **kw: Any) -> str | None:
    s = spec(model, **kw)
    assert multigpu.check(s, MEMORY) == []
    return multigpu.mode(s, MEMORY)


def refused(model: dict[str, Any], memory: multigpu.GpuMemory = MEMORY, **kw: Any) -> str:
    problems = multigpu.check(spec(model, **kw), memory)
    assert [p.field for p in problems] == ["spec.model.multiGPU"], problems
    return problems[0].message


def test_the_size_rule() -> None:
    # bf16 weights (2 bytes a parameter) and a quarter more: 8.3B parameters need 20.75 GB.
    need = multigpu.needed_bytes(spec({"type": "qwen2_vl"}))
    assert need == int(8.3e9 * 2 * 1.25)
    assert all(p.params_b for p in presets.PRESETS.values()), "every preset knows its size"
    # phi3v names its checkpoint in an arg: another one there is another size.
    assert multigpu.needed_bytes(spec({"type": "phi3v"})) == int(4.2e9 * 2 * 1.25)
    other = {"type": "phi3v", "args": {"model_id_name": "microsoft/Phi-3.5-vision-instruct"}}
    assert multigpu.needed_bytes(spec(other)) is None
    assert multigpu.needed_bytes(spec({"type": "qwen2_vl", "pretrained": "org/other"})) is None


@pytest.mark.parametrize(
    ("model", "resource", "mode"),
    [
        # A 7B preset (8.3B parameters, 20.75 GB) fits on an 80 GiB and a 40 GiB GPU...
        ({"type": "qwen2_vl"}, "nvidia.com/gpu", "DataParallel"),
        ({"type": "qwen2_vl"}, "nvidia.com/mig-3g.40gb", "DataParallel"),
        # ...not on a 10 GiB MIG slice: one process spreads it over the four.
        ({"type": "qwen2_vl"}, "nvidia.com/mig-1g.10gb", "ModelParallel"),
        # Llama 3.2 11B (26.75 GB) does not fit on a 24 GiB GPU.
        ({"type": "llama_vision"}, "amd.com/gpu", "ModelParallel"),
        ({"type": "llama_vision"}, "nvidia.com/gpu", "DataParallel"),
        # The preset's own checkpoint named explicitly is still the preset's size.
        ({"type": "llama_vision", "pretrained": "meta-llama/Llama-3.2-11B-Vision-Instruct"},
         "amd.com/gpu", "ModelParallel"),
        # A backend that cannot spread a model has one choice.
        ({"type": "instructblip"}, "nvidia.com/mig-1g.10gb", "DataParallel"),
        ({"type": "video_llava"}, "nvidia.com/mig-1g.10gb", "DataParallel"),
        # The spec's word wins over the size.
        ({"type": "qwen2_vl", "multiGPU": "DataParallel"}, "nvidia.com/mig-1g.10gb", "DataParallel"),
        ({"type": "qwen2_vl", "multiGPU": "ModelParallel"}, "nvidia.com/gpu", "ModelParallel"),
    ],
)  # fmt: skip
def test_the_default_follows_the_presets_size_against_the_declared_memory(
    model: dict[str, Any], resource: str, mode: str
) -> None:
    assert decided(model, resource=resource) == mode


def test_one_gpu_changes_nothing() -> None:
    for gpus in (0, 1):
        for model in ({"type": "qwen2_vl", "pretrained": "org/unknown-70b"}, {"type": "dummy"}):
            s = spec(model, gpus=gpus, resource="example.com/gpu")
            assert multigpu.mode(s, multigpu.UNDECLARED) is None
            assert multigpu.check(s, multigpu.UNDECLARED) == []


def test_several_nodes_are_data_parallel() -> None:
    assert decided({"type": "qwen2_vl"}, gpus=8, nodes=2, resource="nvidia.com/mig-1g.10gb") == (
        "DataParallel"
    )


@pytest.mark.parametrize(
    ("model", "resource", "why"),
    [
        # Another checkpoint than the preset's: its size is not known.
        ({"type": "llama_vision", "pretrained": "meta-llama/Llama-3.2-90B-Vision-Instruct"},
         "nvidia.com/gpu", "Llama-3.2-90B-Vision-Instruct' is not known"),
        ({"type": "qwen2_5_vl", "pretrained": "Qwen/Qwen2.5-VL-72B-Instruct"},
         "nvidia.com/gpu", "Qwen2.5-VL-72B-Instruct' is not known"),
        # No preset.
        ({"type": "qwen3_vl", "pretrained": "Qwen/Qwen3-VL-8B-Instruct"},
         "nvidia.com/gpu", "is not known"),
        # A GPU whose memory the admin did not declare.
        ({"type": "qwen2_vl"}, "example.com/gpu", "declares no memory for example.com/gpu"),
    ],
)  # fmt: skip
def test_an_unknown_size_needs_the_specs_word(
    model: dict[str, Any], resource: str, why: str
) -> None:
    message = refused(model, resource=resource)
    assert why in message and "DataParallel" in message and "ModelParallel" in message
    for mode in ("DataParallel", "ModelParallel"):
        assert decided({**model, "multiGPU": mode}, resource=resource) == mode


def test_what_model_parallel_cannot_do() -> None:
    mp = {"multiGPU": "ModelParallel"}
    assert "resources.nodes > 1" in refused({"type": "qwen2_vl", **mp}, gpus=8, nodes=2)
    assert "resources.gpus is 0" in refused({"type": "qwen2_vl", **mp}, gpus=0)
    # lmms-eval 0.7.3's classes without device_map, and those that load onto one device.
    assert "takes none" in refused({"type": "instructblip", **mp})
    assert "takes none" in refused({"type": "phi3v", **mp})
    for ignoring in ("video_llava", "internvideo2", "videochat2"):
        assert "loads it onto one device" in refused({"type": ignoring, **mp})
    # internvl2 splits by its own table of checkpoints, or num_layers.
    unknown = {"type": "internvl2", "pretrained": "OpenGVLab/InternVL2-76B", **mp}
    assert "InternVL2-Llama3-76B" in refused(unknown)
    assert decided({**unknown, "pretrained": "OpenGVLab/InternVL2-Llama3-76B"}) == "ModelParallel"
    assert decided({**unknown, "args": {"num_layers": "80"}}) == "ModelParallel"


def test_the_run_fails_invalid_spec_naming_the_field() -> None:
    raw: dict[str, Any] = {
        "model": {"type": "qwen2_vl"},
        "tasks": ["mme"],
        "resources": {"gpus": 2},
    }
    with pytest.raises(InvalidSpec) as exc:
        validate(raw)  # no memory declared
    assert [p.field for p in exc.value.problems] == ["spec.model.multiGPU"]
    assert validate(raw, ALL).model.multi_gpu is None  # the operator decides: Job's config
    raw["model"]["multiGPU"] = "ModelParallel"
    raw["resources"] = {"gpus": 2, "nodes": 2}
    with pytest.raises(InvalidSpec) as exc:
        validate(raw, ALL)
    assert "spec.model.multiGPU" in str(exc.value)


def test_the_presets_that_can_spread_a_model() -> None:
    from lmms_operator import catalogue

    cat = catalogue.load()
    spread = {t for t in presets.PRESETS if multigpu.splits(t, cat)}
    assert spread == set(presets.PRESETS) - {
        "instructblip", "phi3v", "video_llava", "internvideo2", "videochat2",
    }  # fmt: skip


# -- LMMS_GPU_MEMORY -------------------------------------------------------------------------
def test_the_setting_is_read_as_kubernetes_writes_quantities() -> None:
    memory = multigpu.parse_gpu_memory(" nvidia.com/gpu = 80Gi , amd.com/gpu=192G,x.io/g=1.5Ti,")
    assert memory.of("nvidia.com/gpu") == 80 * 2**30
    assert memory.of("amd.com/gpu") == 192 * 10**9
    assert memory.of("x.io/g") == int(1.5 * 2**40)
    assert memory.of("nvidia.com/mig-1g.10gb") is None
    assert multigpu.parse_gpu_memory("") == multigpu.UNDECLARED


@pytest.mark.parametrize(
    "raw",
    [
        "nvidia.com/gpu",  # no quantity
        "gpu=80Gi",  # not an extended resource name
        "nvidia.com/gpu=80GB",  # not a Kubernetes unit
        "nvidia.com/gpu=0",
        "nvidia.com/gpu=-1Gi",
        "nvidia.com/gpu=80Gi,nvidia.com/gpu=40Gi",  # twice
        "nvidia.com/gpu=1e3",
        "nvidia.com/gpu=" + "9" * 400,  # more than a float holds
    ],
)
def test_a_setting_that_cannot_be_used_names_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match="LMMS_GPU_MEMORY"):
        multigpu.parse_gpu_memory(raw)


def test_the_operator_does_not_start_with_an_unusable_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LMMS_GPU_MEMORY", "nvidia.com/gpu=lots")
    assert cli_main.main(["run"]) == 2
    assert "LMMS_GPU_MEMORY" in capsys.readouterr().err
    monkeypatch.setenv("LMMS_GPU_MEMORY", "nvidia.com/gpu=80Gi")
    s = Settings.from_env()
    assert (
        s.policy.gpu_memory
        == s.runner.gpu_memory
        == multigpu.parse_gpu_memory("nvidia.com/gpu=80Gi")
    )


NAME = st.from_regex(
    r"[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){1,2}/[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?",
    fullmatch=True,
)
UNIT = st.sampled_from(["", "Ki", "Mi", "Gi", "Ti", "k", "M", "G", "T"])


@settings(derandomize=True, max_examples=200, deadline=None)
@given(declared=st.dictionaries(NAME, st.tuples(st.integers(1, 4096), UNIT), max_size=6))
def test_any_declared_map_reads_back_exactly(declared: dict[str, tuple[int, str]]) -> None:
    raw = ",".join(f"{name}={n}{unit}" for name, (n, unit) in declared.items())
    memory = multigpu.parse_gpu_memory(raw)
    units = {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    units.update({"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12})
    assert dict(memory.per_resource) == {k: n * units[u] for k, (n, u) in declared.items()}


@settings(derandomize=True, max_examples=300, deadline=None)
@given(
    raw=st.text(alphabet=st.sampled_from("nvidia.com/gpu=80Gi,- \t.1eKx/"), max_size=40)
    | st.text(max_size=40)
)
def test_any_text_is_read_or_refused_by_name(raw: str) -> None:
    try:
        memory = multigpu.parse_gpu_memory(raw)
    except ValueError as exc:
        assert str(exc).startswith("LMMS_GPU_MEMORY")
    else:
        assert all(size > 0 for _, size in memory.per_resource)
