"""``proctor report NAME``: a BenchmarkSuite's report, read from the suite's storage.

The operator writes each finished suite run's report next to its records
(``<storage>/<namespace>/<suite>/<run id>/report.md`` and ``report.html``, see
:mod:`proctor.bench.store`); this command prints the Markdown and, with ``--html FILE``,
writes the HTML (its plots inline) to a file. ``--run-id`` picks an earlier run of a scheduled
suite (``status.history``). The storage is read as ``proctor results NAME`` reads it
(:mod:`proctor.cli.storage_access`).

A run still in progress has no report yet: the command renders one of the repetitions
recorded so far (the same tables, from the records in the store, without the baseline
verdicts), its title and a line on stderr marking it partial, with the cells still pending.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from proctor.api.v1alpha1 import SUITE_KIND
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.bench.matrix import cells
from proctor.bench.report import render_html, render_markdown
from proctor.bench.store import REPORT_HTML_KEY, REPORT_MD_KEY, SuiteStore
from proctor.bench.summary import SuiteSummary, summarize_suite
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
from proctor.cli.views import FINAL_PHASES


def add_report(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    report = sub.add_parser(
        "report",
        help="print a BenchmarkSuite's report (Markdown), or write it as HTML",
        description="Read the report of a BenchmarkSuite's latest finished run (or of "
        "--run-id) from the suite's storage: Markdown on stdout, or HTML (with its plots) "
        "into --html FILE. A run still in progress gets a partial report of the repetitions "
        "recorded so far, marked as such. NAME is a suite, or benchmarksuite/NAME.",
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
        if data is None and in_progress(body, args.run_id):
            data = partial_report(store, whose, body, html=bool(args.html))
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


def in_progress(body: dict[str, Any], run_id: str | None) -> bool:
    """Whether the run asked for is the suite's current run and it has not finished (pure)."""
    status = body.get("status") or {}
    current = status.get("runId")
    return bool(current) and run_id in (None, current) and status.get("phase") not in FINAL_PHASES


def partial_report(store: SuiteStore, whose: str, body: dict[str, Any], *, html: bool) -> bytes:
    """The report of the repetitions recorded so far by a run in progress, marked partial."""
    meta, status = body["metadata"], body.get("status") or {}
    try:
        spec = BenchmarkSuiteSpec.model_validate(body["spec"])
    except ValueError as exc:  # a spec of an operator newer than this proctor
        raise CommandError(
            f"BenchmarkSuite {meta['name']} has no report yet and this proctor cannot read its "
            f"spec to build a partial one ({str(exc).splitlines()[0]}); upgrade proctor",
            EXIT_STORAGE,
        ) from exc
    ids = [cell.id for cell in cells(spec)]
    records = read_or_fail(
        store.blobs.uri(store.base + "cells/"), whose, lambda: store.all_records(ids)
    )
    summary = summarize_suite(spec, records)
    phase = status.get("phase") or "Pending"
    title, details = partial_heading(meta["name"], phase, summary)
    details = {
        "suite": f"{meta['namespace']}/{meta['name']}",
        "run": str(status["runId"]),
        **details,
    }
    if spec.baseline is not None:
        details["baseline"] = "compared when the run has finished"
    print(
        f"partial report: BenchmarkSuite {meta['name']} is {phase}, "
        f"{summary.completed} of {summary.total} repetitions recorded",
        file=sys.stderr,
    )
    if html:
        return render_html(summary, records, title=title, details=details).encode()
    return render_markdown(summary, records, title=title, details=details).encode()


def partial_heading(name: str, phase: str, summary: SuiteSummary) -> tuple[str, dict[str, str]]:
    """The title and the lines of a partial report that say what is measured and what is
    pending (pure)."""
    title = (
        f"Benchmark suite {name} (partial: {phase}, {summary.completed} of {summary.total} "
        "repetitions recorded)"
    )
    pending = [
        f"{c.benchmark}.{c.variant} ({c.completed} of {c.total} recorded)"
        for c in summary.cells
        if c.completed < c.total
    ]
    measured = [f"{c.benchmark}.{c.variant}" for c in summary.cells if c.completed >= c.total]
    details = {
        "partial": "the run has not finished: this report covers the repetitions recorded so "
        "far; the operator writes the full one when it ends",
        "measured": ", ".join(measured) or "no cell yet",
        "pending": ", ".join(pending) or "none (the report is being written)",
    }
    return title, details


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
