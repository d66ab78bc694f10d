"""The runner's own lines in its log (stderr), told apart from lmms-eval's by a prefix."""

from __future__ import annotations

import sys


def log(msg: str) -> None:
    print(f"lmms-runner: {msg}", file=sys.stderr, flush=True)
