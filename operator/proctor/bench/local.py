"""``proctor run suite.yaml``: a BenchmarkSuite on this machine.

The cells run one after another, each by ``--workers`` local ``proctor bench-worker``
processes (default 1, so no two measured commands share the machine: the local form of
``isolation: exclusive``), with the same queue, storage and records as benchmark pods. The
images of the manifest are not used: the commands run on this machine as they are. The run's
records, report and summary go to ``<storage>/<namespace>/<suite>/<run-id>/`` (by default
``./proctor-results/...``); ``baseline.resultsUri`` (a folder or report of an earlier run) or
``baseline.suiteRun`` (the newest earlier run of that suite in the same storage) is compared.

Exit codes: 0 every repetition recorded and succeeded, no regression; 1 regressions found;
2 the manifest or the arguments are wrong, or the baseline cannot be read; 3 incomplete
(failed repetitions, or workers that crashed beyond ``failureBudget``); 130 interrupted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import structlog
import yaml
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from proctor.api.v1alpha1 import SUITE_KIND
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuite, BenchmarkSuiteSpec
from proctor.bench.enqueue import enqueue_cell
from proctor.bench.matrix import Cell, cells
from proctor.bench.report import format_seconds, measured_by, render_html, render_markdown
from proctor.bench.reuse import (
    CellCache,
    cell_fingerprint,
    open_cache,
    reuses,
    source_of,
)
from proctor.bench.store import RECORDS_KEY, SuiteStore, load_records
from proctor.bench.summary import SuiteSummary, summarize_suite
from proctor.bench.worker import BenchWorkerConfig, open_suite_store
from proctor.console import escape, make_console, plain
from proctor.queue import open_queue
from proctor.redact import redact_text
from proctor.storage import LocalBlobs, StorageError, open_blobs
from proctor.validation import ManifestError, validate_file
from proctor.worker.pool import (
    EXIT_INCOMPLETE,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    LocalOptions,
    Process,
    WorkerPool,
)

__all__ = [
    "EXIT_INCOMPLETE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_REGRESSION",
    "EXIT_USAGE",
    "LocalSuiteOptions",
    "SuiteRunError",
    "holds_benchmark_suite",
    "load_suite",
    "run_suite_local",
]

log = structlog.get_logger("proctor.bench.local")

EXIT_OK = 0
EXIT_REGRESSION = 1

LOCAL_LEASE_SECONDS = 10.0
"""Lease for local runs: a crashed local worker's repetition is taken over within seconds."""


class SuiteRunError(Exception):
    """A manifest, argument or baseline problem; the message says what to change."""


@dataclass
class LocalSuiteOptions(LocalOptions):
    refresh_seconds: float = 0.2


def holds_benchmark_suite(path: Path) -> bool:
    """Whether the file's documents include a BenchmarkSuite (and so ``proctor run`` runs it)."""
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except (OSError, yaml.YAMLError, RecursionError):
        return False  # the EvalRun path reports the error
    return any(isinstance(d, dict) and d.get("kind") == SUITE_KIND for d in docs)


def load_suite(path: Path) -> BenchmarkSuite:
    """The one BenchmarkSuite in ``path``, validated."""
    try:
        results = validate_file(path)
    except ManifestError as exc:
        raise SuiteRunError(str(exc)) from exc
    suites = [r for r in results if r.kind == SUITE_KIND]
    if len(suites) != 1:
        raise SuiteRunError(f"{path} holds {len(suites)} BenchmarkSuite documents; need one")
    (result,) = suites
    if not result.ok or not isinstance(result.model, BenchmarkSuite):
        raise SuiteRunError(
            f"{result.describe()} is invalid:\n  " + "\n  ".join(map(str, result.errors))
        )
    return result.model


