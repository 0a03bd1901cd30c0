"""``proctor logs NAME``: the logs of a run's pods (an EvalRun's workers, a BenchmarkSuite's
benchmark pods) through the API server, each line prefixed with its pod's name.

The pods are found by the label the operator puts on every pod of a run,
``proctor.dev/run-uid=<the run's uid>`` (so a deleted and re-created run of the same name is
not mixed in), and read from their one container, as the operator names it (``worker``,
``benchmark``). ``--follow`` streams every pod's log at once, picks up pods the operator starts
later (scale-up, a replaced worker), and stops when the run has finished and no log is open.
Which part of each log is read (``--tail``, ``--since``, ``--since-time``, ``--previous``,
``--timestamps``) is kubectl's, :mod:`proctor.cli.logoptions`.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from proctor.api.crdgen import Kind
from proctor.api.names import GROUP, LABEL_RUN_UID, VERSION
from proctor.cli.context import (
    EXIT_NO_ACCESS,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_USAGE,
    CommandError,
    Target,
    add_cluster_options,
    codes,
    connect,
    reported,
    run_command,
)
from proctor.cli.logoptions import LogOptions, add_log_options, log_options
from proctor.cli.lookup import find_run
from proctor.cli.usage import HelpFormatter, exit_codes
from proctor.cli.views import FINAL_PHASES
from proctor.cluster.client import KubeApiError, core_path, custom_path

POLL_SECONDS = 2.0
"""How often ``--follow`` looks for new pods and for the run's end."""
STARTED_PHASES = frozenset({"Running", "Succeeded", "Failed"})
"""Pod phases whose container has a log to read (a Pending pod's has not started)."""


