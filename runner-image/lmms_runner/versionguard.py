"""The version guard: whether the runner's patches apply to the installed lmms-eval.

The patches (``lmms_runner.patches``) reach into lmms-eval's code as it was in the
versions they were written for. The guard reads the installed lmms-eval's version from its
distribution's metadata, without importing lmms-eval (importing it is what the patches
change): a version that every patch was written for is patched; any other version, or no
lmms-eval at all, runs plain, as ``python -m lmms_eval`` would, never half patched. Both of
the runner's processes ask: the one that starts lmms-eval, to report it (``/progress``'s
``harness``), and lmms-eval's own, to decide (``lmms_runner.lmms_eval_main``).
"""

from __future__ import annotations

from importlib import metadata

from . import patches

DISTRIBUTION = "lmms_eval"


def installed_version() -> str | None:
    """The installed lmms-eval's version, from its metadata (None where it is missing)."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


def refusal(version: str | None) -> str | None:
    """None where the patches apply to lmms-eval ``version``; otherwise why lmms-eval runs
    plain."""
    if version in patches.LMMS_EVAL_VERSIONS:
        return None
    known = ", ".join(sorted(patches.LMMS_EVAL_VERSIONS))
    found = (
        "lmms-eval's version is unknown (its distribution's metadata is missing)"
        if version is None
        else f"lmms-eval {version} is not a version the runner's patches were written for"
    )
    return (
        f"{found} ({known}): it runs plain (python -m lmms_eval), without the runner's "
        "faster start and without answers kept in chunks for a restart"
    )
