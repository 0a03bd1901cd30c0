"""How the operator process is set up for kopf: its settings (Events, finalizer, progress and
diff-base storage, peering, threads), the session kopf's watches use, and the C library's
malloc arenas. The handlers are in :mod:`proctor.controller.evalrun` and
:mod:`proctor.controller.suite`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Sequence, Set
from typing import Any

import aiohttp
import kopf

from proctor.api.names import FINALIZER, GROUP
from proctor.cluster.client import login as kube_login
from proctor.controller.peering import is_pattern

KOPF_THREADS = 4
"""Threads for kopf's sync handlers: BenchmarkSuite passes and EvalRun finalizers."""


class DiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's diff-base annotation (the spec last handled), kept only for the kinds whose
    handlers diff it: BenchmarkSuites (create, update and resume handlers). An EvalRun has none
    (its passes are scheduled from watch events and ``metadata.generation``) and pods and
    nodes are only indexed, so for them kopf neither writes the annotation (an API write and a
    watch event fewer per run) nor builds the essence it would diff, a deep copy of the whole
    body with its managedFields on every watch event: a tenth of the operator's CPU with a
    thousand new runs."""

    def __init__(self, *, only_for: Set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.only_for = frozenset(only_for)

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        if body.get("kind") not in self.only_for:
            return kopf.BodyEssence()
        return super().build(body=body, extra_fields=extra_fields)

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if body.get("kind") not in self.only_for:
            return None
        return super().fetch(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        if body.get("kind") in self.only_for:
            super().store(body=body, patch=patch, essence=essence)


def configure(settings: kopf.OperatorSettings, *, peering: bool) -> None:
    """Operator settings: quiet Events, our finalizer, progress in annotations (the status
    schema is strict, so kopf must not write ``status.kopf``), peering only when asked."""
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = DiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration", only_for={"BenchmarkSuite"}
    )
    settings.peering.standalone = not peering
    settings.peering.mandatory = peering
    settings.peering.name = "proctor"
    settings.watching.server_timeout = 300
    settings.execution.max_workers = KOPF_THREADS
    # A suite being deleted waits for its timer to stop. A pass under way when the deletion
    # arrives is let finish for up to 2 s, then polled every second; kopf's defaults (a few
    # event-loop cycles, then a poll every 60 s) would hold the suite, finalizer and all, for
    # up to a minute.
    settings.background.instant_exit_timeout = 2.0
    settings.background.cancellation_polling = 1.0


KOPF_REQUEST_CONNECTIONS = 32
"""Connections kopf may hold for requests (finalizer patches, Events of suites), beside one per
watch stream. kopf's own session has no limit: a thousand new runs made it open a connection
for each finalizer patch under way, 128 at once, each with its TLS buffers (about 100 MB of the
operator's RSS)."""


def kopf_connection_limit(namespaces: Sequence[str]) -> int:
    """aiohttp's connection limit for kopf (pure): the watch streams (EvalRuns, suites, pods
    and the peering object per namespace; nodes, CRDs, namespaces and the cluster's peering
    object) hold one each for as long as they run, so the limit leaves room for all of them;
    0 (no limit) when namespaces are patterns, whose matches kopf watches as they appear."""
    if any(is_pattern(ns) for ns in namespaces):
        return 0
    streams = 4 * max(1, len(namespaces)) + 4
    return streams + KOPF_REQUEST_CONNECTIONS


def kopf_session(settings: kopf.OperatorSettings, namespaces: Sequence[str]) -> kopf.AiohttpSession:
    """kopf's session: the same credentials as the operator's own client (ServiceAccount, else
    kubeconfig), on connections that are bounded (see :func:`kopf_connection_limit`)."""
    info = kube_login(trust_env=settings.networking.trust_env)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=kopf_connection_limit(namespaces), ssl=info.as_ssl_context()
        ),
        headers={**info.as_http_headers(), "User-Agent": "proctor-operator (kopf)"},
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        aiohttp_session=session, server=info.server, default_namespace=info.default_namespace
    )


MALLOC_ARENAS = 2
"""glibc gives each thread that allocates its own arena (up to 8 per core); with 32 handler
threads that is dozens of mostly empty arenas, which made much of the operator's RSS. Two are
plenty for threads that mostly wait on the network."""


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """``mallopt(M_ARENA_MAX, arenas)`` before any handler thread starts; False where the C
    library is not glibc (nothing changes there). ``MALLOC_ARENA_MAX`` in the environment wins."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_arena_max = -8  # <malloc.h>
    return bool(mallopt(m_arena_max, arenas))
