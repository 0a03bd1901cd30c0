"""Five-field cron: parsing, next fire time and the latest missed fire, as tables."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from proctor.api.cron import CronError, latest_fire, next_fire, parse_cron


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


NEXT = [
    # (name, expression, after, expected next fire)
    ("every minute", "* * * * *", "2026-03-01T10:15:30", "2026-03-01T10:16:00"),
    ("strictly after", "15 10 * * *", "2026-03-01T10:15:00", "2026-03-02T10:15:00"),
    ("daily at 3", "0 3 * * *", "2026-03-01T10:15:00", "2026-03-02T03:00:00"),
    ("same day later", "0 3 * * *", "2026-03-01T01:59:59", "2026-03-01T03:00:00"),
    ("every 15 minutes", "*/15 * * * *", "2026-03-01T10:16:00", "2026-03-01T10:30:00"),
    ("step over the hour", "*/15 * * * *", "2026-03-01T10:45:00", "2026-03-01T11:00:00"),
    ("range with step", "0-30/10 * * * *", "2026-03-01T10:31:00", "2026-03-01T11:00:00"),
    ("start with step", "5/20 * * * *", "2026-03-01T10:26:00", "2026-03-01T10:45:00"),
    ("list", "0 1,13 * * *", "2026-03-01T02:00:00", "2026-03-01T13:00:00"),
    ("year end", "0 0 1 1 *", "2026-12-31T23:59:00", "2027-01-01T00:00:00"),
    ("month name", "0 0 1 jun *", "2026-03-01T00:00:00", "2026-06-01T00:00:00"),
    ("weekday name", "30 8 * * MON", "2026-03-01T00:00:00", "2026-03-02T08:30:00"),  # Sun -> Mon
    ("weekday range", "0 9 * * 1-5", "2026-03-06T10:00:00", "2026-03-09T09:00:00"),  # Fri -> Mon
    ("7 is Sunday", "0 0 * * 7", "2026-03-02T00:00:00", "2026-03-08T00:00:00"),
    ("0 is Sunday", "0 0 * * 0", "2026-03-02T00:00:00", "2026-03-08T00:00:00"),
    # Both day fields restricted: either matches (the 13th, or any Friday).
    ("day or weekday", "0 0 13 * FRI", "2026-03-01T00:00:00", "2026-03-06T00:00:00"),
    ("day or weekday 2", "0 0 13 * FRI", "2026-03-06T00:00:00", "2026-03-13T00:00:00"),
    ("leap day", "0 0 29 2 *", "2026-03-01T00:00:00", "2028-02-29T00:00:00"),
    ("31st skips short months", "0 0 31 * *", "2026-04-01T00:00:00", "2026-05-31T00:00:00"),
]


@pytest.mark.parametrize(
    ("name", "expression", "after", "expected"), NEXT, ids=[n[0] for n in NEXT]
)
def test_next_fire(name: str, expression: str, after: str, expected: str) -> None:
    assert next_fire(parse_cron(expression), at(after)) == at(expected)


def test_next_fire_reads_other_time_zones_as_the_same_instant() -> None:
    cet = timezone(timedelta(hours=1))
    after = datetime(2026, 3, 1, 4, 30, tzinfo=cet)  # 03:30 UTC
    assert next_fire(parse_cron("0 4 * * *"), after) == at("2026-03-01T04:00:00")


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        next_fire(parse_cron("* * * * *"), datetime(2026, 3, 1))


# (name, expression, since, now, expected latest fire in (since, now])
LATEST = [
    ("none yet", "0 3 * * *", "2026-03-01T03:00", "2026-03-02T02:59", None),
    ("exactly now", "0 3 * * *", "2026-03-01T03:00", "2026-03-02T03:00", "2026-03-02T03:00"),
    ("missed several", "0 3 * * *", "2026-03-01T03:00", "2026-03-05T12:00", "2026-03-05T03:00"),
    ("every minute", "* * * * *", "2026-03-01T03:00", "2026-03-01T03:07:42", "2026-03-01T03:07"),
    ("back over a month", "0 0 1 * *", "2026-01-15T00:00", "2026-03-20T00:00", "2026-03-01T00:00"),
    ("back over a year", "0 0 1 1 *", "2024-06-01T00:00", "2026-06-01T00:00", "2026-01-01T00:00"),
    ("weekday", "0 9 * * 1-5", "2026-03-06T10:00", "2026-03-08T23:00", None),
]


@pytest.mark.parametrize(
    ("name", "expression", "since", "now", "expected"), LATEST, ids=[n[0] for n in LATEST]
)
def test_latest_fire(
    name: str, expression: str, since: str, now: str, expected: str | None
) -> None:
    got = latest_fire(parse_cron(expression), at(since), at(now))
    assert got == (at(expected) if expected else None)


BAD = [
    ("four fields", "0 3 * *", "has 4 fields; write five"),
    ("six fields", "0 0 3 * * *", "has 6 fields"),
    ("minute range", "60 * * * *", "60 is out of range for the minute field"),
    ("hour range", "0 24 * * *", "24 is out of range for the hour field"),
    ("day zero", "0 0 0 * *", "0 is out of range for the day of month field"),
    ("month name", "0 0 1 FOO *", "'FOO' in the month field is not a number or a name"),
    ("weekday 8", "0 0 * * 8", "8 is out of range for the day of week field"),
    ("backwards", "0 5-1 * * *", "runs backwards"),
    ("zero step", "*/0 * * * *", "must be a positive number"),
    ("empty item", "1,,2 * * * *", "empty list item"),
    ("never fires", "0 0 30 2 *", "never fires"),
]


@pytest.mark.parametrize(("name", "expression", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_expressions_say_what_is_wrong(name: str, expression: str, message: str) -> None:
    with pytest.raises(CronError, match=message):
        parse_cron(expression)


def test_matches_agrees_with_next_fire() -> None:
    schedule = parse_cron("*/7 1-3 * * MON-FRI")
    t = at("2026-03-01T00:00:00")
    fires = []
    minute = t
    while minute < t + timedelta(days=8):
        if schedule.matches(minute):
            fires.append(minute)
        minute += timedelta(minutes=1)
    walked = [next_fire(schedule, t)]
    while len(walked) < len(fires):
        walked.append(next_fire(schedule, walked[-1]))
    assert walked == fires
    assert len(fires) == 5 * 3 * 9  # weekdays x hours x minutes 0,7,...,56
