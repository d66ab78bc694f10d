"""The guard around a pass over one run: what an exception means for the run.

A pass reads, decides and applies. Anything it raises is either *transient* (the API
server or an object store did not answer, a write conflicted, a referenced object is
not there yet: the engine retries it on its backoff) or *final* for this generation of
the run: retrying would raise it again, every 5 s, for ever. A final one ends the run
``Failed``, once (the status then reflects the generation, and the run is not passed
over again until its spec changes):

- ``InvalidSpec`` when the spec is what cannot be handled: a structure nested deeper
  than the code recurses (RecursionError), a value the models refuse (pydantic), a
  refusal the checks raise. The message names the field (``spec.scheduling.affinity:
  nested too deeply``); for depth, the field is found by an iterative walk of the spec.
- ``InternalError`` for anything else (a TypeError, a KeyError...): the operator's own
  bug, not the spec's. The tenant is told so (fixing their spec would not help, and an
  ``InvalidSpec`` would send them looking for a mistake they did not make); the operator's
  log holds the traceback. The message names the exception's type and where the operator
  raised it, never its text, which may quote the tenant's values.

Pure: no I/O, no clock (``now`` is passed in).
"""

from __future__ import annotations

import datetime as dt
import traceback
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from .. import errors
from ..api import GROUP, VERSION
from ..errors import Problem
from . import reasons as R
from .admission import invalid
from .plan import Plan

#: Nesting below ``spec`` beyond which a field is named as "nested too deeply" (a core/v1
#: Affinity is about 8 deep; the spec's own fields fewer).
MAX_DEPTH = 32
#: Fields walked at most when looking for the deepest one (a stored spec is at most
#: about 1.5 MiB, so fewer values than that).
MAX_WALK = 2_000_000


def transient(exc: BaseException) -> bool:
    """Whether the engine should retry the pass: the operator's own errors (the API
    server's answers, object stores, a referenced object missing, a publish to retry)
    and the network's. ``InvalidSpec`` is not: it is the spec's."""
    if isinstance(exc, errors.InvalidSpec):
        return False
    return isinstance(exc, errors.OperatorError | OSError)


def deepest(spec: Any, limit: int = MAX_DEPTH) -> str | None:
    """The path of the first field of ``spec`` nested more than ``limit`` levels, cut to
    the level where it goes too deep (``spec.scheduling.affinity.a``). Iterative, linear."""
    stack: list[tuple[Any, str, int]] = [(spec, "spec", 0)]
    walked = 0
    while stack and walked < MAX_WALK:
        value, path, depth = stack.pop()
        walked += 1
        if depth > limit:
            return path
        if isinstance(value, Mapping):
            stack += [(v, f"{path}.{k}", depth + 1) for k, v in value.items()]
        elif isinstance(value, list | tuple):
            stack += [(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
    return None


def _field_name(path: str, segments: int = 4) -> str:
    """A path cut to its first ``segments`` segments (``spec.a.b.c``)."""
    cuts = [i for i, char in enumerate(path) if char in ".["]
    return path[: cuts[segments - 1]] if len(cuts) >= segments else path


def _loc(loc: tuple[int | str, ...]) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _where(exc: BaseException) -> str:
    """Where the operator raised ``exc``: its innermost frame in the operator's code."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "lmms_operator" in f.filename] or frames
    if not ours:
        return "an unknown place"
    frame = ours[-1]
    module = frame.filename.rsplit("lmms_operator/", 1)[-1]
    return f"{module}:{frame.lineno} ({frame.name})"


def problems(exc: BaseException, spec: Any, stage: str) -> tuple[str, list[Problem]]:
    """The reason and problems a final exception of a pass ends the run with."""
    if isinstance(exc, errors.InvalidSpec):
        return R.INVALID_SPEC, list(exc.problems)
    if isinstance(exc, RecursionError):
        path = deepest(spec)
        where = _field_name(path) if path else "spec"
        return R.INVALID_SPEC, [Problem(where, f"nested too deeply (more than {MAX_DEPTH} levels)")]
    if isinstance(exc, ValidationError):
        found = [Problem(_loc(tuple(e["loc"])), e["msg"]) for e in exc.errors()[:10]]
        return R.INVALID_SPEC, found or [Problem("spec", "refused by the models")]
    message = (
        f"the operator failed while {stage} this run ({type(exc).__name__} at {_where(exc)}): "
        "an operator bug, not a mistake in the spec; the operator's log has the details, "
        "and editing the spec tries again"
    )
    return R.INTERNAL_ERROR, [Problem("spec", message)]


def failed(run: Mapping[str, Any], exc: BaseException, now: dt.datetime, stage: str) -> Plan | None:
    """The plan that ends the run ``Failed`` for a final exception of a pass (and stops
    whatever ran before); None when ``exc`` is transient and the pass is to be retried."""
    if transient(exc):
        return None
    reason, found = problems(exc, run.get("spec"), stage)
    return invalid(run, found, now, reason)


def undecodable(
    meta: Mapping[str, Any], reason: str, now: dt.datetime
) -> tuple[dict[str, Any], Plan] | None:
    """The plan for an EvalRun whose stored object cannot be decoded (``meta``: what
    could be read of its metadata): ``Failed`` (``InvalidSpec``, with its Warning Event);
    nothing else is known of it. The run (its metadata only) and the plan; None when too little of its
    metadata could be read to write anything."""
    if not all(isinstance(meta.get(k), str) and meta[k] for k in ("name", "namespace", "uid")):
        return None
    run = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "EvalRun", "metadata": dict(meta)}
    problem = Problem("spec", f"the stored object cannot be decoded: {reason}")
    return run, invalid(run, [problem], now)  # with its Warning Event
