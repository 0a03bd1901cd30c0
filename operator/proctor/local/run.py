"""``proctor run FILE.yaml``: an EvalRun on this machine.

The parent process enqueues the run (chunk by chunk as it goes, so a huge run starts at
once), starts N ``proctor worker`` processes (forked copies that die with the parent, see
:mod:`proctor.local.workers`), follows progress from the results (exact, each case once),
applies early stopping, restarts a worker that crashed (as Kubernetes would restart its pod)
within the failure budget, and prints the summary. Defaults: the embedded SQLite queue and a
results folder ``./proctor-results/<run-name>/``; ``--queue redis://...|sqs://...`` and
``--storage s3://...`` use real services instead. Names and run ids are DNS-1123 labels. A
fresh run is a new attempt (see :mod:`proctor.local.attempts`); ``--resume`` continues the
current one and refuses a manifest that changes results.

Only a run whose every case is recorded, or one the sequential test stopped early, is
decided; any other summary says how many cases were not evaluated and why.

Exit codes: 0 accepted (or, without ``compare``, every case recorded); 1 rejected; 2 the
manifest, a name or the arguments are wrong, ``--resume`` does not match, or the task cannot
be loaded; 3 not every case was evaluated and the run is not decided; 130 interrupted
(SIGINT, SIGTERM or SIGHUP; the summary's decision is ``interrupted``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from proctor.api.v1alpha1 import EVALRUN_KIND
from proctor.api.v1alpha1.evalrun import EvalRun, ResultSummary
from proctor.cache import open_cache_blobs, probe_writable
from proctor.cache.counts import cache_dict, cache_status
from proctor.console import make_console
from proctor.dataset import DatasetError, Location
from proctor.dataset.run import total_cases
from proctor.local.admission import (
    admit_dataset,
    dataset_changed,
    with_cache_path,
    with_dataset_path,
)
from proctor.local.attempts import AttemptError, fresh_attempt, replaced, resume_attempt
from proctor.local.summary import print_summary, summary_dict
from proctor.local.workers import LocalWorkers
from proctor.queue import WorkQueue, open_queue
from proctor.queue.enqueue import CHUNK_ENTRIES, Enqueuer
from proctor.redact import redact_text
from proctor.sdk.hooks import summarize_with_task
from proctor.stats.passrates import should_stop_early, summarize
from proctor.storage import LocalBlobs, ProgressSnapshot, RunProgress, RunStorage, columns
from proctor.storage.export import Finished, finish_results
from proctor.validation import ManifestError, dns_label_error, validate_file
from proctor.worker.pool import EXIT_INCOMPLETE, EXIT_INTERRUPTED, EXIT_USAGE, LocalOptions
from proctor.worker.runtime import WorkerConfig, open_run_storage

__all__ = [
    "EXIT_ACCEPT",
    "EXIT_INCOMPLETE",
    "EXIT_INTERRUPTED",
    "EXIT_REJECT",
    "EXIT_USAGE",
    "LocalRunOptions",
    "RunError",
    "load_evalrun",
    "run_local",
]

log = structlog.get_logger("proctor.run")

EXIT_ACCEPT = 0
EXIT_REJECT = 1

LOCAL_LEASE_SECONDS = 5.0
"""Lease for local runs: a crashed local worker's batch is taken over within seconds."""
CHECKPOINT_SECONDS = 30.0
TAIL_REFRESH_SECONDS = 0.02
"""How often the parent looks at a local folder once every entry is claimed: the run's end
is noticed within this rather than within a whole refresh (it is on the run's wall time)."""


class RunError(Exception):
    """A manifest or argument problem; the message says what to change."""


LocalRunOptions = LocalOptions
"""The options of ``proctor run`` for an EvalRun (the name callers use)."""


def load_evalrun(path: Path) -> EvalRun:
    """The one EvalRun in ``path``, validated."""
    try:
        results = validate_file(path)
    except ManifestError as exc:
        raise RunError(str(exc)) from exc
    runs = [r for r in results if r.kind == EVALRUN_KIND]
    if len(runs) != 1:
        raise RunError(f"{path} holds {len(runs)} EvalRun documents; proctor run needs one")
    (result,) = runs
    if not result.ok or not isinstance(result.model, EvalRun):
        raise RunError(
            f"{result.describe()} is invalid:\n  " + "\n  ".join(map(str, result.errors))
        )
    return result.model


