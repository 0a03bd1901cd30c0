"""How many workers a run's hard topology spread constraints let the scheduler place.

Pure. The scheduler places pods one at a time and refuses a node when, for a DoNotSchedule
constraint, the node's domain would then hold more than ``maxSkew`` workers above the emptiest
domain. Every node that counts for the constraint is a domain member, a full node too (as
Kubernetes counts them: the nodes that match the workers' node affinity and whose taints they
tolerate, and that carry every constraint's key). So a full zone holds the others down, and a
zone whose nodes are all busy leaves the others at ``maxSkew`` each.

:func:`spread_limit` fills the domains the same way, in rounds: nodes in the same domain of
every constraint are one *cell*; each round takes the cells (emptiest first) and gives each as
many workers as every constraint allows against the emptiest domains now (kept up to date as
workers are added), until the wanted number is placed or a round places none, which is where
the scheduler refuses every node with room too. A round is linear in the cells.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from proctor.api.v1alpha1.placement import TopologySpread

Cell = tuple[str, ...]
"""A node's domain under each hard constraint, in the constraints' order."""


@dataclass(frozen=True)
class SpreadLimit:
    """What the constraints allow: ``workers`` in all (the run's placed ones included) when
    they bind, None when they let the wanted number be placed; ``message`` says which binds."""

    workers: int | None
    message: str = ""


class _Domains:
    """Workers per domain of one hard constraint, with the emptiest domain's count kept up to
    date as workers are added (a histogram of counts: the floor only rises)."""

    def __init__(self, constraint: TopologySpread, domains: set[str]) -> None:
        self.constraint = constraint
        self.counts = dict.fromkeys(domains, 0)
        self.histogram = {0: len(domains)}
        self._floor = 0
        # While fewer domains than minDomains exist, the emptiest counts as holding none.
        self.few = len(domains) < (constraint.min_domains or 0)

    @property
    def floor(self) -> int:
        return 0 if self.few else self._floor

    def add(self, domain: str, n: int) -> None:
        old = self.counts[domain]
        self.counts[domain] = old + n
        self.histogram[old] -= 1
        self.histogram[old + n] = self.histogram.get(old + n, 0) + 1
        while not self.histogram.get(self._floor):
            self._floor += 1

    def allowance(self, domain: str) -> int:
        return self.constraint.max_skew + self.floor - self.counts[domain]


@dataclass(frozen=True)
class _Counts:
    """Workers per domain, for each hard constraint."""

    per_constraint: tuple[_Domains, ...]

    def allowance(self, cell: Cell) -> tuple[int, int]:
        """How many more workers the cell may take now, and the constraint that allows the
        fewest."""
        room = [d.allowance(domain) for d, domain in zip(self.per_constraint, cell, strict=True)]
        tightest = min(range(len(room)), key=room.__getitem__)
        return room[tightest], tightest

    def load(self, cell: Cell) -> int:
        return sum(d.counts[x] for d, x in zip(self.per_constraint, cell, strict=True))

    def add(self, cell: Cell, n: int) -> None:
        for d, domain in zip(self.per_constraint, cell, strict=True):
            d.add(domain, n)


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
    cell_of = {
        n: tuple(labels[c.topology_key] for c in hard)
        for n, labels in domains.items()
        if keys <= labels.keys()
    }
    counts = _Counts(
        tuple(_Domains(c, {cell[i] for cell in cell_of.values()}) for i, c in enumerate(hard))
    )
    left: dict[Cell, int] = {}
    for name, cell in cell_of.items():
        counts.add(cell, placed.get(name, 0))
        left[cell] = left.get(cell, 0) + max(0, room.get(name, 0) - placed.get(name, 0))
    total = sum(placed.values())
    order = _order(counts, left)
    while total < want:
        added, refused = _round(counts, order, left, want - total)
        if not added:
            return SpreadLimit(total, _why(hard, counts, refused, total, no_members=not cell_of))
        total += added
    return SpreadLimit(None)


def _order(counts: _Counts, cells: Iterable[Cell]) -> list[Cell]:
    """The order the rounds take the cells in: emptiest first, as the scheduler's scoring
    prefers them, and taking turns between the domains of the coarsest constraint (a zone's
    cells one after another would each wait for the other zones to catch up). The order is
    kept over the rounds: sorting again each round costs more than it would move."""
    coarsest = min(
        range(len(counts.per_constraint)), key=lambda i: len(counts.per_constraint[i].counts)
    )
    turn: dict[str, int] = {}
    ranked = []
    for cell in sorted(cells):
        domain = cell[coarsest]
        turn[domain] = turn.get(domain, -1) + 1
        ranked.append((counts.load(cell), turn[domain], cell))
    return [cell for _, _, cell in sorted(ranked)]


def _round(
    counts: _Counts, order: Sequence[Cell], left: dict[Cell, int], wanted: int
) -> tuple[int, set[int]]:
    """One round of the fill over the cells in ``order`` (``left`` and ``counts`` updated):
    the workers it placed, and when none, the constraints that refused every cell with room.
    A domain a constraint refused stays refused until that constraint's floor rises (its
    count only grows), so the round skips the other cells in it at the cost of a lookup."""
    added = 0
    refused: set[int] = set()
    blocked: dict[tuple[int, str], int] = {}  # (constraint, domain) -> floor when refused
    floors = counts.per_constraint
    for cell in order:
        if left[cell] <= 0:
            continue
        skip = next((i for i, d in enumerate(cell) if blocked.get((i, d)) == floors[i].floor), None)
        if skip is not None:
            refused.add(skip)
            continue
        allowed, tightest = counts.allowance(cell)
        if allowed <= 0:
            refused.add(tightest)
            blocked[(tightest, cell[tightest])] = floors[tightest].floor
            continue
        n = min(left[cell], allowed, wanted - added)
        counts.add(cell, n)
        left[cell] -= n
        added += n
        if added >= wanted:
            break
    return added, refused


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
    shown = ", ".join(f"{d}={n}" for d, n in sorted(counts.per_constraint[i].counts.items()))
    extra = f", minDomains {c.min_domains}" if c.min_domains else ""
    return f"spread allows {total}: {c.topology_key} maxSkew {c.max_skew}{extra} ({shown})"
