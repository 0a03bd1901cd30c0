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
import functools
import sys
import time
from typing import Any

from proctor.api.crdgen import Kind
from proctor.api.v1alpha1.benchmarksuite import KIND as SUITE_KIND
from proctor.api.v1alpha1.evalrun import TERMINAL_PHASES
from proctor.cli.context import CommandError
from proctor.cli.lookup import split_name
from proctor.cli.session import (
    EXIT_UNREACHABLE,
    ClusterError,
    ClusterSession,
    LoginError,
    add_cluster_args,
    call,
    connect,
)
from proctor.cluster.api import ClusterApi
from proctor.suite.api import SuiteApi

EXIT_NOTHING_TO_CANCEL = 1
DESCRIPTION = (
    "Cancel an EvalRun: its queue is stopped, its workers drain, and it ends in phase "
    "Cancelled with its results kept (a delete would remove it). Cancel a BenchmarkSuite: "
    "its running benchmark pods are removed, no cell starts, the repetitions recorded are "
    "kept, and it ends Cancelled (a scheduled suite fires no more). NAME is either kind, or "
    "evalrun/NAME or suite/NAME when both exist. Exit code: 0 cancelled (or being "
    "cancelled; with --wait, ended), 1 the run has already finished or does not exist, 2 bad "
    "arguments or kubeconfig (no file, unknown context), or NAME is both kinds, 3 the "
    "cluster cannot be reached or refused (no permission), 4 --wait timed out."
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cancel = sub.add_parser(
        "cancel", help="cancel an EvalRun or a BenchmarkSuite on the cluster",
        description=DESCRIPTION,
    )  # fmt: skip
    cancel.add_argument("name", metavar="NAME", help="the EvalRun or BenchmarkSuite (or KIND/NAME)")
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
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except ClusterError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    finally:
        session.api.kube.close()


def _find(session: ClusterSession, ref: str) -> tuple[ClusterApi, str, dict[str, Any]] | None:
    """The API of the kind ``ref`` names, the run's name and body; None when there is none.
    A bare NAME is looked up as an EvalRun, then as a BenchmarkSuite."""
    wanted, name = split_name(ref)
    apis = {"EvalRun": session.api, SUITE_KIND: SuiteApi(session.api.kube)}
    found: list[tuple[ClusterApi, str, dict[str, Any]]] = []
    for kind, api in apis.items():
        if wanted is not None and wanted.kind != kind:
            continue
        where = f"{kind} {name} in namespace {session.namespace}"
        body = call(
            session, f"get {where}", functools.partial(api.get_run, session.namespace, name)
        )
        if body is not None:
            found.append((api, kind, body))
    if len(found) > 1:
        raise CommandError(
            f"{name!r} is both an EvalRun and a BenchmarkSuite in namespace "
            f"{session.namespace}: write evalrun/{name} or suite/{name}",
            2,
        )
    return found[0] if found else None


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


def _cancel(session: ClusterSession, args: argparse.Namespace) -> int:
    found = _find(session, args.name)
    if found is None:
        wanted, missing = split_name(args.name)
        what = wanted.kind if isinstance(wanted, Kind) else "EvalRun or BenchmarkSuite"
        print(f"error: no {what} {missing} in namespace {session.namespace}", file=sys.stderr)
        return EXIT_NOTHING_TO_CANCEL
    api, kind, run = found
    name = str(run["metadata"]["name"])
    where = f"{kind} {name} in namespace {session.namespace}"
    phase = _finished(kind, run)
    if phase is not None:
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
            lambda: api.patch_spec(session.namespace, name, {"cancel": True}),
        )
        going = "benchmark pods are being removed" if kind == SUITE_KIND else "workers are draining"
        print(f"{where}: cancel requested; its {going}")
    if not args.wait:
        return 0
    return _wait(session, args, api, name, where)


def _wait(
    session: ClusterSession, args: argparse.Namespace, api: ClusterApi, name: str, where: str
) -> int:
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        run: Any = call(session, f"get {where}", lambda: api.get_run(session.namespace, name))
        status = (run or {}).get("status") or {}
        if run is None or status.get("phase") in TERMINAL_PHASES:
            print(_ended(where, status) if run else f"{where} was deleted")
            return 0
        time.sleep(1.0)
    print(f"error: {where} had not ended after {args.timeout:g}s", file=sys.stderr)
    return 4


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
