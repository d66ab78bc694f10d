"""The runner's command line and environment, measured against the kernel's limits.

``execve`` refuses one argument or environment string longer than MAX_ARG_STRLEN (its NUL
included), and an argument list plus environment whose strings and pointers exceed a
quarter of the stack limit (ARG_MAX, 2 MiB with the usual 8 MiB stack). The runner would
find out only in its pod, after the Job holds GPUs; so admission measures every element
the runner builds (``lmms_runner.command.build``, mirrored here: the operator does not
import the runner; ``tests/unit/test_cmdline.py`` keeps the two in step) and refuses a
spec that could not start, naming the field that makes it too long.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..api import EvalRunSpec
from ..errors import Problem
from .modelargs import runner_model_args

#: The kernel's limits (include/uapi/linux/binfmts.h; fs/exec.c with an 8 MiB stack).
MAX_ARG_STRLEN = 32 * 4096
ARG_MAX = 2 * 1024 * 1024
POINTER_BYTES = 8
#: What admission allows: a margin under each limit for what this estimate cannot see
#: (the image's own environment, a launcher's extra variables, longer install paths).
ELEMENT_LIMIT = MAX_ARG_STRLEN - 8 * 1024
TOTAL_LIMIT = ARG_MAX // 2
#: spec.env as a whole (also bounded by the schema: 64 variables of 4 KiB).
MAX_ENV_BYTES = 256 * 1024

#: The launcher before lmms-eval's own arguments (the longest form, torch.distributed.run
#: with its rendezvous address) and the fixed paths after them, as a reserve: the
#: interpreter's path is the image's, so it is sized as a path (PATH_MAX), not measured.
LAUNCHER_ELEMENTS = 12
LAUNCHER_BYTES = 4096 + 11 * 256
PATH_BYTES = 1024
#: The environment the operator and the image set besides spec.env (reconcile/job.py sets
#: about 25 short variables; the image, Kubernetes and the launchers add some more).
RESERVED_ENV_COUNT = 128
RESERVED_ENV_BYTES = 64 * 1024


@dataclass(frozen=True)
class Element:
    """One argv element built from the spec: the field it comes from and its bytes."""

    field: str
    what: str
    size: int


def gen_kwargs(spec: EvalRunSpec) -> str:
    """``lmms_runner.command.gen_kwargs``: --gen_kwargs from spec.evaluation.generation."""
    gen = spec.evaluation.generation
    if gen is None:
        return ""
    pairs = {
        "temperature": gen.temperature,
        "max_new_tokens": gen.max_new_tokens,
        "top_p": gen.top_p,
        "num_beams": gen.num_beams,
        "do_sample": gen.do_sample,
    }
    return ",".join(f"{k}={v}" for k, v in pairs.items() if v is not None)


def all_tasks(spec: EvalRunSpec) -> list[str]:
    """``RunConfig.tasks``: spec.tasks, then custom tasks not already listed (a shard or
    a run after reuse passes a part of this list, never more)."""
    seen = list(spec.tasks)
    known = set(seen)
    for source in spec.custom_tasks:
        for task in source.tasks:
            if task not in known:
                known.add(task)
                seen.append(task)
    return seen


def _size(text: str) -> int:
    """Bytes the kernel copies for one string: UTF-8 and its NUL."""
    return len(text.encode("utf-8", "surrogatepass")) + 1


def elements(spec: EvalRunSpec) -> list[Element]:
    """The argv elements whose length the spec decides, as the runner builds them."""
    margs = ",".join(f"{k}={v}" for k, v in runner_model_args(spec).items())
    out = [Element("spec.model.type", "--model", _size(spec.model.type))]
    if margs:
        out.append(Element("spec.model.args", "--model_args", _size(margs)))
    out.append(
        Element("spec.tasks", "the joined task list (--tasks)", _size(",".join(all_tasks(spec))))
    )
    for i, source in enumerate(spec.custom_tasks):
        out.append(
            Element(
                f"spec.customTasks[{i}].configMap",
                "--include_path",
                _size(f"/etc/lmms/tasks/{source.config_map}"),
            )
        )
    gk = gen_kwargs(spec)
    if gk:
        out.append(Element("spec.evaluation.generation", "--gen_kwargs", _size(gk)))
    return out


def argv_estimate(spec: EvalRunSpec) -> tuple[int, int]:
    """(count, bytes) of the whole argv, an upper bound of what the runner builds."""
    parts = elements(spec)
    flags = 2 * len(parts) + 16  # each element's flag, and the fixed flags and numbers
    size = LAUNCHER_BYTES + sum(e.size for e in parts) + flags * 32 + 3 * PATH_BYTES
    return LAUNCHER_ELEMENTS + len(parts) + flags + 3, size


def env_estimate(spec: EvalRunSpec) -> tuple[int, int]:
    """(count, bytes) of the environment: spec.env as ``NAME=value`` plus the reserve."""
    size = sum(_size(f"{v.name}={v.value}") for v in spec.env)
    return RESERVED_ENV_COUNT + len(spec.env), RESERVED_ENV_BYTES + size


def check_command_line(spec: EvalRunSpec) -> list[Problem]:
    """Every element under the per-string limit; argv and environment under the total."""
    problems = [
        Problem(
            e.field,
            f"{e.what} would be {e.size} bytes; the kernel takes at most {MAX_ARG_STRLEN} "
            f"bytes in one argument, and admission allows {ELEMENT_LIMIT}",
        )
        for e in elements(spec)
        if e.size > ELEMENT_LIMIT
    ]
    env_count, env_bytes = env_estimate(spec)
    spec_env = env_bytes - RESERVED_ENV_BYTES
    if spec_env > MAX_ENV_BYTES:
        problems.append(
            Problem("spec.env", f"{spec_env} bytes in all; at most {MAX_ENV_BYTES} are allowed")
        )
    count, size = argv_estimate(spec)
    total = size + env_bytes + POINTER_BYTES * (count + env_count + 2)
    if not problems and total > TOTAL_LIMIT:
        largest = max(elements(spec), key=lambda e: e.size)
        field = "spec.env" if spec_env > largest.size else largest.field
        problems.append(
            Problem(
                field,
                f"the command line and environment would be {total} bytes; the kernel takes "
                f"at most {ARG_MAX}, and admission allows {TOTAL_LIMIT}",
            )
        )
    return problems
