"""BenchmarkSuite: benchmarks x variants x repetitions, measured in isolation."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from proctor.api.cron import CronError, parse_cron
from proctor.api.v1alpha1.base import (
    PROFILE_OR_RESOURCES,
    ApiModel,
    Compression,
    Condition,
    DnsLabel,
    Duration,
    LossLedgerStatus,
    Placement,
    ProfileName,
    QueueSpec,
    Resources,
    StorageSpec,
    exactly_one,
    kind_of,
    plural_of,
)
from proctor.api.v1alpha1.env import EnvVar

DEFAULT_CONFIDENCE_LEVEL = 0.95
"""The confidence level of a suite's intervals, with or without a baseline to compare to."""

_NAMED_LIST: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
}


class Benchmark(ApiModel):
    """One benchmark: a command measured over repetitions."""

    name: DnsLabel = Field(description="Benchmark name, unique in the suite.")
    command: list[str] = Field(
        min_length=1, max_length=64, description="The command to measure (argv, no shell)."
    )
    args: list[str] | None = Field(
        default=None, max_length=64, description="Arguments appended to the command."
    )
    image: str | None = Field(
        default=None, max_length=1024, description="Image; unset: the suite's image."
    )
    profile: ProfileName | None = Field(default=None, description="Pod size profile.")
    resources: Resources | None = Field(default=None, description="Explicit requests.")
    warmup: int = Field(default=1, ge=0, le=100, description="Unrecorded runs before measuring.")
    repetitions: int = Field(default=5, ge=1, le=10_000, description="Measured runs per variant.")
    timeout: Duration = Field(default="10m", description="A repetition running longer fails.")
    env: list[EnvVar] | None = Field(default=None, max_length=128, description="Environment.")

    rules = (PROFILE_OR_RESOURCES,)


class Variant(ApiModel):
    """A variant every benchmark is measured under (e.g. git and jj)."""

    name: DnsLabel = Field(description="Variant name, unique in the suite.")
    image: str | None = Field(default=None, max_length=1024, description="Image override.")
    env: list[EnvVar] | None = Field(
        default=None, max_length=128, description="Environment added for this variant."
    )
    args: list[str] | None = Field(
        default=None, max_length=64, description="Arguments appended for this variant."
    )


class BaselineSpec(ApiModel):
    """An earlier result to compare against."""

    suite_run: str | None = Field(
        default=None, description="Name of an earlier BenchmarkSuite in this namespace."
    )
    results_uri: str | None = Field(
        default=None, description="s3:// or local URI of a stored suite result."
    )
    threshold: float = Field(
        default=0.10,
        gt=0.0,
        le=10.0,
        description="Relative slowdown of the median that counts as a regression (0.10 = 10%).",
    )
    confidence_level: float = Field(
        default=DEFAULT_CONFIDENCE_LEVEL,
        ge=0.5,
        le=0.9999,
        description="Confidence level of the comparison.",
    )

    rules = (
        exactly_one(
            "suite_run", "results_uri", "baseline needs exactly one of suiteRun or resultsUri"
        ),
    )


class ScheduleSpec(ApiModel):
    """Re-run the suite on a schedule."""

    cron: str = Field(
        min_length=9,
        max_length=128,
        description="Cron expression (five fields, UTC), e.g. `0 3 * * *`.",
        pattern=r"^\S+\s+\S+\s+\S+\s+\S+\s+\S+$",
    )
    history_limit: int = Field(
        default=10,
        ge=1,
        le=1000,
        description="Finished runs kept, summarized in status.history and with their records "
        "and reports in storage; older ones are deleted.",
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        try:
            parse_cron(value)
        except CronError as exc:
            raise PydanticCustomError("cron", "{message}", {"message": str(exc)}) from exc
        return value


CANCEL_IS_ONE_WAY = (
    "!(has(oldSelf.cancel) && oldSelf.cancel) || (has(self.cancel) && self.cancel)",
    "spec.cancel cannot be undone: a cancelled suite stays cancelled; create a new "
    "BenchmarkSuite to run it again",
)
"""A transition rule: once true, ``spec.cancel`` stays true (removing it counts as unsetting)."""


class SuiteCacheSpec(ApiModel):
    """Reuse of unchanged cells' measurements across suite runs (docs/benchmarks.md, "Reusing
    unchanged cells")."""

    reuse: Literal["none", "unchanged"] = Field(
        default="none",
        description="unchanged: a cell whose fingerprint (benchmark and variant, image, "
        "command and arguments, environment, warmup, repetitions, timeout, profile or "
        "resources, isolation and placement) matches a cell measured before, with every "
        "repetition succeeding, takes that measurement and is not run again; none: every cell "
        "is measured (and what it measures is still written to the cache for later runs).",
    )
    uri: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description="Where the cache lives: an s3:// prefix (read and written with the "
        "suite's storage credentials), or a local folder for `proctor run`; suites naming the "
        "same URI share it. Unset: `_suite-cache/` in the suite's namespace folder of its "
        "storage, shared by the namespace's suites on that storage.",
    )


