"""`lmms-runner`: runs lmms-eval for one EvalRun, reports progress, never loses results.

In the pod every option comes from the environment the operator sets; on a workstation:

    lmms-runner --config evalrun.yaml [--include-path DIR] [--output DIR] [--listen 127.0.0.1:8080]

Exit codes: 0 done, 2 configuration error (also: the pod's NVIDIA GPUs cannot run the
image's torch, see gpucheck), 3 evaluation failed (no complete results, whatever
lmms-eval's own exit code), 4 upload failed (results were still served).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from lmms_operator.api.runner import EXIT_CONFIG_ERROR

from . import gpucheck, results
from .config import ConfigError, load
from .evaluation import Runner
from .finish import TERMINATION_LOG, write_termination
from .log import log


def parse_args(argv: list[str] | None, env: dict[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lmms-runner", description=__doc__.split("\n")[0])
    pod_ip = env.get("POD_IP")
    port = env.get("LMMS_RUNNER_PORT", "8080")
    parser.add_argument(
        "--config",
        default=env.get("LMMS_RUN_CONFIG"),
        help="EvalRun manifest or spec (YAML or JSON); default $LMMS_RUN_CONFIG",
    )
    parser.add_argument(
        "--include-path",
        action="append",
        default=None,
        help="directory of custom task YAML (repeatable)",
    )
    parser.add_argument(
        "--output",
        default=env.get("LMMS_OUTPUT_DIR", "lmms-output"),
        help="output directory for lmms-eval",
    )
    parser.add_argument(
        "--listen",
        default=f"{pod_ip}:{port}" if pod_ip else "",
        help="HOST:PORT for /progress, /metrics, /results ('' to disable)",
    )
    parser.add_argument(
        "--state-dir",
        default=env.get("LMMS_STATE_DIR") or None,
        help="directory on a persistent volume for resuming after a restart",
    )
    parser.add_argument(
        "--hold-timeout",
        type=float,
        default=float(env.get("LMMS_HOLD_TIMEOUT", "600" if pod_ip else "0")),
        help="seconds to keep serving /results until acknowledged",
    )
    parser.add_argument(
        "--termination-log", default=env.get("LMMS_TERMINATION_LOG", TERMINATION_LOG)
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    env = dict(os.environ)
    args = parse_args(argv, env)  # usage errors exit 2 too (argparse)
    try:
        if not args.config:
            raise ConfigError("no configuration: pass --config or set LMMS_RUN_CONFIG")
        cfg = load(Path(args.config)).for_shard(env.get("LMMS_SHARD_INDEX"))
        runner = Runner(cfg, args, env)
    except ConfigError as exc:
        log(f"configuration error: {exc}")
        write_termination(args.termination_log, results.failure_message("ConfigError", str(exc)))
        return EXIT_CONFIG_ERROR
    problem = gpucheck.at_start(cfg.spec.resources, env)
    if problem is not None:
        log(f"{problem.reason}: {problem.message}")
        write_termination(
            args.termination_log, results.failure_message(problem.reason, problem.message)
        )
        return EXIT_CONFIG_ERROR

    def on_signal(signum: int, _frame: object) -> None:
        log(f"signal {signum}: stopping lmms-eval")
        runner.terminate()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return runner.run()
    except ConfigError as exc:
        log(f"configuration error: {exc}")
        write_termination(args.termination_log, results.failure_message("ConfigError", str(exc)))
        return EXIT_CONFIG_ERROR
    except OSError as exc:
        if runner.server is None and args.listen:
            log(f"configuration error: cannot listen on {args.listen}: {exc.strerror}")
            return EXIT_CONFIG_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
