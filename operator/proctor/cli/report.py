"""``proctor report NAME``: a BenchmarkSuite's report, read from the suite's storage.

The operator writes each finished suite run's report next to its records
(``<storage>/<namespace>/<suite>/<run id>/report.md`` and ``report.html``, see
:mod:`proctor.bench.store`); this command prints the Markdown and, with ``--html FILE``,
writes the HTML (its plots inline) to a file. ``--run-id`` picks an earlier run of a scheduled
suite (``status.history``). The storage is read as ``proctor results NAME`` reads it
(:mod:`proctor.cli.storage_access`).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from proctor.api.v1alpha1 import SUITE_KIND
from proctor.bench.store import REPORT_HTML_KEY, REPORT_MD_KEY, SuiteStore
from proctor.cli.context import (
    ACCESS_CODES,
    EXIT_OK,
    EXIT_STORAGE,
    EXIT_USAGE,
    CommandError,
    Target,
    add_cluster_options,
    codes,
    connect,
    run_command,
)
from proctor.cli.lookup import find_run
from proctor.cli.results import root_before
from proctor.cli.storage_access import add_storage_options, location, open_store, read_or_fail
from proctor.cli.usage import HelpFormatter, exit_codes


def add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser(
        "report",
        help="print a BenchmarkSuite's report (Markdown), or write it as HTML",
        description="Read the report of a BenchmarkSuite's latest finished run (or of "
        "--run-id) from the suite's storage: Markdown on stdout, or HTML (with its plots) "
        "into --html FILE. NAME is a suite, or benchmarksuite/NAME.",
        epilog=exit_codes(*ACCESS_CODES, *codes(EXIT_STORAGE)),
        formatter_class=HelpFormatter,
    )
    report.add_argument("name", metavar="NAME", help="the suite: NAME or benchmarksuite/NAME")
    report.add_argument(
        "--html", metavar="FILE", help="write the HTML report here instead of printing Markdown"
    )
    report.add_argument("--run-id", help="a run of the suite (default: its latest, status.runId)")
    add_cluster_options(report)
    add_storage_options(report)
    report.set_defaults(func=lambda args: run_command(args, cmd_report))


def cmd_report(args: argparse.Namespace) -> int:
    target = connect(args)
    try:
        kind, body = find_run(target, args.name)
        if kind.kind != SUITE_KIND:
            raise CommandError(
                f"{args.name!r} is an {kind.kind}: read it with proctor results "
                f"{body['metadata']['name']}",
                EXIT_USAGE,
            )
        store, whose = suite_store(target, args, body)
        key = REPORT_HTML_KEY if args.html else REPORT_MD_KEY
        uri = store.blobs.uri(store.base + key)
        data = read_or_fail(uri, whose, lambda: store.blobs.get(store.base + key))
    finally:
        target.api.close()
    if data is None:
        phase = (body.get("status") or {}).get("phase") or "Pending"
        raise CommandError(
            f"no report at {uri} (the suite is {phase}; its report is written when a run finishes)",
            EXIT_STORAGE,
        )
    if args.html:
        _write(Path(args.html), data)
        print(f"wrote {args.html} ({uri})")
    else:
        sys.stdout.write(data.decode("utf-8", "replace"))
    return EXIT_OK


def suite_store(
    target: Target, args: argparse.Namespace, body: dict[str, Any]
) -> tuple[SuiteStore, str]:
    """The store of the suite's chosen run and whose credentials read it."""
    meta = body["metadata"]
    status = body.get("status") or {}
    run_id = args.run_id or status.get("runId")
    if not run_id:
        raise CommandError(
            f"BenchmarkSuite {meta['name']} has not started a run yet: no report", EXIT_STORAGE
        )
    folder = f"{meta['namespace']}/{meta['name']}"
    where = location(body, root_before(status.get("resultsUri"), folder))
    if where is None:
        raise CommandError(
            f"BenchmarkSuite {meta['name']} names no storage (spec.storage) and its status no "
            "results URI yet: try again once its run has finished",
            EXIT_STORAGE,
        )
    blobs, whose = open_store(target, args, where)
    try:
        store = SuiteStore(where.uri, meta["namespace"], meta["name"], run_id, blobs=blobs)
    except ValueError as exc:  # a --run-id with a '/'
        raise CommandError(f"--run-id: {exc}", EXIT_USAGE) from exc
    return store, whose


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` at ``path`` whole or not at all."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent.resolve())
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except OSError as exc:
        raise CommandError(f"--html {path}: {exc.strerror or exc}", EXIT_USAGE) from exc
