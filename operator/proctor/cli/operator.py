"""``proctor operator``: the Kubernetes operator (kopf), with or without peering."""

from __future__ import annotations

import argparse
import secrets
import sys

from proctor.cli.usage import HelpFormatter, exit_codes
from proctor.cluster.client import keep_kubernetes_client_out
from proctor.config import load_config
from proctor.logging import configure_logging


def add_operator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    op = sub.add_parser(
        "operator",
        help="run the Kubernetes operator (EvalRun controller)",
        description="Reconcile EvalRuns: plan, start and scale worker pods, follow progress, "
        "report status. Cluster-wide unless --namespace is given.",
        epilog=exit_codes(
            (0, "stopped (SIGTERM, SIGINT)"),
            (1, "kopf stopped on an error it could not recover from"),
            (2, "bad arguments, or the operator configuration cannot be read"),
        ),
        formatter_class=HelpFormatter,
    )
    op.add_argument("--config", help="operator configuration YAML (default: $PROCTOR_CONFIG)")
    op.add_argument(
        "-n", "--namespace", action="append", help="watch only this namespace (repeatable)"
    )
    op.add_argument("--peering", action="store_true", help="enable kopf peering (several replicas)")
    op.add_argument(
        "--peering-priority", type=int, default=None,
        help="with --peering, the highest live priority works, the others wait "
        "(default: random, so replicas of one Deployment differ)",
    )  # fmt: skip
    op.add_argument(
        "--liveness-port", type=int, default=8080, help="/healthz port (0: off; default 8080)"
    )
    op.add_argument(
        "--metrics-port", type=int, default=9090, help="metrics port (0: off; default 9090)"
    )
    op.add_argument("--log-level", default="info", help="log level (default: info)")
    op.set_defaults(func=cmd_operator)


def peering_priority(peering: bool, given: int | None) -> int:
    """kopf pauses every peer when two share the highest priority, so replicas of one
    Deployment (same arguments) each draw their own."""
    if given is not None:
        return given
    if not peering:
        return 0
    return 1 + secrets.randbelow(2**31 - 1)


def cmd_operator(args: argparse.Namespace) -> int:
    keep_kubernetes_client_out()  # before kopf is imported
    # kopf (imported by the controller) must not load before keep_kubernetes_client_out().
    from proctor.controller.evalrun import run_operator  # noqa: PLC0415 - see above

    configure_logging(level=args.log_level)
    try:
        config = load_config(args.config)
    except Exception as exc:
        print(f"error: cannot read the operator configuration: {exc}", file=sys.stderr)
        return 2
    run_operator(
        config,
        namespaces=list(args.namespace or []),
        peering=args.peering,
        peering_priority=peering_priority(args.peering, args.peering_priority),
        liveness_port=args.liveness_port or None,
        metrics_port=args.metrics_port or None,
    )
    return 0
