"""Real backing services on free loopback ports: Redis and moto (S3, SQS).

Used by e2e/conftest.py and tests/conftest.py. Each server is a child
process that is stopped (SIGTERM, then SIGKILL) when its context exits.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2e.harness.net import free_port, wait_for_port


class ServiceError(RuntimeError):
    """A service could not be started."""


@dataclass(frozen=True)
class Service:
    url: str
    port: int
    pid: int
    log: Path


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise ServiceError(
            "redis-server is not installed; run e2e/setup (apt-get install -y redis-server)"
        )
    return found


@contextlib.contextmanager
def redis_server(timeout: float = 30.0) -> Iterator[Service]:
    """A throwaway redis-server (no persistence) on 127.0.0.1; yields redis://... ."""
    binary = redis_server_binary()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="proctor-redis-") as tmp:
        log = Path(tmp) / "redis.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    binary,
                    "--port", str(port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--daemonize", "no",
                    "--dir", tmp,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            if not wait_for_port(port, timeout) or proc.poll() is not None:
                raise ServiceError(f"redis-server did not start: {log.read_text()[-2000:]}")
            yield Service(f"redis://127.0.0.1:{port}/0", port, proc.pid, log)
        finally:
            _stop(proc)


@contextlib.contextmanager
def moto_server(timeout: float = 60.0) -> Iterator[Service]:
    """moto's server (S3, SQS and the rest over HTTP) on 127.0.0.1; yields its endpoint URL."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="proctor-moto-") as tmp:
        log = Path(tmp) / "moto.log"
        env = dict(os.environ)
        # boto3 in the tests signs with these; moto accepts anything.
        env.setdefault("AWS_ACCESS_KEY_ID", "testing")
        env.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise ServiceError(f"moto server exited: {log.read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                        break
                except (urllib.error.URLError, OSError):
                    if time.monotonic() > deadline:
                        raise ServiceError(f"moto server not ready in {timeout:.0f}s") from None
                    time.sleep(0.1)
            yield Service(url, port, proc.pid, log)
        finally:
            _stop(proc)
