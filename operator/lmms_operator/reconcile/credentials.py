"""Values with the shape of a well-known credential.

Model args are stored in a ConfigMap and env values in the Job, both readable by
anyone who can read the namespace's workloads; a credential belongs in a Secret. The
names of args and variables are checked elsewhere; this finds the values by their
published shapes. Messages name the kind of credential, never the value.
"""

from __future__ import annotations

import re

#: Not preceded by a letter or digit (a token inside a longer word is not one).
_START = r"(?<![A-Za-z0-9])"

#: (kind, shape). Lengths are the published minimums, so ordinary words never match.
SHAPES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern))
    for kind, pattern in (
        ("a Hugging Face access token (hf_...)", _START + r"hf_[A-Za-z0-9]{30,}"),
        ("a Hugging Face organisation token (api_org_...)", _START + r"api_org_[A-Za-z0-9]{30,}"),
        ("an OpenAI or Anthropic API key (sk-...)", _START + r"sk-[A-Za-z0-9_\-]{20,}"),
        (
            "an AWS access key id (AKIA.../ASIA...)",
            _START + r"(AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])",
        ),
        ("a GitHub token (ghp_/gho_/ghu_/ghs_/ghr_...)", _START + r"gh[pousr]_[A-Za-z0-9]{36,}"),
        ("a GitHub fine-grained token (github_pat_...)", _START + r"github_pat_[A-Za-z0-9_]{22,}"),
        ("a Slack token (xoxb-/xoxp-/...)", _START + r"xox[abposr]-[A-Za-z0-9\-]{10,}"),
        ("a Google API key (AIza...)", _START + r"AIza[0-9A-Za-z_\-]{35}"),
        ("a PEM private key", r"-----BEGIN ([A-Z0-9]+ )*PRIVATE KEY-----"),
        (
            "a JSON Web Token (eyJ...)",
            _START + r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]+",
        ),
    )
)


#: One pass over the value for every shape (group i is SHAPES[i]).
_ANY = re.compile("|".join(f"({shape.pattern})" for _, shape in SHAPES))


def credential_kind(value: str) -> str | None:
    """The kind of credential ``value`` holds (for a message), or None."""
    match = _ANY.search(value)
    if match is None:
        return None
    for kind, shape in SHAPES:
        if shape.search(match.group()):
            return kind
    return None  # pragma: no cover - the match is one of the shapes


def masked(text: str) -> str:
    """``text`` with every value of a credential's shape replaced by ``[REDACTED]``."""
    return _ANY.sub("[REDACTED]", text)
