"""Pure pieces of the reconcile pass: how often an idle run lists its result objects."""

from __future__ import annotations

import pytest

from proctor.reconcile import (
    PROGRESS_REFRESH_MAX_SECONDS,
    PROGRESS_REFRESH_SECONDS,
    next_refresh_interval,
)

# (name, current interval, the listing found something or the queue moved, expected next)
REFRESH = [
    ("found: back to the base", 80.0, True, PROGRESS_REFRESH_SECONDS),
    ("nothing: doubles", PROGRESS_REFRESH_SECONDS, False, 2 * PROGRESS_REFRESH_SECONDS),
    ("nothing again: doubles again", 20.0, False, 40.0),
    ("capped", 100.0, False, PROGRESS_REFRESH_MAX_SECONDS),
    ("at the cap", PROGRESS_REFRESH_MAX_SECONDS, False, PROGRESS_REFRESH_MAX_SECONDS),
    ("below the base counts as the base", 1.0, False, 2 * PROGRESS_REFRESH_SECONDS),
]


@pytest.mark.parametrize(
    ("name", "current", "found", "expected"), REFRESH, ids=[r[0] for r in REFRESH]
)
def test_idle_runs_list_storage_less_and_less_often(
    name: str, current: float, found: bool, expected: float
) -> None:
    assert next_refresh_interval(current, found) == expected


def test_the_backoff_reaches_the_cap_in_a_few_idle_listings() -> None:
    interval, steps = PROGRESS_REFRESH_SECONDS, 0
    while interval < PROGRESS_REFRESH_MAX_SECONDS:
        interval = next_refresh_interval(interval, False)
        steps += 1
    assert steps == 4  # 10 -> 20 -> 40 -> 80 -> 120 s
