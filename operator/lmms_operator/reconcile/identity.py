"""What a result is of: the model's identity and the settings that change a score. Pure.

**Model identity.** A checkpoint is ``pretrained@revision`` (the revision when the spec
pins one; the preset's checkpoint when it names none), and ``pretrained@<commit>`` (12
hex digits) once the runner knows the commit the Hub resolved the revision to. A model
that no checkpoint names (openai, litellm, srt_api and the other backends without
``pretrained``) is its model name, from the ``model.args`` key lmms-eval uses (``model``
wins over ``model_version`` there, so it does here; a spec naming the model twice, with
two values, is refused: ``naming_problems``), with ``@host`` of the endpoint when the run
names one (``base_url``): two models served over an OpenAI-compatible API, or one name
on two servers, never share a Leaderboard row, a score series or GPU-seconds.

A model served by reference (``spec.model.endpoint``) is the id its server serves (read
by the runner from /v1/models, unless the args name it) ``@`` the endpoint
(``svc/<name>:<port><path>``, ``isvc/<name><path>``, or the URL, its scheme kept).

**Settings.** ``limit``, ``numFewshot``, the generation settings, the judge
(``judge=<model>@<endpoint>``) and the lmms-eval version change what a score means: they are part of a Leaderboard entry, so a
``limit: 10`` run never replaces a full run's row.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .. import presets
from ..api.endpointid import SERVED_ID
from ..errors import Problem
from . import modelendpoint

#: ``model.args`` keys that name the model of a backend without a checkpoint, in the
#: order lmms-eval prefers them (its openai, gemini and async_openai backends take
#: ``model`` over ``model_version``).
API_MODEL_KEYS = ("model", "model_version", "model_name", "model_id", "model_id_name")
#: ``model.args`` keys that name its endpoint.
ENDPOINT_KEYS = ("base_url", "api_base", "endpoint", "azure_endpoint")


def model_identity(
    spec: Mapping[str, Any], commit: str | None = None, served: str | None = None
) -> str:
    """The model a run evaluates, as Leaderboards, metrics and the CLI name it;
    ``commit``: the resolved commit of a checkpoint, when the runner reported it;
    ``served``: the id a served model's /v1/models gave the runner. A model served at
    ``spec.model.endpoint`` is ``<id>@<endpoint>`` (``modelendpoint.identity``): the id
    the args name, else the one served, else ``openai`` until the runner reports it."""
    model = spec.get("model") or {}
    mtype = str(model.get("type") or "")
    args = {str(k): str(v) for k, v in (model.get("args") or {}).items()}
    if model.get("endpoint"):
        named = next((args[k] for k in API_MODEL_KEYS if args.get(k)), None)
        served = served if served and SERVED_ID.fullmatch(served) else None
        return f"{named or served or mtype}@{modelendpoint.identity(model['endpoint'])}"
    pretrained, resolved = presets.resolve(mtype, model.get("pretrained"), args)
    if not pretrained:  # no checkpoint: the model the backend's args name
        name = next((resolved[k] for k in API_MODEL_KEYS if resolved.get(k)), mtype)
        endpoint = next((resolved[k] for k in ENDPOINT_KEYS if resolved.get(k)), "")
        host = urlsplit(endpoint).netloc if "://" in endpoint else ""
        return f"{name}@{host}" if host else name
    ident = str(pretrained or mtype)
    if commit:
        return f"{ident}@{commit[:12]}"
    revision = model.get("revision")
    return f"{ident}@{revision}" if revision else ident


def naming_problems(args: Mapping[str, Any]) -> list[Problem]:
    """A model named by two ``model.args`` keys with two values is refused: which one a
    backend uses is its own business, and the Leaderboard must name what ran."""
    named = {k: str(args[k]) for k in API_MODEL_KEYS if args.get(k)}
    if len(set(named.values())) <= 1:
        return []
    keys = sorted(named)
    return [
        Problem(
            f"spec.model.args.{keys[-1]}",
            f"the model is named twice ({' and '.join(keys)}, with different values); name it once",
        )
    ]


def settings_label(spec: Mapping[str, Any], lmms_eval_version: str | None) -> str:
    """The settings that change a score, as a short stable string (empty keys left out):
    ``limit=10 fewshot=0 temperature=0 lmms-eval=0.7.3``."""
    ev = spec.get("evaluation") or {}
    parts: list[str] = []
    if ev.get("limit") is not None:
        parts.append(f"limit={ev['limit']}")
    if ev.get("numFewshot") is not None:
        parts.append(f"fewshot={ev['numFewshot']}")
    for key, value in sorted((ev.get("generation") or {}).items()):
        if value is not None:
            parts.append(f"{key}={value}")
    judge = modelendpoint.judge_identity(spec)
    if judge:  # a score judged by another model is another entry
        parts.append(f"judge={judge}")
    if lmms_eval_version:
        parts.append(f"lmms-eval={lmms_eval_version}")
    if (spec.get("model") or {}).get("engine"):  # another inference stack, another score
        parts.append(f"engine={spec['model']['engine']}")
    return " ".join(parts)
