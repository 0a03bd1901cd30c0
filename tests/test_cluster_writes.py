"""What the operator writes, shaped before it is sent (pure): the status merge patch."""

from __future__ import annotations

from typing import Any

import pytest

from proctor.cluster.writes import status_patch


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        (None, {"phase": "Pending"}, {"phase": "Pending"}),
        ({"phase": "Running"}, {"phase": "Running"}, {}),
        ({"phase": "Running", "x": 1}, {"phase": "Running", "x": 2}, {"x": 2}),
        ({"phase": "Running", "plan": {"r": 1}}, {"phase": "Running"}, {"plan": None}),
        ({"phase": "Running", "kopf": {"p": 1}}, {"phase": "Running"}, {}),
        ({"w": {"a": 1, "b": 2}}, {"w": {"a": 1, "b": 3}}, {"w": {"a": 1, "b": 3}}),
        ({}, {}, {}),
    ],
    ids=["from nothing", "unchanged", "changed key", "removed key", "kopf kept", "nested", "empty"],
)
def test_status_patch(
    old: dict[str, Any] | None, new: dict[str, Any], patch: dict[str, Any]
) -> None:
    assert status_patch(old, new) == patch


def test_finding13_retried_written_by_an_older_operator_is_removed() -> None:
    # A merge patch merges nested objects: counts.retried goes only if the patch nulls it.
    old = {"counts": {"total": 5, "retried": 0}, "plan": {"pools": [{"name": "a"}], "fit": 1}}
    new = {"counts": {"total": 5}, "plan": {"fit": 1}}
    assert status_patch(old, new) == {
        "counts": {"total": 5, "retried": None},
        "plan": {"fit": 1, "pools": None},
    }