def add_logs(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logs = sub.add_parser(
        "logs",
        help="print the logs of a run's workers (suites: benchmark pods)",
        description="Print the logs of the pods of a run (EvalRun workers, BenchmarkSuite "
        "benchmark pods) through the API server, each line prefixed with [POD]. Pods are "
        "found by the operator's label proctor.dev/run-uid. Reading logs needs get on "
        "pods/log and list on pods in the namespace (docs/cli.md).",
        epilog=exit_codes(
            (EXIT_OK, "done"),
            *codes(EXIT_USAGE),
            (EXIT_NOT_FOUND, "no such run, no pod of it (--previous: none has restarted)"),
            *codes(EXIT_NO_ACCESS),
            (130, "interrupted (the run goes on)"),
        ),
        formatter_class=HelpFormatter,
    )
    logs.add_argument("name", metavar="NAME", help="the run: NAME or KIND/NAME")
    logs.add_argument(
        "-f", "--follow", action="store_true",
        help="stream the logs, with pods started later, until the run has finished",
    )  # fmt: skip
    add_log_options(logs)
    logs.add_argument(
        "--worker", action="append", metavar="POD",
        help="only this pod: its name, or the part after the run's name (repeatable)",
    )  # fmt: skip
    add_cluster_options(logs)
    logs.set_defaults(func=lambda args: run_command(args, cmd_logs))


def cmd_logs(args: argparse.Namespace) -> int:
    options = log_options(
        args.tail, args.since, args.since_time, previous=args.previous, timestamps=args.timestamps
    )
    target = connect(args)
    try:
        kind, body = find_run(target, args.name)
        name = str(body["metadata"]["name"])
        pods = select(run_pods(target, body), args.worker, name)
        finished = (body.get("status") or {}).get("phase") in FINAL_PHASES
        if not pods and (args.worker or not args.follow or finished):
            which = f" named {', '.join(args.worker)}" if args.worker else ""
            raise CommandError(
                f"no pod{which} of {kind.kind} {name} in namespace {target.where} (a finished "
                "run's pods are gone; a pending one has none yet)",
                EXIT_NOT_FOUND,
            )
        if args.follow and not options.previous:
            Follower(target, kind, body, args, options).run(pods)
        else:  # as kubectl's -p -f: a previous container's log has ended, nothing to follow
            printed = [print_log(target, pod, options) for pod in pods]
            if options.previous and not any(printed):
                raise CommandError(
                    f"no pod of {kind.kind} {name} has a previous container: none has "
                    "restarted (read the current logs without --previous)",
                    EXIT_NOT_FOUND,
                )
    finally:
        target.api.close()
    return EXIT_OK


def run_pods(target: Target, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's pods, by name."""
    uid = body["metadata"]["uid"]
    with reported(f"list pods in namespace {target.where}", target.server):
        pods = target.api.list(
            core_path(target.where, "pods"), {"labelSelector": f"{LABEL_RUN_UID}={uid}"}
        )
    return sorted(pods, key=pod_name)


def select(pods: list[dict[str, Any]], wanted: list[str] | None, run: str) -> list[dict[str, Any]]:
    """The pods ``--worker`` names (all without it): a pod's name, or its part after
    ``<run>-`` (pure)."""
    if not wanted:
        return pods
    names = set(wanted) | {f"{run}-{w}" for w in wanted}
    return [p for p in pods if pod_name(p) in names]


def pod_name(pod: dict[str, Any]) -> str:
    return str(pod["metadata"]["name"])


def container(pod: dict[str, Any]) -> str:
    """The container the operator runs in the pod (its first: worker or benchmark)."""
    return str(pod["spec"]["containers"][0]["name"])


def prefixed(pod: str, lines: Iterable[bytes]) -> Iterator[str]:
    """Each log line as ``[POD] line`` (pure)."""
    for line in lines:
        yield f"[{pod}] {line.decode('utf-8', 'replace').rstrip(chr(10))}"


def _log(
    target: Target, pod: dict[str, Any], options: LogOptions, *, follow: bool = False
) -> Iterator[bytes]:
    query = options.query(container(pod), follow=follow)
    path = core_path(str(pod["metadata"]["namespace"]), "pods", pod_name(pod)) + "/log"
    return target.api.stream(path, query, read_timeout=None if follow else 60.0)


def print_log(target: Target, pod: dict[str, Any], options: LogOptions) -> bool:
    """One pod's log so far; False when it has none to read (a pod not started yet, gone, or
    with no previous container), said on stderr."""
    name = pod_name(pod)
    try:
        with reported(f"read the log of pod {name}", target.server):
            for line in prefixed(name, _log(target, pod, options)):
                print(line, flush=False)
    except CommandError as exc:
        cause = exc.__cause__
        if not isinstance(cause, KubeApiError) or cause.status not in (400, 404):
            raise
        what = "no previous log" if options.previous else "no log"
        print(f"[{name}] {what}: {cause.message}", file=sys.stderr)
        return False
    finally:
        sys.stdout.flush()
    return True


class Follower:
    """``--follow``: one thread per started pod, new pods picked up every
    :data:`POLL_SECONDS`, until the run has finished and every log has ended."""

    def __init__(
        self, target: Target, kind: Kind, body: dict[str, Any], args: Any, options: LogOptions
    ) -> None:
        self.target, self.kind, self.body, self.args = target, kind, body, args
        self.options = options
        self.name = str(body["metadata"]["name"])
        self.lock = threading.Lock()
        self.threads: dict[str, threading.Thread] = {}

    def run(self, pods: list[dict[str, Any]]) -> None:
        while True:
            for pod in pods:
                started = (pod.get("status") or {}).get("phase") in STARTED_PHASES
                if started and pod_name(pod) not in self.threads:
                    self._start(pod)
            alive = any(t.is_alive() for t in self.threads.values())
            if not alive and self._finished():
                return
            time.sleep(POLL_SECONDS)
            pods = select(run_pods(self.target, self.body), self.args.worker, self.name)

    def _finished(self) -> bool:
        with reported(f"read {self.kind.kind} {self.name}", self.target.server):
            now = self.target.api.get(_run_path(self.kind, self.body))
        return now is None or (now.get("status") or {}).get("phase") in FINAL_PHASES

    def _start(self, pod: dict[str, Any]) -> None:
        thread = threading.Thread(target=self._stream, args=(pod,), daemon=True)
        self.threads[pod_name(pod)] = thread
        thread.start()

    def _stream(self, pod: dict[str, Any]) -> None:
        name = pod_name(pod)
        try:
            for line in prefixed(name, _log(self.target, pod, self.options, follow=True)):
                with self.lock:
                    print(line, flush=True)
        except KubeApiError as exc:
            with self.lock:
                print(f"[{name}] no log: {exc.message}", file=sys.stderr, flush=True)
        except Exception as exc:
            with self.lock:
                print(f"[{name}] log stream ended: {exc}", file=sys.stderr, flush=True)


def _run_path(kind: Kind, body: dict[str, Any]) -> str:
    meta = body["metadata"]
    return custom_path(GROUP, VERSION, meta["namespace"], kind.plural, meta["name"])
