"""EvalRun status: phase, counts, the plan, the result summary and what else the operator
reports (the spec's models are in :mod:`proctor.api.v1alpha1.evalrun`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from proctor.api.v1alpha1.base import (
    ApiModel,
    Condition,
    LossLedgerStatus,
)
from proctor.api.v1alpha1.cost import CostStatus

Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Suspended", "Cancelled"]
TERMINAL_PHASES: frozenset[str] = frozenset({"Succeeded", "Failed", "Cancelled"})
"""Phases a run never leaves: its workers are gone and its status is final."""
LimitName = Literal[
    "cpu",
    "memory",
    "gpu",
    "backlog",
    "max",
    "min",
    "quota",
    "kueue",
    "nodes",
    "pods",
    "spread",
    "done",
    "suspended",
    "cancelled",
]


class CaseCounts(ApiModel):
    """Case and batch counts."""

    total: int = Field(default=0, description="Cases in the run.")
    completed: int = Field(default=0, description="Cases with a recorded result.")
    passed: int = Field(default=0, description="Completed cases whose checks passed.")
    failed: int = Field(default=0, description="Completed cases whose checks failed.")
    errored: int = Field(default=0, description="Cases whose task raised or timed out.")
    in_flight: int = Field(default=0, description="Cases in batches claimed by workers.")
    dead_lettered: int = Field(
        default=0, description="Cases in batches that exhausted their attempts."
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_retried(cls, data: Any) -> Any:
        # Operators before this one wrote a `retried` that was always 0: the operator cannot
        # see redeliveries (the queue's depth does not carry them, results do not record
        # them), so the field is gone; statuses that still hold it are read without it.
        if isinstance(data, dict) and "retried" in data:
            return {k: v for k, v in data.items() if k != "retried"}
        return data


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

    replicas: int = Field(description="Planned workers (with Kueue: those it admitted).")
    requested: int | None = Field(
        default=None,
        description="Workers asked of Kueue when it admitted fewer (boundBy kueue); the rest "
        "wait, gated, in its queue.",
    )
    cluster_queue: str | None = Field(
        default=None, description="The Kueue ClusterQueue behind the run's LocalQueue."
    )
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


TOP_VIOLATIONS = 10
"""How many violation names ``status.result.topViolations`` lists."""
FIRST_FAILING = 10
"""How many case indexes ``status.result.firstFailing`` lists."""


class ViolationCount(ApiModel):
    """A violated property and the number of cases that violated it."""

    name: str = Field(
        description="The violation's name; a comparison's are baseline/NAME and candidate/NAME."
    )
    count: int = Field(ge=0, description="Cases with this violation.")


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
    not_evaluated: int | None = Field(
        default=None,
        ge=0,
        description="Cases without a record when the run ended (dead-lettered, never run, "
        "or left by an early stop); the reason says why.",
    )
    top_violations: list[ViolationCount] | None = Field(
        default=None,
        max_length=TOP_VIOLATIONS,
        description=f"The most frequent violations with their counts, most first (at most "
        f"{TOP_VIOLATIONS}).",
    )
    first_failing: list[int] | None = Field(
        default=None,
        max_length=FIRST_FAILING,
        description=f"The smallest indexes of cases that failed or errored (at most "
        f"{FIRST_FAILING}).",
    )
    results_uri: str | None = Field(
        default=None,
        description="The merged results, one Parquet file with one row per case "
        "(docs/datasets.md#results), written when the run ends; before that, the folder of "
        "per-range objects.",
    )
    outputs_uri: str | None = Field(
        default=None,
        description="A batch-scoring run's outputs (a dataset, kept outputs, no compare): "
        "Parquet partitioned like the input.",
    )


class CacheCounts(ApiModel):
    """Cases whose result came from the cache (hits) or was evaluated here (misses)."""

    hits: int = Field(default=0, ge=0, description="Results taken from the cache.")
    misses: int = Field(default=0, ge=0, description="Results evaluated by this run.")


class CacheStatus(CacheCounts):
    """The result cache's use by this run, over the cases recorded so far (docs/cache.md)."""

    baseline: CacheCounts | None = Field(
        default=None, description="The baseline side's hits and misses (with compare)."
    )
    candidate: CacheCounts | None = Field(
        default=None, description="The candidate side's hits and misses (with compare)."
    )
    uri: str | None = Field(default=None, description="Where the cache is.")
    read_only: bool | None = Field(
        default=None,
        description="True when the run's credentials cannot write the cache: it is only read "
        "(condition CacheReadOnly says why).",
    )


class EvalRunStatus(ApiModel):
    """Observed state of an EvalRun."""

    phase: Phase | None = Field(
        default=None,
        description="Pending, Running, Suspended, or once finished Succeeded, Failed or Cancelled.",
    )
    observed_generation: int | None = Field(
        default=None, description="The spec generation last acted upon."
    )
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, Progressing, Degraded, Succeeded, Failed, Suspended, Cancelled, "
        "Stalled.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    counts: CaseCounts | None = Field(default=None, description="Case counts.")
    progress_percent: float | None = Field(default=None, description="Completed share, 0-100.")
    cases_per_second: float | None = Field(default=None, description="Recent throughput.")
    eta_seconds: int | None = Field(default=None, description="Estimated seconds to finish.")
    eta: str | None = Field(
        default=None, description="Estimated time to finish, as a duration (3m20s); 0s once done."
    )
    workers: WorkerCounts | None = Field(default=None, description="Worker pods.")
    plan: Plan | None = Field(default=None, description="The current plan.")
    disruptions: int | None = Field(
        default=None, description="Workers lost to preemption or eviction (not failures)."
    )
    spot_fallback: bool | None = Field(
        default=None, description="Workers moved to on-demand nodes after disruptions."
    )
    ledger: LossLedgerStatus | None = Field(
        default=None, description="Lost-worker bookkeeping that survives an operator restart."
    )
    last_checkpoint: CheckpointStatus | None = Field(
        default=None, description="The last run checkpoint."
    )
    result: ResultSummary | None = Field(default=None, description="Outcome.")
    cache: CacheStatus | None = Field(
        default=None, description="Result cache hits and misses (spec.cache not off)."
    )
    cost: CostStatus | None = Field(
        default=None, description="Node-seconds and estimated cost so far; final once finished."
    )
    last_progress_time: str | None = Field(
        default=None, description="When the completed count last grew; drives Stalled."
    )
    start_time: str | None = Field(default=None, description="When work started.")
    active_since: str | None = Field(
        default=None,
        description="Where activeDeadlineSeconds counts from: the first pass, moved on by the "
        "length of each suspension when the run resumes.",
    )
    completion_time: str | None = Field(default=None, description="When the run finished.")
