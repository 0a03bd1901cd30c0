"""The ``proctor`` command line: the parser, one sub-parser per command, and dispatch."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from proctor import __version__
from proctor.api.crdgen import KINDS, render, render_all
from proctor.bench.worker import main as bench_worker_main
from proctor.cli import cancel as cancel_command
from proctor.cli import plan as plan_command
from proctor.cli import results
from proctor.cli.cache import add_cache
from proctor.cli.get import add_get
from proctor.cli.logs import add_logs
from proctor.cli.report import add_report
from proctor.cli.run import add_run
from proctor.cli.status import add_status
from proctor.cli.usage import HelpFormatter, exit_codes
from proctor.cli.validate import add_validate
from proctor.cli.watch import add_watch
from proctor.cluster.client import keep_kubernetes_client_out
from proctor.config import load_config
from proctor.logging import configure_logging
from proctor.queue import QueueError
from proctor.storage import StorageError
from proctor.worker.runtime import main as worker_main


def _cmd_crds(args: argparse.Namespace) -> int:
    if args.out_dir is None:
        sys.stdout.write(render_all())
        return 0
    out = Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            (out / kind.file_name).write_text(render(kind))
            print(f"wrote {out / kind.file_name}")
    except OSError as exc:
        print(f"error: --out-dir {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    overrides = {
        "PROCTOR_QUEUE_URL": args.queue,
        "PROCTOR_STORAGE_URI": args.storage,
        "PROCTOR_SPEC_FILE": args.spec_file,
        "PROCTOR_RUN_ID": args.run_id,
        "PROCTOR_METRICS_PORT": None if args.metrics_port is None else str(args.metrics_port),
    }
    os.environ.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return worker_main()
    except (QueueError, StorageError) as exc:
        # The queue or the store cannot be reached: say which, without a traceback.
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _cmd_bench_worker(args: argparse.Namespace) -> int:
    return bench_worker_main()


def _peering_priority(peering: bool, given: int | None) -> int:
    """kopf pauses every peer when two share the highest priority, so replicas of one
    Deployment (same arguments) each draw their own."""
    if given is not None:
        return given
    if not peering:
        return 0
    return 1 + secrets.randbelow(2**31 - 1)


def _cmd_operator(args: argparse.Namespace) -> int:
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
        peering_priority=_peering_priority(args.peering, args.peering_priority),
        liveness_port=args.liveness_port or None,
        metrics_port=args.metrics_port or None,
    )
    return 0


def build_parser(prog: str = "proctor") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run evaluation runs and benchmark suites on Kubernetes, or on this machine.",
        epilog="Each command lists its exit codes in its --help; see docs/cli.md.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"proctor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crds = sub.add_parser(
        "crds",
        help="print the CustomResourceDefinitions",
        description="Print the CRDs of EvalRun and BenchmarkSuite, generated from the API "
        "models (what crds/ and the chart ship), as one multi-document YAML.",
        epilog=exit_codes(
            (0, "printed (or written)"), (1, "--out-dir cannot be written"), (2, "bad arguments")
        ),
        formatter_class=HelpFormatter,
    )
    crds.add_argument("--out-dir", help="write one file per CRD into this folder instead")
    crds.set_defaults(func=_cmd_crds)
    add_validate(sub)
    add_run(sub)
    add_get(sub)
    add_status(sub)
    add_watch(sub)
    plan_command.register(sub)
    cancel_command.register(sub)
    results.add_parser(sub)
    add_report(sub)
    add_logs(sub)
    add_cache(sub)
    _add_workers(sub)
    _add_operator(sub)
    return parser


def _add_workers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser(
        "worker",
        help="run a worker (configured by PROCTOR_* variables; see docs/engine.md)",
        description="Claim batches of a run from its queue, evaluate them and record the "
        "results until no work remains. Configured by environment variables (PROCTOR_SPEC, "
        "PROCTOR_QUEUE_URL, PROCTOR_STORAGE_URI, PROCTOR_RUN_ID, ...); options override them.",
        epilog=exit_codes(
            (0, "no work left: every batch claimed by this worker was recorded"),
            (2, "bad configuration, or the task cannot be loaded"),
            (3, "the queue or the storage cannot be reached"),
            (4, "a case ignored its timeout; the worker exits so that it is replaced"),
        ),
        formatter_class=HelpFormatter,
    )
    worker.add_argument("--queue", help="overrides PROCTOR_QUEUE_URL")
    worker.add_argument("--storage", help="overrides PROCTOR_STORAGE_URI")
    worker.add_argument("--spec-file", help="overrides PROCTOR_SPEC_FILE (EvalRun or its spec)")
    worker.add_argument("--run-id", help="overrides PROCTOR_RUN_ID")
    worker.add_argument("--metrics-port", type=int, help="overrides PROCTOR_METRICS_PORT")
    worker.set_defaults(func=_cmd_worker)

    bench_worker = sub.add_parser(
        "bench-worker",
        help="measure one BenchmarkSuite cell (configured by PROCTOR_* variables; see "
        "docs/benchmarks.md)",
        description="Run the cell's warmups, then claim, measure and record its repetitions "
        "one at a time until none is left. The container command of benchmark pods. "
        "Configured by PROCTOR_SUITE_SPEC, PROCTOR_SUITE_NAMESPACE, PROCTOR_SUITE_NAME, "
        "PROCTOR_SUITE_RUN_ID, PROCTOR_CELL, PROCTOR_QUEUE_URL, PROCTOR_STORAGE_URI.",
        epilog=exit_codes(
            (0, "no repetition left in the cell"),
            (2, "bad configuration"),
            (3, "the queue or the storage cannot be reached"),
        ),
        formatter_class=HelpFormatter,
    )
    bench_worker.set_defaults(func=_cmd_bench_worker)


def _add_operator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    op.set_defaults(func=_cmd_operator)


def main(argv: Sequence[str] | None = None, prog: str = "proctor") -> int:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


def kubectl_plugin() -> int:
    """``kubectl-proctor``: kubectl runs it for ``kubectl proctor ...`` (its plugin mechanism)."""
    return main(prog="kubectl proctor")


if __name__ == "__main__":
    sys.exit(main())
