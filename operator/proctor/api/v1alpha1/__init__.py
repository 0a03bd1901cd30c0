"""proctor.dev/v1alpha1."""

from proctor.api.names import API_VERSION, VERSION
from proctor.api.v1alpha1 import benchmarksuite, evalrun
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuite, BenchmarkSuiteSpec
from proctor.api.v1alpha1.evalrun import EvalRun, EvalRunSpec, EvalRunStatus

EVALRUN_KIND = evalrun.KIND
EVALRUN_PLURAL = evalrun.PLURAL
SUITE_KIND = benchmarksuite.KIND
SUITE_PLURAL = benchmarksuite.PLURAL

__all__ = [
    "API_VERSION",
    "EVALRUN_KIND",
    "EVALRUN_PLURAL",
    "SUITE_KIND",
    "SUITE_PLURAL",
    "VERSION",
    "BenchmarkSuite",
    "BenchmarkSuiteSpec",
    "EvalRun",
    "EvalRunSpec",
    "EvalRunStatus",
]
