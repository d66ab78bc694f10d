"""``python -m lmms_runner.lmms_eval_main ARGS``: lmms-eval's own command line, patched.

The runner starts lmms-eval through this module (``command.launcher``), with the arguments
``python -m lmms_eval`` takes. Where the version guard (``versionguard``) finds an lmms-eval
that the runner's patches (``lmms_runner.patches``) were written for, ``main`` runs it with
them (``startup.run``): a response cache that keeps what the model answered when a pod is
killed, and a faster start and exit with the same results. Any other lmms-eval runs plain
(``run_plain``: ``python -m lmms_eval`` with the same arguments), never half patched, and a
line on stderr says why.
"""

from __future__ import annotations

import runpy
import sys

from . import startup, versionguard


def run_plain() -> None:
    """lmms-eval's command line unchanged: its ``__main__`` module run as the main module
    with this process's arguments, as ``python -m lmms_eval`` runs it."""
    runpy.run_module("lmms_eval", run_name="__main__", alter_sys=True)


def main() -> None:
    refusal = versionguard.refusal(versionguard.installed_version())
    if refusal is None:
        startup.run(sys.argv)
        return
    print(f"lmms-runner: {refusal}", file=sys.stderr, flush=True)
    run_plain()


if __name__ == "__main__":
    main()
