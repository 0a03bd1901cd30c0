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
from proctor.api.v1alpha1.evalrun import EvalRun
from proctor.bench.local import LocalSuiteOptions, holds_benchmark_suite, run_suite_local
from proctor.bench.worker import main as bench_worker_main
from proctor.cli import cancel as cancel_command
from proctor.cli import plan as plan_command
from proctor.cli import results
from proctor.cluster.client import keep_kubernetes_client_out
from proctor.config import load_config
from proctor.local.admission import local_dataset_problem
from proctor.local.run import LocalRunOptions, run_local
from proctor.logging import configure_logging
from proctor.queue import QueueError
from proctor.storage import StorageError
from proctor.validation import ManifestError, dns_label_error, validate_file
from proctor.worker.runtime import main as worker_main


def _cmd_crds(args: argparse.Namespace) -> int:
    if args.out_dir is None:
        sys.stdout.write(render_all())
        return 0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        (out / kind.file_name).write_text(render(kind))
        print(f"wrote {out / kind.file_name}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for name in args.files:
        try:
            results = validate_file(Path(name))
        except ManifestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
            continue
        for result in results:
            problem = None
            if result.ok and isinstance(result.model, EvalRun):
                problem = local_dataset_problem(result.model.spec, Path(name))
            if result.ok and problem is None:
                print(f"{result.describe()}: valid")
                continue
            if problem is not None:
                failed = True
                print(f"{result.describe()}: invalid", file=sys.stderr)
                print(f"  spec.cases.dataset: {problem}", file=sys.stderr)
                continue
            failed = True
            print(f"{result.describe()}: invalid", file=sys.stderr)
            for error in result.errors:
                print(f"  {error}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        return _run_manifest(args)
    except KeyboardInterrupt:
        # Ctrl-C before the run took over its signals (while importing, say): no traceback.
        print("interrupted", file=sys.stderr)
        return 130


def _run_manifest(args: argparse.Namespace) -> int:
    configure_logging(level=args.log_level)
    problem = None if args.run_id is None else dns_label_error(args.run_id)
    if problem is not None:
        # The run id names folders and keys: never a path (also for a BenchmarkSuite).
        print(f"error: --run-id: {problem}", file=sys.stderr)
        return 2
    if holds_benchmark_suite(Path(args.file)):
        return run_suite_local(
            LocalSuiteOptions(
                manifest=Path(args.file),
                workers=args.workers,
                queue_url=args.queue,
                storage_uri=args.storage,
                results_dir=Path(args.results_dir),
                run_id=args.run_id,
                resume=args.resume,
                json_output=args.json,
            )
        )
    options = LocalRunOptions(
        manifest=Path(args.file),
        workers=args.workers,
        queue_url=args.queue,
        storage_uri=args.storage,
        results_dir=Path(args.results_dir),
        run_id=args.run_id,
        resume=args.resume,
        json_output=args.json,
    )
    return run_local(options)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proctor",
        description="Run evaluation runs and benchmark suites on Kubernetes, or on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"proctor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crds = sub.add_parser("crds", help="print the CustomResourceDefinitions")
    crds.add_argument("--out-dir", help="write one file per CRD into this folder instead")
    crds.set_defaults(func=_cmd_crds)

    validate = sub.add_parser("validate", help="validate manifests against the API")
    validate.add_argument("files", nargs="+", metavar="FILE", help="YAML manifests")
    validate.set_defaults(func=_cmd_validate)
    _add_run(sub)
    plan_command.register(sub)
    cancel_command.register(sub)
    results.add_parser(sub)
    _add_workers(sub)
    _add_operator(sub)
    return parser


def _add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run an EvalRun or BenchmarkSuite manifest on this machine",
        description="Run an EvalRun on this machine with local worker processes. Exit code: "
        "0 accepted (or, without compare, every case recorded), 1 rejected, 2 bad manifest, "
        "name, arguments or task, or a --resume that does not match, 3 not every case was "
        "evaluated and the run is not decided (the summary says how many and why), 130 "
        "interrupted (SIGINT, SIGTERM, SIGHUP). A BenchmarkSuite runs its cells one after "
        "another (--workers per cell, default 1) and writes a report; exit 1 means "
        "regressions against the baseline, 3 failed repetitions (see docs/benchmarks.md).",
    )
    run.add_argument(
        "file", metavar="FILE", help="YAML manifest with one EvalRun or one BenchmarkSuite"
    )
    run.add_argument(
        "-n",
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: CPU count; for a BenchmarkSuite, per cell, default 1)",
    )
    run.add_argument(
        "--queue", help="redis://HOST:PORT/DB or sqs://[HOST:PORT] (default: embedded SQLite)"
    )
    run.add_argument(
        "--storage", help="s3://BUCKET/PREFIX or file:///PATH (default: --results-dir)"
    )
    run.add_argument(
        "--results-dir", default="proctor-results",
        help="local folder for results, logs and the embedded queue (default: proctor-results)",
    )  # fmt: skip
    run.add_argument(
        "--run-id",
        help="key of the run in the queue and storage, a DNS-1123 label (default: name)",
    )
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run (same task, compare and cases) instead of restarting",
    )
    run.add_argument(
        "--json", action="store_true", help="print the final summary as one JSON object"
    )
    run.add_argument("--log-level", default="warning", help="log level (default: warning)")
    run.set_defaults(func=_cmd_run)


def _add_workers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    worker = sub.add_parser(
        "worker",
        help="run a worker (configured by PROCTOR_* variables; see docs/engine.md)",
        description="Claim batches of a run from its queue, evaluate them and record the "
        "results until no work remains. Configured by environment variables (PROCTOR_SPEC, "
        "PROCTOR_QUEUE_URL, PROCTOR_STORAGE_URI, PROCTOR_RUN_ID, ...); options override them.",
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
    )
    bench_worker.set_defaults(func=_cmd_bench_worker)


def _add_operator(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    op = sub.add_parser(
        "operator",
        help="run the Kubernetes operator (EvalRun controller)",
        description="Reconcile EvalRuns: plan, start and scale worker pods, follow progress, "
        "report status. Cluster-wide unless --namespace is given.",
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
