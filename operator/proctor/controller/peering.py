"""Whether this operator may act while kopf peering is on (``proctor operator --peering``).

kopf pauses its own watches and handlers when a live peer of higher priority (or another of the
same priority) shows in the peering object, but it cannot pause a loop it does not own: the
EvalRun pass loop (:mod:`proctor.controller.pass_loop`) asks :class:`PeeringGate` before each
round. The gate reads the same peering objects and applies kopf's rule (:func:`paused`); the
loop runs under the identity it gave kopf, so it knows which entry is its own.
"""

from __future__ import annotations

import fnmatch
import getpass
import os
import secrets
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from proctor.api.times import parse_time
from proctor.cluster.client import KubeApi

log = structlog.get_logger("proctor.operator")

GROUP_VERSION = "kopf.dev/v1"
POLL_SECONDS = 1.0
"""How often the gate reads the peering objects: a new peer of higher priority stops this
operator's passes within about this long of kopf pausing its watches."""


def is_pattern(namespace: str) -> bool:
    """Whether a ``--namespace`` value is a kopf pattern (a glob, or ``!`` to exclude) rather
    than one namespace's name."""
    return namespace.startswith("!") or any(c in namespace for c in "*?[")


def matches(namespace: str, patterns: Sequence[str]) -> bool:
    """Whether kopf serves ``namespace`` under ``patterns`` (pure): it matches one of the
    globs (any namespace when there are only exclusions) and none of the exclusions."""
    included = [p for p in patterns if not p.startswith("!")]
    excluded = [p[1:] for p in patterns if p.startswith("!")]
    return (not included or any(fnmatch.fnmatch(namespace, p) for p in included)) and not any(
        fnmatch.fnmatch(namespace, p) for p in excluded
    )


def own_identity() -> str:
    """An identity for kopf's peering entry: the pod (``POD_ID``, as kopf reads it) or
    user@host, plus the start time and a random suffix."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    started = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return f"{getpass.getuser()}@{socket.gethostname()}/{started}/{secrets.token_hex(3)}"


def _live(info: Mapping[str, Any], now: datetime) -> bool:
    last = parse_time(info.get("lastseen"))
    if last is None:
        return True  # kopf takes a peer without lastseen as seen now
    if last.tzinfo is None:
        last = last.replace(tzinfo=UTC)
    return last + timedelta(seconds=int(info.get("lifetime") or 60)) > now


def paused(
    peers: Iterable[Mapping[str, Any]], *, identity: str, priority: int, now: datetime
) -> bool:
    """kopf's rule over peering objects' ``status`` ({identity: {priority, lifetime,
    lastseen}}): paused while another live peer has a higher priority or the same one."""
    for status in peers:
        for peer, info in (status or {}).items():
            if peer == identity or not isinstance(info, Mapping) or not _live(info, now):
                continue
            if int(info.get("priority") or 0) >= priority:
                return True
    return False


class PeeringGate:
    """Open while this operator is the active peer. Without peering it is always open."""

    def __init__(
        self,
        kube: KubeApi | None,
        *,
        name: str,
        namespaces: Sequence[str],
        identity: str,
        priority: int,
        every: float = POLL_SECONDS,
    ) -> None:
        self.kube = kube
        self.name = name
        self.namespaces = list(namespaces)
        self.identity = identity
        self.priority = priority
        self.every = every
        self._read_at = float("-inf")
        self._statuses: list[Mapping[str, Any]] = []
        self._paused = kube is not None  # closed until the first read says otherwise
        self._ever_read = False

    def _read(self) -> list[Mapping[str, Any]]:
        assert self.kube is not None
        if not self.namespaces:
            got = self.kube.get(f"/apis/{GROUP_VERSION}/clusterkopfpeerings/{self.name}")
            return [got.get("status") or {}] if got else []
        if not any(is_pattern(ns) for ns in self.namespaces):
            found = []
            for ns in self.namespaces:
                path = f"/apis/{GROUP_VERSION}/namespaces/{ns}/kopfpeerings/{self.name}"
                got = self.kube.get(path)
                if got:
                    found.append(got.get("status") or {})
            return found
        # Namespace patterns: every peering object of that name in a matching namespace.
        items = self.kube.list(f"/apis/{GROUP_VERSION}/kopfpeerings")
        return [
            item.get("status") or {}
            for item in items
            if item["metadata"]["name"] == self.name
            and matches(item["metadata"]["namespace"], self.namespaces)
        ]

    @property
    def open(self) -> bool:
        return self.kube is None or not self._paused

    def due(self) -> bool:
        """Whether :meth:`refresh` should read the peering objects now."""
        return self.kube is not None and time.monotonic() - self._read_at >= self.every

    def refresh(self) -> None:
        """Read the peering objects (blocking: call it from a thread) and decide."""
        if self.kube is None:
            return
        self._read_at = time.monotonic()
        first = not self._ever_read
        try:
            self._statuses = self._read()
            self._ever_read = True
        except Exception as exc:
            # Keep the last answer: a blip in the API server neither starts a paused operator
            # nor stops the active one.
            log.warning("peering not read", error=str(exc))
        if self._ever_read:
            was = self._paused
            now = datetime.now(UTC)
            self._paused = paused(
                self._statuses, identity=self.identity, priority=self.priority, now=now
            )
            if self._paused and (first or not was):
                log.info("run passes paused", reason="a live peer of higher or equal priority")
            elif was and not self._paused and not first:
                log.info("run passes resumed")
