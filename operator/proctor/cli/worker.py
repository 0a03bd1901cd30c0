"""``proctor worker``: an EvalRun worker (the container command of worker pods)."""

from __future__ import annotations

import argparse
import os
import sys

from proctor.cli.usage import HelpFormatter, exit_codes
from proctor.queue import QueueError
from proctor.storage import StorageError
from proctor.worker.runtime import main as worker_main


def add_worker(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    worker.set_defaults(func=cmd_worker)


def cmd_worker(args: argparse.Namespace) -> int:
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
