"""Prometheus metrics of the operator (``proctor_operator_*``), served with /healthz."""

from __future__ import annotations

import collections
import contextlib
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended", "Cancelled")

_PerRun = TypeVar("_PerRun", Gauge, Counter)


class OperatorMetrics:
    """One registry per operator process (tests may build several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self._phase: dict[tuple[str, str], str] = {}
        self._by_phase: collections.Counter[str] = collections.Counter()
        self._publish_phases()

    def _per_run(self, kind: type[_PerRun], name: str, documentation: str) -> _PerRun:
        """A metric with one child per run (labels namespace and run)."""
        return kind(name, documentation, ["namespace", "run"], registry=self.registry)

    def observe_run(self, namespace: str, run: str, phase: str) -> None:
        old = self._phase.get((namespace, run))
        if old == phase:
            return  # every pass reports its run; the gauge moves only on a change
        self._phase[(namespace, run)] = phase
        if old is not None:
            self._by_phase[old] -= 1
        self._by_phase[phase] += 1
        self._publish_phases()

    def observe_progress(
        self,
        namespace: str,
        run: str,
        *,
        desired: int,
        completed: int,
        total: int,
        cases_per_second: float,
        stalled: bool,
    ) -> None:
        """The per-run gauges that follow the status (progress, throughput, Stalled)."""
        self.desired.labels(namespace, run).set(desired)
        self.completed.labels(namespace, run).set(completed)
        self.progress.labels(namespace, run).set(completed / total if total > 0 else 0.0)
        self.throughput.labels(namespace, run).set(cases_per_second)
        self.stalled.labels(namespace, run).set(1 if stalled else 0)
        # A counter child exists from the run's first pass, at 0, so increase() in the
        # HighDisruptionRate alert sees the first disruption too.
        self.disruptions.labels(namespace, run)

    def forget_run(self, namespace: str, run: str) -> None:
        old = self._phase.pop((namespace, run), None)
        if old is not None:
            self._by_phase[old] -= 1
        for metric in (
            self.planned,
            self.ready,
            self.backlog,
            self.desired,
            self.completed,
            self.progress,
            self.throughput,
            self.stalled,
            self.disruptions,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(namespace, run)
        self._publish_phases()

    def _publish_phases(self) -> None:
        # Counted as runs change phase, not by walking every run on every pass (1,000 runs
        # at a 1 s interval made that a million steps a second).
        for phase in PHASES:
            self.runs.labels(phase).set(self._by_phase[phase])

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)