class BenchmarkSuiteSpec(ApiModel):
    """Desired state of a BenchmarkSuite."""

    image: str = Field(min_length=1, max_length=1024, description="Default image.")
    benchmarks: list[Benchmark] = Field(
        min_length=1, max_length=100, description="Benchmarks.", json_schema_extra=_NAMED_LIST
    )
    variants: list[Variant] = Field(
        min_length=1, max_length=20, description="Variants.", json_schema_extra=_NAMED_LIST
    )
    isolation: Literal["exclusive", "spread", "shared"] = Field(
        default="exclusive",
        description="exclusive: no two benchmark pods of any suite share a node; spread: "
        "prefer different nodes; shared: no constraint.",
    )
    profile: ProfileName | None = Field(default=None, description="Default pod size profile.")
    baseline: BaselineSpec | None = Field(default=None, description="Compare to an earlier run.")
    schedule: ScheduleSpec | None = Field(default=None, description="Optional cron schedule.")
    placement: Placement = Field(default_factory=Placement, description="Where benchmark pods run.")
    queue: QueueSpec | None = Field(default=None, description="Work queue.")
    storage: StorageSpec | None = Field(default=None, description="Results and reports.")
    max_parallel: int = Field(
        default=10, ge=1, le=1000, description="Benchmark pods running at once."
    )
    failure_budget: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Benchmark pod failures (crashes, OOM, image errors; not disruptions and "
        "not failing repetitions, which are recorded) tolerated before the run fails.",
    )
    suspend: bool = Field(default=False, description="Pause the suite.")
    cancel: bool = Field(
        default=False,
        description="Cancel the suite, for good: no cell is started any more, running "
        "benchmark pods are removed and the cell queues deleted, the repetitions already "
        "recorded are kept (with a report of them), and the suite ends in phase Cancelled; a "
        "schedule fires no more. Cannot be set back to false; `proctor cancel suite/NAME` "
        "sets it.",
    )
    cache: SuiteCacheSpec | None = Field(
        default=None,
        description="Write measured cells to a cache and, with reuse: unchanged, reuse "
        "unchanged cells instead of measuring them again. Unset: no cache is read or written.",
    )

    rules = ()
    transition_rules = (CANCEL_IS_ONE_WAY,)

    def lease_seconds(self) -> float:
        """How long a claimed repetition stays leased, on the suite's queue or the default one."""
        return QueueSpec.lease_seconds_of(self.queue)

    def compression(self) -> Compression:
        """How the suite's objects are compressed, in its storage or the default one."""
        return StorageSpec.compression_of(self.storage)

    def confidence_level(self) -> float:
        """The confidence level of every interval of the suite (the baseline's, if it has one)."""
        return self.baseline.confidence_level if self.baseline else DEFAULT_CONFIDENCE_LEVEL


Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended", "Cancelled"]


class CellSummary(ApiModel):
    """Statistics of one benchmark x variant cell (seconds of wall time)."""

    benchmark: str = Field(description="Benchmark name.")
    variant: str = Field(description="Variant name.")
    completed: int = Field(default=0, description="Repetitions recorded.")
    total: int = Field(default=0, description="Repetitions planned.")
    failed: int = Field(default=0, description="Repetitions that exited non-zero or timed out.")
    mean: float | None = Field(default=None, description="Mean wall time.")
    stddev: float | None = Field(default=None, description="Standard deviation.")
    min: float | None = Field(default=None, description="Minimum.")
    p50: float | None = Field(default=None, description="Median.")
    p95: float | None = Field(default=None, description="95th percentile.")
    p99: float | None = Field(default=None, description="99th percentile.")
    max: float | None = Field(default=None, description="Maximum.")
    mean_ci: list[float] | None = Field(default=None, description="Interval of the mean.")
    median_ci: list[float] | None = Field(default=None, description="Interval of the median.")
    regression: bool | None = Field(default=None, description="Slower than the baseline.")
    reused_from: str | None = Field(
        default=None,
        description="Set when the cell was not measured by this run but reused from the "
        "cache (spec.cache.reuse: unchanged): the suite run that measured it, "
        "`namespace/suite/runId`.",
    )