def _exit_code(summary: ResultSummary, complete: bool, failed_workers: bool) -> int:
    # Exit 0 promises every case evaluated and no worker failure beyond the budget.
    if summary.decision == "reject":
        return EXIT_REJECT
    if summary.decision == "accept":
        return EXIT_ACCEPT
    if summary.decision is None and complete and not failed_workers and not summary.not_evaluated:
        return EXIT_ACCEPT
    return EXIT_INCOMPLETE


@dataclass
class _Run:
    """A run set up and ready for its workers."""

    name: str
    local_dir: Path
    config: WorkerConfig
    storage: RunStorage
    queue: WorkQueue
    enqueuer: Enqueuer
    total: int
    dataset: Location | None = None
    fingerprint: str | None = None  # the dataset manifest's
    refresh_seconds: float = 0.25
    cache_read_only: str = ""  # why the cache cannot be written, if it cannot

    @property
    def storage_is_local(self) -> bool:
        return isinstance(self.storage.blobs, LocalBlobs)


def _paths(options: LocalRunOptions, evalrun: EvalRun) -> tuple[str, str, Path]:
    """(name, run id, the run's local folder), checked: names are labels, paths stay inside."""
    name = str(evalrun.metadata.get("name") or options.manifest.stem)
    run_id = options.run_id or name
    for what, value in (("metadata.name", name), ("--run-id", run_id)):
        problem = dns_label_error(value)
        if problem is not None:
            raise RunError(f"{what}: {problem}")
    root = options.results_dir.resolve()
    local_dir = root / run_id
    # Every local path of the run is under the results folder: never "..", never absolute.
    if local_dir.parent != root:
        raise RunError(f"run id {run_id!r} would leave the results folder {root}")
    try:
        local_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(
            f"cannot create the results folder {local_dir}: {exc.strerror or exc}; choose a "
            "writable folder with --results-dir"
        ) from exc
    return name, run_id, local_dir


def _setup(options: LocalRunOptions, evalrun: EvalRun) -> _Run:
    """Open (fresh: reset) the run's storage and queue, fix its attempt, admit its dataset,
    enqueue the cases."""
    name, run_id, local_dir = _paths(options, evalrun)
    spec = with_cache_path(with_dataset_path(evalrun.spec, options.manifest), options.manifest)
    queue_url = options.queue_url or f"sqlite://{local_dir / 'queue.sqlite3'}"
    lease = min(spec.lease_seconds(), LOCAL_LEASE_SECONDS)
    config = WorkerConfig(
        run_id=run_id,
        run_name=name,
        spec=spec,
        queue_url=queue_url,
        storage_uri=options.storage_uri or local_dir.parent.as_uri(),
        lease_seconds=lease,
    )
    try:
        base = open_run_storage(config)
        location, manifest = admit_dataset(spec, base, config, fresh=not options.resume)
        fp = manifest.fingerprint if manifest is not None else None
        if options.resume:
            config.attempt = resume_attempt(base, spec, str(options.manifest), fp)
        else:
            config.attempt = fresh_attempt(
                base,
                spec,
                lambda old: open_queue(queue_url, run_id, lease_seconds=lease, attempt=old),
                fp,
            )
        storage = open_run_storage(config)
        queue = open_queue(queue_url, run_id, lease_seconds=lease, attempt=config.attempt)
        total = total_cases(spec, manifest)
        # Two chunks now, the rest while the run goes: a billion cases start at once.
        enqueuer = Enqueuer(queue, storage, spec, total, fp)
        enqueuer.step(2)
    except (AttemptError, DatasetError) as exc:
        raise RunError(str(exc)) from exc
    except Exception as exc:
        raise RunError(f"cannot set up the run: {exc}") from exc
    run = _Run(name, local_dir, config, storage, queue, enqueuer, total, location, fp)
    run.cache_read_only = _probe_cache(config)
    return run


