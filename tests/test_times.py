"""proctor.api.times.parse_time: the one reader of API timestamps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from proctor.api.times import parse_time

CASES = {
    "zulu": ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    "fraction": (
        "2026-01-02T03:04:05.250Z",
        datetime(2026, 1, 2, 3, 4, 5, 250000, tzinfo=UTC),
    ),
    "offset": (
        "2026-01-02T05:04:05+02:00",
        datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))),
    ),
    "unset": (None, None),
    "empty": ("", None),
}


@pytest.mark.parametrize(("value", "want"), CASES.values(), ids=CASES.keys())
def test_parse_time(value: str | None, want: datetime | None) -> None:
    got = parse_time(value)
    assert got == want
    if got is not None:
        assert got.utcoffset() is not None


def test_parse_time_rejects_what_is_not_a_time() -> None:
    with pytest.raises(ValueError, match="isoformat"):
        parse_time("yesterday")
