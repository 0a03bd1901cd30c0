"""``proctor run FILE.yaml``: an EvalRun on this machine.

The parent process enqueues the run, starts N ``proctor worker`` processes (the same code a
worker pod runs), follows progress from the results (exact, each case once), applies early
stopping, restarts a worker that crashed (as Kubernetes would restart its pod) within the
failure budget, and prints the summary. Defaults: the embedded SQLite queue and a results
folder ``./proctor-results/<run-name>/``; ``--queue redis://...|sqs://...`` and
``--storage s3://...`` use real services instead.

Exit codes: 0 accepted (or, without ``compare``, every case recorded); 1 rejected; 2 the
manifest or the arguments are wrong, or the task cannot be loaded; 3 the run is incomplete
(dead-lettered cases, too many worker crashes, undecided); 130 interrupted.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from proctor.api.v1alpha1.evalrun import EvalRun, ResultSummary, WorkersSpec
from proctor.queue import enqueue_run, open_queue
from proctor.redact import redact_text
from proctor.stats import should_stop_early, summarize
from proctor.storage import ProgressSnapshot, RunProgress
from proctor.worker import WorkerConfig, lease_seconds, open_run_storage

log = structlog.get_logger("proctor.run")

EXIT_ACCEPT = 0
EXIT_REJECT = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130

LOCAL_LEASE_SECONDS = 5.0
"""Lease for local runs: a crashed local worker's batch is taken over within seconds."""


class RunError(Exception):
    """A manifest or argument problem; the message says what to change."""


@dataclass
class LocalRunOptions:
    manifest: Path
    workers: int | None = None
    queue_url: str | None = None
    storage_uri: str | None = None
    results_dir: Path = Path("proctor-results")
    run_id: str | None = None
    resume: bool = False
    json_output: bool = False
    refresh_seconds: float = 0.25


def load_evalrun(path: Path) -> EvalRun:
    """The one EvalRun in ``path``, validated."""
    from proctor.validation import ManifestError, validate_file

    try:
        results = validate_file(path)
    except ManifestError as exc:
        raise RunError(str(exc)) from exc
    runs = [r for r in results if r.kind == "EvalRun"]
    if len(runs) != 1:
        raise RunError(f"{path} holds {len(runs)} EvalRun documents; proctor run needs one")
    (result,) = runs
    if not result.ok or not isinstance(result.model, EvalRun):
        raise RunError(
            f"{result.describe()} is invalid:\n  " + "\n  ".join(map(str, result.errors))
        )
    return result.model


def _summary_dict(
    *,
    name: str,
    run_id: str,
    snap: ProgressSnapshot,
    summary: ResultSummary,
    results_uri: str,
    seconds: float,
    exit_code: int,
    stopped: str | None,
) -> dict[str, Any]:
    interval = (
        [summary.delta_lower, summary.delta_upper] if summary.delta_lower is not None else None
    )
    return {
        "run": name,
        "runId": run_id,
        "total": snap.total,
        "completed": snap.completed,
        "passed": snap.passed,
        "failed": snap.failed,
        "errored": snap.errored,
        "deadLettered": snap.dead_lettered,
        "passRate": summary.pass_rate,
        "baselinePassRate": summary.baseline_pass_rate,
        "candidatePassRate": summary.candidate_pass_rate,
        "delta": summary.delta,
        "interval": interval,
        "decision": summary.decision,
        "reason": summary.reason,
        "earlyStopped": bool(summary.early_stopped),
        "stopped": stopped,
        "resultsUri": results_uri,
        "seconds": round(seconds, 3),
        "casesPerSecond": round(snap.completed / seconds, 1) if seconds > 0 else None,
        "exitCode": exit_code,
    }


def _exit_code(snap: ProgressSnapshot, summary: ResultSummary, failed_workers: bool) -> int:
    if summary.decision == "reject":
        return EXIT_REJECT
    if summary.decision == "accept":
        return EXIT_ACCEPT
    if summary.decision is None and snap.completed == snap.total and not failed_workers:
        return EXIT_ACCEPT
    return EXIT_INCOMPLETE


