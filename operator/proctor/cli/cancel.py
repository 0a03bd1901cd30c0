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
from proctor.cli.session import (
    EXIT_UNREACHABLE,
    ClusterError,
    ClusterSession,
    LoginError,
    add_cluster_args,
    call,
    connect,
)

EXIT_NOTHING_TO_CANCEL = 1
DESCRIPTION = (
    "Cancel an EvalRun: its queue is stopped, its workers drain, and it ends in phase "
    "Cancelled with its results kept (a delete would remove it). Exit code: 0 cancelled (or "
    "being cancelled; with --wait, ended), 1 the run has already finished or does not exist, "
    "2 bad arguments or kubeconfig (no file, unknown context), 3 the cluster cannot be "
    "reached or refused (no permission), 4 --wait timed out."
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = sub.add_parser(
        "cancel", help="cancel an EvalRun on the cluster", description=DESCRIPTION
    )
    cancel.add_argument("name", metavar="NAME", help="the EvalRun")
    add_cluster_args(cancel)
    cancel.add_argument(
        "--wait", action="store_true", help="wait until the run has ended (Cancelled)"
    )
    cancel.add_argument(
        "--timeout", type=float, default=300.0, help="with --wait, seconds (default 300)"
    )
    cancel.set_defaults(func=run_cancel)


def run_cancel(args: argparse.Namespace) -> int:
    try:
        session = connect(args)
    except LoginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        return _cancel(session, args)
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        session.api.kube.close()


def _cancel(session: ClusterSession, args: argparse.Namespace) -> int:
    where = f"EvalRun {args.name} in namespace {session.namespace}"
    run = call(session, f"get {where}", lambda: session.api.get_run(session.namespace, args.name))
    if run is None:
        print(f"error: {where} does not exist", file=sys.stderr)
        return EXIT_NOTHING_TO_CANCEL
    phase = (run.get("status") or {}).get("phase")
    if phase in TERMINAL_PHASES:
        print(
            f"error: {where} has already finished (phase {phase}); nothing to cancel",
            file=sys.stderr,
        )
        return EXIT_NOTHING_TO_CANCEL
    if (run.get("spec") or {}).get("cancel"):
        print(f"{where} is already being cancelled")
    else:
        call(
            session,
            f"patch {where}",
            lambda: session.api.patch_spec(session.namespace, args.name, {"cancel": True}),
        )
        print(f"{where}: cancel requested; its workers are draining")
    if not args.wait:
        return 0
    return _wait(session, args, where)


def _wait(session: ClusterSession, args: argparse.Namespace, where: str) -> int:
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        run: Any = call(
            session, f"get {where}", lambda: session.api.get_run(session.namespace, args.name)
        )
        status = (run or {}).get("status") or {}
        if run is None or status.get("phase") in TERMINAL_PHASES:
            print(_ended(where, status) if run else f"{where} was deleted")
            return 0
        time.sleep(1.0)
    print(f"error: {where} had not ended after {args.timeout:g}s", file=sys.stderr)
    return 4


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
