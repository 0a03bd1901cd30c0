"""What both workers share (proctor.worker.common) and the local pool of ``proctor run``
(proctor.worker.pool), with real queues and real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from proctor.queue import Lease, Range, open_queue
from proctor.worker.common import (
    EXIT_CONFIG,
    ConfigError,
    Env,
    heartbeat_interval,
    renew_leases,
    run_main,
)
from proctor.worker.pool import Process, WorkerPool

# -- Env --------------------------------------------------------------------------------------

WORKER_IDS = {
    "explicit": ({"PROCTOR_WORKER_ID": "w-1", "POD_NAME": "pod-1"}, "w-1"),
    "pod name": ({"POD_NAME": "pod-1"}, "pod-1"),
    "empty id falls back": ({"PROCTOR_WORKER_ID": "", "POD_NAME": "pod-1"}, "pod-1"),
}


@pytest.mark.parametrize(("env", "want"), WORKER_IDS.values(), ids=WORKER_IDS.keys())
def test_env_worker_id(env: dict[str, str], want: str) -> None:
    assert Env(env, docs="x.md").worker_id() == want


def test_env_worker_id_defaults_to_host_and_pid() -> None:
    assert Env({}, docs="x.md").worker_id().endswith(f"-{os.getpid()}")


def test_env_need_says_what_to_set_and_where() -> None:
    env = Env({"PROCTOR_QUEUE_URL": "  "}, docs="docs/engine.md")
    with pytest.raises(ConfigError, match=r"PROCTOR_QUEUE_URL is not set; the worker needs it"):
        env.need("PROCTOR_QUEUE_URL")
    with pytest.raises(ConfigError, match=r"the benchmark worker needs it \(see docs/engine.md\)"):
        env.need("PROCTOR_CELL", "the benchmark worker")


SECONDS = {"unset": ({}, None), "blank": ({"S": " "}, None), "set": ({"S": "2.5"}, 2.5)}


@pytest.mark.parametrize(("env", "want"), SECONDS.values(), ids=SECONDS.keys())
def test_env_seconds(env: dict[str, str], want: float | None) -> None:
    assert Env(env, docs="x.md").seconds("S") == want


INTERVALS = {"short lease": (0.06, 0.05), "a minute": (60.0, 10.0), "30 s": (30.0, 10.0)}


@pytest.mark.parametrize(("lease", "want"), INTERVALS.values(), ids=INTERVALS.keys())
def test_heartbeat_interval(lease: float, want: float) -> None:
    assert heartbeat_interval(lease) == pytest.approx(want)


# -- renew_leases -----------------------------------------------------------------------------


def test_renew_leases_reports_only_the_leases_another_worker_holds(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'q.sqlite3'}"
    short = open_queue(url, "run", lease_seconds=0.2)
    short.enqueue([Range(0, 1)], chunk="0")
    (lapsed,) = short.claim(1, "me")
    time.sleep(0.3)
    (taken,) = short.claim(1, "other")  # the lapsed entry goes to another worker
    assert taken.range == lapsed.range
    held = open_queue(url, "run-2", lease_seconds=30.0)
    held.enqueue([Range(0, 1)], chunk="0")
    (kept,) = held.claim(1, "me")
    errors: list[Lease] = []
    assert renew_leases(short, "me", [lapsed], lambda lease, exc: errors.append(lease)) == {
        lapsed.token
    }
    assert renew_leases(held, "me", [kept], lambda lease, exc: errors.append(lease)) == set()
    assert errors == []
    short.close()
    held.close()


# -- run_main ---------------------------------------------------------------------------------


class _Ran:
    def __init__(self) -> None:
        self.handlers = False

    def install_signal_handlers(self) -> None:
        self.handlers = True

    def run(self) -> int:
        return 7 if self.handlers else 1


def _misconfigured() -> _Ran:
    raise ConfigError("PROCTOR_X is not set")


def test_run_main_exits_config_on_a_bad_configuration() -> None:
    logged: list[tuple[str, str]] = []

    class Log:
        def error(self, event: str, error: str) -> None:
            logged.append((event, error))

    assert run_main(_misconfigured, Log(), "bench worker") == EXIT_CONFIG
    assert logged == [("bench worker misconfigured", "PROCTOR_X is not set")]
    assert run_main(_Ran, Log()) == 7  # handlers installed before run


# -- WorkerPool -------------------------------------------------------------------------------


def _exits(codes: dict[int, list[int]]) -> tuple[WorkerPool, list[tuple[int, int]]]:
    """A pool whose slot ``s`` exits with ``codes[s][n]`` on its ``n``-th start (0 after)."""
    started: list[tuple[int, int]] = []

    def spawn(slot: int, crashes: int) -> Process:
        n = sum(1 for s, _ in started if s == slot)
        started.append((slot, crashes))
        code = codes.get(slot, [])[n] if n < len(codes.get(slot, [])) else 0
        # A negative code: the process dies of that signal, as an OOM-killed worker does.
        body = (
            f"import os; os.kill(os.getpid(), {-code})" if code < 0 else f"raise SystemExit({code})"
        )
        return subprocess.Popen([sys.executable, "-c", body])

    return WorkerPool(len(codes), spawn), started


def _drain(pool: WorkerPool, budget: int, work_left: bool = True) -> None:
    deadline = time.monotonic() + 30
    while pool.poll(budget, work_left):
        assert time.monotonic() < deadline, "the pool's workers did not exit"
        time.sleep(0.02)


POOL = {
    # name: (exit codes per slot and start, budget, work left, starts, crashes, setup failed)
    "clean exits": ({0: [0], 1: [0]}, 5, True, 2, 0, False),
    "a crash is restarted": ({0: [1, 0]}, 5, True, 2, 1, False),
    "no restart past the budget": ({0: [1, 1, 1, 1]}, 1, True, 2, 2, False),
    "no restart without work": ({0: [1, 0]}, 5, False, 1, 1, False),
    "a task that cannot load is no crash": ({0: [EXIT_CONFIG]}, 5, True, 1, 0, True),
    "killed by a signal": ({0: [-9, 0]}, 5, True, 2, 1, False),
}


@pytest.mark.parametrize("case", POOL.values(), ids=POOL.keys())
def test_worker_pool(case: tuple[dict[int, list[int]], int, bool, int, int, bool]) -> None:
    codes, budget, work_left, starts, crashes, setup_failed = case
    pool, started = _exits(codes)
    pool.start()
    _drain(pool, budget, work_left)
    assert len(started) == starts
    assert pool.crashes == crashes
    assert pool.setup_failed is setup_failed
    assert pool.failed(budget) is (setup_failed or crashes > budget)
    # Each restart is told how many crashes came before it (worker ids say so).
    assert [c for _, c in started] == sorted(c for _, c in started)


def test_worker_pool_starts_missing_slots_within_the_budget() -> None:
    pool, started = _exits({0: [0], 1: [0]})
    pool.start()
    _drain(pool, budget=0)
    pool.start_missing(budget=0)
    assert len(started) == 4
    _drain(pool, budget=0)
    pool.crashes = 1
    pool.start_missing(budget=0)  # over the budget: nothing starts
    assert len(started) == 4


def test_worker_pool_terminates_and_kills_what_ignores_sigterm() -> None:
    script = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(slot: int, crashes: int) -> Process:
        procs.append(subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE))
        return procs[-1]

    pool = WorkerPool(2, spawn)
    pool.start()
    for proc in procs:  # each child ignores SIGTERM before the pool sends it
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
    t0 = time.monotonic()
    pool.terminate()
    pool.wait(0.5)
    assert time.monotonic() - t0 < 10
    assert [p.returncode for p in procs] == [-9, -9]
    for proc in procs:
        assert proc.stdout is not None
        proc.stdout.close()
