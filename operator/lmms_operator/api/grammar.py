"""The string grammars of the EvalRun API: what a value that reaches lmms-eval's command
line, the runner's environment or a task list may hold (``evalrun`` and ``endpoint`` use
them; the CRD carries them as patterns).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import StringConstraints

# The grammars below keep every value that reaches lmms-eval's command line to one
# meaning: lmms-eval splits --model_args on "," and "=" (and groups on quotes and
# brackets), and --tasks on ",". Patterns are RE2 (the API server) and Rust regex
# (pydantic) alike: no look-arounds, Unicode classes by general category
# (reconcile/grammar.py checks the same and more: NFKC, round trips, credentials).

#: Controls (Cc), format and bidi controls (Cf), private use (Co), line and paragraph
#: separators (Zl, Zp), and Unicode's Default_Ignorable_Code_Point ranges outside Cf
#: (Hangul fillers, variation selectors, ...; reconcile/grammar.py has the table) and the
#: blank U+2800. Neither engine can hold a surrogate (Cs), so it needs no class.
UNSAFE_CLASS = (
    r"\p{Cc}\p{Cf}\p{Co}\p{Zl}\p{Zp}"
    r"\x{034F}\x{115F}\x{1160}\x{17B4}\x{17B5}\x{180B}-\x{180F}\x{2800}\x{3164}"
    r"\x{FE00}-\x{FE0F}\x{FFA0}\x{FFF0}-\x{FFF8}\x{1BCA0}-\x{1BCA3}\x{1D173}-\x{1D17A}"
    r"\x{E0000}-\x{E0FFF}"
)
#: What lmms-eval's --model_args splitter gives a meaning: , = quotes and brackets.
_SPECIAL = r",=\"'\[\]{}()"
_NOT_ARG = _SPECIAL + UNSAFE_CLASS
#: A model id on the Hugging Face Hub, an API model name, or a path in the image.
MODEL_ID = r"^[A-Za-z0-9_./][A-Za-z0-9_./:@+\-]*$"
#: A git branch, tag or commit (no ",", "=", spaces or ".." segments checked by CEL).
REVISION = r"^[A-Za-z0-9_][A-Za-z0-9_./+\-]*$"
#: A --model_args key: an identifier.
ARG_KEY = r"^[A-Za-z_][A-Za-z0-9_]*$"
#: A --model_args value: none of , = quotes brackets, no unsafe character, no space at
#: either end.
ARG_VALUE = rf"^([^{_NOT_ARG}\p{{Z}}]([^{_NOT_ARG}]*[^{_NOT_ARG}\p{{Z}}])?)?$"
#: Free text that reaches the runner's environment: no unsafe character.
SAFE_TEXT = rf"^[^{UNSAFE_CLASS}]*$"
#: An lmms-eval task, group or tag name: no globs, commas, spaces or path segments.
TASK_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_+\-]*(\.[A-Za-z0-9_+\-]+)*$"
_TASK_ITEMS: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": 200,
    "pattern": TASK_NAME,
}
TaskName = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=TASK_NAME)]
ArgValue = Annotated[str, StringConstraints(max_length=4096, pattern=ARG_VALUE)]
ArgKey = Annotated[str, StringConstraints(min_length=1, max_length=100, pattern=ARG_KEY)]
