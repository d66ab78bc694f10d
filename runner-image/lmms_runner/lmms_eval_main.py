"""``python -m lmms_runner.lmms_eval_main ARGS``: lmms-eval's own command line, with one
change to its response cache (``--use_cache``) so that a killed attempt keeps what the
model already answered.

lmms-eval 0.7.3's ``ResponseCache.execute`` sends every uncached request of a type to
the model in one call and stores the answers only when that call returns
(``caching/response_cache.py``: ``new_resps = getattr(lm, reqtype)(uncached)``, then the
store loop): a pod killed in the middle of a task loses every answer of it, whatever
``LMMS_CACHE_CHECKPOINT_INTERVAL`` says. Here the uncached requests go to the model in
chunks of that many, each chunk stored (and committed) before the next, so a restart
asks again for at most one chunk. Answers are the same (one request, one answer; the
cache serves only deterministic requests). Before each chunk a line
``lmms-runner: answered N/TOTAL`` tells the runner's progress tracker where the whole
request type stands, since each chunk has a progress bar of its own.

It also starts faster than ``python -m lmms_eval``, with the same results:

- lmms-eval's built-in task index comes from a file (``taskindex``) instead of reading
  about 2,000 YAML files at every start, and so does transformers' structure of its
  model modules (``transformersindex``), which ``import transformers`` otherwise builds
  by reading and parsing some 2,600 files (about 0.4 CPU-s);
- the table of Unicode punctuation that ``lmms_eval.filters.extraction`` builds in a
  class body, by asking for the category of each of the 1.1 million code points (about
  0.3 CPU-s), comes from a file as well (``punctuation``), and so does the code of the
  methods ``dataclasses`` compiles from text for each class (``codecache``: some 1,500
  texts at a start with torch, about 0.2 CPU-s);
- Hugging Face's ``evaluate`` library, which ``lmms_eval.api.registry`` imports at the
  top (and which imports ``transformers.pipelines``: about 6 s of the 10 s lmms-eval takes
  to import), is imported when a metric first uses it (``hf_evaluate.load``), not before,
  and so is ``boto3``, which accelerate imports for SageMaker (about 0.2 s);
- the LLM-judge package, which ``lmms_eval.evaluator`` imports for its launcher (only
  ``--launcher_args`` uses it) and whose providers import aiohttp, requests and the
  judges' clients (about 0.35 s), is imported when first used (the tasks that use a
  judge import it themselves);
- so is the package of the OpenAI client's Responses API types (some 250 modules, about
  0.2 s), which ``openai.types`` imports whole: the chat backends load the dozen of its
  modules they use, and the client's ``responses`` resource the rest;
- and so is the client's vendored aiohttp transport (with aiohttp, which makes its SSL
  contexts at import: about 0.12 s), which its package imports only to export it: the
  aiohttp client (``DefaultAioHttpClient``) imports it when it makes a transport;
- ``qwen_vl_utils``' ``fetch_video`` and ``process_vision_info``, which
  ``lmms_eval.protocol`` and the Qwen backends take through ``optional_import`` (and which
  import torchvision and torch's compiler: about 2.5 s), are imported when first called:
  the API backends and most others never call them; so are decord's ``VideoReader`` and
  ``cpu``, which the API backends take the same way for videos (0.06 s), and sacrebleu,
  which ``lmms_eval.api.metrics`` imports for three metrics (0.07 s);
- with the OpenAI-compatible backend, which holds no model, in a process of its own,
  torch and accelerate are not imported until something uses them (``lazytorch``,
  ``torch_on_first_use``), and nothing in such a run does: lmms-eval imports them in
  nearly every module only to ask what is known before torch exists. Its modules get
  stand-ins that answer that (no process group, a seed kept for torch's import, values
  assigned to torch's modules kept for them); ``lmms_eval.utils`` and transformers'
  stopping criteria keep the annotations that name torch's types as text (PEP 563);
  ``cli_evaluate``, the backend, the evaluator and the tasks get ``SingleProcessAccelerator``
  (one process, the main one); ``lmms.clean`` has no torch modules or CUDA cache to
  clear; datasets is told torch is not available until it is imported. That is 1.5 to 2
  CPU-s of a start of about 4;
- where torch is imported all the same, with the OpenAI-compatible backend it comes
  without what only models, compilers and CUDA code of one's own use (``API_UNUSED``): its
  Python meta kernels (``torch._meta_registrations``, with the decompositions,
  references and primitives it imports: about 0.65 CPU-s), which only meta and fake
  tensors use; ``torch.export`` (with the FX passes it imports: about 0.1 CPU-s);
  ``torch.distributions``; and NVIDIA's CUDA bindings (``cuda.bindings.driver`` and
  ``runtime``: about 0.1 CPU-s), which ``torch.cuda`` imports for NVRTC, green contexts
  and graph annotations. Each is imported on its first use, and all of them as soon as
  something that makes meta or fake tensors is (``torch._decomp``, ``torch._dynamo``,
  transformers' model loading, diffusers: ``defer_torch_unused``);
- datasets, which extends a dataset builder's module for streaming at every load, no
  longer imports ``scipy.io`` (with ``scipy.sparse``: about 0.09 CPU-s) for it when
  nothing has imported scipy: the module cannot hold it, and the patch changed nothing
  (``lean_streaming_patches``);
- ``stderr_for_metric``, called for every metric once the answers are in, imports two
  tasks' modules (``amber_g``, ``coco_cap_chair``: nltk, spacy and scipy, about 2 s) only
  to compare the metric with their functions: a metric from any other module is none of
  them, so for it they are not imported;
- Python's cyclic garbage collector is off while lmms-eval and the run's model backend
  are imported, and what they built (about 560,000 objects: torch, transformers,
  datasets, the OpenAI client) is then frozen (``gc.freeze``) out of its reach. Each
  full collection walks every object it tracks: importing triggers several of them,
  each later one in the run walked these objects again, and so did the interpreter's
  exit (about 1.3 s of CPU on its own). That garbage (a few hundred objects of the
  imports) is never freed, which Python's documentation of ``gc.freeze`` allows for.
  The run's own objects are collected as before. Together this is about a third of a
  start's CPU. (Where triton is loaded, the exit collects everything as before:
  ``LEAK_CHECKED``.)

And it ends sooner, with the same output:

- pytablewriter (about 250 modules, 0.25 CPU-s), which lmms-eval imports for its results
  table once every answer is in, is imported while the model answers the second chunk
  (``prefetch``);
- once the interpreter has finished its exit (every Python object finalized, every file
  flushed and closed), the process ends with its status, without the C++ libraries'
  destructors (torch's, CUDA's: about 0.17 CPU-s; ``skip_library_teardown``).

On a shared node that is CPU the pods of a fan-out would otherwise all spend in the same
last second.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import importlib.machinery
import importlib.util
import os
import sys
import threading
import types
from typing import Any

from . import codecache, importhooks, lazytorch, punctuation, taskindex, transformersindex


class _Deferred(lazytorch.ModuleFromSpec):
    """A module that is imported on its first use."""

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return getattr(_import_deferred(self), attr)


def _import_deferred(deferred: _Deferred) -> types.ModuleType:
    """The module that ``deferred`` stands for, imported now. (A function, not a method:
    every name on ``_Deferred`` hides the module's attribute of that name.)"""
    name = deferred.__name__
    if sys.modules.get(name) is deferred:
        del sys.modules[name]
    module = importlib.import_module(name)
    # Submodules imported meanwhile (``import package.sub`` finds them through
    # ``__path__`` without running the package) stay reachable as attributes.
    for key, value in list(vars(deferred).items()):
        if isinstance(value, types.ModuleType) and not hasattr(module, key):
            setattr(module, key, value)
    return module


def defer(name: str) -> None:
    """Imports ``name`` only when one of its attributes is first used. A submodule is also
    its package's attribute, as after an import: now, if the package is imported, else
    as soon as it is (the package is not imported to find the submodule)."""
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    spec = _find_unimported(name) if parent and parent not in sys.modules else None
    try:
        spec = spec or importlib.util.find_spec(name)  # which may import the packages
    except ImportError:  # a package of it is not installed
        return
    if spec is None or name in sys.modules:
        return
    deferred = _Deferred(spec)
    sys.modules[name] = deferred
    if parent:
        importhooks.after_import(parent, lambda package: _set_if_missing(package, child, deferred))


def _set_if_missing(package: types.ModuleType, child: str, module: types.ModuleType) -> None:
    if child not in vars(package):
        setattr(package, child, module)


def _find_unimported(name: str) -> importlib.machinery.ModuleSpec | None:
    """The spec of ``name`` found through its packages' paths, none of them imported."""
    parts = name.split(".")
    spec = importlib.util.find_spec(parts[0])
    for depth in range(2, len(parts) + 1):
        if spec is None or spec.submodule_search_locations is None:
            return None
        path = list(spec.submodule_search_locations)
        spec = importlib.machinery.PathFinder.find_spec(".".join(parts[:depth]), path)
    return spec


def _chunked_execute(original: Any) -> Any:
    def execute(self: Any, lm: Any, reqtype: str, requests: list[Any]) -> list[Any]:
        try:
            size = int(os.environ.get("LMMS_CACHE_CHECKPOINT_INTERVAL") or 0)
        except ValueError:
            size = 0
        if size <= 0 or len(requests) <= size:
            return list(original(self, lm, reqtype, requests))
        out: list[Any] = []
        for start in range(0, len(requests), size):
            print(f"lmms-runner: answered {start}/{len(requests)}", file=sys.stderr, flush=True)
            if start:
                prefetch(AFTER_ANSWERS)
            out += original(self, lm, reqtype, requests[start : start + size])
        print(f"lmms-runner: answered {len(requests)}/{len(requests)}", file=sys.stderr, flush=True)
        return out

    return execute


#: What lmms-eval imports only once every answer is in: pytablewriter, for its results
#: table (about 250 modules with chardet and typepy, 0.25 CPU-s).
AFTER_ANSWERS = ("pytablewriter",)
_prefetching: list[threading.Thread] = []


def prefetch(modules: tuple[str, ...]) -> None:
    """Imports ``modules`` in a thread of their own, once: called when the model has
    answered a first chunk, so the start is over and the process mostly waits for the
    model. What would run after the last answer runs meanwhile. A module that fails to
    import is left to fail where lmms-eval imports it."""
    if _prefetching:
        return

    def run() -> None:
        for name in modules:
            with contextlib.suppress(Exception):
                importlib.import_module(name)

    thread = threading.Thread(target=run, name="lmms-runner-prefetch", daemon=True)
    _prefetching.append(thread)
    thread.start()


def _api_backends_data_parallel() -> None:
    """lmms-eval 0.7.3's OpenAI-compatible backend (``models/simple/openai.py``), which the
    chat variant extends, is wrong for more than one process in two ways:

    - it asserts that accelerate reports FSDP, MULTI_GPU or DEEPSPEED, though it never
      touches the device, so it refuses CPU processes (MULTI_CPU, gloo);
    - it takes ``local_process_index`` as its rank, so on two nodes both processes are
      rank 0: both evaluate every document, and both write results.

    Under torchrun (``WORLD_SIZE`` > 1) it is built as if on GPUs, and its rank is the
    global process index."""
    if int(os.environ.get("WORLD_SIZE") or 1) <= 1:
        return
    from accelerate import Accelerator
    from accelerate.utils import DistributedType
    from lmms_eval.models.simple import openai

    original = openai.OpenAICompatible.__init__
    reported = Accelerator.distributed_type

    def as_gpu(self: Any) -> Any:
        kind = reported.fget(self)
        return DistributedType.MULTI_GPU if kind == DistributedType.MULTI_CPU else kind

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        Accelerator.distributed_type = property(as_gpu)
        try:
            original(self, *args, **kwargs)
        finally:
            Accelerator.distributed_type = reported
        self._rank = self.accelerator.process_index
        self._world_size = self.accelerator.num_processes

    openai.OpenAICompatible.__init__ = init


#: The OpenAI client's vendored aiohttp transport: its package imports it (and with it
#: aiohttp, which makes its SSL contexts at import: about 0.12 s) only to export it, for
#: ``DefaultAioHttpClient``, whose client imports it itself when it makes a transport.
AIOHTTP_PACKAGE = "openai._vendor.httpx_aiohttp"
AIOHTTP_ORIGINAL = "from .transport import AiohttpTransport\n"
AIOHTTP_REPLACEMENT = (
    'def __getattr__(name): return __import__("lmms_runner.lmms_eval_main",'
    ' fromlist=["vendored_transport"]).vendored_transport(__name__, name)\n'
)


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


#: (module, function) that lmms-eval takes through ``optional_import`` at import time and
#: that only some backends call.
LAZY_FUNCTIONS = {
    ("qwen_vl_utils", "fetch_video"),
    ("qwen_vl_utils", "process_vision_info"),
    # The API backends' and ``lmms_eval.protocol``'s video reader (decord loads its
    # FFmpeg libraries at import: about 0.06 s); they only call these two.
    ("decord", "VideoReader"),
    ("decord", "cpu"),
}


def _lazy_function(module: str, name: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    return call


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
            return _lazy_function(module_name, attribute), True
        return original(module_name, attribute, fallback)

    imports.optional_import = optional_import


#: Modules that lmms-eval's ``stderr_for_metric`` imports at every call, only to compare
#: the metric with functions of theirs.
CHAIR_MODULES = ("lmms_eval.tasks.amber_g.utils", "lmms_eval.tasks.coco_cap_chair.utils")


def lean_stderr_for_metric() -> None:
    """``stderr_for_metric`` without importing ``CHAIR_MODULES`` for a metric that is not
    theirs. lmms-eval skips a module whose import fails (``except Exception``), as when
    its dependencies are missing; blocking the import in ``sys.modules`` for the call
    gives the very answer: the metric is none of that module's functions, since a metric
    from it means the module is imported already (and then nothing is blocked)."""
    from lmms_eval import evaluator_utils
    from lmms_eval.api import metrics

    original = metrics.stderr_for_metric

    def stderr_for_metric(metric: Any, bootstrap_iters: int) -> Any:
        if getattr(metric, "__module__", None) in CHAIR_MODULES or any(
            m in sys.modules for m in CHAIR_MODULES
        ):
            return original(metric, bootstrap_iters)
        for m in CHAIR_MODULES:
            sys.modules[m] = None  # type: ignore[assignment]  # the import raises ImportError
        try:
            return original(metric, bootstrap_iters)
        finally:
            for m in CHAIR_MODULES:
                if sys.modules.get(m, ...) is None:
                    del sys.modules[m]

    metrics.stderr_for_metric = stderr_for_metric
    evaluator_utils.stderr_for_metric = stderr_for_metric


#: Extensions that report, at the interpreter's exit, their objects still alive as leaks
#: (nanobind's check, which prints hundreds of lines): triton's, which torch's compiler
#: and some local backends import. Objects frozen at the exit would be such objects, so
#: where one of these is loaded the exit collects everything, as it would without
#: ``gc.freeze``.
LEAK_CHECKED = ("triton._C.libtriton", "triton._C.libproton")


def model_name(argv: list[str]) -> str | None:
    """The model backend that ``--model`` names, if any."""
    try:
        return argv[argv.index("--model") + 1]
    except (ValueError, IndexError):
        return None


#: lmms-eval's model backends that send every request to a server and hold no model of
#: their own: its OpenAI-compatible backend (``openai``, plain and chat). They make no
#: meta or fake tensors; a backend that loads a model does, through transformers or
#: accelerate.
API_BACKENDS = frozenset({"openai"})

#: The modules that use meta or fake tensors: torch's decompositions (which fake tensors,
#: ``torch.compile`` and ``torch.export`` go through) and the libraries that load a model
#: onto the meta device first. When one of them is imported, so is ``API_UNUSED``.
META_USERS = ("torch._decomp", "torch._dynamo", "transformers.modeling_utils", "diffusers")
META_REGISTRATIONS = "torch._meta_registrations"
#: What ``import torch`` loads and a backend in ``API_BACKENDS`` does not use: torch's
#: Python meta kernels, ``torch.export`` (with the FX passes it imports),
#: ``torch.distributions``, and NVIDIA's CUDA bindings, which ``torch.cuda._utils``
#: imports for NVRTC, green contexts and graph annotations.
API_UNUSED = (
    META_REGISTRATIONS,
    "torch.export",
    "torch.distributions",
    "cuda.bindings.driver",
    "cuda.bindings.runtime",
)


def defer_torch_unused(argv: list[str]) -> bool:
    """For a backend in ``API_BACKENDS``, ``import torch`` without ``API_UNUSED`` (about
    0.85 CPU-s of the 2 to 2.5 that torch takes, 0.65 of it the meta kernels). The meta
    kernels compute the shapes of operators on meta tensors, which only models (loaded
    onto the meta device first, or traced by ``torch.compile``) make. Each module is
    imported when something first asks it for a name, and all of them as soon as one
    of ``META_USERS`` is imported. A meta tensor made without any of them meets an
    operator whose meta kernel is one of these with torch's own error
    (``NotImplementedError: ... with Meta tensors``), never a wrong result. False (and
    nothing changed) for any other backend, or where torch is imported already."""
    if model_name(argv) not in API_BACKENDS or "torch" in sys.modules:
        return False
    for name in API_UNUSED:
        defer(name)
    for name in META_USERS:
        importhooks.after_import(name, lambda _module: load_torch_unused())
    return True


#: Modules that evaluate, at import, annotations that name torch's types (``List[
#: torch.Tensor]``): compiled with postponed annotations (PEP 563, as if they started with
#: ``from __future__ import annotations``), they keep them as text. Nothing reads these
#: modules' annotations at run time.
POSTPONED_ANNOTATIONS = (
    # pad_and_concat(tensors: List[torch.Tensor]), get_dtype(...) -> torch.dtype, and
    # MultiTokenEOSCriteria(transformers.StoppingCriteria), whose module follows.
    "lmms_eval.utils",
    "transformers.generation.stopping_criteria",
)
#: datasets' pickler registers torch's tensor and generator types once it finds torch in
#: ``sys.modules``; it asks ``lazytorch.imported`` instead.
DILL_MODULE = "datasets.utils._dill"
DILL_ORIGINAL = '            if "torch" in sys.modules:\n'
DILL_REPLACEMENT = (
    '            if __import__("lmms_runner.lazytorch").lazytorch.imported("torch"):\n'
)
#: The modules of lmms-eval 0.7.3 that build an ``Accelerator`` in a single process:
#: ``cli_evaluate`` (for ``is_main_process`` and ``wait_for_everyone``), the
#: OpenAI-compatible backend (for its rank and world size), the evaluator (for a model
#: without one) and tasks that download videos (for ``is_main_process``).
ACCELERATOR_USERS = (
    "lmms_eval.__main__",
    "lmms_eval.models.simple.openai",
    "lmms_eval.evaluator",
    "lmms_eval.api.task",
)


def torch_on_first_use(argv: list[str]) -> bool:
    """For a backend in ``API_BACKENDS`` in a process of its own, torch and accelerate
    are imported when first used (``lazytorch``); with the OpenAI-compatible backend
    nothing in a run uses them. False (and nothing changed) for any other backend, under
    torchrun (``WORLD_SIZE`` > 1: accelerate and torch.distributed do the work), or where
    torch is imported already."""
    if model_name(argv) not in API_BACKENDS or int(os.environ.get("WORLD_SIZE") or 1) > 1:
        return False
    if not lazytorch.install():
        return False
    for module in POSTPONED_ANNOTATIONS:
        importhooks.postpone_annotations(module)
    importhooks.patch_source(DILL_MODULE, DILL_ORIGINAL, DILL_REPLACEMENT)
    importhooks.after_import("datasets", _datasets_without_torch)
    for module in ACCELERATOR_USERS:
        importhooks.after_import(module, _single_process_accelerator)
    importhooks.after_import("lmms_eval.api.model", _clean_without_torch)
    return True


def _datasets_without_torch(_datasets: types.ModuleType) -> None:
    """datasets asks ``config.TORCH_AVAILABLE and "torch" in sys.modules`` before it looks
    for tensors among the objects it encodes: until torch is imported there are none, so
    it is told torch is not available (once its own import, which registers torch's
    formatter by it, is done), and told again that it is when torch is imported."""
    config = importlib.import_module("datasets.config")
    if not getattr(config, "TORCH_AVAILABLE", False) or lazytorch.loaded():
        return
    setattr(config, "TORCH_AVAILABLE", False)  # noqa: B010
    lazytorch.on_load(lambda: setattr(config, "TORCH_AVAILABLE", True))


class SingleProcessAccelerator:
    """What lmms-eval 0.7.3 reads from accelerate's ``Accelerator`` in a process of its
    own (``WORLD_SIZE`` unset or 1): one process, index 0, the main one, whose
    ``wait_for_everyone`` has nobody to wait for. The OpenAI-compatible backend keeps its
    device without using it; accelerate makes it on first use. (``cli_evaluate`` also
    hands accelerate a process group timeout, which one process has no group to use
    for.)"""

    num_processes = 1
    process_index = 0
    local_process_index = 0
    is_main_process = True
    is_local_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    @property
    def device(self) -> Any:
        return lazytorch.LazyValue(
            lambda: lazytorch.attribute("accelerate", "PartialState")().device
        )

    @property
    def distributed_type(self) -> Any:
        return lazytorch.attribute("accelerate", "DistributedType").NO


class _Handler:
    """``InitProcessGroupKwargs(**kwargs)`` as ``cli_evaluate`` makes it, made for real
    only if it reaches accelerate's own ``Accelerator``."""

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    def real(self) -> Any:
        return lazytorch.attribute("accelerate.utils", "InitProcessGroupKwargs")(**self.kwargs)


def _accelerator(*args: Any, **kwargs: Any) -> Any:
    """``Accelerator(...)`` as lmms-eval calls it: ``SingleProcessAccelerator`` while
    torch is not imported, accelerate's own after."""
    if not lazytorch.loaded():
        return SingleProcessAccelerator()
    handlers = kwargs.get("kwargs_handlers")
    if handlers:
        kwargs["kwargs_handlers"] = [h.real() if isinstance(h, _Handler) else h for h in handlers]
    return lazytorch.attribute("accelerate", "Accelerator")(*args, **kwargs)


def _single_process_accelerator(module: types.ModuleType) -> None:
    """lmms-eval's ``cli_evaluate`` and OpenAI-compatible backend, in a process of their
    own, build ``_accelerator`` (and ``_Handler``) instead of accelerate's classes."""
    setattr(module, "Accelerator", _accelerator)  # noqa: B010
    if hasattr(module, "InitProcessGroupKwargs"):
        setattr(module, "InitProcessGroupKwargs", _Handler)  # noqa: B010


def _clean_without_torch(module: types.ModuleType) -> None:
    """``lmms.clean()``, which the evaluator calls once every answer is in, while torch is
    not imported: accelerate's ``free_memory`` where the model's accelerator has it (as
    before), and the collection, but no search for torch modules among the model's
    attributes and no emptying of torch's CUDA cache: before torch is imported there is
    no such module and no such cache. After, the original runs."""
    base = module.lmms
    original = base.clean

    def clean(self: Any) -> None:
        if lazytorch.loaded():
            original(self)
            return
        accelerator = getattr(self, "accelerator", None)
        if accelerator is not None and hasattr(accelerator, "free_memory"):
            accelerator.free_memory()
        gc.collect()

    base.clean = clean


def load_torch_unused() -> None:
    """``API_UNUSED``, imported now where they were deferred."""
    for name in API_UNUSED:
        deferred = sys.modules.get(name)
        if isinstance(deferred, _Deferred):
            _import_deferred(deferred)


def lean_streaming_patches() -> None:
    """datasets' ``patch_submodule`` without importing what the module it patches cannot
    hold. At every load datasets extends the dataset builder's module for streaming:
    for each target (``scipy.io.loadmat``, ``xml.dom.minidom.parse``, ``gzip.open``...)
    it imports the target's modules, then looks for them, and for the target, among the
    module's globals. When the target's top package is not imported yet, none of its
    globals can be that package, one of its modules, or something taken from them, so
    the patch would change nothing: it is left out, and so is the import (``scipy.io``
    and ``scipy.sparse``, about 0.09 CPU-s of a start)."""

    def install(patching: types.ModuleType) -> None:
        original = patching.patch_submodule.__enter__

        def enter(self: Any) -> None:
            package, dot, _ = self.target.partition(".")
            if dot and package not in sys.modules:
                return
            original(self)

        patching.patch_submodule.__enter__ = enter

    importhooks.after_import("datasets.utils.patching", install)


def preimport_model(argv: list[str]) -> None:
    """Imports the module of the model backend that ``--model`` names, as lmms-eval will
    once the run starts (a name it does not know is left for lmms-eval to report)."""
    name = model_name(argv)
    if name is None:
        return
    from lmms_eval.models import MODEL_REGISTRY_V2

    try:
        MODEL_REGISTRY_V2.get_model_class(name)
    except Exception:  # lmms-eval says what is wrong when the run resolves it
        return


def skip_library_teardown() -> bool:
    """Ends the process as soon as the interpreter has finished its own exit, with its
    exit status: after the atexit handlers, after every Python object is finalized and
    every file Python holds is flushed and closed, the C stdio streams are flushed and
    closed too (``fcloseall``), and the process ends (``_exit``). What is left out is the
    C and C++ libraries' own teardown: the destructors of the libraries loaded so far
    (torch's operator registry, CUDA's contexts), about 0.17 of the 0.22 CPU-s the exit
    takes, which only give back memory and handles the kernel reclaims anyway. False
    where the C library has no ``on_exit`` (glibc has)."""
    try:
        libc = ctypes.CDLL(None)
        on_exit, end, flush = libc.on_exit, libc._exit, libc.fcloseall
    except (OSError, AttributeError):
        return False
    on_exit.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    on_exit.restype = ctypes.c_int
    # exit() calls these last-registered first, each as handler(status, NULL): fcloseall
    # ignores both, then _exit(status) ends the process with the interpreter's status.
    if on_exit(ctypes.cast(end, ctypes.c_void_p), None) != 0:
        return False
    on_exit(ctypes.cast(flush, ctypes.c_void_p), None)
    return True


def prepare(argv: list[str]) -> None:
    """Everything before lmms-eval's command line runs: the shortcuts above, lmms-eval and
    the model backend that ``argv`` names imported (the code cache builds from this)."""
    defer_torch_unused(argv)  # before anything imports torch
    torch_on_first_use(argv)  # after it: its deferred modules are found as they are
    lean_streaming_patches()  # before anything imports datasets
    transformersindex.install()  # before anything imports transformers
    punctuation.install()  # before anything imports lmms_eval.filters
    defer("evaluate")
    # accelerate imports boto3 (for SageMaker's configuration) only to call it later.
    defer("boto3")
    # lmms_eval.evaluator imports the LLM-judge launcher, and with it the package's
    # providers (aiohttp, requests, the judges' clients: about 0.35 s), for
    # ``--launcher_args`` only; the tasks that use a judge import the package
    # themselves.
    defer("lmms_eval.llm_judge")
    # The OpenAI client imports its whole ``types`` package, and with it the ~250
    # modules of the Responses API's types (about 0.2 s); the chat backends use a
    # dozen of them, which load as submodules, and ``client.responses`` imports the
    # rest when it is first used.
    defer("openai.types.responses")
    lazy_aiohttp_transport()
    # lmms_eval.api.metrics imports sacrebleu (with tabulate, wcwidth, portalocker and
    # lxml: about 0.07 s) for its BLEU, chrF and TER metrics, which call it.
    defer("sacrebleu")
    lazy_optional_imports()
    taskindex.install()
    from lmms_eval.caching import response_cache

    cache = response_cache.ResponseCache
    cache.execute = _chunked_execute(cache.execute)
    _api_backends_data_parallel()
    lean_stderr_for_metric()
    import lmms_eval.__main__  # noqa: F401

    preimport_model(argv)


def main() -> None:
    gc.disable()
    try:
        code = codecache.install()  # before the imports that make dataclasses
        prepare(sys.argv)
        code.save_new()
    finally:
        gc.freeze()
        gc.enable()
    from lmms_eval.__main__ import cli_evaluate

    skip_library_teardown()
    try:
        cli_evaluate()
    finally:
        if any(m in sys.modules for m in LEAK_CHECKED):
            gc.unfreeze()  # collected at the exit as usual, reported by nobody
        else:
            gc.freeze()  # the interpreter's exit need not walk the run's objects either


if __name__ == "__main__":
    main()