def _table(data: dict[str, Any]) -> Table:
    table = Table(title=f"EvalRun {data['run']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    table.add_row("cases", f"{data['completed']:,} of {data['total']:,} recorded")
    table.add_row(
        "outcomes",
        f"{data['passed']:,} passed, {data['failed']:,} failed, {data['errored']:,} errored",
    )
    if data["deadLettered"]:
        table.add_row("dead-lettered", f"{data['deadLettered']:,} cases (see dead/)")
    if data["decision"] is None:
        table.add_row("pass rate", pct(data["passRate"]))
    else:
        table.add_row("baseline pass rate", pct(data["baselinePassRate"]))
        table.add_row("candidate pass rate", pct(data["candidatePassRate"]))
        lo_hi = data["interval"]
        interval = f"[{pct(lo_hi[0])}, {pct(lo_hi[1])}]" if lo_hi else "-"
        table.add_row("delta (candidate - baseline)", f"{pct(data['delta'])}  {interval}")
        table.add_row("decision", f"[bold]{data['decision']}[/bold]")
        if data["reason"]:
            table.add_row("reason", data["reason"])
    if data.get("metamorphicGuard"):
        from proctor.mgadapter.summary import report_rows

        for label, value in report_rows(data["metamorphicGuard"]):
            table.add_row(label, value)
    if data["earlyStopped"]:
        table.add_row("early stopped", "yes")
    rate = data["casesPerSecond"]
    table.add_row("time", f"{data['seconds']:.1f}s" + (f" ({rate:,.0f} cases/s)" if rate else ""))
    table.add_row("results", data["resultsUri"])
    return table


class _ForkedWorker:
    """A worker process forked from this one, with the part of ``Popen``'s interface used here.

    The child takes ``env`` as its environment, writes to ``log_fd``, runs
    :func:`proctor.worker.main` (what ``proctor worker`` runs) and exits with its code.
    """

    def __init__(self, env: dict[str, str], log_fd: int) -> None:
        self.returncode: int | None = None
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child leaves through os._exit
            code = 70
            try:
                code = _worker_child(env, log_fd)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(Exception):
                    sys.stdout.flush()
                    sys.stderr.flush()
                os._exit(code)
        self.pid = pid

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0.0)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _worker_child(env: dict[str, str], log_fd: int) -> int:  # pragma: no cover - in the child
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    # Fresh stream objects: another thread (the progress bar) may have held the old ones' locks.
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.environ.clear()
    os.environ.update(env)
    from proctor.worker import main

    return main()


