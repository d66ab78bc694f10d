"""The runner: runs lmms-eval inside the evaluation pod and reports on it."""
