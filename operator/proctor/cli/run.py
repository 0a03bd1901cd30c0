"""``proctor run FILE``: the file's EvalRun or BenchmarkSuite on this machine.

A file runs whole or not at all: it must hold exactly one EvalRun or BenchmarkSuite (other
kinds, a Secret say, are ignored as they are by every local run). A file with several is
refused before anything starts, with the documents it holds, so no run is ever half done.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TypeVar

from proctor.api.v1alpha1 import EVALRUN_KIND, SUITE_KIND
from proctor.cli.usage import HelpFormatter
from proctor.local.run import LocalRunOptions, run_local
from proctor.logging import configure_logging
from proctor.validation import ManifestError, dns_label_error, iter_documents
from proctor.worker.pool import EXIT_USAGE, LocalOptions

RUNNABLE = (EVALRUN_KIND, SUITE_KIND)

OptionsT = TypeVar("OptionsT", bound=LocalOptions)

DEPRECATED_N = (
    "warning: `proctor run -n` is deprecated and will be removed in the next release; use "
    "--workers (on cluster commands -n means --namespace)"
)

EPILOG = """\
exit codes (EvalRun):
  0    accepted, or without compare every case recorded
  1    rejected
  2    bad manifest, name or arguments; a file with more than one EvalRun or BenchmarkSuite;
       a task that cannot be loaded; a --resume that does not match
  3    not every case was evaluated and the run is not decided (the summary says why)
  130  interrupted (SIGINT, SIGTERM, SIGHUP); the summary gives the --resume command
exit codes (BenchmarkSuite):
  0    every repetition recorded and succeeded, no regression
  1    regressions against the baseline
  2    as above, or the baseline cannot be read
  3    failed repetitions, or workers crashed beyond failureBudget
  130  interrupted; the summary gives the --resume command (see docs/benchmarks.md)
"""


def add_run(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run an EvalRun or BenchmarkSuite manifest on this machine",
        description="Run the EvalRun or BenchmarkSuite of FILE on this machine with local "
        "worker processes, an embedded queue and a local results folder (or --queue and "
        "--storage). A BenchmarkSuite runs its cells one after another (--workers per cell, "
        "default 1) and writes a report.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    run.add_argument(
        "file", metavar="FILE", help="YAML manifest with one EvalRun or one BenchmarkSuite"
    )
    run.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: CPU count; for a BenchmarkSuite, per cell, default 1)",
    )
    # Deprecated: -n is --namespace on every cluster command. Kept for one release.
    run.add_argument("-n", dest="workers_n", type=int, default=None, help=argparse.SUPPRESS)
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
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    try:
        return _run_manifest(args)
    except KeyboardInterrupt:
        # Ctrl-C before the run took over its signals (while importing, say): no traceback.
        print("interrupted", file=sys.stderr)
        return 130


def runnable_documents(path: Path) -> list[str]:
    """``Kind/name`` of each EvalRun and BenchmarkSuite in the file; empty when the file
    cannot be read or parsed (the runner then says why)."""
    try:
        docs = [doc for _, doc in iter_documents(path)]
    except ManifestError:
        return []
    found = []
    for doc in docs:
        if isinstance(doc, dict) and doc.get("kind") in RUNNABLE:
            meta: Any = doc.get("metadata")
            name = meta.get("name") if isinstance(meta, dict) else None
            found.append(f"{doc['kind']}/{name or '?'}")
    return found


def _run_manifest(args: argparse.Namespace) -> int:
    configure_logging(level=args.log_level)
    workers = args.workers
    if args.workers_n is not None:
        print(DEPRECATED_N, file=sys.stderr)
        workers = args.workers_n if workers is None else workers
    problem = None if args.run_id is None else dns_label_error(args.run_id)
    if problem is not None:
        # The run id names folders and keys: never a path (also for a BenchmarkSuite).
        print(f"error: --run-id: {problem}", file=sys.stderr)
        return EXIT_USAGE
    manifest = Path(args.file)
    found = runnable_documents(manifest)
    if len(found) > 1:
        print(
            f"error: {manifest} holds {len(found)} runnable documents ({', '.join(found)}); "
            "proctor run runs one EvalRun or one BenchmarkSuite per file, so none was run: "
            "put each in a file of its own",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if found and found[0].startswith(f"{SUITE_KIND}/"):
        # Loaded here: an EvalRun's start-up does not import the suite runner.
        from proctor.bench.local import (  # noqa: PLC0415 - see above (docs/performance.md)
            LocalSuiteOptions,
            run_suite_local,
        )

        return run_suite_local(_options(LocalSuiteOptions, args, manifest, workers))
    return run_local(_options(LocalRunOptions, args, manifest, workers))


def _options(
    cls: type[OptionsT], args: argparse.Namespace, manifest: Path, workers: int | None
) -> OptionsT:
    return cls(
        manifest=manifest,
        workers=workers,
        queue_url=args.queue,
        storage_uri=args.storage,
        results_dir=Path(args.results_dir),
        run_id=args.run_id,
        resume=args.resume,
        json_output=args.json,
    )
