"""The command line for people: ``kubectl lmms`` (the ``kubectl-lmms`` executable, a
kubectl plugin) and the same commands under ``lmms-operator``: runs, Leaderboards, the
comparison of two runs with significance, and waiting for runs to end.

``commands`` parses and runs them, ``views`` reads and renders, ``wait`` waits, and
``output`` writes: tables, JSON and YAML on stdout; errors on stderr as one line with
an exit code of their own (``output.EXIT_CODES``).
"""

from .commands import add_commands, execute, kubectl_main, version
from .output import EXIT_CODES

__all__ = ["EXIT_CODES", "add_commands", "execute", "kubectl_main", "version"]
