"""The ``proctor`` command line: the parser, one sub-parser per command, and dispatch.

Each command lives in a module of its own (:data:`COMMANDS`). ``proctor COMMAND ...`` imports
only that command's module, so a command never pays for the imports of the others (the
operator's, the CRD generator's, the benchmark worker's); ``proctor --help`` and anything
that names no known command build every sub-parser, as :func:`build_parser` does by default.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import importlib
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from proctor import __version__
from proctor.cli.usage import HelpFormatter

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("crds", "proctor.cli.crds", "add_crds"),
    ("validate", "proctor.cli.validate", "add_validate"),
    ("run", "proctor.cli.run", "add_run"),
    ("get", "proctor.cli.get", "add_get"),
    ("status", "proctor.cli.status", "add_status"),
    ("watch", "proctor.cli.watch", "add_watch"),
    ("plan", "proctor.cli.plan", "register"),
    ("cancel", "proctor.cli.cancel", "register"),
    ("results", "proctor.cli.results", "add_parser"),
    ("report", "proctor.cli.report", "add_report"),
    ("logs", "proctor.cli.logs", "add_logs"),
    ("cache", "proctor.cli.cache", "add_cache"),
    ("worker", "proctor.cli.worker", "add_worker"),
    ("bench-worker", "proctor.cli.bench_worker", "add_bench_worker"),
    ("operator", "proctor.cli.operator", "add_operator"),
)
"""Every command, in the order ``proctor --help`` lists them: (name, module, the module's
function that adds the command's sub-parser)."""


def _adder(module: str, function: str) -> Callable[[SubParsers], None]:
    adder: Callable[[SubParsers], None] = getattr(importlib.import_module(module), function)
    return adder


EXIT_AT_ONCE = frozenset({"run"})
"""Commands whose process, run as the program, ends as soon as they return: by then every
result, log and summary is written and flushed, and the interpreter's teardown (freeing
pyarrow, pandas, pydantic and the rest, 0.1 to 0.5 s) would only keep the shell waiting."""


def build_parser(prog: str = "proctor", command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``command``, only that command's sub-parser is built
    (and its module imported): the others are names without options."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run evaluation runs and benchmark suites on Kubernetes, or on this machine.",
        epilog="Each command lists its exit codes in its --help; see docs/cli.md.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"proctor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module, function in COMMANDS:
        if command is None or name == command:
            _adder(module, function)(sub)
        else:
            sub.add_parser(name)
    return parser


def invoked_command(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, when it comes first (before any option: ``--help`` and
    ``--version`` need every command) and is one of :data:`COMMANDS`; else None."""
    if not argv or argv[0] not in {name for name, _, _ in COMMANDS}:
        return None
    return argv[0]


def exit_at_once(code: int) -> None:
    """End the process with ``code`` now, without the interpreter's teardown: exit handlers
    run and the standard streams are flushed first. Returns (the caller exits as usual) while
    a thread other than daemons still runs: the usual exit waits for it."""
    if any(t is not threading.main_thread() and not t.daemon for t in threading.enumerate()):
        return
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # closed or a broken pipe
            stream.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None, prog: str = "proctor") -> int:
    """Run the command of ``argv`` (default: the program's own arguments); its exit code.
    Run as the program (no ``argv``), a command of :data:`EXIT_AT_ONCE` ends the process."""
    given = sys.argv[1:] if argv is None else list(argv)
    command = invoked_command(given)
    args = build_parser(prog, command).parse_args(given)
    code: int = args.func(args)
    if argv is None and command in EXIT_AT_ONCE:
        exit_at_once(code)
    return code


def kubectl_plugin() -> int:
    """``kubectl-proctor``: kubectl runs it for ``kubectl proctor ...`` (its plugin mechanism)."""
    return main(prog="kubectl proctor")


if __name__ == "__main__":
    sys.exit(main())
