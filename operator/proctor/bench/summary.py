"""From records to statistics: per cell, between variants, and against a baseline. Pure.

Statistics are of wall time (seconds) over a cell's successful repetitions; failed ones are
counted, not measured. See docs/statistics.md ("BenchmarkSuite").
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from proctor.api.v1alpha1.benchmarksuite import (
    DEFAULT_CONFIDENCE_LEVEL,
    BenchmarkSuiteSpec,
    CellSummary,
    Regression,
)
from proctor.bench.matrix import Cell, cells
from proctor.bench.reuse import reused_source
from proctor.stats.passrates import Interval
from proctor.stats.timing import (
    Welford,
    bootstrap_ratio_of_medians,
    detect_regression,
    mean_interval,
    median,
    median_interval,
    percentile,
)

BOOTSTRAP_RESAMPLES = 2000

Records = Mapping[str, Sequence[Mapping[str, Any]]]


@dataclass(frozen=True)
class Comparison:
    """``median(variant) / median(reference)`` for one benchmark, with its bootstrap interval.

    The reference is the suite's first variant; a ratio above 1 means slower than it.
    """

    benchmark: str
    variant: str
    reference: str
    ratio: float
    ratio_ci: Interval


@dataclass(frozen=True)
class BaselineComparison:
    """One cell against the same cell of the baseline run."""

    benchmark: str
    variant: str
    baseline_median: float
    ratio: float
    ratio_ci: Interval
    p_value: float
    regression: bool
    reason: str


@dataclass
class SuiteSummary:
    """What the status, the table and the report show."""

    cells: list[CellSummary]
    regressions: list[Regression]
    comparisons: list[Comparison]
    baseline: list[BaselineComparison] = field(default_factory=list)
    confidence_level: float = DEFAULT_CONFIDENCE_LEVEL
    threshold: float | None = None

    @property
    def total(self) -> int:
        return sum(c.total for c in self.cells)

    @property
    def completed(self) -> int:
        return sum(c.completed for c in self.cells)

    @property
    def failed(self) -> int:
        return sum(c.failed for c in self.cells)

    @property
    def reused(self) -> int:
        """Cells taken from the cache rather than measured (spec.cache.reuse: unchanged)."""
        return sum(1 for c in self.cells if c.reused_from)

    @property
    def progress_percent(self) -> float:
        return 100.0 * self.completed / self.total if self.total else 100.0

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON (camelCase, as in the status)."""
        return {
            "cells": [c.to_wire() for c in self.cells],
            "regressions": [r.to_wire() for r in self.regressions],
            "comparisons": [
                {
                    "benchmark": c.benchmark,
                    "variant": c.variant,
                    "reference": c.reference,
                    "ratio": c.ratio,
                    "ratioCi": list(c.ratio_ci),
                }
                for c in self.comparisons
            ],
            "baseline": [
                {
                    "benchmark": b.benchmark,
                    "variant": b.variant,
                    "baselineMedian": b.baseline_median,
                    "ratio": b.ratio,
                    "ratioCi": list(b.ratio_ci),
                    "pValue": b.p_value,
                    "regression": b.regression,
                    "reason": b.reason,
                }
                for b in self.baseline
            ],
            "confidenceLevel": self.confidence_level,
            "threshold": self.threshold,
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "reused": self.reused,
        }


def wall_times(records: Sequence[Mapping[str, Any]]) -> list[float]:
    """Wall times of the successful repetitions, each repetition once, in repetition order."""
    seen: dict[int, float] = {}
    for r in records:
        i = int(r["repetition"])
        if r.get("ok") and i not in seen:
            seen[i] = float(r["wall_seconds"])
    return [seen[i] for i in sorted(seen)]


def cell_seed(cell_id: str) -> int:
    """A fixed bootstrap seed per cell: the same data always give the same interval."""
    return zlib.crc32(cell_id.encode())