class _Workers:
    """N worker processes, restarted when they crash while work remains."""

    def __init__(self, config: WorkerConfig, count: int, log_dir: Path) -> None:
        self.config = config
        self.count = count
        self.log_dir = log_dir
        self.procs: dict[int, subprocess.Popen[bytes] | _ForkedWorker] = {}
        self.logs: dict[int, IO[bytes]] = {}
        self.crashes = 0
        self.setup_failed = False

    def _start(self, slot: int) -> None:
        env = dict(os.environ)
        env.update(self.config.env())
        env["PROCTOR_WORKER_ID"] = f"local-{slot}-{self.crashes}"
        env.setdefault("PROCTOR_LOG_FORMAT", "json")
        if slot not in self.logs:
            self.logs[slot] = (self.log_dir / f"worker-{slot}.log").open("ab")
        if hasattr(os, "fork"):
            # A forked copy of this process runs what `proctor worker` runs: a process of its
            # own as before, without a fresh interpreter re-importing everything (~0.5 s each).
            self.procs[slot] = _ForkedWorker(env, self.logs[slot].fileno())
            return
        self.procs[slot] = subprocess.Popen(
            [sys.executable, "-m", "proctor", "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.logs[slot],
            stderr=subprocess.STDOUT,
        )

    def start(self) -> None:
        for slot in range(self.count):
            self._start(slot)

    def poll(self, work_left: bool, budget: int) -> bool:
        """Reap exits, restart crashed workers; False when none is running any more."""
        for slot, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None:
                continue
            del self.procs[slot]
            if code == 2:
                self.setup_failed = True
            elif code != 0:
                self.crashes += 1
                log.warning("worker crashed", slot=slot, exit_code=code, crashes=self.crashes)
                if work_left and self.crashes <= budget:
                    self._start(slot)
        return bool(self.procs)

    def terminate(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def close(self) -> None:
        for f in self.logs.values():
            f.close()


def run_local(options: LocalRunOptions, console: Console | None = None) -> int:
    """Run the manifest's EvalRun here; returns the exit code (see the module doc)."""
    out = console or Console(stderr=True)
    try:
        evalrun = load_evalrun(options.manifest)
    except RunError as exc:
        out.print(f"[red]error:[/red] {redact_text(str(exc))}")
        return EXIT_USAGE
    spec = evalrun.spec
    name = str(evalrun.metadata.get("name") or options.manifest.stem)
    run_id = options.run_id or name
    local_dir = (options.results_dir / run_id).resolve()
    local_dir.mkdir(parents=True, exist_ok=True)
    storage_uri = options.storage_uri or options.results_dir.resolve().as_uri()
    queue_url = options.queue_url or f"sqlite://{local_dir / 'queue.sqlite3'}"
    lease = min(lease_seconds(spec), LOCAL_LEASE_SECONDS)
    config = WorkerConfig(
        run_id=run_id,
        run_name=name,
        spec=spec,
        queue_url=queue_url,
        storage_uri=storage_uri,
        lease_seconds=lease,
    )
    try:
        storage = open_run_storage(config)
        queue = open_queue(queue_url, run_id, lease_seconds=lease)
        if not options.resume:
            queue.delete()
            queue.close()
            # A fresh run: results of an earlier run of the same name would be skipped as done.
            for sub in ("results/", "dead/", "state/"):
                storage.blobs.delete_prefix(storage.base + sub)
            storage.write_checkpoint({"version": 0})
            queue = open_queue(queue_url, run_id, lease_seconds=lease)
        enqueue_run(queue, storage, spec)
    except Exception as exc:
        out.print(f"[red]error:[/red] cannot set up the run: {redact_text(str(exc))}")
        return EXIT_USAGE
    progress = (
        RunProgress.resume(storage, spec.cases.count)
        if options.resume
        else RunProgress(storage, spec.cases.count)
    )
    count = options.workers or os.cpu_count() or 1
    workers = _Workers(config, count, local_dir)
    budget = (spec.workers or WorkersSpec()).failure_budget
    early = spec.early_stopping
    looks = progress.looks
    stopped: str | None = None
    interrupted = False
    started = time.monotonic()
    checkpoint_every = 30.0
    last_checkpoint = started
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
    workers.start()
    try:
        with bar:
            task_id = bar.add_task(name, total=spec.cases.count, rate="")
            while True:
                time.sleep(options.refresh_seconds)
                progress.refresh()
                snap = progress.snapshot()
                rate = f"{snap.cases_per_second:,.0f} cases/s" if snap.cases_per_second else ""
                bar.update(task_id, completed=snap.completed + snap.dead_lettered, rate=rate)
                if (
                    early is not None
                    and spec.compare is not None
                    and stopped is None
                    and snap.completed // early.check_every > looks
                ):
                    looks = progress.looks = snap.completed // early.check_every
                    if should_stop_early(progress.aggregate, spec.compare, early, looks):
                        stopped = "early stop: the decision is settled"
                        queue.stop(stopped)
                if time.monotonic() - last_checkpoint > checkpoint_every:
                    progress.checkpoint()
                    last_checkpoint = time.monotonic()
                work_left = not snap.finished and stopped is None
                if not workers.poll(work_left, budget) or snap.finished:
                    break
    except KeyboardInterrupt:
        interrupted = True
    finally:
        # Every case recorded: a worker still waiting for its next poll has nothing left to do.
        workers.terminate()
        workers.wait(10.0)
        workers.close()
    progress.refresh()
    snap = progress.snapshot()
    elapsed = time.monotonic() - started
    complete = snap.completed == snap.total
    summary = summarize(
        progress.aggregate, spec.compare, complete=complete, early_stopped=stopped is not None
    )
    # A Metamorphic Guard task spec is judged by Metamorphic Guard's report and rule.
    from proctor.mgadapter.summary import with_mg_report

    summary, mg_report = with_mg_report(spec, storage, summary)
    failed = workers.setup_failed or workers.crashes > budget
    code = EXIT_INTERRUPTED if interrupted else _exit_code(snap, summary, failed)
    if workers.setup_failed and not interrupted:
        code = EXIT_USAGE
        out.print(
            f"[red]error:[/red] a worker could not load the task; see {local_dir}/worker-*.log"
        )
    data = _summary_dict(
        name=name,
        run_id=run_id,
        snap=snap,
        summary=summary,
        results_uri=storage.results_uri(),
        seconds=elapsed,
        exit_code=code,
        stopped=stopped,
    )
    if mg_report is not None:
        data["metamorphicGuard"] = mg_report
    progress.checkpoint(summary=data)
    storage.write_summary(data)
    queue.close()
    if options.json_output:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()
    else:
        Console().print(_table(data))
    return code
