"""Prometheus metrics of the operator (``proctor_operator_*`` for EvalRuns,
``proctor_operator_suite*`` for BenchmarkSuites, and ``proctor_build_info``), served with
/healthz."""

from __future__ import annotations

import collections
import contextlib
import itertools
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteStatus
from proctor.api.v1alpha1.evalrun import CacheStatus
from proctor.buildinfo import register_build_info

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended", "Cancelled")
FINISHED = ("Succeeded", "Failed")

_PerRun = TypeVar("_PerRun", Gauge, Counter)


class PhaseCount:
    """A gauge of objects by phase, counted as objects change phase, not by walking every
    object on every pass (1,000 runs at a 1 s interval made that a million steps a second)."""

    def __init__(self, gauge: Gauge) -> None:
        self.gauge = gauge
        self.phase: dict[tuple[str, str], str] = {}
        self._by_phase: collections.Counter[str] = collections.Counter()
        self._publish()

    def observe(self, key: tuple[str, str], phase: str) -> str | None:
        """Record ``key``'s phase; returns the phase it had before (None: not seen yet)."""
        old = self.phase.get(key)
        if old == phase:
            return old  # every pass reports its object; the gauge moves only on a change
        self.phase[key] = phase
        if old is not None:
            self._by_phase[old] -= 1
        self._by_phase[phase] += 1
        self._publish()
        return old

    def forget(self, key: tuple[str, str]) -> None:
        old = self.phase.pop(key, None)
        if old is not None:
            self._by_phase[old] -= 1
        self._publish()

    def _publish(self) -> None:
        for phase in PHASES:
            self.gauge.labels(phase).set(self._by_phase[phase])


@dataclass(frozen=True)
class SuiteFigures:
    """What the per-suite gauges show, read from the status a pass wrote."""

    cells: int = 0
    cells_done: int = 0
    progress: float = 0.0
    regressions: int = 0
    ready_pods: int = 0
    failures: int = 0


def suite_figures(status: BenchmarkSuiteStatus) -> SuiteFigures:
    """The gauges of the suite's current (or last) run (pure). A cell is done when every
    repetition it plans has a record."""
    cells = status.cells or []
    return SuiteFigures(
        cells=len(cells),
        cells_done=sum(1 for c in cells if c.total > 0 and c.completed >= c.total),
        progress=(status.progress_percent or 0.0) / 100.0,
        regressions=status.regression_count or 0,
        ready_pods=status.ready_pods or 0,
        failures=status.failures or 0,
    )


class OperatorMetrics:
    """One registry per operator process (tests may build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.build_info = register_build_info(self.registry)
        self.runs = Gauge(
            "proctor_operator_runs", "EvalRuns by phase.", ["phase"], registry=self.registry
        )
        self.reconcile_seconds = Histogram(
            "proctor_operator_reconcile_duration_seconds",
            "Duration of one reconcile pass of one run.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "proctor_operator_reconcile_errors", "Passes that raised.", registry=self.registry
        )
        self.planned = self._per_run(
            Gauge, "proctor_operator_planned_workers", "Workers planned per run."
        )
        self.ready = self._per_run(
            Gauge, "proctor_operator_ready_workers", "Ready workers per run."
        )
        self.backlog = self._per_run(
            Gauge, "proctor_operator_backlog_batches", "Queue entries waiting or in flight per run."
        )
        self.disruptions = self._per_run(
            Counter, "proctor_operator_disruptions", "Workers lost to preemption or eviction."
        )
        self.desired = self._per_run(
            Gauge,
            "proctor_operator_desired_workers",
            "Workers the autoscaler wants now per run (status.workers.desired).",
        )
        self.queued = self._per_run(
            Gauge,
            "proctor_operator_queued_workers",
            "Workers created and waiting for Kueue's admission (gated) per run.",
        )
        self.completed = self._per_run(
            Gauge,
            "proctor_operator_completed_cases",
            "Cases with a recorded result per run (status.counts.completed).",
        )
        self.progress = self._per_run(
            Gauge,
            "proctor_operator_progress_ratio",
            "Completed share of a run's cases, 0-1 (status.progressPercent / 100).",
        )
        self.throughput = self._per_run(
            Gauge,
            "proctor_operator_cases_per_second",
            "Recent throughput per run (status.casesPerSecond); 0 once finished.",
        )
        self.stalled = self._per_run(
            Gauge,
            "proctor_operator_run_stalled",
            "1 while a run's Stalled condition is True, else 0.",
        )
        self.cache_results = Gauge(
            "proctor_operator_cache_results",
            "Sides of a run's recorded cases by side and result: hit (reused from the result "
            "cache) or miss (evaluated by the run); status.cache.",
            ["namespace", "run", "side", "result"],
            registry=self.registry,
        )
        self._runs = PhaseCount(self.runs)
        self.suites = SuiteMetrics(self.registry)

    def _per_run(self, kind: type[_PerRun], name: str, documentation: str) -> _PerRun:
        """A metric with one child per run (labels namespace and run)."""
        return kind(name, documentation, ["namespace", "run"], registry=self.registry)

    def observe_run(self, namespace: str, run: str, phase: str) -> None:
        self._runs.observe((namespace, run), phase)

    def observe_progress(
        self,
        namespace: str,
        run: str,
        *,
        desired: int,
        queued: int,
        completed: int,
        total: int,
        cases_per_second: float,
        stalled: bool,
    ) -> None:
        """The per-run gauges that follow the status (progress, throughput, Stalled)."""
        self.desired.labels(namespace, run).set(desired)
        self.queued.labels(namespace, run).set(queued)
        self.completed.labels(namespace, run).set(completed)
        self.progress.labels(namespace, run).set(completed / total if total > 0 else 0.0)
        self.throughput.labels(namespace, run).set(cases_per_second)
        self.stalled.labels(namespace, run).set(1 if stalled else 0)
        # A counter child exists from the run's first pass, at 0, so increase() in the
        # ProctorHighDisruptionRate alert sees the first disruption too.
        self.disruptions.labels(namespace, run)

    def observe_cache(self, namespace: str, run: str, cache: CacheStatus) -> None:
        """A run's hits and misses per side (``task`` for a run without compare)."""
        sides = {"baseline": cache.baseline, "candidate": cache.candidate}
        counted = {k: v for k, v in sides.items() if v is not None} or {"task": cache}
        for side, counts in counted.items():
            self.cache_results.labels(namespace, run, side, "hit").set(counts.hits)
            self.cache_results.labels(namespace, run, side, "miss").set(counts.misses)

    def forget_run(self, namespace: str, run: str) -> None:
        self._runs.forget((namespace, run))
        for side, result in itertools.product(("baseline", "candidate", "task"), ("hit", "miss")):
            with contextlib.suppress(KeyError):
                self.cache_results.remove(namespace, run, side, result)
        for metric in (
            self.planned,
            self.ready,
            self.backlog,
            self.desired,
            self.queued,
            self.completed,
            self.progress,
            self.throughput,
            self.stalled,
            self.disruptions,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, run)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)


