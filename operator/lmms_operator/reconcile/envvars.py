"""spec.env: names the operator sets or that hold secrets, and values by grammar.

Which names a run may set at all is the admin's policy (``validate.check_env``).
"""

from __future__ import annotations

import re

from ..api import EvalRunSpec
from ..errors import Problem
from .credentials import credential_kind
from .grammar import text_problem

#: Environment variable names that hold secrets (TOKENIZERS_PARALLELISM does not).
SECRET_ENV = re.compile(
    r"(^|_)(TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|ACCESS_KEY(_ID)?|PRIVATE_KEY)$", re.IGNORECASE
)

#: Variables the operator sets on the runner (secrets among them).
RESERVED_ENV = frozenset(
    {
        "POD_IP",
        "POD_NAME",
        "POD_NAMESPACE",
        "HF_HOME",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HOME",
        "TMPDIR",
        "PATH",
    }
    # lmms-eval's judge settings: the operator sets them from spec.judge.
    | {"API_TYPE", "OPENAI_API_URL", "OPENAI_API_KEY", "MODEL_VERSION", "GPT_EVAL_MODEL_NAME"}
    | {"JUDGE_MODEL_VERSION", "OPENAI_JUDGE_MODEL", "OPENAI_BASE_URL", "OPENAI_API_BASE"}
)
RESERVED_ENV_PREFIXES = ("LMMS_", "AWS_")


def check_env_names(spec: EvalRunSpec) -> list[Problem]:
    """No variable the operator sets, none that looks like a secret (the Job stores it)."""
    problems: list[Problem] = []
    for i, var in enumerate(spec.env):
        if var.name in RESERVED_ENV or var.name.startswith(RESERVED_ENV_PREFIXES):
            problems.append(
                Problem(
                    f"spec.env[{i}].name",
                    f"{var.name} is set by the operator and cannot be overridden",
                )
            )
        elif SECRET_ENV.search(var.name):
            problems.append(
                Problem(
                    f"spec.env[{i}].name",
                    f"{var.name} looks like a secret; env values are stored in the Job: use "
                    "huggingFaceToken, model.apiKey or output.s3.credentialsSecret, which "
                    "read Secrets",
                )
            )
    return problems


def check_env_values(spec: EvalRunSpec) -> list[Problem]:
    """Env values are plain text in the Job: no unsafe character, no credential."""
    problems: list[Problem] = []
    for i, var in enumerate(spec.env):
        found = text_problem(var.value)
        kind = None if found else credential_kind(var.value)
        if found:
            problems.append(Problem(f"spec.env[{i}].value", f"the value {found}"))
        elif kind:
            problems.append(
                Problem(
                    f"spec.env[{i}].value",
                    f"the value looks like {kind}; env values are stored in the Job: use "
                    "huggingFaceToken, model.apiKey or output.s3.credentialsSecret, which "
                    "read Secrets",
                )
            )
    return problems


def env_refused_already(name: str) -> bool:
    return (
        name in RESERVED_ENV
        or name.startswith(RESERVED_ENV_PREFIXES)
        or SECRET_ENV.search(name) is not None
    )
