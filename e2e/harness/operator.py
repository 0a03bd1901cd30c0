"""Run ``proctor operator`` as a local process for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from e2e.harness.net import free_port


class OperatorProcess:
    """A running operator; ``log`` holds its stderr."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, metrics_port: int) -> None:
        self.proc = proc
        self.log = log
        self.metrics_port = metrics_port

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        """SIGKILL: an operator crash, no cleanup."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@contextmanager
def operator_process(
    kubeconfig: Path,
    workdir: Path,
    config: Mapping[str, Any],
    *,
    namespace: str | None = None,
) -> Iterator[OperatorProcess]:
    """Start the operator with ``config`` (an OperatorConfig as YAML); stop it on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "operator.yaml"
    config_path.write_text(yaml.safe_dump(dict(config)))
    metrics_port = free_port()
    args = [
        sys.executable,
        "-m",
        "proctor",
        "operator",
        "--config",
        str(config_path),
        "--liveness-port",
        str(free_port()),
        "--metrics-port",
        str(metrics_port),
    ]
    if namespace:
        args += ["--namespace", namespace]
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "PROCTOR_LOG_FORMAT": "console"}
    log = workdir / f"operator-{len(list(workdir.glob('operator-*.log')))}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
    op = OperatorProcess(proc, log, metrics_port)
    try:
        yield op
    finally:
        op.stop()