SUITE_GAUGES = {
    "cells": ("proctor_operator_suite_cells", "Cells (benchmark x variant) of the run."),
    "cells_done": (
        "proctor_operator_suite_cells_done",
        "Cells whose every repetition is recorded.",
    ),
    "progress": (
        "proctor_operator_suite_progress_ratio",
        "Recorded share of the run's repetitions, 0-1 (status.progressPercent / 100).",
    ),
    "regressions": (
        "proctor_operator_suite_regressions",
        "Cells slower than the baseline in the run (status.regressionCount).",
    ),
    "ready_pods": ("proctor_operator_suite_ready_pods", "Benchmark pods ready."),
    "failures": (
        "proctor_operator_suite_pod_failures",
        "Benchmark pods of the run that failed, against spec.failureBudget.",
    ),
}
"""The per-suite gauges: a :class:`SuiteFigures` field -> (metric name, help)."""


class SuiteMetrics:
    """BenchmarkSuite series (``proctor_operator_suite*``), in the operator's registry; per-suite
    ones carry ``namespace`` and ``suite``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.by_phase = Gauge(
            "proctor_operator_suites", "BenchmarkSuites by phase.", ["phase"], registry=registry
        )
        self._phases = PhaseCount(self.by_phase)
        self.finished = Counter(
            "proctor_operator_suite_runs_finished",
            "Suite runs seen to finish, by phase (Succeeded, Failed).",
            ["namespace", "suite", "phase"],
            registry=registry,
        )
        self.disruptions = self._per_suite(
            Counter,
            "proctor_operator_suite_disruptions",
            "Benchmark pods lost to preemption, eviction or their node going away.",
            registry,
        )
        self._gauges = {
            field: self._per_suite(Gauge, name, doc, registry)
            for field, (name, doc) in SUITE_GAUGES.items()
        }

    @staticmethod
    def _per_suite(
        kind: type[_PerRun], name: str, documentation: str, registry: CollectorRegistry
    ) -> _PerRun:
        return kind(name, documentation, ["namespace", "suite"], registry=registry)

    def observe(
        self, namespace: str, suite: str, status: BenchmarkSuiteStatus, *, new_disruptions: int
    ) -> None:
        """One pass's status: phase, the run's gauges, disruptions, and a run that finished
        since the last pass (not one found finished after a restart: it was counted then)."""
        phase = status.phase or "Pending"
        before = self._phases.observe((namespace, suite), phase)
        for finished in FINISHED:  # present at 0 from the first pass, as disruptions are
            self.finished.labels(namespace, suite, finished)
        if phase in FINISHED and before is not None and before not in FINISHED:
            self.finished.labels(namespace, suite, phase).inc()
        figures = suite_figures(status)
        for field, gauge in self._gauges.items():
            gauge.labels(namespace, suite).set(getattr(figures, field))
        # Present at 0 from the first pass, so increase() sees the first disruption.
        self.disruptions.labels(namespace, suite).inc(new_disruptions)

    def forget(self, namespace: str, suite: str) -> None:
        """A deleted suite: its series go."""
        self._phases.forget((namespace, suite))
        for metric in (*self._gauges.values(), self.disruptions):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, suite)
        for phase in FINISHED:
            with contextlib.suppress(KeyError):
                self.finished.remove(namespace, suite, phase)
