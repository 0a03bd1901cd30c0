"""Logging configuration (proctor.logging): what a process configures is what it logs with."""

from __future__ import annotations

import os
import sys

import pytest

from proctor.logging import configure_logging
from proctor.worker import runtime


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
def test_finding_a_forked_worker_logs_with_its_own_configuration(
    tmp_path: os.PathLike[str],
) -> None:
    """``proctor run`` forks its workers, and each configures its own logging (JSON, info)
    into its log file. A logger the parent had already used (at warning, console) kept the
    parent's configuration in the child: the worker's "worker started" lines were dropped
    (tests/test_faults.py counted 0 after another test had run a worker in-process)."""
    configure_logging(fmt="console", level="warning")
    runtime.log.info("parent: hidden at warning")
    log_file = os.path.join(tmp_path, "child.log")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            fd = os.open(log_file, os.O_WRONLY | os.O_CREAT, 0o600)
            os.dup2(fd, 2)
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            configure_logging(fmt="json", level="info")
            runtime.log.info("worker started")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    configure_logging()
    with open(log_file) as f:
        lines = f.read().splitlines()
    assert len(lines) == 1, lines
    assert '"event": "worker started"' in lines[0]
    assert '"level": "info"' in lines[0]
