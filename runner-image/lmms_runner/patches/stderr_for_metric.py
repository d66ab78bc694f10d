"""lmms-eval's ``stderr_for_metric`` without importing two tasks' modules for every metric.

``stderr_for_metric``, called for every metric once the answers are in, imports the modules
of two tasks (``amber_g``, ``coco_cap_chair``: with nltk, spacy and scipy) only to compare
the metric with their functions. lmms-eval skips a module whose import fails (``except
Exception``), as when its dependencies are missing; ``install`` blocks their import in
``sys.modules`` for the call, which gives the very answer for a metric of any other module:
it is none of their functions, since a metric from one of them means that module is
imported already (and then nothing is blocked).
"""

from __future__ import annotations

import sys
from typing import Any

#: The lmms-eval versions whose ``stderr_for_metric`` this was written for.
LMMS_EVAL_VERSIONS = frozenset({"0.7.3"})

#: Modules that lmms-eval's ``stderr_for_metric`` imports at every call, only to compare
#: the metric with functions of theirs.
CHAIR_MODULES = ("lmms_eval.tasks.amber_g.utils", "lmms_eval.tasks.coco_cap_chair.utils")


def install() -> None:
    """``stderr_for_metric`` without importing ``CHAIR_MODULES`` for a metric that is not
    theirs (see the module's docstring)."""
    from lmms_eval import evaluator_utils
    from lmms_eval.api import metrics

    original = metrics.stderr_for_metric

    def stderr_for_metric(metric: Any, bootstrap_iters: int) -> Any:
        if getattr(metric, "__module__", None) in CHAIR_MODULES or any(
            m in sys.modules for m in CHAIR_MODULES
        ):
            return original(metric, bootstrap_iters)
        for m in CHAIR_MODULES:
            sys.modules[m] = None  # type: ignore[assignment]  # the import raises ImportError
        try:
            return original(metric, bootstrap_iters)
        finally:
            for m in CHAIR_MODULES:
                if sys.modules.get(m, ...) is None:
                    del sys.modules[m]

    metrics.stderr_for_metric = stderr_for_metric
    evaluator_utils.stderr_for_metric = stderr_for_metric