class Regression(ApiModel):
    """A cell found slower than its baseline."""

    benchmark: str = Field(description="Benchmark name.")
    variant: str = Field(description="Variant name.")
    ratio: float = Field(description="Median now ÷ median in the baseline.")
    ratio_ci: list[float] = Field(description="Interval of the ratio.")


class SuiteRunSummary(ApiModel):
    """One finished run of the suite, as kept in status.history."""

    run_id: str = Field(description="The run's id (also its storage prefix).")
    phase: Phase = Field(description="Succeeded, Failed or Cancelled.")
    start_time: str | None = Field(default=None, description="When the run started.")
    completion_time: str | None = Field(default=None, description="When it finished.")
    completed: int = Field(default=0, description="Repetitions recorded.")
    total: int = Field(default=0, description="Repetitions planned.")
    regression_count: int | None = Field(default=None, description="Regressions found.")
    disruptions: int = Field(default=0, description="Benchmark pods lost to disruptions.")
    failures: int = Field(default=0, description="Benchmark pods that failed.")
    report_uri: str | None = Field(default=None, description="The run's report.")
    results_uri: str | None = Field(default=None, description="The run's records.")


class BenchmarkSuiteStatus(ApiModel):
    """Observed state of a BenchmarkSuite."""

    phase: Phase | None = Field(
        default=None,
        description="Pending, Running, Suspended, or once a run ended Succeeded, Failed or "
        "Cancelled.",
    )
    observed_generation: int | None = Field(default=None, description="Generation acted upon.")
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, Progressing, Degraded, Succeeded, Failed, Suspended, Cancelled, "
        "Regressed.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    progress_percent: float | None = Field(default=None, description="Repetitions done, 0-100.")
    cells: list[CellSummary] | None = Field(default=None, description="Per-cell statistics.")
    regressions: list[Regression] | None = Field(default=None, description="Regressions found.")
    regression_count: int | None = Field(default=None, description="Number of regressions.")
    disruptions: int | None = Field(
        default=None,
        description="Benchmark pods lost to preemption, eviction or their node going away; "
        "their repetitions are re-run. Not failures.",
    )
    failures: int | None = Field(
        default=None,
        description="Benchmark pods that failed (crash, OOM, image error), against "
        "spec.failureBudget.",
    )
    ready_pods: int | None = Field(
        default=None,
        description="Benchmark pods of the current run that are ready; 0 once it has finished.",
    )
    ledger: LossLedgerStatus | None = Field(
        default=None,
        description="The current run's lost-pod bookkeeping, which survives an operator restart.",
    )
    run_id: str | None = Field(
        default=None, description="The current (or last) run; each scheduled fire starts one."
    )
    report_uri: str | None = Field(default=None, description="Where the report is.")
    results_uri: str | None = Field(
        default=None,
        description="Where the run's records are; what another suite's baseline.suiteRun reads.",
    )
    baseline_uri: str | None = Field(
        default=None, description="The results the run was compared against."
    )
    last_schedule_time: str | None = Field(default=None, description="Last scheduled run.")
    next_schedule_time: str | None = Field(default=None, description="Next scheduled run.")
    history: list[SuiteRunSummary] | None = Field(
        default=None,
        description="Finished runs, oldest first, at most schedule.historyLimit.",
    )
    start_time: str | None = Field(default=None, description="When the run started.")
    completion_time: str | None = Field(default=None, description="When it finished.")


class BenchmarkSuite(ApiModel):
    """A benchmark suite."""

    # A literal, not API_VERSION: a type cannot name a constant (test_names checks they agree).
    api_version: Literal["proctor.dev/v1alpha1"] = Field(default="proctor.dev/v1alpha1")
    kind: Literal["BenchmarkSuite"] = Field(default="BenchmarkSuite")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: BenchmarkSuiteSpec
    status: BenchmarkSuiteStatus | None = None


KIND = kind_of(BenchmarkSuite)
PLURAL = plural_of(BenchmarkSuite)
