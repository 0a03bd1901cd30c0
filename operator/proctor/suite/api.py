"""The BenchmarkSuite's own API calls: its status, and reading another suite (a baseline)."""

from __future__ import annotations

from typing import Any

from proctor.api.names import GROUP, VERSION
from proctor.api.v1alpha1.benchmarksuite import PLURAL
from proctor.cluster.api import ClusterApi
from proctor.cluster.client import custom_path


class SuiteApi(ClusterApi):
    """:class:`ClusterApi` for BenchmarkSuites: the suite's status, and reading another suite
    (a baseline)."""

    plural = PLURAL

    def get_suite(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The BenchmarkSuite object; None when it does not exist."""
        return self.kube.get(custom_path(GROUP, VERSION, namespace, PLURAL, name))