def default_run_id() -> str:
    """A UTC timestamp: later runs sort after earlier ones (what ``suiteRun`` picks)."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def latest_run_uri(storage_uri: str, namespace: str, suite: str, before: str) -> str:
    """The newest run of ``suite`` with records in the same storage, other than ``before``."""
    probe = SuiteStore(storage_uri, namespace, suite, "probe")
    prefix = f"{namespace}/{suite}/"
    runs: list[str] = []
    if isinstance(probe.blobs, LocalBlobs):
        folder = probe.blobs.root / prefix
        if folder.is_dir():
            runs = [p.name for p in folder.iterdir() if (p / RECORDS_KEY).is_file()]
    else:
        runs = [
            k[len(prefix) :].split("/", 1)[0]
            for k in probe.blobs.list(prefix)
            if k.endswith("/" + RECORDS_KEY)
        ]
    runs = sorted(r for r in runs if r != before)
    if not runs:
        raise SuiteRunError(
            f"baseline.suiteRun {suite!r}: no finished run of it under {probe.blobs.uri(prefix)}; "
            "run that suite first, or set baseline.resultsUri"
        )
    return SuiteStore(storage_uri, namespace, suite, runs[-1]).results_uri


class _CellWorkers(WorkerPool):
    """The local ``proctor bench-worker`` processes of one cell, logging to ``log_file``."""

    def __init__(self, config: BenchWorkerConfig, count: int, log_file: IO[bytes]) -> None:
        super().__init__(count, self._spawn, what="bench worker", logger=log)
        self.config = config
        self.log_file = log_file

    def _spawn(self, slot: int, crashes: int) -> Process:
        env = dict(os.environ)
        env.update(self.config.env())
        env["PROCTOR_WORKER_ID"] = f"local-{self.config.cell}-{slot}-{crashes}"
        env.setdefault("PROCTOR_LOG_FORMAT", "json")
        return subprocess.Popen(
            [sys.executable, "-m", "proctor", "bench-worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
        )


def summary_table(name: str, summary: SuiteSummary) -> Table:
    """The summary as a terminal table: one row per cell."""
    table = Table(title=f"BenchmarkSuite {name}")
    for col in ("benchmark", "variant", "done", "failed", "median", "median CI", "p95", "measured"):
        table.add_column(col, no_wrap=True)
    table.add_column("vs baseline")
    against = {(b.benchmark, b.variant): b for b in summary.baseline}
    for c in summary.cells:
        ci = "-"
        if c.median_ci:
            ci = f"[{format_seconds(c.median_ci[0])}, {format_seconds(c.median_ci[1])}]"
        b = against.get((c.benchmark, c.variant))
        verdict = "-"
        if b is not None:
            word = "[bold red]REGRESSION[/bold red]" if b.regression else "ok"
            verdict = f"{b.ratio:.3f}x {word}"
        table.add_row(
            plain(c.benchmark),
            plain(c.variant),
            f"{c.completed}/{c.total}",
            str(c.failed),
            format_seconds(c.p50),
            ci,
            format_seconds(c.p95),
            plain(measured_by(c.reused_from)),
            verdict,
        )
    for comp in summary.comparisons:
        table.caption = (table.caption + "; " if table.caption else "") + (
            escape(f"{comp.benchmark}: {comp.variant}/{comp.reference} = {comp.ratio:.3f}x ")
            + escape(f"[{comp.ratio_ci[0]:.3f}, {comp.ratio_ci[1]:.3f}]")
        )
    return table


def _exit_code(summary: SuiteSummary, crashed: bool) -> int:
    if summary.regressions:
        return EXIT_REGRESSION
    if summary.failed or summary.completed < summary.total or crashed:
        return EXIT_INCOMPLETE
    return EXIT_OK


def run_suite_local(options: LocalSuiteOptions, console: Console | None = None) -> int:
    """Run the manifest's BenchmarkSuite here; returns the exit code (see the module doc)."""
    out = console or make_console(stderr=True)
    try:
        run = _setup(options)
    except SuiteRunError as exc:
        out.print(f"[red]error:[/red] {escape(redact_text(str(exc)))}")
        return EXIT_USAGE
    started = time.monotonic()
    total = sum(c.repetitions for c in run.matrix)
    out.print(
        f"BenchmarkSuite {run.namespace}/{run.name}, run {run.run_id}: {len(run.matrix)} cells, "
        f"{total} repetitions, {run.workers} worker(s) per cell; images are not used locally",
        markup=False,
    )
    interrupted = False
    try:
        crashed = _measure_cells(run, options, out, total)
    except KeyboardInterrupt:
        interrupted, crashed = True, False
    except _WorkerSetupError as exc:
        out.print(f"[red]error:[/red] {escape(redact_text(str(exc)))}; see {escape(run.log_dir)}")
        return EXIT_USAGE
    records = run.store.all_records([c.id for c in run.matrix])
    summary = summarize_suite(run.spec, records, run.baseline)
    report_uri = _write_report(run, summary, records)
    code = EXIT_INTERRUPTED if interrupted else _exit_code(summary, crashed)
    data: dict[str, Any] = {
        "suite": run.name,
        "namespace": run.namespace,
        "runId": run.run_id,
        "resultsUri": run.store.results_uri,
        "reportUri": report_uri,
        "baselineUri": run.baseline_uri,
        "seconds": round(time.monotonic() - started, 3),
        "exitCode": code,
        **summary.to_json(),
    }
    if interrupted:
        data["resume"] = options.resume_command(run.run_id)
    if options.json_output:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()
    else:
        _print_summary(run, summary, report_uri, data.get("resume"))
    return code


