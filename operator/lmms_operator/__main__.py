"""`lmms-operator`: run the operator, or look at runs and leaderboards."""

from __future__ import annotations

import argparse
import logging
import sys


def _run(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import Settings

    namespaces = args.namespace or []
    try:
        settings = dataclasses.replace(Settings.from_env(), namespaces=tuple(namespaces)).check()
    except ValueError as exc:
        # A setting that cannot be used: say which and why, and do not start.
        from .cli.output import USAGE

        print(f"lmms-operator: invalid settings: {exc}", file=sys.stderr)
        return USAGE

    import kopf

    from .config import LeaderElection

    try:
        election = LeaderElection.from_args(args)
    except ValueError as exc:
        print(f"lmms-operator run: {exc}", file=sys.stderr)
        return 2

    from . import handlers  # noqa: F401 - importing them registers the handlers

    kopf.configure(
        verbose=args.verbose,
        log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL,
    )
    logging.getLogger("kubernetes").setLevel(logging.WARNING)
    if not args.verbose:
        # Kopf reports every handler call at INFO; the operator's own log says what matters.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    logging.getLogger("lmms").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    from .metrics import Metrics

    metrics = Metrics()
    if args.metrics_address:
        metrics.serve(args.metrics_address)

    kopf.run(
        memo=kopf.Memo(settings=settings, metrics=metrics, election=election),
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import cli

    parser = argparse.ArgumentParser(
        prog="lmms-operator", description=__doc__, epilog=cli.EXIT_CODES
    )
    parser.add_argument("--version", action="version", version=f"lmms-operator {cli.version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the operator against the current kubeconfig")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        help="watch this namespace (repeatable); default: all namespaces",
    )
    run.add_argument("--log-format", choices=["text", "json"], default="text")
    run.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        help="liveness endpoint URL ('' to disable)",
    )
    run.add_argument(
        "--metrics-address",
        default="0.0.0.0:9090",
        help="HOST:PORT of the Prometheus /metrics endpoint ('' to disable)",
    )
    run.add_argument("--verbose", "-v", action="store_true")
    from .config import LeaderElection

    LeaderElection.add_arguments(run)
    run.set_defaults(func=_run)

    # runs, leaderboard show, compare and wait: the same commands as `kubectl lmms`.
    cli.add_commands(sub)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
