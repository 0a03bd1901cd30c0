"""EvalRun: N cases of a task, spread over elastic, preemption-tolerant workers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from proctor.api.v1alpha1.base import (
    PROFILE_OR_RESOURCES,
    ApiModel,
    Condition,
    Duration,
    Entrypoint,
    EnvVar,
    FreeForm,
    Placement,
    ProfileName,
    QueueSpec,
    Resources,
    Rule,
    StorageSpec,
    exactly_one,
)

KIND = "EvalRun"
PLURAL = "evalruns"


class TaskSpec(ApiModel):
    """What a worker runs: a Python task (SDK) or any command speaking JSON lines."""

    entrypoint: Entrypoint | None = Field(
        default=None,
        description="`module:callable` returning a proctor.sdk Task, importable in the image.",
    )
    command: list[str] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="A command that reads a batch of cases as JSON lines on stdin and writes "
        "one JSON result per case on stdout, in any language.",
    )
    params: FreeForm | None = Field(
        default=None, description="Free-form parameters handed to the task."
    )

    rules = (
        exactly_one(
            "entrypoint",
            "command",
            "task needs exactly one of entrypoint (a Python task) or command",
        ),
    )


class DatasetSource(ApiModel):
    """A JSONL dataset: case i is line i."""

    uri: str = Field(
        description="s3://bucket/key of a JSONL object, or a local path for `proctor run`.",
        min_length=1,
        max_length=1024,
    )


class CasesSpec(ApiModel):
    """How many cases, and where they come from."""

    count: int = Field(ge=1, le=1_000_000_000, description="Number of cases to evaluate.")
    seed: int = Field(
        default=0, ge=0, description="Seed; case i is generated from (seed, i), reproducibly."
    )
    dataset: DatasetSource | None = Field(
        default=None, description="Read cases from a dataset instead of generating them."
    )


class Implementation(ApiModel):
    """One side of a comparison."""

    ref: str = Field(
        min_length=1,
        max_length=1024,
        description="`module:function` or a file path, resolved by the task in the image.",
    )
    params: FreeForm | None = Field(default=None, description="Parameters for this side.")


class CompareSpec(ApiModel):
    """Baseline against candidate, with an accept/reject decision."""

    baseline: Implementation = Field(description="The implementation in use today.")
    candidate: Implementation = Field(description="The implementation proposed to replace it.")
    min_delta: float = Field(
        default=0.0,
        ge=-1.0,
        le=1.0,
        description="Accept only if the lower bound of the interval of (candidate pass rate - "
        "baseline pass rate) is at least this. Negative values allow a non-inferiority margin.",
    )
    min_pass_rate: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Accept only if the candidate passes this often."
    )
    confidence_level: float = Field(
        default=0.95, ge=0.5, le=0.9999, description="Confidence level of the interval."
    )
    interval: Literal["newcombe", "wald"] = Field(
        default="newcombe",
        description="Interval for the difference of two proportions: newcombe (Wilson score "
        "hybrid, the default) or wald.",
    )


class EarlyStoppingSpec(ApiModel):
    """Stop as soon as the decision is statistically settled."""

    enabled: bool = Field(default=False, description="Turn early stopping on.")
    min_cases: int = Field(
        default=1000, ge=1, description="Never stop before this many cases are done."
    )
    check_every: int = Field(
        default=1000, ge=1, description="Look at the data after every this many cases."
    )


class WorkersSpec(ApiModel):
    """Bounds and targets for the elastic worker pool."""

    min: int = Field(default=0, ge=0, le=10_000, description="Workers kept while work remains.")
    max: int = Field(default=10, ge=1, le=10_000, description="Never more workers than this.")
    target_backlog_per_worker: int = Field(
        default=2,
        ge=1,
        le=1_000_000,
        description="Batches waiting per worker that the autoscaler aims for.",
    )
    failure_budget: int = Field(
        default=5,
        ge=0,
        le=1000,
        description="Worker failures (crashes, OOM, image errors; not disruptions) tolerated "
        "before the run fails.",
    )
    scale_down_stabilization: Duration = Field(
        default="30s", description="How long demand must stay lower before workers are removed."
    )

    rules = (
        Rule(
            cel="self.min <= self.max",
            message="workers.min must not exceed workers.max",
            check=lambda m: m.min <= m.max,
            field_path=".min",
        ),
    )


class BatchSpec(ApiModel):
    """Cases per batch; the worker adapts the size toward the target duration."""

    initial_size: int = Field(default=100, ge=1, le=1_000_000, description="First batch size.")
    min_size: int = Field(default=1, ge=1, le=1_000_000, description="Smallest batch size.")
    max_size: int = Field(default=10_000, ge=1, le=1_000_000, description="Largest batch size.")
    target_duration: Duration = Field(
        default="10s", description="Batch duration the adaptive sizing aims for."
    )

    rules = (
        Rule(
            cel="self.minSize <= self.initialSize && self.initialSize <= self.maxSize",
            message="batch sizes must satisfy minSize <= initialSize <= maxSize",
            check=lambda m: m.min_size <= m.initial_size <= m.max_size,
            field_path=".initialSize",
        ),
    )


class EvalRunSpec(ApiModel):
    """Desired state of an EvalRun."""

    image: str = Field(
        min_length=1, max_length=1024, description="Container image the workers run."
    )
    task: TaskSpec = Field(description="The task each worker runs.")
    cases: CasesSpec = Field(description="How many cases and where they come from.")
    compare: CompareSpec | None = Field(
        default=None, description="Compare a baseline and a candidate implementation."
    )
    early_stopping: EarlyStoppingSpec | None = Field(
        default=None, description="Stop when the decision is settled."
    )
    profile: ProfileName | None = Field(
        default=None,
        description="Worker size: micro (0.5 CPU/512Mi), small (1/1Gi), medium (2/2Gi), large "
        "(4/4Gi), xlarge (8/8Gi) or auto. Unset with no resources means auto.",
    )
    resources: Resources | None = Field(
        default=None, description="Explicit worker requests instead of a profile."
    )
    gpus: int = Field(default=0, ge=0, le=16, description="GPUs (nvidia.com/gpu) per worker.")
    workers: WorkersSpec | None = Field(default=None, description="Worker pool bounds.")
    placement: Placement | None = Field(default=None, description="Where workers may run.")
    queue: QueueSpec | None = Field(
        default=None, description="Work queue; unset: the operator's default."
    )
    storage: StorageSpec | None = Field(
        default=None, description="Results and checkpoints; unset: the operator's default."
    )
    batch: BatchSpec | None = Field(default=None, description="Batch sizing.")
    retries: int = Field(
        default=3, ge=1, le=100, description="Attempts per batch before it is dead-lettered."
    )
    case_timeout: Duration = Field(
        default="60s", description="A case running longer is recorded as errored (timeout)."
    )
    env: list[EnvVar] | None = Field(
        default=None, max_length=128, description="Environment for the task process."
    )
    service_account_name: str | None = Field(
        default=None, description="ServiceAccount for worker pods; unset: the namespace default."
    )
    suspend: bool = Field(
        default=False, description="Remove workers and pause; the queue and results are kept."
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the run this long after it finished."
    )
    active_deadline_seconds: int | None = Field(
        default=None, ge=1, description="Fail the run if it has not finished after this long."
    )

    rules = (PROFILE_OR_RESOURCES,)

    def profile_name(self) -> str:
        """The profile to plan with: explicit, or auto when nothing is set."""
        if self.resources is not None:
            return "custom"
        return self.profile or "auto"


Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"]
LimitName = Literal[
    "cpu", "memory", "gpu", "backlog", "max", "min", "quota", "nodes", "pods", "done", "suspended"
]


class CaseCounts(ApiModel):
    """Case and batch counts."""

    total: int = Field(default=0, description="Cases in the run.")
    completed: int = Field(default=0, description="Cases with a recorded result.")
    passed: int = Field(default=0, description="Completed cases whose checks passed.")
    failed: int = Field(default=0, description="Completed cases whose checks failed.")
    errored: int = Field(default=0, description="Cases whose task raised or timed out.")
    retried: int = Field(default=0, description="Batch attempts beyond the first.")
    in_flight: int = Field(default=0, description="Cases in batches claimed by workers.")
    dead_lettered: int = Field(
        default=0, description="Cases in batches that exhausted their attempts."
    )


class WorkerCounts(ApiModel):
    """Worker pods."""

    desired: int = Field(default=0, description="Replicas the autoscaler wants now.")
    ready: int = Field(default=0, description="Worker pods running and ready.")
    failures: int = Field(default=0, description="Worker failures charged to the budget.")


class PoolPlan(ApiModel):
    """Planned workers in one node pool."""

    name: str = Field(description="Pool name.")
    replicas: int = Field(description="Workers planned in the pool.")
    fit: int = Field(description="Workers the pool's nodes can hold.")


class Plan(ApiModel):
    """How many workers the cluster can hold and what bound the number."""

    replicas: int = Field(description="Planned workers.")
    fit: int = Field(description="Workers that fit on eligible nodes.")
    bound_by: LimitName = Field(description="The limit that bound the replicas.")
    profile: str = Field(description="Resolved profile name.")
    cpu: str = Field(description="CPU request per worker.")
    memory: str = Field(description="Memory request per worker.")
    gpus: int = Field(default=0, description="GPUs per worker.")
    eligible_nodes: int = Field(description="Nodes the workers may run on.")
    pools: list[PoolPlan] | None = Field(default=None, description="Per-pool plan.")
    message: str = Field(default="", description="Why the plan is what it is.")


class CheckpointStatus(ApiModel):
    """The last run-level checkpoint."""

    time: str = Field(description="When it was written (RFC 3339).")
    uri: str = Field(description="Where it is.")
    batches_done: int = Field(description="Batches recorded in it.")


class ResultSummary(ApiModel):
    """The run's outcome. Full results live in storage, never in the object."""

    pass_rate: float | None = Field(default=None, description="Pass rate (single task).")
    baseline_pass_rate: float | None = Field(default=None, description="Baseline pass rate.")
    candidate_pass_rate: float | None = Field(default=None, description="Candidate pass rate.")
    delta: float | None = Field(default=None, description="Candidate minus baseline pass rate.")
    delta_lower: float | None = Field(default=None, description="Lower bound of delta's interval.")
    delta_upper: float | None = Field(default=None, description="Upper bound of delta's interval.")
    decision: Literal["accept", "reject", "undecided"] | None = Field(
        default=None, description="accept or reject against the margin; undecided while running."
    )
    reason: str | None = Field(default=None, description="Why the decision is what it is.")
    early_stopped: bool | None = Field(
        default=None, description="The decision settled before every case ran."
    )
    results_uri: str | None = Field(default=None, description="Where the merged results are.")