def summarize_cell(
    benchmark: str,
    variant: str,
    total: int,
    records: Sequence[Mapping[str, Any]],
    confidence_level: float = DEFAULT_CONFIDENCE_LEVEL,
) -> CellSummary:
    """Count, mean, standard deviation, min, p50, p95, p99, max and the two intervals."""
    reps = {int(r["repetition"]): r for r in records}
    failed = sum(1 for r in reps.values() if not r.get("ok"))
    xs = wall_times(records)
    acc = Welford()
    for x in xs:
        acc.add(x)
    if not xs:
        return CellSummary(
            benchmark=benchmark, variant=variant, completed=len(reps), total=total, failed=failed
        )
    mci = mean_interval(xs, confidence_level)
    medci = median_interval(xs, confidence_level)
    return CellSummary(
        benchmark=benchmark,
        variant=variant,
        completed=len(reps),
        total=total,
        failed=failed,
        mean=acc.mean,
        stddev=acc.stddev,
        min=acc.min,
        p50=percentile(xs, 50),
        p95=percentile(xs, 95),
        p99=percentile(xs, 99),
        max=acc.max,
        mean_ci=list(mci) if mci else None,
        median_ci=list(medci) if medci else None,
    )


def summarize_suite(
    spec: BenchmarkSuiteSpec,
    records: Records,
    baseline: Records | None = None,
) -> SuiteSummary:
    """The suite's summary from its records per cell id (and the baseline's, if any)."""
    level = spec.confidence_level()
    threshold = spec.baseline.threshold if spec.baseline else None
    out: list[CellSummary] = []
    comparisons: list[Comparison] = []
    against: list[BaselineComparison] = []
    regressions: list[Regression] = []
    reference: dict[str, list[float]] = {}
    for cell in cells(spec):
        recs = records.get(cell.id, ())
        summary = summarize_cell(cell.benchmark, cell.variant, cell.repetitions, recs, level)
        summary.reused_from = reused_source(recs) if recs else None
        xs = wall_times(recs)
        if cell.benchmark not in reference:
            reference[cell.benchmark] = xs
        elif xs and reference[cell.benchmark]:
            first = spec.variants[0].name
            comparisons.append(_against_variant(cell, xs, first, reference[cell.benchmark], level))
        base = wall_times(baseline.get(cell.id, ())) if baseline is not None else []
        if threshold is not None and xs and base:
            comparison = _against_baseline(cell, xs, base, threshold, level)
            against.append(comparison)
            summary.regression = comparison.regression
            if comparison.regression:
                regressions.append(
                    Regression(
                        benchmark=cell.benchmark,
                        variant=cell.variant,
                        ratio=comparison.ratio,
                        ratio_ci=list(comparison.ratio_ci),
                    )
                )
        out.append(summary)
    return SuiteSummary(
        cells=out,
        regressions=regressions,
        comparisons=comparisons,
        baseline=against,
        confidence_level=level,
        threshold=threshold,
    )


def _against_variant(
    cell: Cell, xs: list[float], reference: str, ref: list[float], level: float
) -> Comparison:
    """The cell's median against the benchmark's first variant's, with a bootstrap interval."""
    return Comparison(
        benchmark=cell.benchmark,
        variant=cell.variant,
        reference=reference,
        ratio=median(xs) / median(ref),
        ratio_ci=bootstrap_ratio_of_medians(
            xs,
            ref,
            level,
            seed=cell_seed(f"{cell.id}/{reference}"),
            resamples=BOOTSTRAP_RESAMPLES,
        ),
    )


def _against_baseline(
    cell: Cell, xs: list[float], base: list[float], threshold: float, level: float
) -> BaselineComparison:
    """The cell against the same cell of the baseline run: a regression or not, and why."""
    verdict = detect_regression(
        xs, base, threshold, level, seed=cell_seed(cell.id), resamples=BOOTSTRAP_RESAMPLES
    )
    return BaselineComparison(
        benchmark=cell.benchmark,
        variant=cell.variant,
        baseline_median=median(base),
        ratio=verdict.ratio,
        ratio_ci=verdict.ratio_interval,
        p_value=verdict.p_value,
        regression=verdict.regression,
        reason=verdict.reason,
    )
