"""`proctor operator --peering`: replicas of one Deployment start with the same arguments, and
kopf pauses every peer when two share the highest priority, so each draws its own."""

from __future__ import annotations

import pytest

from proctor.cli.main import build_parser
from proctor.cli.operator import peering_priority


@pytest.mark.parametrize(
    ("argv", "fixed"),
    [
        pytest.param([], 0, id="standalone"),
        pytest.param(["--peering-priority", "7"], 7, id="given-without-peering"),
        pytest.param(["--peering", "--peering-priority", "100"], 100, id="given"),
        pytest.param(["--peering"], None, id="drawn"),
    ],
)
def test_peering_priority(argv: list[str], fixed: int | None) -> None:
    args = build_parser().parse_args(["operator", *argv])
    drawn = {peering_priority(args.peering, args.peering_priority) for _ in range(20)}
    if fixed is not None:
        assert drawn == {fixed}
    else:
        # Distinct draws (a collision in 20 draws out of 2**31 would be a broken generator).
        assert len(drawn) == 20
        assert all(1 <= p < 2**31 for p in drawn)
