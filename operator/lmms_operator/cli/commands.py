"""The commands and their flags, shared by ``kubectl lmms`` (the ``kubectl-lmms``
executable, a kubectl plugin) and ``lmms-operator``; every error ends as one line on
stderr and an exit code (``output``), never as a traceback."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, NoReturn

from .. import errors, k8s
from ..clock import Clock
from ..reconcile.significance import DEFAULT_ALPHA
from . import output as out
from . import views
from . import wait as waiting

PROG = "kubectl lmms"
#: Seconds to connect to the API server, and to wait for its answer.
REQUEST_TIMEOUT = (10.0, 60.0)

EXAMPLES = """\
examples:
  kubectl lmms runs -A                                # every namespace's runs
  kubectl lmms runs -n team-a -o wide                 # with reason, Job and every result
  kubectl lmms wait llava-mme --timeout 2h            # exit 0 Succeeded, 4 failed, 5 timeout
  kubectl lmms leaderboard show default -o json       # the ranked entries, for scripts
  kubectl lmms compare baseline candidate             # exit 3 when candidate regressed
  kubectl lmms compare -l default llava-7b llava-13b  # two models of a Leaderboard
"""


def version() -> str:
    try:
        return metadata.version("lmms-operator")
    except metadata.PackageNotFoundError:
        return "unknown"


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, with the exit code ``USAGE``."""

    def error(self, message: str) -> NoReturn:
        self.exit(out.USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flags(parser: argparse.ArgumentParser, top: bool) -> None:
    """The connection and output flags, accepted before the command and after it (``top``:
    the program's own, with the defaults; after the command they only override)."""

    def d(value: Any) -> Any:
        return value if top else argparse.SUPPRESS

    group = parser.add_argument_group("cluster and output")
    group.add_argument("--kubeconfig", default=d(None), help="kubeconfig file to use")
    group.add_argument("--context", default=d(None), help="kubeconfig context to use")
    group.add_argument(
        "-n", "--namespace", default=d(None), help="namespace (default: the context's)"
    )
    group.add_argument(
        "-o", "--output", choices=out.FORMATS, default=d("table"), help="default: table"
    )


View = Callable[[views.Target, argparse.Namespace], tuple[str, int]]


def add_commands(sub: Any, top: bool = False) -> None:
    """The commands (runs, leaderboard show, compare, wait) on a subparsers object;
    ``top``: the program has the flags before the command already."""

    def command(name: str, view: View, parent: Any = sub, **kwargs: Any) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = parent.add_parser(name, **kwargs)
        _flags(p, top=not top)
        p.set_defaults(func=execute, view=view)
        return p

    runs = command(
        "runs",
        lambda t, a: views.runs(t, a.output, Clock().now()),
        help="list EvalRuns: phase, model, tasks, score, duration, age",
    )
    runs.add_argument(
        "-A", "--all-namespaces", action="store_true", help="the runs of every namespace"
    )

    board = sub.add_parser("leaderboard", help="Leaderboard views")
    show = command(
        "show",
        lambda t, a: views.leaderboard_show(t, a.name, a.output, a.task),
        parent=board.add_subparsers(dest="action", required=True, parser_class=Parser),
        help="print the ranked table (-o json: the entries as stored)",
    )
    show.add_argument("name")
    show.add_argument("--task", help="only this task")

    cmp = command(
        "compare",
        lambda t, a: views.compare_results(
            t, a.a, a.b, a.leaderboard, a.alpha, a.output, a.fail_on
        ),
        help="compare two runs (or two models of a Leaderboard) per task and metric, with "
        f"the significance of each difference; exit {out.REGRESSION} on a regression",
        description="A is the baseline, B the candidate. The exit code is "
        f"{out.REGRESSION} when B is significantly worse than A on some metric (--fail-on).",
    )
    cmp.add_argument("a", help="the baseline: EvalRun NAME or NAMESPACE/NAME (-l: a model)")
    cmp.add_argument("b", help="the candidate, named the same way")
    cmp.add_argument("-l", "--leaderboard", help="compare two models' entries of this board")
    cmp.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help=f"significance level of the two-sided test (default {DEFAULT_ALPHA})",
    )
    cmp.add_argument(
        "--fail-on",
        choices=sorted(views.FAIL_ON),
        default="regression",
        help=f"exit {out.REGRESSION} when B is significantly worse than A (regression, the "
        "default), when they differ significantly either way (difference), or never",
    )

    wait = command(
        "wait",
        lambda t, a: asyncio.run(
            waiting.wait(t, a.names, a.timeout, a.poll_interval, a.output, Clock())
        ),
        help=f"wait for runs to end: exit 0 Succeeded, {out.RUN_FAILED} Failed or "
        f"Cancelled, {out.TIMED_OUT} timed out",
    )
    wait.add_argument("names", nargs="+", metavar="NAME", help="EvalRun NAME or NAMESPACE/NAME")
    wait.add_argument(
        "--timeout",
        type=_timeout,
        default=None,
        help="give up after this long (90s, 30m, 1h30m; 0 looks once; default: no limit)",
    )
    wait.add_argument(
        "--poll-interval", type=float, default=2.0, help="seconds between reads (default 2)"
    )


def _timeout(text: str) -> float | None:
    try:
        return waiting.parse_timeout(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def execute(args: argparse.Namespace) -> int:
    """Runs the command's view against the cluster and prints what it returns; what goes
    wrong, even a bug, ends as one line on stderr and an exit code."""
    kubeconfig, context = getattr(args, "kubeconfig", None), getattr(args, "context", None)
    api = k8s.Api(
        kubeconfig=kubeconfig, context=context, kubeconfig_first=True, timeout=REQUEST_TIMEOUT
    )
    try:
        namespace = getattr(args, "namespace", None) or k8s.current_namespace(kubeconfig, context)
        target = views.Target(api, namespace, bool(getattr(args, "all_namespaces", False)))
        args.output = getattr(args, "output", None) or "table"
        view: View = args.view
        text, code = view(target, args)
        if text:
            out.say(text)
        return code
    except out.Failure as exc:
        out.warn(_one_line(f"error: {exc}"))
        return exc.code
    except errors.NotFound as exc:
        hint = " (are the lmms-operator CRDs installed in this cluster?)"
        out.warn(_one_line(f"error: {exc}{hint}"))
    except errors.Unavailable as exc:
        out.warn(_one_line(f"error: {exc} (API server {_host(api)})"))
    except BrokenPipeError:  # stdout closed early (| head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return out.OK
    except (errors.OperatorError, OSError) as exc:
        out.warn(_one_line(f"error: {exc}"))
    except KeyboardInterrupt:
        return out.INTERRUPTED
    except Exception as exc:  # a bug: still one line, not a traceback
        out.warn(_one_line(f"error: internal error: {type(exc).__name__}: {exc}"))
    return out.ERROR


def _host(api: k8s.Api) -> str:
    try:
        return str(api.client().configuration.host)
    except errors.OperatorError:
        return "unknown"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """``kubectl-lmms``: ``kubectl lmms COMMAND``, with kubectl's flags."""
    parser = Parser(
        prog=PROG,
        description="Runs, Leaderboards and comparisons of the lmms operator's "
        "evaluations (eval.lmms.dev), as a kubectl plugin.",
        epilog=f"{EXAMPLES}\n{out.EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"kubectl-lmms {version()}")
    _flags(parser, top=True)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    add_commands(sub, top=True)
    args = parser.parse_args(argv)
    return int(args.func(args))
