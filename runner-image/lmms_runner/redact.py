"""Secrets never leave the runner: every line it forwards or serves is redacted."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping

#: Environment variables whose values are secrets.
SECRET_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "LMMS_RUNNER_TOKEN",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GOOGLE_API_KEY",
    "AZURE_OPENAI_API_KEY",
)
SECRET_ARG = re.compile(r"(key|token|secret|password)", re.IGNORECASE)
#: Token shapes worth catching even when they came from elsewhere.
PATTERNS = (re.compile(r"hf_[A-Za-z0-9]{20,}"), re.compile(r"sk-[A-Za-z0-9_\-]{16,}"))
MASK = "[REDACTED]"


class Redactor:
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        values = {s for s in secrets if s and len(s) >= 4}
        # Longest first, so a secret that contains another is masked whole.
        self._values = sorted(values, key=len, reverse=True)

    @classmethod
    def from_environment(
        cls, env: Mapping[str, str] | None = None, model_args: Mapping[str, str] | None = None
    ) -> Redactor:
        env = os.environ if env is None else env
        values = [env.get(name, "") for name in SECRET_ENV]
        values += [v for k, v in (model_args or {}).items() if SECRET_ARG.search(k)]
        return cls(values)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        for pattern in PATTERNS:
            text = pattern.sub(MASK, text)
        return text
