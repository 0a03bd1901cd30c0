"""``proctor logs``' kubectl options: parsed, checked and sent as the ``pods/log`` query
(issue 19)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proctor.cli.context import EXIT_USAGE, CommandError, Target
from proctor.cli.logoptions import LogOptions, log_options, rfc3339_utc, since_seconds
from proctor.cli.logs import print_log
from proctor.cli.main import build_parser, main
from proctor.cluster.client import KubeApi, KubeApiError


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["logs", "quick", *argv])


def options(*argv: str) -> LogOptions:
    a = parse(*argv)
    return log_options(a.tail, a.since, a.since_time, previous=a.previous, timestamps=a.timestamps)


@pytest.mark.parametrize(
    ("argv", "query"),
    [
        ((), {"container": "worker"}),
        (("--tail", "5"), {"container": "worker", "tailLines": "5"}),
        (("--tail=0",), {"container": "worker", "tailLines": "0"}),
        (("--tail", "-1"), {"container": "worker"}),
        (("--since", "90s"), {"container": "worker", "sinceSeconds": "90"}),
        (("--since=1h30m",), {"container": "worker", "sinceSeconds": "5400"}),
        (("--since", "1.5s"), {"container": "worker", "sinceSeconds": "2"}),  # rounded
        (("--since", "0s"), {"container": "worker"}),  # kubectl's default: the whole log
        (
            ("--since-time", "2026-12-07T22:00:00.75+01:00"),
            {"container": "worker", "sinceTime": "2026-12-07T21:00:00Z"},
        ),
        (("-p",), {"container": "worker", "previous": "true"}),
        (("--previous", "--timestamps"), {"container": "worker", "previous": "true",
                                          "timestamps": "true"}),
    ],
)  # fmt: skip
def test_options_become_the_pod_log_query(argv: tuple[str, ...], query: dict[str, str]) -> None:
    assert options(*argv).query("worker") == query


def test_follow_is_asked_only_when_following() -> None:
    opts = options("--tail", "3", "--timestamps")
    assert opts.query("benchmark", follow=True) == {
        "container": "benchmark", "tailLines": "3", "timestamps": "true", "follow": "true"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--since", "5m", "--since-time", "2026-12-07T21:00:00Z"),
         "at most one of --since and --since-time may be given"),
        (("--tail", "-2"), "--tail -2: must be -1 (every line) or more"),
        (("--since", "5"), "--since 5: '5' is not a duration; write it like 500ms, 30s, 5m or "
                           "1h30m"),
        (("--since=-5s",), "--since -5s: '-5s' is not a duration"),
        (("--since", "400ms"), "--since 400ms: less than a second"),
        (("--since-time", "2026-12-07"), "--since-time 2026-12-07: not an RFC 3339 time"),
        (("--since-time", "2026-12-07T21:00:00"), "--since-time 2026-12-07T21:00:00: not an RFC"),
        (("--since-time", "2026-13-07T21:00:00Z"), "--since-time 2026-13-07T21:00:00Z: month"),
    ],
)  # fmt: skip
def test_bad_values_are_usage_errors(argv: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError) as raised:
        options(*argv)
    assert raised.value.code == EXIT_USAGE
    assert str(raised.value).startswith(message)


def test_a_tail_that_is_no_number_is_argparses_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        parse("--tail", "ten")
    assert raised.value.code == EXIT_USAGE
    assert "--tail: invalid int value: 'ten'" in capsys.readouterr().err


def test_since_and_since_time_alone() -> None:
    assert since_seconds("2m") == 120
    assert since_seconds("500ms") == 1  # half rounds up, as Go's Duration.Round
    assert since_seconds("0s") is None
    assert rfc3339_utc("2026-12-07t21:00:00z") == "2026-12-07T21:00:00Z"
    assert rfc3339_utc("2026-12-07T20:30:59.999999999-00:30") == "2026-12-07T21:00:59Z"


class _Api(KubeApi):
    """A client whose every log read is the API server's answer ``error``."""

    def __init__(self, error: KubeApiError) -> None:
        self.error = error
        self.asked: list[dict[str, str]] = []

    def stream(
        self, path: str, query: Any = None, *, read_timeout: float | None = None
    ) -> Iterator[bytes]:
        self.asked.append(dict(query or {}))
        raise self.error


def test_a_pod_with_no_previous_container_is_a_note_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    message = 'previous terminated container "worker" in pod "quick-w-1" not found'
    body = json.dumps({"kind": "Status", "code": 400, "reason": "BadRequest", "message": message})
    api = _Api(KubeApiError(400, body))
    pod = {
        "metadata": {"name": "quick-w-1", "namespace": "ns"},
        "spec": {"containers": [{"name": "worker"}]},
    }
    assert print_log(Target(api, "ns"), pod, options("-p")) is False
    assert api.asked == [{"container": "worker", "previous": "true"}]
    assert capsys.readouterr().err == f"[quick-w-1] no previous log: {message}\n"


def test_a_bad_value_is_exit_2_before_the_cluster_is_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No kubeconfig at all: a bad option must be said first (exit 2), not "no access" (exit 7).
    code = main(["logs", "quick", "--since", "5m", "--since-time", "2026-12-07T21:00:00Z",
                 "--kubeconfig", str(tmp_path / "none")])  # fmt: skip
    assert code == EXIT_USAGE
    assert capsys.readouterr().err == (
        "error: at most one of --since and --since-time may be given\n"
    )
