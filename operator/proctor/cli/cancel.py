"""``proctor cancel NAME``: cancel an EvalRun on the cluster (``spec.cancel: true``).

Not a delete: the operator stops the run's queue, drains its workers (they flush what they
evaluated) and ends the run in phase ``Cancelled``, with its results kept in storage and its
decision undecided unless every case was evaluated (docs/operator.md, "Cancelling a run").
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from proctor.api.v1alpha1.evalrun import TERMINAL_PHASES
from proctor.cli.context import (
    ACCESS_CODES,
    EXIT_NO,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    CommandError,
    Target,
    add_cluster_options,
    connect,
    reported,
    run_command,
)
from proctor.cli.usage import HelpFormatter, exit_codes

DESCRIPTION = (
    "Cancel an EvalRun: its queue is stopped, its workers drain, and it ends in phase "
    "Cancelled with its results kept (a delete would remove it)."
)
EPILOG = exit_codes(
    (EXIT_OK, "cancelled (or being cancelled; with --wait, ended)"),
    (EXIT_NO, "the run has already finished: nothing to cancel"),
    *ACCESS_CODES[1:],
    (EXIT_TIMEOUT, "with --wait, the run had not ended after --timeout"),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = sub.add_parser(
        "cancel",
        help="cancel an EvalRun on the cluster",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    cancel.add_argument("name", metavar="NAME", help="the EvalRun")
    add_cluster_options(cancel)
    cancel.add_argument(
        "--wait", action="store_true", help="wait until the run has ended (Cancelled)"
    )
    cancel.add_argument(
        "--timeout", type=float, default=300.0, help="with --wait, seconds (default 300)"
    )
    cancel.set_defaults(func=run_cancel)


def run_cancel(args: argparse.Namespace) -> int:
    return run_command(args, _cancel)


def _cancel(args: argparse.Namespace) -> int:
    target = connect(args)
    try:
        return _cancel_run(target, args)
    finally:
        target.api.close()


def _get(target: Target, where: str, name: str) -> dict[str, Any] | None:
    with reported(f"get {where}", target.server):
        return target.cluster.get_run(target.where, name)


def _cancel_run(target: Target, args: argparse.Namespace) -> int:
    where = f"EvalRun {args.name} in namespace {target.where}"
    run = _get(target, where, args.name)
    if run is None:
        raise CommandError(f"{where} does not exist", EXIT_NOT_FOUND)
    phase = (run.get("status") or {}).get("phase")
    if phase in TERMINAL_PHASES:
        raise CommandError(
            f"{where} has already finished (phase {phase}); nothing to cancel", EXIT_NO
        )
    if (run.get("spec") or {}).get("cancel"):
        print(f"{where} is already being cancelled")
    else:
        with reported(f"patch {where}", target.server):
            target.cluster.patch_spec(target.where, args.name, {"cancel": True})
        print(f"{where}: cancel requested; its workers are draining")
    if not args.wait:
        return EXIT_OK
    return _wait(target, args, where)


def _wait(target: Target, args: argparse.Namespace, where: str) -> int:
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        run = _get(target, where, args.name)
        status = (run or {}).get("status") or {}
        if run is None or status.get("phase") in TERMINAL_PHASES:
            print(_ended(where, status) if run else f"{where} was deleted")
            return EXIT_OK
        time.sleep(1.0)
    print(f"error: {where} had not ended after {args.timeout:g}s", file=sys.stderr)
    return EXIT_TIMEOUT


def _ended(where: str, status: dict[str, Any]) -> str:
    counts = status.get("counts") or {}
    result = status.get("result") or {}
    text = (
        f"{where} ended {status.get('phase')}: {counts.get('completed', 0)} of "
        f"{counts.get('total', 0)} cases evaluated"
    )
    if result.get("decision"):
        text += f", decision {result['decision']}"
    if result.get("resultsUri"):
        text += f"; results in {result['resultsUri']}"
    return text
