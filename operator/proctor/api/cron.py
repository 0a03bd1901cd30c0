"""Five-field cron expressions in UTC, as ``spec.schedule.cron`` of a BenchmarkSuite uses them.

``minute hour day-of-month month day-of-week`` with ``*``, lists (``1,15``), ranges
(``1-5``), steps (``*/15``, ``0-30/10``, ``5/20``), month names (``JAN``-``DEC``) and weekday
names (``SUN``-``SAT``; 0 and 7 are both Sunday). As in Vixie cron, when both day fields are
restricted a day matches if either does. Pure: the clock is always an argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
WEEKDAYS = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")
HORIZON_YEARS = 5
"""A schedule with no fire time within this many years (``0 0 30 2 *``) is an error."""


class CronError(ValueError):
    """The expression is not a valid five-field cron expression, or it never fires."""


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0


_FIELDS = (
    _Field("minute", 0, 59),
    _Field("hour", 0, 23),
    _Field("day of month", 1, 31),
    _Field("month", 1, 12, MONTHS, 1),
    _Field("day of week", 0, 7, WEEKDAYS, 0),
)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed expression: the allowed values of each field (weekday 0 = Sunday)."""

    expression: str
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    def day_matches(self, moment: datetime) -> bool:
        day_ok = moment.day in self.days
        weekday_ok = (moment.isoweekday() % 7) in self.weekdays
        if self.any_day and self.any_weekday:
            return True
        if self.any_day:
            return weekday_ok
        if self.any_weekday:
            return day_ok
        return day_ok or weekday_ok

    def matches(self, moment: datetime) -> bool:
        """Whether the schedule fires in the minute of ``moment``."""
        return (
            moment.minute in self.minutes
            and moment.hour in self.hours
            and moment.month in self.months
            and self.day_matches(moment)
        )


def _value(text: str, field: _Field, expression: str) -> int:
    upper = text.upper()
    if field.names and upper in field.names:
        return field.names.index(upper) + field.name_base
    if not text.isdigit():
        hint = f" or a name ({', '.join(field.names)})" if field.names else ""
        raise CronError(
            f"cron {expression!r}: {text!r} in the {field.name} field is not a number{hint}"
        )
    value = int(text)
    if not field.low <= value <= field.high:
        raise CronError(
            f"cron {expression!r}: {value} is out of range for the {field.name} field "
            f"({field.low}-{field.high})"
        )
    return value


def _parse_field(text: str, field: _Field, expression: str) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        if not part:
            raise CronError(f"cron {expression!r}: empty list item in the {field.name} field")
        base, slash, step_text = part.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) < 1:
                raise CronError(
                    f"cron {expression!r}: step {step_text!r} in the {field.name} field must be "
                    "a positive number"
                )
            step = int(step_text)
        if base == "*":
            low, high = field.low, field.high
        elif "-" in base:
            first, _, last = base.partition("-")
            low, high = _value(first, field, expression), _value(last, field, expression)
            if low > high:
                raise CronError(
                    f"cron {expression!r}: range {base!r} in the {field.name} field runs "
                    "backwards; write it low-high"
                )
        else:
            low = _value(base, field, expression)
            # "5/20" means from 5 to the end of the field, every 20.
            high = field.high if slash else low
        values.update(range(low, high + 1, step))
    return frozenset(values)


def parse_cron(expression: str) -> CronSchedule:
    """Parse ``expression``; :class:`CronError` says what is wrong and where."""
    parts = expression.split()
    if len(parts) != len(_FIELDS):
        raise CronError(
            f"cron {expression!r} has {len(parts)} fields; write five: minute hour "
            "day-of-month month day-of-week, e.g. '0 3 * * *' (03:00 UTC daily)"
        )
    minutes, hours, days, months, weekdays = (
        _parse_field(text, field, expression) for text, field in zip(parts, _FIELDS, strict=True)
    )
    schedule = CronSchedule(
        expression=expression,
        minutes=minutes,
        hours=hours,
        days=days,
        months=months,
        weekdays=frozenset(d % 7 for d in weekdays),
        any_day=parts[2] == "*",
        any_weekday=parts[4] == "*",
    )
    # Fail now, not at the first fire, for dates that do not exist (30 February).
    next_fire(schedule, datetime(2000, 1, 1, tzinfo=UTC))
    return schedule


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("cron times must be timezone-aware (UTC)")
    return moment.astimezone(UTC)


def next_fire(schedule: CronSchedule, after: datetime) -> datetime:
    """The first fire time strictly after ``after`` (UTC, whole minutes)."""
    t = _utc(after).replace(second=0, microsecond=0) + timedelta(minutes=1)
    limit = t + timedelta(days=366 * HORIZON_YEARS)
    while t < limit:
        if t.month not in schedule.months:
            year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
            t = t.replace(year=year, month=month, day=1, hour=0, minute=0)
            continue
        if not schedule.day_matches(t):
            t = (t + timedelta(days=1)).replace(hour=0, minute=0)
            continue
        if t.hour not in schedule.hours:
            t = (t + timedelta(hours=1)).replace(minute=0)
            continue
        if t.minute not in schedule.minutes:
            t += timedelta(minutes=1)
            continue
        return t
    raise CronError(
        f"cron {schedule.expression!r} never fires within {HORIZON_YEARS} years "
        "(a day that does not exist in its months?)"
    )


def latest_fire(schedule: CronSchedule, since: datetime, now: datetime) -> datetime | None:
    """The most recent fire time in ``(since, now]``; None when there is none.

    Missed fires (an operator that was down) collapse into this one: a suite runs once for
    them, not once per missed minute.
    """
    if next_fire(schedule, since) > _utc(now):
        return None
    t = _utc(now).replace(second=0, microsecond=0)
    # Walk back from now; the fire found above bounds the walk.
    while True:
        if t.month not in schedule.months:
            t = t.replace(day=1, hour=0, minute=0) - timedelta(minutes=1)
            continue
        if not schedule.day_matches(t):
            t = t.replace(hour=0, minute=0) - timedelta(minutes=1)
            continue
        if t.hour not in schedule.hours:
            t = t.replace(minute=0) - timedelta(minutes=1)
            continue
        if t.minute not in schedule.minutes:
            t -= timedelta(minutes=1)
            continue
        return t
