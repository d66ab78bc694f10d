"""datasets' streaming patches without importing what the patched module cannot hold.

At every load datasets extends the dataset builder's module for streaming: for each target
(``scipy.io.loadmat``, ``xml.dom.minidom.parse``, ``gzip.open``...) ``patch_submodule``
imports the target's modules, then looks for them, and for the target, among the module's
globals. When the target's top package is not imported yet, none of those globals can be
that package, one of its modules, or something taken from them, so the patch would change
nothing: ``install`` leaves it out, and with it the import (``scipy.io`` with
``scipy.sparse``, where nothing else imported scipy).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from .. import importhooks

#: The lmms-eval versions (and the datasets they pin) this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})


def install() -> None:
    """datasets' ``patch_submodule`` skips a target whose top package is not imported."""

    def patch(patching: types.ModuleType) -> None:
        original = patching.patch_submodule.__enter__

        def enter(self: Any) -> None:
            package, dot, _ = self.target.partition(".")
            if dot and package not in sys.modules:
                return
            original(self)

        patching.patch_submodule.__enter__ = enter

    importhooks.after_import("datasets.utils.patching", patch)
