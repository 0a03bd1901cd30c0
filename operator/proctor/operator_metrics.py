"""Prometheus metrics of the operator (``proctor_operator_*``), served with /healthz."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PHASES = ("Pending", "Running", "Succeeded", "Failed", "Suspended")


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
        self.planned = Gauge(
            "proctor_operator_planned_workers",
            "Workers planned per run.",
            ["namespace", "run"],
            registry=self.registry,
        )
        self.ready = Gauge(
            "proctor_operator_ready_workers",
            "Ready workers per run.",
            ["namespace", "run"],
            registry=self.registry,
        )
        self.backlog = Gauge(
            "proctor_operator_backlog_batches",
            "Queue entries waiting or in flight per run.",
            ["namespace", "run"],
            registry=self.registry,
        )
        self.disruptions = Counter(
            "proctor_operator_disruptions",
            "Workers lost to preemption or eviction.",
            ["namespace", "run"],
            registry=self.registry,
        )
        self._phase: dict[tuple[str, str], str] = {}

    def observe_run(self, namespace: str, run: str, phase: str) -> None:
        self._phase[(namespace, run)] = phase
        self._publish_phases()

    def forget_run(self, namespace: str, run: str) -> None:
        self._phase.pop((namespace, run), None)
        for gauge in (self.planned, self.ready, self.backlog):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, run)
        self._publish_phases()

    def _publish_phases(self) -> None:
        for phase in PHASES:
            self.runs.labels(phase).set(sum(1 for p in self._phase.values() if p == phase))

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)
