"""Model presets: the default ``pretrained`` and backend arguments per lmms-eval model type.

When a user gives only ``spec.model.type``, the preset fills in a well-known checkpoint
and the arguments its backend needs; anything the user sets wins.

Each preset also knows its checkpoint's size (parameters, in billions, from the model
cards or the sum of their parts, rounded up), from which ``reconcile.multigpu`` tells
whether it fits on one GPU.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass(frozen=True)
class Preset:
    #: The checkpoint, passed as ``pretrained=``; None for a backend that names its
    #: checkpoint with another argument (in ``args``): lmms-eval refuses ``pretrained``.
    pretrained: str | None
    args: Mapping[str, str] = field(default_factory=dict)
    video: bool = False
    #: Parameters of the checkpoint, in billions (None: not known).
    params_b: float | None = None


PRESETS: Mapping[str, Preset] = MappingProxyType(
    {
        "llava": Preset("liuhaotian/llava-v1.5-7b", {"conv_template": "vicuna_v1"}, params_b=7.1),
        "llava_hf": Preset("llava-hf/llava-1.5-7b-hf", params_b=7.1),
        "llava_onevision": Preset(
            "lmms-lab/llava-onevision-qwen2-7b-ov",
            {"conv_template": "qwen_1_5", "model_name": "llava_qwen"},
            params_b=8.1,
        ),
        "qwen2_vl": Preset("Qwen/Qwen2-VL-7B-Instruct", {"max_pixels": "12845056"}, params_b=8.3),
        "qwen2_5_vl": Preset(
            "Qwen/Qwen2.5-VL-7B-Instruct", {"max_pixels": "12845056"}, params_b=8.3
        ),
        "llama_vision": Preset("meta-llama/Llama-3.2-11B-Vision-Instruct", params_b=10.7),
        "instructblip": Preset("Salesforce/instructblip-vicuna-7b", params_b=7.9),
        "whisper": Preset("openai/whisper-large-v3", params_b=1.6),
        "idefics2": Preset("HuggingFaceM4/idefics2-8b", params_b=8.4),
        "internvl2": Preset("OpenGVLab/InternVL2-8B", params_b=8.1),
        "phi3v": Preset(
            None, {"model_id_name": "microsoft/Phi-3-vision-128k-instruct"}, params_b=4.2
        ),
        # Video models.
        "llava_vid": Preset(
            "lmms-lab/LLaVA-Video-7B-Qwen2",
            {
                "conv_template": "qwen_1_5",
                "max_frames_num": "64",
                "mm_spatial_pool_mode": "average",
            },
            video=True,
            params_b=8.1,
        ),
        "longva": Preset(
            "lmms-lab/LongVA-7B", {"model_name": "llava_qwen"}, video=True, params_b=7.9
        ),
        "video_llava": Preset("LanguageBind/Video-LLaVA-7B-hf", video=True, params_b=7.4),
        "videollama3": Preset("DAMO-NLP-SG/VideoLLaMA3-7B", video=True, params_b=8.1),
        "internvideo2": Preset("OpenGVLab/InternVideo2-Chat-8B", video=True, params_b=8.4),
        "llama_vid": Preset("YanweiLi/llama-vid-7b-full-224-video-fps-1", video=True, params_b=8.0),
        "videochat2": Preset(
            "OpenGVLab/VideoChat2_HD_stage4_Mistral_7B_hf", video=True, params_b=7.9
        ),
    }
)


def resolve(
    model_type: str, pretrained: str | None, args: Mapping[str, str]
) -> tuple[str | None, dict[str, str]]:
    """The ``pretrained`` and model args to use: the user's values over the preset's."""
    preset = PRESETS.get(model_type)
    merged: dict[str, str] = dict(preset.args) if preset else {}
    merged.update(args)
    return pretrained or (preset.pretrained if preset else None), merged
