"""Autoscaling decisions: move the worker count toward the plan.

Up at once; down only after demand has stayed lower for the stabilization window, and only by
removing idle workers, never one that holds a lease. Pure: the caller supplies the clock.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class WorkerPod:
    """A worker pod as the scaler sees it."""

    name: str
    created: datetime
    ready: bool = False
    scheduled: bool = True
    terminating: bool = False
    finished: bool = False


@dataclass(frozen=True)
class ScaleState:
    """What the scaler remembers between passes."""

    lower_since: datetime | None = None


@dataclass(frozen=True)
class ScaleDecision:
    """Pods to create and delete, and the state for the next pass."""

    desired: int
    create: int
    delete: tuple[str, ...]
    state: ScaleState
    reason: str
    held: int = 0


def active(pods: Sequence[WorkerPod]) -> list[WorkerPod]:
    """Pods that count toward the replica count: not finished, not being deleted."""
    return [p for p in pods if not p.terminating and not p.finished]


def decide(
    desired: int,
    pods: Sequence[WorkerPod],
    busy: Collection[str],
    state: ScaleState,
    *,
    now: datetime,
    stabilization_seconds: float,
) -> ScaleDecision:
    """One scaling step. ``busy`` names the workers holding a lease right now."""
    live = active(pods)
    current = len(live)
    if desired > current:
        return ScaleDecision(desired, desired - current, (), ScaleState(), "scale up")
    if desired == current:
        return ScaleDecision(desired, 0, (), ScaleState(), "steady")
    lower_since = state.lower_since or now
    waited = (now - lower_since).total_seconds()
    if waited < stabilization_seconds:
        return ScaleDecision(
            desired,
            0,
            (),
            ScaleState(lower_since),
            f"scale down in {stabilization_seconds - waited:.0f}s if demand stays lower",
        )
    idle = [p for p in live if p.name not in busy]
    # Unscheduled and not-ready pods do no work: remove them first, then the newest idle ones.
    unstarted = [p for p in idle if not (p.scheduled and p.ready)]
    started = sorted((p for p in idle if p.scheduled and p.ready), key=lambda p: p.created)
    order = unstarted + list(reversed(started))
    excess = current - desired
    victims = tuple(p.name for p in order[:excess])
    held = excess - len(victims)
    reason = f"scale down by {len(victims)}"
    if held:
        reason += f"; {held} busy workers kept until they finish their batch"
    return ScaleDecision(desired, 0, victims, ScaleState(lower_since), reason, held=held)


def busy_workers(
    names: Collection[str],
    *,
    holders: Collection[str] | None,
    waiting: int,
    in_flight: int,
) -> frozenset[str]:
    """The workers scale-down must keep, from what the queue says.

    Where the queue names its lease holders and nothing waits, exactly the holders are busy:
    the others have nothing to claim, so removing them stops no batch. Where entries wait, an
    idle worker is about to claim one, and where the queue cannot name holders (SQS), nobody
    can tell who is idle: then every worker counts as busy while any lease is out.
    """
    if holders is not None and waiting == 0:
        return frozenset(n for n in names if n in holders)
    return frozenset(names) if in_flight > 0 else frozenset()
