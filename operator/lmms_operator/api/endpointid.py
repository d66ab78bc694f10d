"""How provenance, Leaderboards and the evaluation index name a served model's endpoint
and a judge (pure: the runner and the operator share it)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: A served model id (from a server's /v1/models) that lmms-eval's --model_args splitter
#: keeps whole and a Leaderboard table shows as it is: the runner refuses any other, and
#: the operator names no model by one (a results summary is the tenant's data).
SERVED_ID = re.compile(r"^[A-Za-z0-9_./:@+\-]{1,512}$")


def without_credentials(url: str) -> str:
    """The URL as provenance shows it: no user information, query or fragment."""
    scheme, sep, after = url.partition("://")
    if not sep:
        return url.split("?")[0].split("#")[0]
    end = min((i for i in (after.find(c) for c in "/?#") if i >= 0), default=len(after))
    authority, rest = after[:end], after[end:]
    authority = authority.rpartition("@")[2]
    rest = rest.split("?")[0].split("#")[0]
    return f"{scheme}://{authority}{rest}"


def identity(ref: Mapping[str, Any]) -> str:
    """How Leaderboards, the evaluation index and provenance name an endpoint (a wire
    ``EndpointRef``; the run's namespace is the Leaderboard's, so it is left out):
    ``svc/<name>:<port><path>``, ``isvc/<name><path>``, or the URL without credentials,
    its scheme kept (``https://llm.example.com/v1``: no Service or InferenceService can be
    named so, and http and https on one host are two endpoints)."""
    if ref.get("service"):
        svc = ref["service"]
        return f"svc/{svc.get('name')}:{svc.get('port')}{svc.get('path', '/v1')}"
    if ref.get("inferenceService"):
        isvc = ref["inferenceService"]
        return f"isvc/{isvc.get('name')}{isvc.get('path', '/openai/v1')}"
    return without_credentials(str(ref.get("url") or ""))


def judge_identity(spec: Mapping[str, Any]) -> str | None:
    """``<judge model>@<endpoint>``, or None without a judge."""
    judge = spec.get("judge")
    if not judge:
        return None
    return f"{judge.get('model')}@{identity(judge)}"
