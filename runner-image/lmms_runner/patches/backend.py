"""The model backend that lmms-eval's command line names, imported with lmms-eval.

lmms-eval imports the module of the backend that ``--model`` names only once the run has
started. ``preimport_model`` imports it during the start instead, while the collector is
off, so that what it builds is frozen out of the collector's reach with the rest of the
imports (``gc_freeze``), and the code cache learns its dataclasses. ``model_name`` and
``API_BACKENDS`` tell the patches that apply to one kind of backend only (the ones that
send every request to a server and hold no model) which kind the command runs.
"""

from __future__ import annotations

#: The lmms-eval versions whose backend names and registry this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

#: lmms-eval's model backends that send every request to a server and hold no model of
#: their own: its OpenAI-compatible backend (``openai``, plain and chat). They make no
#: meta or fake tensors; a backend that loads a model does, through transformers or
#: accelerate.
API_BACKENDS = frozenset({"openai"})


def model_name(argv: list[str]) -> str | None:
    """The model backend that ``--model`` names, if any."""
    try:
        return argv[argv.index("--model") + 1]
    except (ValueError, IndexError):
        return None


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
