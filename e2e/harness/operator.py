"""Run ``proctor operator`` as a local process for end-to-end tests."""

from __future__ import annotations

import copy
import functools
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from e2e.harness.net import free_port

GROUP, VERSION, PLURAL = "proctor.dev", "v1alpha1", "evalruns"
CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
QUICKSTART = Path(__file__).resolve().parents[2] / "manifests" / "samples" / "quickstart.yaml"


@functools.cache
def _quickstart() -> dict[str, Any]:
    """The quickstart, parsed once: PyYAML takes milliseconds a document, which a bench that
    makes a thousand runs would spend on the cores it measures."""
    doc: dict[str, Any] = yaml.safe_load(QUICKSTART.read_text())
    return doc


def evalrun_doc(
    name: str, *, count: int, bucket: str, moto: str, storage: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The quickstart EvalRun pointed at the test's Redis (Secret ``queue``) and moto bucket
    (Secret ``s3``); ``storage`` adds fields to ``spec.storage``."""
    doc = copy.deepcopy(_quickstart())
    doc["metadata"] = {"name": name}
    doc["spec"]["cases"]["count"] = count
    doc["spec"]["queue"] = {"type": "redis", "secretRef": {"name": "queue"}, "lease": "10s"}
    doc["spec"]["storage"] = {
        "uri": f"s3://{bucket}/runs",
        "endpoint": moto,
        "region": "us-east-1",
        "secretRef": {"name": "s3"},
        **(storage or {}),
    }
    return doc


def operator_config(*, run_workers: bool, runner: str = "local", **extra: Any) -> dict[str, Any]:
    """OperatorConfig for tests: a 1 s loop; with ``run_workers`` worker pods carry the pod
    runner's label and really run, otherwise they only look Running (kwok). ``runner`` is the
    label's value: ``local`` (the host's Python) or an image's label (inside its rootfs).
    Workers serve no metrics: the pod runner's pods share this machine's network, so they
    cannot all bind one port."""
    return {
        "workerPodLabels": {"e2e.proctor.dev/run": runner} if run_workers else {},
        "scalingIntervalSeconds": 1.0,
        "workerGraceSeconds": 10,
        "workerMetricsPort": 0,
        **extra,
    }


class OperatorProcess:
    """A running operator; ``log`` holds its stderr."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, metrics_port: int) -> None:
        self.proc = proc
        self.log = log
        self.metrics_port = metrics_port

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_started(self, timeout: float = 60.0) -> float:
        """Wait until the operator has started (its startup handler serves the metrics);
        seconds waited. A bench that times runs starts its clock after this, as a user's runs
        meet an operator that is already up."""
        t0 = time.monotonic()
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the operator exited:\n{self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2):
                    return time.monotonic() - t0
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        raise TimeoutError(f"the operator did not start in {timeout:.0f} s")

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
