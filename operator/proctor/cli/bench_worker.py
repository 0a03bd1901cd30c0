"""``proctor bench-worker``: measures one BenchmarkSuite cell (the command of benchmark pods)."""

from __future__ import annotations

import argparse

from proctor.bench.worker import main as bench_worker_main
from proctor.cli.usage import HelpFormatter, exit_codes


def add_bench_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    bench_worker.set_defaults(func=cmd_bench_worker)


def cmd_bench_worker(args: argparse.Namespace) -> int:
    return bench_worker_main()
