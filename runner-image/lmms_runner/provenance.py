"""Where a run's results come from: the versions, the model's resolved commit, the lock
file the image was installed from, the exact command."""

from __future__ import annotations

import hashlib
import re
from importlib import metadata
from pathlib import Path
from typing import Any

from lmms_operator.api import endpointid
from lmms_operator.api.runner import Harness, Provenance

from . import versionguard
from .config import RunConfig
from .redact import Redactor

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^ \\]+)", re.MULTILINE)


def version(dist: str) -> str | None:
    """The installed version of distribution ``dist`` (None where it is missing)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def harness() -> Harness:
    """The lmms-eval the runner runs, and whether with its patches (the version guard's
    answer, which lmms-eval's process gets too)."""
    found = versionguard.installed_version()
    refusal = versionguard.refusal(found)
    return Harness(lmms_eval_version=found, patched=refusal is None, message=refusal)


def locked_packages(lock_file: str | None) -> dict[str, Any]:
    """The provenance of the environment: the lock file the image was installed from
    (its sha256) and every package it pins (LMMS_LOCK_FILE, set by the runner image)."""
    if not lock_file:
        return {}
    try:
        text = Path(lock_file).read_bytes()
    except OSError:
        return {}
    pins = {m.group(1).lower(): m.group(2) for m in _PIN.finditer(text.decode(errors="replace"))}
    return {"lock_sha256": hashlib.sha256(text).hexdigest(), "locked": pins}


def resolved_commit(
    hf_home: str | None, pretrained: str | None, revision: str | None
) -> str | None:
    """The commit the Hub resolved ``revision`` of ``pretrained`` to, as the Hugging Face
    cache recorded it (``hub/models--<org>--<name>/refs/<revision>``); a revision that is
    a commit already is that commit. None for a local path or a model not in the cache."""
    if revision and _COMMIT.match(revision):
        return revision
    if not hf_home or not pretrained or pretrained.startswith(("/", ".")):
        return None
    repo = Path(hf_home) / "hub" / ("models--" + pretrained.replace("/", "--"))
    try:
        commit = (repo / "refs" / (revision or "main")).read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.match(commit) else None


def provenance(
    cfg: RunConfig, env: dict[str, str], argv: list[str], redact: Redactor
) -> Provenance:
    """The provenance of a run of ``argv`` (redacted) for ``cfg``."""
    return Provenance(
        lmms_eval_version=version("lmms-eval"),
        torch_version=version("torch"),
        model=cfg.spec.model.type,
        pretrained=cfg.pretrained,
        revision=cfg.spec.model.revision,
        commit=resolved_commit(env.get("HF_HOME"), cfg.pretrained, cfg.spec.model.revision),
        seed=cfg.spec.evaluation.seed,
        judge=endpointid.judge_identity(cfg.spec.to_wire()),
        **locked_packages(env.get("LMMS_LOCK_FILE")),
        config_hash=cfg.config_hash,
        argv=[redact(a) for a in argv],
    )