class EvalRunStatus(ApiModel):
    """Observed state of an EvalRun."""

    phase: Phase | None = Field(default=None, description="Pending, Running, Succeeded, ...")
    observed_generation: int | None = Field(
        default=None, description="The spec generation last acted upon."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, Progressing, Degraded, Succeeded, Failed, Suspended, Stalled.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    counts: CaseCounts | None = Field(default=None, description="Case counts.")
    progress_percent: float | None = Field(default=None, description="Completed share, 0-100.")
    cases_per_second: float | None = Field(default=None, description="Recent throughput.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds to finish.")
    workers: WorkerCounts | None = Field(default=None, description="Worker pods.")
    plan: Plan | None = Field(default=None, description="The current plan.")
    disruptions: int | None = Field(
        default=None, description="Workers lost to preemption or eviction (not failures)."
    )
    spot_fallback: bool | None = Field(
        default=None, description="Workers moved to on-demand nodes after disruptions."
    )
    last_checkpoint: CheckpointStatus | None = Field(
        default=None, description="The last run checkpoint."
    )
    result: ResultSummary | None = Field(default=None, description="Outcome.")
    last_progress_time: str | None = Field(
        default=None, description="When the completed count last grew; drives Stalled."
    )
    start_time: str | None = Field(default=None, description="When work started.")
    completion_time: str | None = Field(default=None, description="When the run finished.")


class EvalRun(ApiModel):
    """An evaluation run."""

    api_version: Literal["proctor.dev/v1alpha1"] = Field(default="proctor.dev/v1alpha1")
    kind: Literal["EvalRun"] = Field(default="EvalRun")
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: EvalRunSpec
    status: EvalRunStatus | None = None
