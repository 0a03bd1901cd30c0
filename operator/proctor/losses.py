"""Worker pods lost, each counted once: *disruptions* (preempted, evicted, or vanished with
their node: replaced, never charged) apart from *failures* (crash, OOM, image error: charged to
the failure budget). EvalRun and BenchmarkSuite passes both count with :func:`count_losses`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from proctor.observe import WorkerObs


@dataclass
class LossLedger:
    """What earlier passes saw: pods already counted, the node each live pod was last seen on
    (and whether that node was spot), pods the operator deleted itself, spot disruptions."""

    counted: set[str] = field(default_factory=set)
    known: dict[str, tuple[str, bool]] = field(default_factory=dict)
    deleted: set[str] = field(default_factory=set)
    spot_disruptions: int = 0


@dataclass(frozen=True)
class Losses:
    failures: int
    disruptions: int
    spot_disruptions: int
    notes: tuple[str, ...]


def count_losses(
    pods: Sequence[WorkerObs], ledger: LossLedger, spot_nodes: Collection[str] = ()
) -> Losses:
    """New failures and disruptions since the last pass (updates ``ledger``).

    A pod is spot when its node is in ``spot_nodes`` now *or was when the pod was last seen*: a
    reclaimed node is often gone from the cluster by the pass that notices its pods are lost.
    """
    failures = disruptions = spot = 0
    notes: list[str] = []
    present = {p.uid for p in pods}
    for p in pods:
        on_spot = p.node in spot_nodes or ledger.known.get(p.uid, ("", False))[1]
        if p.lost and p.uid not in ledger.counted and p.uid not in ledger.deleted:
            ledger.counted.add(p.uid)
            if p.lost == "disruption":
                disruptions += 1
                spot += on_spot
            else:
                failures += 1
            notes.append(f"{p.name}: {p.lost} ({p.why})")
        ledger.known[p.uid] = (p.node, on_spot)
    for uid, (node, on_spot) in list(ledger.known.items()):
        if uid in present:
            continue
        del ledger.known[uid]
        if uid not in ledger.counted and uid not in ledger.deleted:
            ledger.counted.add(uid)
            disruptions += 1
            spot += on_spot
            notes.append(f"pod {uid} on {node or 'no node'} vanished: disruption")
    ledger.spot_disruptions += spot
    return Losses(failures, disruptions, spot, tuple(notes))
