"""How many workers a run's hard topology spread constraints let the scheduler place.

Pure. The scheduler places pods one at a time and refuses a node when, for a DoNotSchedule
constraint, the node's domain would then hold more than ``maxSkew`` workers above the emptiest
domain. Every node that counts for the constraint is a domain member, a full node too (as
Kubernetes counts them: the nodes that match the workers' node affinity and whose taints they
tolerate, and that carry every constraint's key). So a full zone holds the others down, and a
zone whose nodes are all busy leaves the others at ``maxSkew`` each. :func:`spread_limit`
places workers the same way, one at a time, each where its domains are emptiest, until the
wanted number is placed or no node may take one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from proctor.api.v1alpha1.placement import TopologySpread


@dataclass(frozen=True)
class SpreadLimit:
    """What the constraints allow: ``workers`` in all (the run's placed ones included) when
    they bind, None when they let the wanted number be placed; ``message`` says which binds."""

    workers: int | None
    message: str = ""


@dataclass(frozen=True)
class _Counts:
    """Workers per domain, for each hard constraint."""

    constraints: tuple[TopologySpread, ...]
    per_domain: tuple[dict[str, int], ...]

    def floors(self) -> tuple[int, ...]:
        """The emptiest domain's count per constraint (0 while fewer than minDomains)."""
        return tuple(
            0 if len(counts) < (c.min_domains or 0) else min(counts.values(), default=0)
            for c, counts in zip(self.constraints, self.per_domain, strict=True)
        )

    def refusal(self, labels: Mapping[str, str], floors: Sequence[int]) -> int:
        """Index of the first constraint that refuses a worker on a node with ``labels``
        (-1: none refuses)."""
        for i, c in enumerate(self.constraints):
            if self.per_domain[i][labels[c.topology_key]] + 1 - floors[i] > c.max_skew:
                return i
        return -1

    def load(self, labels: Mapping[str, str]) -> int:
        return sum(
            counts[labels[c.topology_key]]
            for c, counts in zip(self.constraints, self.per_domain, strict=True)
        )

    def add(self, labels: Mapping[str, str]) -> None:
        for c, counts in zip(self.constraints, self.per_domain, strict=True):
            counts[labels[c.topology_key]] += 1


def hard_constraints(constraints: Sequence[TopologySpread]) -> tuple[TopologySpread, ...]:
    """The constraints the scheduler enforces (DoNotSchedule); the others only score."""
    return tuple(c for c in constraints if c.when_unsatisfiable == "DoNotSchedule")


def spread_limit(
    constraints: Sequence[TopologySpread],
    domains: Mapping[str, Mapping[str, str]],
    room: Mapping[str, int],
    placed: Mapping[str, int],
    want: int,
) -> SpreadLimit:
    """How many of ``want`` workers the hard constraints let the scheduler place.

    ``domains``: the labels of each node that counts for the constraints (see the module doc);
    ``room``: workers each node holds in all by its free resources (the run's own included);
    ``placed``: the run's workers bound to each node now.
    """
    hard = hard_constraints(constraints)
    if not hard:
        return SpreadLimit(None)
    keys = {c.topology_key for c in hard}
    members = {n: labels for n, labels in domains.items() if keys <= labels.keys()}
    counts = _Counts(
        hard, tuple({labels[c.topology_key]: 0 for labels in members.values()} for c in hard)
    )
    for name, labels in members.items():
        for _ in range(placed.get(name, 0)):
            counts.add(labels)
    total = sum(placed.values())
    left = {n: room.get(n, 0) - placed.get(n, 0) for n in sorted(members)}
    while total < want:
        best, refused = _next_node(counts, members, left)
        if best is None:
            return SpreadLimit(total, _why(hard, counts, refused, total, no_members=not members))
        counts.add(members[best])
        left[best] -= 1
        total += 1
    return SpreadLimit(None)


def _next_node(
    counts: _Counts, members: Mapping[str, Mapping[str, str]], left: Mapping[str, int]
) -> tuple[str | None, set[int]]:
    """The node the next worker goes to (its domains the emptiest; the first by name on a
    tie), or None and the constraints that refused every node with room."""
    floors = counts.floors()
    refused: set[int] = set()
    best: str | None = None
    best_load = 0
    for name, free in left.items():
        if free <= 0:
            continue
        verdict = counts.refusal(members[name], floors)
        if verdict >= 0:
            refused.add(verdict)
            continue
        load = counts.load(members[name])
        if best is None or load < best_load:
            best, best_load = name, load
    return best, refused


def _why(
    hard: Sequence[TopologySpread],
    counts: _Counts,
    refused: set[int],
    total: int,
    *,
    no_members: bool,
) -> str:
    keys = ", ".join(sorted({c.topology_key for c in hard}))
    if no_members:
        return f"spread allows {total}: no eligible node carries the label(s) {keys}"
    if not refused:
        # Room is left only on nodes the constraints cannot count.
        return f"spread allows {total}: the nodes with room lack the label(s) {keys}"
    i = min(refused)
    c = hard[i]
    shown = ", ".join(f"{d}={n}" for d, n in sorted(counts.per_domain[i].items()))
    extra = f", minDomains {c.min_domains}" if c.min_domains else ""
    return f"spread allows {total}: {c.topology_key} maxSkew {c.max_skew}{extra} ({shown})"
