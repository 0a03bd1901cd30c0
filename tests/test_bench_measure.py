"""The runner measures real processes: wall, CPU, peak RSS, exit status, timeouts, stops."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import pytest

from proctor.bench.measure import run_measured

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
PY = sys.executable


def test_wall_time_of_sleep_is_measured_with_little_overhead() -> None:
    m = run_measured(["sleep", "0.3"], ENV, 10)
    assert m.ok
    assert m.exit_code == 0
    # fork + exec + sleep's own start-up; generous for a loaded machine.
    assert 0.3 <= m.wall_seconds < 0.6
    assert m.user_seconds + m.system_seconds < 0.1


def test_cpu_time_of_children_the_command_waited_for_is_counted() -> None:
    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    busy = f"{PY} -c '{spin}'"
    m = run_measured(["sh", "-c", busy], ENV, 30)
    assert m.ok, m.stderr_tail
    assert m.user_seconds + m.system_seconds >= 0.29
    assert m.wall_seconds >= m.user_seconds * 0.5


def test_peak_rss_is_the_commands_not_the_workers() -> None:
    ballast = bytearray(200 * 2**20)  # the measuring process is large; the command is not
    ballast[::4096] = b"x" * len(ballast[::4096])
    small = run_measured(["true"], ENV, 10)
    big = run_measured(
        [PY, "-c", "b = bytearray(150 * 2**20); b[::4096] = b'x' * len(b[::4096])"], ENV, 30
    )
    assert small.ok
    assert big.ok
    assert small.max_rss_bytes < 20 * 2**20, "the launcher's floor is about 7 MiB"
    assert big.max_rss_bytes > 150 * 2**20
    assert big.max_rss_bytes < 150 * 2**20 + 60 * 2**20
    del ballast


@pytest.mark.parametrize(
    ("command", "code"),
    [(["sh", "-c", "echo nope >&2; exit 3"], 3), (["sh", "-c", "kill -9 $$"], -9)],
    ids=["exit-3", "killed"],
)
def test_failures_are_measurements_with_the_exit_status(command: list[str], code: int) -> None:
    m = run_measured(command, ENV, 10)
    assert not m.ok
    assert m.exit_code == code
    assert not m.timed_out
    if code == 3:
        assert "nope" in m.stderr_tail


def test_a_command_that_cannot_start_is_exit_127_with_an_error() -> None:
    m = run_measured(["no-such-benchmark-binary"], ENV, 10)
    assert m.exit_code == 127
    assert m.error is not None
    assert "cannot start 'no-such-benchmark-binary'" in m.error


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_timeout_kills_the_whole_process_tree(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    script = f"sleep 60 & echo $! > {pidfile}; wait"
    t0 = time.monotonic()
    m = run_measured(["sh", "-c", script], ENV, 0.5)
    assert m.timed_out
    assert not m.ok
    assert time.monotonic() - t0 < 5
    assert 0.5 <= m.wall_seconds < 5
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild)


def test_leftover_background_processes_are_killed_at_the_end(tmp_path: Path) -> None:
    pidfile = tmp_path / "orphan"
    m = run_measured(["sh", "-c", f"sleep 60 & echo $! > {pidfile}"], ENV, 10)
    assert m.ok
    orphan = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(orphan)


def test_cancel_stops_the_command_and_says_so() -> None:
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    t0 = time.monotonic()
    m = run_measured(["sleep", "30"], ENV, 60, cancel=cancel)
    assert m.cancelled
    assert not m.ok
    assert not m.timed_out
    assert time.monotonic() - t0 < 5


def test_environment_is_exactly_what_is_given() -> None:
    m = run_measured(
        ["sh", "-c", 'test "$ONLY" = yes && test -z "$HOME"'], {**ENV, "ONLY": "yes"}, 10
    )
    assert m.ok


@pytest.mark.parametrize(
    ("command", "timeout", "message"),
    [([], 1.0, "at least one word"), (["true"], 0.0, "positive")],
)
def test_bad_arguments(command: list[str], timeout: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run_measured(command, ENV, timeout)


def test_a_daemon_escaping_the_group_cannot_hold_the_runner(tmp_path: Path) -> None:
    """A process in its own session survives the group kill; the runner must not wait on it."""
    pidfile = tmp_path / "daemon"
    script = f"setsid sleep 30 & echo $! > {pidfile}; sleep 60"
    t0 = time.monotonic()
    m = run_measured(["sh", "-c", script], ENV, 0.5)
    try:
        assert m.timed_out
        assert time.monotonic() - t0 < 5
    finally:
        os.kill(int(pidfile.read_text()), 9)
