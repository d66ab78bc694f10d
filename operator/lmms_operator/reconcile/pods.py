"""What a run's pods tell about its results: which pod holds them (node 0 of a multi-node
run, the newest), its termination message (or a failure the runner named in it) and the
runner image's digest. Pure."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..api.runner import RUNNER_FAILURE_REASONS
from . import reasons as R
from .grammar import escape_hidden


def created(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("creationTimestamp") or "")


def image_id(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The runner image's digest (the kubelet's imageID) of node 0's newest pod."""
    for pod in sorted(pods, key=completion_index):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            if cs.get("imageID"):
                return str(cs["imageID"])
    return None


def completion_index(pod: Mapping[str, Any]) -> int:
    """The pod's index in an Indexed Job (0 when it has none): node 0 of a multi-node
    run holds the results."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    try:
        return int(labels.get("batch.kubernetes.io/job-completion-index") or 0)
    except ValueError:
        return 0


def termination_message(pods: Sequence[Mapping[str, Any]]) -> str | None:
    """The newest succeeded pod's message, node 0's in a multi-node run."""
    newest_first = sorted(pods, key=created, reverse=True)
    for pod in sorted(newest_first, key=completion_index):
        if (pod.get("status") or {}).get("phase") != R.POD_SUCCEEDED:
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("message"):
                return str(term["message"])
    return None


def runner_failure(message: str) -> tuple[str, str] | None:
    """The reason and message of a failure the runner named itself in its termination
    message (``DriverTooOld``, ``NoGPU``); None for any other message."""
    try:
        doc = json.loads(message)
    except (ValueError, RecursionError):  # nested deeper than the decoder recurses
        return None
    if not isinstance(doc, dict) or doc.get("ok") is not False:
        return None
    reason, text = doc.get("reason"), doc.get("message")
    if reason in RUNNER_FAILURE_REASONS and isinstance(text, str):
        # Written by whatever runs in the container: shown, never acted on.
        return str(reason), escape_hidden(text, keep="\n")
    return None
