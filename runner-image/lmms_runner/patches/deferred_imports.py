"""What lmms-eval's start imports and only some runs use, imported on its first use.

lmms-eval's start imports, before any run begins: Hugging Face's ``evaluate`` (with
``transformers.pipelines``), which ``lmms_eval.api.registry`` imports for the metrics that
call ``hf_evaluate.load``; ``boto3``, which accelerate imports for SageMaker's
configuration; the LLM-judge package (with aiohttp, requests and the judges' clients), which
``lmms_eval.evaluator`` imports for ``--launcher_args`` only (the tasks that use a judge
import it themselves); the OpenAI client's Responses API types, which ``openai.types``
imports whole though the chat backends use a dozen of them; the client's vendored aiohttp
transport, which its package imports only to export it; sacrebleu, for three metrics; and
through ``optional_import`` the video helpers of ``qwen_vl_utils`` (with torchvision and
torch's compiler) and decord's video reader, which only some backends call. ``install``
makes each of them a stand-in that imports the real module (or function) on its first use,
so a run that never uses one never imports it, and one that does gets the real thing.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from .. import importhooks
from ..deferred import defer, lazy_function

#: The lmms-eval versions (and the libraries they pin) whose imports this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

#: Modules imported when one of their attributes is first used.
DEFERRED = (
    "evaluate",
    # accelerate imports boto3 (for SageMaker's configuration) only to call it later.
    "boto3",
    # The judges' launcher and providers; the tasks that use a judge import it.
    "lmms_eval.llm_judge",
    # The chat backends use a dozen of the Responses API's types, which load as
    # submodules; ``client.responses`` imports the rest when it is first used.
    "openai.types.responses",
    # lmms_eval.api.metrics imports it for its BLEU, chrF and TER metrics, which call it.
    "sacrebleu",
)

#: The OpenAI client's vendored aiohttp transport: its package imports it (and with it
#: aiohttp, which makes its SSL contexts at import) only to export it, for
#: ``DefaultAioHttpClient``, whose client imports it itself when it makes a transport.
AIOHTTP_PACKAGE = "openai._vendor.httpx_aiohttp"
AIOHTTP_ORIGINAL = "from .transport import AiohttpTransport\n"
AIOHTTP_REPLACEMENT = (
    'def __getattr__(name): return __import__("lmms_runner.patches.deferred_imports",'
    ' fromlist=["vendored_transport"]).vendored_transport(__name__, name)\n'
)

#: (module, function) that lmms-eval takes through ``optional_import`` at import time and
#: that only some backends call.
LAZY_FUNCTIONS = {
    ("qwen_vl_utils", "fetch_video"),
    ("qwen_vl_utils", "process_vision_info"),
    # The API backends' and ``lmms_eval.protocol``'s video reader (decord loads its
    # FFmpeg libraries at import); they only call these two.
    ("decord", "VideoReader"),
    ("decord", "cpu"),
}


def install() -> None:
    """Every deferral above; ``lazy_optional_imports`` imports ``lmms_eval`` itself."""
    for name in DEFERRED:
        defer(name)
    lazy_aiohttp_transport()
    lazy_optional_imports()


def vendored_transport(package: str, name: str) -> Any:
    """The package's ``AiohttpTransport``, imported on first use."""
    if name != "AiohttpTransport":
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    return importlib.import_module(f"{package}.transport").AiohttpTransport


def lazy_aiohttp_transport() -> bool:
    """The OpenAI client without aiohttp until an aiohttp client makes its transport.
    Where aiohttp is not installed the package is left as it is: its import fails, and
    the client says so as before."""
    if importlib.util.find_spec("aiohttp") is None:
        return False
    return importhooks.patch_source(AIOHTTP_PACKAGE, AIOHTTP_ORIGINAL, AIOHTTP_REPLACEMENT)


def lazy_optional_imports() -> None:
    """``optional_import`` hands out the functions in ``LAZY_FUNCTIONS`` as stand-ins that
    import their module on the first call (when it is installed; otherwise as before)."""
    from lmms_eval import imports

    original = imports.optional_import

    def optional_import(
        module_name: str, attribute: str | None = None, fallback: Any = None
    ) -> Any:
        if (
            attribute is not None
            and (module_name, attribute) in LAZY_FUNCTIONS
            and importlib.util.find_spec(module_name) is not None
        ):
            return lazy_function(module_name, attribute), True
        return original(module_name, attribute, fallback)

    imports.optional_import = optional_import
