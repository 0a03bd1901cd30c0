"""The worker's case-duration histogram, observed a batch at a time, is exposed exactly as
prometheus_client's Histogram observed a value at a time."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from proctor.worker.metrics import _CASE_BUCKETS, BatchHistogram, WorkerMetrics

NAME = "proctor_worker_case_duration_seconds"

BATCHES = {
    "nothing observed": [],
    "all in the first bucket": [[0.00001] * 1000],
    "on the bounds, between, past the last": [
        [0.0001, 0.0005, 0.00051, 1.0, 300.0, 301.0, 0.0],
        [5.0, 4.999, 60.0, 1e-9, 12.5],
    ],
    "an empty batch among others": [[0.2], [], [0.3, 0.02]],
}


def _exposition(registry: CollectorRegistry) -> tuple[list[str], float]:
    """The text exposition without the values of _created (a clock reading) and of _sum
    (added in another order), and the sum."""
    lines = generate_latest(registry).decode().splitlines()
    total = [float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(f"{NAME}_sum")]
    cut = [
        line.rsplit(" ", 1)[0] if "_created" in line or "_sum " in line else line for line in lines
    ]
    return cut, total[0]


@pytest.mark.parametrize("name", list(BATCHES))
def test_batches_expose_as_single_observations_do(name: str) -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    batch = BatchHistogram(NAME, "Time to evaluate one case.", _CASE_BUCKETS, ours)
    single = Histogram(NAME, "Time to evaluate one case.", buckets=_CASE_BUCKETS, registry=theirs)
    for values in BATCHES[name]:
        batch.observe_all(values)
        for v in values:
            single.observe(v)
    (lines, total), (expected, expected_total) = _exposition(ours), _exposition(theirs)
    assert lines == expected
    assert total == pytest.approx(expected_total)


def test_the_worker_counts_case_durations_by_batch() -> None:
    metrics = WorkerMetrics()
    metrics.case_duration.observe_all([0.0002, 0.002, 7.0])
    metrics.case_duration.observe(0.0002)
    get = metrics.registry.get_sample_value
    assert get(f"{NAME}_count") == 4
    assert get(f"{NAME}_bucket", {"le": "0.0005"}) == 2
    assert get(f"{NAME}_bucket", {"le": "10.0"}) == 4
    assert get(f"{NAME}_sum") == pytest.approx(7.0024)


def test_buckets_must_increase() -> None:
    with pytest.raises(ValueError, match="increasing order"):
        BatchHistogram("x_seconds", "x", (1.0, 0.5), CollectorRegistry())
