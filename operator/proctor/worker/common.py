"""What the case worker (``proctor worker``) and the benchmark worker (``proctor bench-worker``)
share: exit codes, the configuration error, reading ``PROCTOR_*`` variables, lease renewal and
the ``main`` that turns a misconfiguration into :data:`EXIT_CONFIG`."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from proctor.logging import configure_logging
from proctor.queue import Lease, WorkQueue

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_STORAGE = 3


class ConfigError(ValueError):
    """The worker's configuration is missing or wrong; the message says what to set."""


class Env:
    """``PROCTOR_*`` variables, read the way both workers read them."""

    def __init__(self, env: Mapping[str, str] | None, docs: str) -> None:
        self.values = dict(os.environ if env is None else env)
        self.docs = docs
        """Where the variables are described, for the error of a missing one."""

    def get(self, name: str, default: str = "") -> str:
        return self.values.get(name, default)

    def need(self, name: str, who: str = "the worker") -> str:
        value = self.values.get(name, "").strip()
        if not value:
            raise ConfigError(f"{name} is not set; {who} needs it (see {self.docs})")
        return value

    def optional(self, name: str) -> str | None:
        return self.values.get(name) or None

    def seconds(self, name: str) -> float | None:
        value = self.values.get(name, "").strip()
        return float(value) if value else None

    def worker_id(self) -> str:
        """``PROCTOR_WORKER_ID``, else the pod's name, else host-pid."""
        return self.values.get("PROCTOR_WORKER_ID") or self.values.get("POD_NAME") or host_pid()


def host_pid() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def heartbeat_interval(lease_seconds: float) -> float:
    """Three renewals per lease (at most every 10 s), so one missed beat loses nothing."""
    return max(0.05, min(lease_seconds / 3.0, 10.0))


def renew_leases(
    queue: WorkQueue,
    worker_id: str,
    leases: Iterable[Lease],
    on_error: Callable[[Lease, Exception], None],
) -> set[str]:
    """Renew ``leases``; the tokens of those another worker holds now. A renewal that fails
    goes to ``on_error`` and is retried at the next beat (the lease may still hold)."""
    lost: set[str] = set()
    for lease in leases:
        try:
            ok = queue.renew(lease, worker_id)
        except Exception as exc:
            on_error(lease, exc)
            continue
        if not ok:
            lost.add(lease.token)
    return lost


class Runnable(Protocol):
    def install_signal_handlers(self) -> None: ...

    def run(self) -> int: ...


def run_main(build: Callable[[], Runnable], log: Any, name: str = "worker") -> int:
    """Configure logging, build the worker (a bad configuration exits :data:`EXIT_CONFIG`
    with what was wrong), take over SIGTERM and run it."""
    configure_logging()
    try:
        worker = build()
    except (ConfigError, ValueError) as exc:
        log.error(f"{name} misconfigured", error=str(exc))
        return EXIT_CONFIG
    worker.install_signal_handlers()
    return worker.run()