def _probe_cache(config: WorkerConfig) -> str:
    """Why the run's cache cannot be written ("" when it can, or the run writes none)."""
    spec = config.spec
    if not spec.cache.writes:
        return ""
    uri = spec.cache.location(config.storage_uri)
    blobs = open_cache_blobs(uri, endpoint=config.storage_endpoint, region=config.storage_region)
    return probe_writable(blobs, config.run_id)


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the run as Ctrl-C does: workers stopped, summary, exit 130."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def run_local(options: LocalRunOptions, console: Console | None = None) -> int:
    """Run the manifest's EvalRun here; returns the exit code (see the module doc)."""
    out = console or make_console(stderr=True)
    try:
        with _signals_interrupt():
            return _run_local(options, out)
    except KeyboardInterrupt:
        # Before the workers started, or a second interrupt while stopping them.
        out.print("interrupted", markup=False)
        return EXIT_INTERRUPTED


def _redo_corrupt(progress: RunProgress, run: _Run) -> None:
    """Delete result objects that cannot be read back whole and enqueue their ranges again."""
    for key, r in list(progress.corrupt.items()):
        log.warning("evaluating a corrupt result object's range again", key=key, range=str(r))
        run.storage.blobs.delete(key)
        run.queue.enqueue([r], chunk=f"redo-{key.rsplit('/', 1)[-1]}-{time.time_ns()}")
        del progress.corrupt[key]


def _follow(run: _Run, progress: RunProgress, workers: LocalWorkers, bar: Progress) -> str | None:
    """Follow the run until every case is recorded or no worker runs; the stop reason."""
    spec = run.config.spec
    budget = spec.workers.failure_budget
    early = spec.early_stopping
    stopped: str | None = None
    last_checkpoint = time.monotonic()
    task_id = bar.add_task(run.name, total=run.total, rate="")
    while True:
        tail = run.storage_is_local and run.enqueuer.finished
        time.sleep(pause(run.refresh_seconds, tail=tail and run.queue.depth().waiting == 0))
        progress.refresh()
        if progress.corrupt:
            _redo_corrupt(progress, run)
            workers.start_missing(budget)
        snap = progress.snapshot()
        rate = f"{snap.cases_per_second:,.0f} cases/s" if snap.cases_per_second else ""
        bar.update(task_id, completed=snap.completed + snap.dead_lettered, rate=rate)
        if (
            early is not None
            and spec.compare is not None
            and stopped is None
            and progress.resolved.total // early.check_every > progress.looks
        ):
            progress.looks = progress.resolved.total // early.check_every
            if should_stop_early(progress.resolved, spec.compare, early, progress.looks):
                stopped = "early stop: the decision is settled"
                run.queue.stop(stopped)
        if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
            progress.checkpoint()
            last_checkpoint = time.monotonic()
        work_left = not snap.finished and stopped is None
        if work_left and _top_up(run):
            workers.start_missing(budget)
        if snap.finished:
            return stopped
        if not workers.poll(budget, work_left, run.queue.lease_holders):
            queued = not run.enqueuer.finished or not run.queue.depth().empty
            if not work_left or not queued or workers.failed(budget):
                return stopped
            workers.start_missing(budget)


def pause(refresh_seconds: float, *, tail: bool) -> float:
    """The parent's wait before its next look: short in the ``tail`` of a run on a local
    folder (every entry enqueued and claimed; a listing of a folder is cheap, one of a bucket
    is not), else the refresh interval."""
    return min(refresh_seconds, TAIL_REFRESH_SECONDS) if tail else refresh_seconds


def _top_up(run: _Run) -> bool:
    """Enqueue the next chunk when the queue runs low; whether anything was added."""
    if run.enqueuer.finished or run.queue.depth().waiting >= CHUNK_ENTRIES:
        return False
    return run.enqueuer.step() > 0


def _why(snap: ProgressSnapshot, workers: LocalWorkers, budget: int, interrupted: bool) -> str:
    """Why cases were not evaluated, for the summary's reason."""
    parts = []
    if interrupted:
        parts.append("the run was interrupted")
    if workers.setup_failed:
        parts.append("a worker could not load the task")
    if workers.crashes > budget:
        parts.append(
            f"the worker failure budget ({budget}) was exhausted ({workers.crashes} worker crashes)"
        )
    if snap.dead_lettered:
        parts.append(f"{snap.dead_lettered} dead-lettered after crashing their worker (see dead/)")
    return "; ".join(parts) or "the workers exited before every case was recorded"