@dataclass(frozen=True)
class _SuiteRun:
    """One local run of a suite, set up: where it goes and what it is compared with."""

    spec: BenchmarkSuiteSpec
    name: str
    namespace: str
    run_id: str
    matrix: list[Cell]
    configs: dict[str, BenchWorkerConfig]
    store: SuiteStore
    baseline: dict[str, list[dict[str, Any]]] | None
    baseline_uri: str | None
    log_dir: Path
    workers: int
    cache: CellCache | None = None


def _setup(options: LocalSuiteOptions) -> _SuiteRun:
    suite = load_suite(options.manifest)
    if options.resume and not options.run_id:
        raise SuiteRunError("--resume needs --run-id: the run to continue")
    if options.workers is not None and options.workers < 1:
        raise SuiteRunError(f"--workers must be at least 1, got {options.workers}")
    spec = suite.spec
    name = str(suite.metadata.get("name") or options.manifest.stem)
    namespace = str(suite.metadata.get("namespace") or "default")
    run_id = options.run_id or default_run_id()
    results_dir = options.results_dir.resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    storage_uri = options.storage_uri or results_dir.as_uri()
    queue_url = options.queue_url or f"sqlite://{results_dir / '.proctor-queue.sqlite3'}"
    lease = min(spec.lease_seconds(), LOCAL_LEASE_SECONDS)
    matrix = cells(spec)
    configs = {
        c.id: BenchWorkerConfig(
            spec=spec,
            namespace=namespace,
            suite=name,
            run_id=run_id,
            cell=c.id,
            queue_url=queue_url,
            storage_uri=storage_uri,
            lease_seconds=lease,
        )
        for c in matrix
    }
    try:
        store = open_suite_store(next(iter(configs.values())))
        if not options.resume:
            store.delete()
        baseline = None
        baseline_uri = None
        if spec.baseline is not None:
            baseline_uri = spec.baseline.results_uri or latest_run_uri(
                storage_uri, namespace, spec.baseline.suite_run or name, run_id
            )
            baseline = load_records(baseline_uri)
        cache = open_cache(spec, store.blobs, namespace=namespace, open_uri=open_blobs)
    except Exception as exc:
        raise SuiteRunError(f"cannot set up the suite run: {exc}") from exc
    log_dir = results_dir / ".logs" / f"{namespace}-{name}-{run_id}"
    log_dir.mkdir(parents=True, exist_ok=True)
    return _SuiteRun(
        spec,
        name,
        namespace,
        run_id,
        matrix,
        configs,
        store,
        baseline,
        baseline_uri,
        log_dir,
        workers=options.workers or 1,
        cache=cache,
    )


