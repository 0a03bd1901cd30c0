"""``proctor watch NAME``: a live progress bar from the run's status until it is finished, then
its detailed view; the exit code says how it finished (as ``proctor run``'s where they meet)."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskProgressColumn, TextColumn

from proctor.api.crdgen import Kind
from proctor.api.quantity import QuantityError, parse_duration
from proctor.cli.context import (
    ACCESS_CODES,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CommandError,
    Target,
    add_cluster_options,
    connect,
    run_command,
)
from proctor.cli.lookup import find_run
from proctor.cli.status import print_run
from proctor.cli.usage import HelpFormatter, exit_codes
from proctor.cli.views import FINAL_CODES, final_exit_code, progress_of
from proctor.console import escape, make_console

EXIT_TIMEOUT = 124


def add_watch(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    watch = sub.add_parser(
        "watch",
        help="follow a run with a live progress bar until it finishes",
        description="Follow a run's status (EvalRun or BenchmarkSuite) with a progress bar "
        "until its phase is final, then print its detailed view (as proctor status). Off a "
        "terminal, one line per phase change and per tenth of the work.",
        epilog=exit_codes(
            *FINAL_CODES,
            *ACCESS_CODES[1:],
            (EXIT_TIMEOUT, "--timeout elapsed before the run finished"),
            (130, "interrupted (the run goes on)"),
        ),
        formatter_class=HelpFormatter,
    )
    watch.add_argument("name", metavar="NAME", help="the run: NAME or KIND/NAME")
    watch.add_argument("--interval", default="2s", help="how often to read the status (default 2s)")
    watch.add_argument("--timeout", help="give up after this long, exit 124 (e.g. 30m)")
    add_cluster_options(watch)
    watch.set_defaults(func=lambda args: run_command(args, cmd_watch))


def _seconds(value: str | None, option: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value)
    except QuantityError as exc:
        raise CommandError(f"{option}: {exc}", EXIT_USAGE) from exc


def cmd_watch(args: argparse.Namespace) -> int:
    interval = _seconds(args.interval, "--interval") or 2.0
    timeout = _seconds(args.timeout, "--timeout")
    target = connect(args)
    kind, body = find_run(target, args.name)
    name = f"{kind.singular}/{body['metadata']['name']}"
    out = make_console(stderr=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    code = follow(target, kind, body, name, out, interval=interval, deadline=deadline)
    if code == EXIT_TIMEOUT:
        out.print(f"{escape(name)}: still running after --timeout {escape(args.timeout)}")
    return code


def follow(
    target: Target,
    kind: Kind,
    body: dict[str, Any],
    name: str,
    out: Console,
    *,
    interval: float,
    deadline: float | None,
) -> int:
    """Show progress until the run's phase is final; its exit code (or 124 at the deadline)."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[detail]}"),
        console=out,
    )
    phase, tenth = "", -1
    with bar:
        task = bar.add_task(escape(name), total=None, detail="")
        while True:
            now = progress_of(kind, body)
            bar.update(task, completed=now.completed, total=now.total or None,
                       detail=escape(f"{now.phase} {now.rate} {now.eta}".strip()))  # fmt: skip
            done = now.completed * 10 // now.total if now.total else 0
            if now.phase != phase or (not out.is_terminal and done > tenth):
                stamp = datetime.now(UTC).strftime("%H:%M:%S")
                line = f"{stamp} {name}: {now.phase}, {now.completed:,}/{now.total:,}"
                bar.console.print(", ".join(filter(None, (line, now.rate, now.eta))), markup=False)
                phase, tenth = now.phase, done
            code = final_exit_code(kind, body)
            if code is not None:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return EXIT_TIMEOUT
            time.sleep(interval)
            body = _reread(target, kind, body)
    print_run(kind, body)
    return code


def _reread(target: Target, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
    name = body["metadata"]["name"]
    try:
        return find_run(target, f"{kind.singular}/{name}")[1]
    except CommandError as exc:
        if exc.code == EXIT_NOT_FOUND:
            raise CommandError(
                f"{kind.singular}/{name} was deleted while watched", exc.code
            ) from exc
        raise
