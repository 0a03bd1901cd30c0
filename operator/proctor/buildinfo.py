"""``proctor_build_info``: the Proctor version and the Python a process runs, for Prometheus.

The operator and every worker register it, so a dashboard or an alert can tell which release is
running where (a rollout half done shows two versions)."""

from __future__ import annotations

import platform

from prometheus_client import CollectorRegistry, Gauge

from proctor import __version__

BUILD_INFO = "proctor_build_info"


def register_build_info(registry: CollectorRegistry) -> Gauge:
    """Add ``proctor_build_info{version, python} 1`` to ``registry``."""
    info = Gauge(
        BUILD_INFO,
        "Proctor's version and the Python it runs on; always 1.",
        ["version", "python"],
        registry=registry,
    )
    info.labels(__version__, platform.python_version()).set(1)
    return info
