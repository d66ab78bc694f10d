"""The spec hash: which evaluation a Job runs (its label and name, ``status.specHash``).

Every spec field but ``suspend`` (which only pauses a run) counts. A field added to the
API after a release counts only once a spec sets it away from its default: an operator
upgrade must not change the hash of a spec that does not use the new field, or the next
admission pass of a run would take its Job for another evaluation's (deleting a running
Job, evaluating a finished run again).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..api import EvalRunSpec

#: Spec fields added since the first release, by their path in the wire form, with the
#: default at which they are left out of the hash. Every new spec field belongs here
#: (``tests/unit/test_spechash.py`` pins the hashes of the first release).
ADDED: Mapping[tuple[str, ...], Any] = {
    ("model", "multiGPU"): None,
    ("model", "concurrency"): None,
    ("model", "engine"): None,
    ("model", "endpoint"): None,
    ("evaluation", "verbosity"): "INFO",
    ("judge",): None,
}


def _without_added_defaults(data: dict[str, Any]) -> dict[str, Any]:
    for path, default in ADDED.items():
        parent: Any = data
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if isinstance(parent, dict) and path[-1] in parent and parent[path[-1]] == default:
            del parent[path[-1]]
    return data


def spec_hash(spec: EvalRunSpec) -> str:
    """Identifies an evaluation: every spec field but ``suspend``, and the fields added
    since the first release only where they are set."""
    data = _without_added_defaults(spec.model_dump(mode="json", by_alias=True, exclude={"suspend"}))
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()
    return digest[:10]