def _measure_cells(run: _SuiteRun, options: LocalSuiteOptions, out: Console, total: int) -> bool:
    """Measure the cells one after another; True when some cell's workers crashed beyond the
    failure budget or left repetitions unrecorded."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=out,
        transient=options.json_output,
        disable=options.json_output and not out.is_terminal,
    )
    crashed = False
    done_before = 0
    with bar:
        task = bar.add_task(run.name, total=total)
        for cell in run.matrix:
            bar.update(task, description=escape(f"{run.name} {cell.id}"))
            if _reuse_cell(run, cell, out):
                done_before += len(run.store.recorded(cell.id))
                bar.update(task, completed=done_before)
                continue

            def progress(n: int, base: int = done_before) -> None:
                bar.update(task, completed=base + n)

            ok = _run_cell(
                cell,
                run.configs[cell.id],
                store=run.store,
                workers=run.workers,
                budget=run.spec.failure_budget,
                log_dir=run.log_dir,
                on_progress=progress,
                refresh=options.refresh_seconds,
            )
            crashed = crashed or not ok
            _remember_cell(run, cell, out)
            done_before += len(run.store.recorded(cell.id))
            bar.update(task, completed=done_before)
    return crashed


def _reuse_cell(run: _SuiteRun, cell: Cell, out: Console) -> bool:
    """With ``reuse: unchanged``, take a cell with nothing recorded yet (a resumed run keeps
    what it measured) from the cache; True when it was, so no worker runs for it."""
    if run.cache is None or not reuses(run.spec) or run.store.recorded(cell.id):
        return False
    try:
        found = run.cache.take(run.spec, run.store, cell)
    except StorageError as exc:
        out.print(f"warning: cannot read the cache, {cell.id} is measured: {exc}", markup=False)
        return False
    for uri in found.ignored:
        out.print(f"warning: ignored a corrupt cache object {uri}", markup=False)
    if found.found is not None:
        out.print(f"{cell.id}: unchanged, reused from {found.found.source}", markup=False)
    return found.found is not None


def _remember_cell(run: _SuiteRun, cell: Cell, out: Console) -> None:
    """Write a fully and successfully measured cell to the cache (once)."""
    if run.cache is None:
        return
    records = {int(r["repetition"]): r for r in run.store.records(cell.id)}
    source = source_of(run.namespace, run.name, run.run_id)
    try:
        run.cache.remember(
            cell, cell_fingerprint(run.spec, cell), source, records, datetime.now(UTC)
        )
    except StorageError as exc:
        out.print(f"warning: {cell.id} not written to the cache: {exc}", markup=False)


def _write_report(
    run: _SuiteRun, summary: SuiteSummary, records: dict[str, list[dict[str, Any]]]
) -> str:
    details = {
        "suite": f"{run.namespace}/{run.name}",
        "run": run.run_id,
        "machine": f"local ({os.uname().nodename}), {run.workers} worker(s) per cell",
    }
    if run.baseline_uri:
        details["baseline"] = run.baseline_uri
    title = f"BenchmarkSuite {run.name}"
    return run.store.write_report(
        render_markdown(summary, records, title=title, details=details),
        render_html(summary, records, run.baseline, title=title, details=details),
        records,
        summary.to_json(),
    )


def _print_summary(
    run: _SuiteRun, summary: SuiteSummary, report_uri: str, resume: str | None
) -> None:
    console_out = make_console()
    console_out.print(summary_table(run.name, summary))
    # Whole lines, never wrapped: people copy these into a browser or a later baseline.
    for label, value in (("report", report_uri), ("records", run.store.records_uri)):
        console_out.print(f"{label}: {value}", soft_wrap=True, highlight=False, markup=False)
    if summary.regressions:
        cells_flagged = ", ".join(f"{r.benchmark}.{r.variant}" for r in summary.regressions)
        console_out.print(f"[bold red]regressions:[/bold red] {escape(cells_flagged)}")
    if resume:
        console_out.print(f"interrupted; resume with: {resume}", soft_wrap=True, markup=False)


class _WorkerSetupError(Exception):
    pass


def _run_cell(
    cell: Cell,
    config: BenchWorkerConfig,
    *,
    store: SuiteStore,
    workers: int,
    budget: int,
    log_dir: Path,
    on_progress: Callable[[int], None],
    refresh: float,
) -> bool:
    """Enqueue and measure one cell; False when its workers crashed beyond the budget."""
    queue = open_queue(
        config.queue_url,
        config.queue_id,
        lease_seconds=config.lease_seconds or config.spec.lease_seconds(),
    )
    storage = store.cell_storage(cell.id)
    try:
        queue.delete()
        queue.close()
        queue = open_queue(
            config.queue_url,
            config.queue_id,
            lease_seconds=config.lease_seconds or config.spec.lease_seconds(),
        )
        enqueue_cell(queue, storage, cell)
    finally:
        queue.close()
    with (log_dir / f"{cell.id}.log").open("ab") as log_file:
        group = _CellWorkers(config, workers, log_file)
        group.start()
        try:
            while group.poll(budget):
                time.sleep(refresh)
                on_progress(len(store.recorded(cell.id)))
        except KeyboardInterrupt:
            group.terminate()
            group.wait(10.0)
            raise
    if group.setup_failed:
        raise _WorkerSetupError(f"a bench worker for {cell.id} is misconfigured")
    return group.crashes <= budget and len(store.recorded(cell.id)) == cell.repetitions
