"""proctor.dev/v1alpha1."""

from proctor.api.v1alpha1.base import API_VERSION, VERSION
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuite, BenchmarkSuiteSpec
from proctor.api.v1alpha1.evalrun import EvalRun, EvalRunSpec, EvalRunStatus

__all__ = [
    "API_VERSION",
    "VERSION",
    "BenchmarkSuite",
    "BenchmarkSuiteSpec",
    "EvalRun",
    "EvalRunSpec",
    "EvalRunStatus",
]
