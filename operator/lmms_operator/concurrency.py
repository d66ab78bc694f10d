"""``spec.model.concurrency``: how many requests an OpenAI-compatible backend keeps in
flight, as the model args lmms-eval 0.7.3 reads. Pure; the operator validates with it and
the runner builds its command line with it, so a run by hand means the same.

lmms-eval 0.7.3's ``openai`` backend (``OpenAICompatible``; aliases ``openai_compatible``
and ``openai_compatible_chat``) sends a request type's requests from a thread pool and
keeps ``min(num_concurrent, adaptive_max_concurrency)`` of them in flight (32 and 128 by
default), whether adaptive concurrency is on or not; with ``adaptive_concurrency=true``
the number moves between ``adaptive_min_concurrency`` and ``adaptive_max_concurrency``.
Its ``async_openai`` backend keeps ``num_cpus`` requests in flight (half the machine's
CPUs by default), bounded the same way when adaptive. ``concurrency: N`` sets both
numbers to N, so N is the bound in every mode. Engine and endpoint runs use the
``openai`` backend too. Other backends either hold the model themselves or talk to an
API that is not OpenAI's: the field is refused there.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import Problem

FIELD = "spec.model.concurrency"
#: The schema's bounds (the API server and pydantic check them).
MIN, MAX = 1, 256

#: OpenAI-compatible backends, with the model arg that bounds their requests in flight.
CONCURRENCY_ARGS = {
    "openai": "num_concurrent",
    "openai_compatible": "num_concurrent",
    "openai_compatible_chat": "num_concurrent",
    "async_openai": "num_cpus",
    "async_openai_compatible": "num_cpus",
    "async_openai_compatible_chat": "num_cpus",
}
#: lmms-eval 0.7.3's OpenAI-compatible backends (the model's server speaks OpenAI's API).
OPENAI_COMPATIBLE = frozenset(CONCURRENCY_ARGS)
#: The other bound of both backends' requests in flight, and lmms-eval 0.7.3's default.
ADAPTIVE_MAX = "adaptive_max_concurrency"
ADAPTIVE_MAX_DEFAULT = 128
#: The ``openai`` backend's default ``num_concurrent``.
NUM_CONCURRENT_DEFAULT = 32


def model_args(model_type: str, concurrency: int | None) -> dict[str, str]:
    """The --model_args entries that make ``concurrency`` the bound (none when unset)."""
    if concurrency is None or model_type not in CONCURRENCY_ARGS:
        return {}
    return {CONCURRENCY_ARGS[model_type]: str(concurrency), ADAPTIVE_MAX: str(concurrency)}


def problems(model_type: str, concurrency: int | None, args: Mapping[str, str]) -> list[Problem]:
    """``concurrency`` on a backend that is not OpenAI-compatible, or beside a model arg
    that says the same thing another way."""
    if concurrency is None:
        return []
    if model_type not in CONCURRENCY_ARGS:
        backends = ", ".join(sorted(CONCURRENCY_ARGS))
        return [
            Problem(
                FIELD,
                f"model type {model_type!r} does not send requests to an OpenAI-compatible "
                f"server: concurrency applies only to {backends} (engine and endpoint runs "
                "use openai)",
            )
        ]
    return [
        Problem(FIELD, f"set either concurrency or model.args.{key}, not both")
        for key in (CONCURRENCY_ARGS[model_type], ADAPTIVE_MAX)
        if key in args
    ]


def in_flight(
    model_type: str, concurrency: int | None, args: Mapping[str, str], cpus: int
) -> int | None:
    """How many requests lmms-eval will keep in flight at most (None: not an
    OpenAI-compatible backend); ``cpus``: the machine's, for ``async_openai``'s default."""
    arg = CONCURRENCY_ARGS.get(model_type)
    if arg is None:
        return None
    if concurrency is not None:
        return concurrency
    default = NUM_CONCURRENT_DEFAULT if arg == "num_concurrent" else max(1, cpus // 2)
    bound = _int(args.get(arg), default)
    adaptive = args.get("adaptive_concurrency", "").strip().lower() in ("1", "true", "yes", "on")
    if arg == "num_concurrent" or adaptive:
        bound = min(bound, _int(args.get(ADAPTIVE_MAX), ADAPTIVE_MAX_DEFAULT))
    return max(1, bound)


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default