def _run_local(options: LocalRunOptions, out: Console) -> int:
    try:
        evalrun = load_evalrun(options.manifest)
        run = _setup(options, evalrun)
    except RunError as exc:
        out.print(f"[red]error:[/red] {escape(redact_text(str(exc)))}")
        return EXIT_USAGE
    run.refresh_seconds = options.refresh_seconds
    if run.cache_read_only:
        out.print(
            f"[yellow]warning:[/yellow] {escape(redact_text(run.cache_read_only))}; the cache "
            "is only read by this run"
        )
    storage = run.storage
    progress = (
        RunProgress.resume(storage, run.total, run.fingerprint)
        if options.resume
        else RunProgress(storage, run.total, run.fingerprint)
    )
    workers = LocalWorkers(run.config, options.workers or os.cpu_count() or 1, run.local_dir)
    stopped: str | None = None
    interrupted = False
    started = time.monotonic()
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        console=out,
        transient=options.json_output,
        disable=options.json_output and not out.is_terminal,
    )
    try:
        columns.warm_up()  # once here rather than in each forked worker
        workers.start()
        with bar:
            stopped = _follow(run, progress, workers, bar)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Every case recorded: a worker still waiting for its next poll has nothing left to do.
        workers.terminate()
        workers.wait(10.0)
        workers.close()
    return _finish(
        options=options,
        run=run,
        progress=progress,
        workers=workers,
        stopped=stopped,
        interrupted=interrupted,
        elapsed=time.monotonic() - started,
    )


def _decide(
    run: _Run,
    progress: RunProgress,
    snap: ProgressSnapshot,
    workers: LocalWorkers,
    *,
    stopped: str | None,
    interrupted: bool,
) -> tuple[str, ResultSummary]:
    """Why the run is not decided, if it is not, and the summary of what was recorded."""
    storage, spec = run.storage, run.config.spec
    complete = snap.completed == snap.total
    changed = None if complete else dataset_changed(storage, run.dataset)
    budget = spec.workers.failure_budget
    why = (
        replaced(storage, run.config.attempt) or changed or _why(snap, workers, budget, interrupted)
    )
    summary = summarize(
        progress.aggregate,
        spec.compare,
        complete=complete,
        early_stopped=stopped is not None,
        total=snap.total,
        dead_lettered=snap.dead_lettered,
        why=why,
        resolved=progress.resolved,
    )
    return why, summary


def _finish(
    *,
    options: LocalRunOptions,
    run: _Run,
    progress: RunProgress,
    workers: LocalWorkers,
    stopped: str | None,
    interrupted: bool,
    elapsed: float,
) -> int:
    """Count what was recorded, decide (or say why not), write and print the summary."""
    spec, storage = run.config.spec, run.storage
    budget = spec.workers.failure_budget
    progress.refresh()
    snap = progress.snapshot()
    complete = snap.completed == snap.total
    why, summary = _decide(run, progress, snap, workers, stopped=stopped, interrupted=interrupted)
    # A task with its own rule (Metamorphic Guard's) judges the run by it.
    judged = summarize_with_task(spec, storage, summary, run_user_code=True)
    summary = judged.summary
    failed = workers.failed(budget)
    if failed and not summary.reason:
        summary = summary.model_copy(update={"reason": why})
    code = EXIT_INTERRUPTED if interrupted else _exit_code(summary, complete, failed)
    if workers.setup_failed and not interrupted:
        code = EXIT_USAGE
        workers.print_load_error()
    # The merged results of a run that ended (an interrupted one is resumed, not merged).
    written = (
        Finished(storage.results_uri()) if interrupted else finish_results(storage, keep=False)
    )
    summary = summary.model_copy(update={"outputs_uri": written.outputs_uri})
    data = summary_dict(
        name=run.name,
        run_id=run.config.run_id,
        snap=snap,
        summary=summary,
        results_uri=written.results_uri,
        seconds=elapsed,
        exit_code=code,
        stopped=stopped,
    )
    data["attempt"] = run.config.attempt
    cache_uri = spec.cache.location(run.config.storage_uri)
    cache = cache_dict(cache_status(spec, progress.aggregate, cache_uri, run.cache_read_only))
    if cache is not None:
        data["cache"] = cache
    if interrupted:
        data["decision"] = "interrupted"
        data["resume"] = options.resume_command(run.config.run_id)
    if judged.report_key is not None and judged.report is not None:
        data[judged.report_key] = dict(judged.report)
    progress.checkpoint(summary=data)
    storage.write_summary(data)
    run.queue.close()
    print_summary(data, judged.rows, json_output=options.json_output)
    return code
