"""What ``proctor logs`` asks of each pod's log: kubectl's ``--tail``, ``--since``,
``--since-time``, ``-p/--previous`` and ``--timestamps``, checked as kubectl checks them and
sent as the ``pods/log`` query parameters (``tailLines``, ``sinceSeconds``, ``sinceTime``,
``previous``, ``timestamps``, ``follow``: ``PodLogOptions``).

As kubectl does: ``--since`` is a duration (``30s``, ``5m``, ``1h30m``) rounded to whole seconds,
``0s`` (its default) meaning the whole log; ``--since-time`` an RFC 3339 time with its offset
(``2026-12-07T21:00:00Z``), sent in UTC to the second; at most one of the two; ``--tail -1``
(the default) every line.
"""

from __future__ import annotations

import argparse
import datetime
import math
import re
from dataclasses import dataclass

from proctor.api.quantity import QuantityError, parse_duration
from proctor.cli.context import EXIT_USAGE, CommandError

RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)
"""An RFC 3339 date-time (``T`` between date and time, ``Z`` or an offset), as Go parses it."""


@dataclass(frozen=True)
class LogOptions:
    """Which part of each pod's log to read, and how."""

    tail: int = -1
    since_seconds: int | None = None
    since_time: str | None = None
    previous: bool = False
    timestamps: bool = False

    def query(self, container: str, *, follow: bool = False) -> dict[str, str]:
        """The ``pods/log`` query for one container (pure)."""
        query = {"container": container}
        if self.tail >= 0:
            query["tailLines"] = str(self.tail)
        if self.since_seconds is not None:
            query["sinceSeconds"] = str(self.since_seconds)
        if self.since_time is not None:
            query["sinceTime"] = self.since_time
        for name, on in (("previous", self.previous), ("timestamps", self.timestamps)):
            if on:
                query[name] = "true"
        if follow:
            query["follow"] = "true"
        return query


def add_log_options(parser: argparse.ArgumentParser) -> None:
    """kubectl logs' options for which part of the log to read."""
    parser.add_argument(
        "--tail", type=int, default=-1, metavar="N",
        help="the last N lines of each pod's log (default -1: all)",
    )  # fmt: skip
    parser.add_argument(
        "--since", metavar="DURATION",
        help="only lines newer than this, like 30s, 5m or 1h30m (default 0s: all)",
    )  # fmt: skip
    parser.add_argument(
        "--since-time", metavar="RFC3339",
        help="only lines at or after this time, like 2026-12-07T21:00:00Z (not with --since)",
    )  # fmt: skip
    parser.add_argument(
        "-p", "--previous", action="store_true",
        help="the log of each pod's previous container, before its last restart",
    )  # fmt: skip
    parser.add_argument(
        "--timestamps", action="store_true",
        help="start each line with its time (RFC 3339, as the kubelet recorded it)",
    )  # fmt: skip


def log_options(
    tail: int = -1,
    since: str | None = None,
    since_time: str | None = None,
    *,
    previous: bool = False,
    timestamps: bool = False,
) -> LogOptions:
    """The options checked; a bad value is a :class:`CommandError` with exit 2 (pure)."""
    if since is not None and since_time is not None:
        raise CommandError("at most one of --since and --since-time may be given", EXIT_USAGE)
    if tail < -1:
        raise CommandError(f"--tail {tail}: must be -1 (every line) or more", EXIT_USAGE)
    return LogOptions(
        tail=tail,
        since_seconds=None if since is None else since_seconds(since),
        since_time=None if since_time is None else rfc3339_utc(since_time),
        previous=previous,
        timestamps=timestamps,
    )


def since_seconds(value: str) -> int | None:
    """``--since``: whole seconds, rounded half up as kubectl rounds; ``0s`` is None (the
    whole log) (pure)."""
    try:
        seconds = parse_duration(value)
    except QuantityError as exc:
        raise CommandError(f"--since {value}: {exc}", EXIT_USAGE) from exc
    if seconds == 0:
        return None
    rounded = math.floor(seconds + 0.5)
    if rounded < 1:
        raise CommandError(
            f"--since {value}: less than a second (the API counts whole seconds); give 1s or more",
            EXIT_USAGE,
        )
    return rounded


def rfc3339_utc(value: str) -> str:
    """``--since-time``: the time in UTC to the second, as kubectl sends it (pure)."""
    text = value.strip()
    if not RFC3339.match(text):
        raise CommandError(
            f"--since-time {value}: not an RFC 3339 time; write it like 2026-12-07T21:00:00Z "
            "or 2026-12-07T22:00:00+01:00",
            EXIT_USAGE,
        )
    try:
        when = datetime.datetime.fromisoformat(text.upper().replace("Z", "+00:00"))
    except ValueError as exc:  # a month 13, a 25th hour
        raise CommandError(f"--since-time {value}: {exc}", EXIT_USAGE) from exc
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
