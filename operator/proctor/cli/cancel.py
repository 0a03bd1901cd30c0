"""``proctor cancel NAME``: cancel an EvalRun or a BenchmarkSuite on the cluster
(``spec.cancel: true``); ``NAME`` of either kind, or ``evalrun/NAME`` / ``suite/NAME``.

Not a delete: for an EvalRun the operator stops the run's queue, drains its workers (they
flush what they evaluated) and ends the run in phase ``Cancelled``, with its results kept in
storage and its decision undecided unless every case was evaluated (docs/operator.md,
"Cancelling a run"); for a suite it removes the running benchmark pods, keeps the
repetitions recorded, and ends in phase ``Cancelled`` (docs/benchmarks.md, "Cancelling a
suite").
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from proctor.api.v1alpha1.benchmarksuite import KIND as SUITE_KIND
from proctor.api.v1alpha1.evalrun import TERMINAL_PHASES
from proctor.cli.context import (
    ACCESS_CODES,
    EXIT_NO,
    EXIT_OK,
    EXIT_TIMEOUT,
    CommandError,
    Target,
    add_cluster_options,
    connect,
    reported,
    run_command,
)
from proctor.cli.lookup import find_run
from proctor.cli.usage import HelpFormatter, exit_codes
from proctor.cluster.api import ClusterApi
from proctor.suite.api import SuiteApi

DESCRIPTION = (
    "Cancel an EvalRun: its queue is stopped, its workers drain, and it ends in phase "
    "Cancelled with its results kept (a delete would remove it). Cancel a BenchmarkSuite: "
    "its running benchmark pods are removed, no cell starts, the repetitions recorded are "
    "kept, and it ends Cancelled (a scheduled suite fires no more). NAME is either kind, or "
    "evalrun/NAME or suite/NAME when both exist."
)
EPILOG = exit_codes(
    (EXIT_OK, "cancelled (or being cancelled; with --wait, ended)"),
    (EXIT_NO, "the run or suite has already finished: nothing to cancel"),
    *ACCESS_CODES[1:],
    (EXIT_TIMEOUT, "with --wait, it had not ended after --timeout"),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = sub.add_parser(
        "cancel",
        help="cancel an EvalRun or a BenchmarkSuite on the cluster",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    cancel.add_argument("name", metavar="NAME", help="the EvalRun or BenchmarkSuite (or KIND/NAME)")
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
        return _cancel_found(target, args)
    finally:
        target.api.close()


def _get(target: Target, api: ClusterApi, where: str, name: str) -> dict[str, Any] | None:
    with reported(f"get {where}", target.server):
        return api.get_run(target.where, name)


def _find(target: Target, ref: str) -> tuple[ClusterApi, str, dict[str, Any]]:
    """The run or suite ``ref`` names (:func:`find_run`), with the API that patches its kind."""
    kind, body = find_run(target, ref)
    api = SuiteApi(target.api) if kind.kind == SUITE_KIND else target.cluster
    return api, kind.kind, body


def _finished(kind: str, body: dict[str, Any]) -> str | None:
    """The phase of a run that has nothing left to cancel; None when it has. A scheduled
    suite that finished its last run still has a schedule to stop."""
    phase = (body.get("status") or {}).get("phase")
    if phase not in TERMINAL_PHASES:
        return None
    spec = body.get("spec") or {}
    if kind == SUITE_KIND and spec.get("schedule") and not spec.get("cancel"):
        return None
    return str(phase)


def _cancel_found(target: Target, args: argparse.Namespace) -> int:
    api, kind, run = _find(target, args.name)
    name = str(run["metadata"]["name"])
    where = f"{kind} {name} in namespace {target.where}"
    phase = _finished(kind, run)
    if phase is not None:
        raise CommandError(
            f"{where} has already finished (phase {phase}); nothing to cancel", EXIT_NO
        )
    if (run.get("spec") or {}).get("cancel"):
        print(f"{where} is already being cancelled")
    else:
        with reported(f"patch {where}", target.server):
            api.patch_spec(target.where, name, {"cancel": True})
        going = "benchmark pods are being removed" if kind == SUITE_KIND else "workers are draining"
        print(f"{where}: cancel requested; its {going}")
    if not args.wait:
        return EXIT_OK
    return _wait(target, args, api, name, where)


def _wait(target: Target, args: argparse.Namespace, api: ClusterApi, name: str, where: str) -> int:
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        run = _get(target, api, where, name)
        status = (run or {}).get("status") or {}
        if run is None or status.get("phase") in TERMINAL_PHASES:
            print(_ended(where, status) if run else f"{where} was deleted")
            return EXIT_OK
        time.sleep(1.0)
    print(f"error: {where} had not ended after {args.timeout:g}s", file=sys.stderr)
    return EXIT_TIMEOUT


def _ended(where: str, status: dict[str, Any]) -> str:
    if "cells" in status or "runId" in status:  # a suite
        cells = status.get("cells") or []
        done = sum(int(c.get("completed") or 0) for c in cells)
        total = sum(int(c.get("total") or 0) for c in cells)
        text = f"{where} ended {status.get('phase')}: {done} of {total} repetitions recorded"
        if status.get("reportUri"):
            text += f"; report in {status['reportUri']}"
        return text
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
