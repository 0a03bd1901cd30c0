"""A Metamorphic Guard spec richer than ``top_k``, for ``vs_metamorphic_guard.py --spec dedupe``.

The task: the distinct values of a list of small integers, in increasing order. Two hard
properties (strictly increasing; the same set of values as the input), one soft property (at
most 30 values come back, which many inputs exceed: a soft property is reported, never
decisive), four relations (a permutation, the reversal, the list doubled, and its first value
appended again: each leaves the answer unchanged), a cluster key (the input's length in five
bands, for ``--ci-method bootstrap-cluster``) and a metric (the output's length).

``metamorphic-guard evaluate`` finds it through :func:`cli`, which registers it under
``proctor_bench_dedupe`` and runs Metamorphic Guard's own command; Proctor loads the same spec
from ``e2e.bench.mg_dedupe:dedupe_spec``.
"""

from __future__ import annotations

import itertools
import random
import sys
from typing import Any

from metamorphic_guard.cli import main
from metamorphic_guard.specs import MetamorphicRelation, Metric, Property, Spec, register_spec

NAME = "proctor_bench_dedupe"
BASELINE = "def solve(L):\n    return sorted(set(L))\n"
CANDIDATE = (
    "def solve(L):\n"
    "    out = []\n"
    "    for x in sorted(L):\n"
    "        if not out or out[-1] != x:\n"
    "            out.append(x)\n"
    "    return out\n"
)


def _inputs(n: int, seed: int) -> list[tuple[Any, ...]]:
    """One generator, input after input: the first m inputs do not depend on n."""
    rng = random.Random(seed)
    return [([rng.randint(-25, 25) for _ in range(rng.randint(0, 60))],) for _ in range(n)]


def _permuted(values: list[int], *, rng: random.Random | None = None) -> tuple[list[int]]:
    out = list(values)
    (rng or random.Random(len(values))).shuffle(out)
    return (out,)


def _reversed(values: list[int]) -> tuple[list[int]]:
    return (values[::-1],)


def _doubled(values: list[int]) -> tuple[list[int]]:
    return (values + values,)


def _repeat_first(values: list[int]) -> tuple[list[int]]:
    return (values + values[:1],)


def _increasing(out: list[int], values: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(out))


def _same_values(out: list[int], values: list[int]) -> bool:
    return set(out) == set(values)


def _few(out: list[int], values: list[int]) -> bool:
    return len(out) <= 30


def dedupe_spec() -> Spec:
    """The spec (see the module doc)."""
    return Spec(
        gen_inputs=_inputs,
        properties=[
            Property(check=_increasing, description="strictly increasing"),
            Property(check=lambda out, values: set(out) == set(values), description="same values"),
            Property(
                check=lambda out, values: len(out) <= 30, description="at most 30", mode="soft"
            ),
        ],
        relations=[
            MetamorphicRelation(name="permute", transform=_permuted, accepts_rng=True),
            MetamorphicRelation(name="reverse", transform=_reversed),
            MetamorphicRelation(name="double", transform=_doubled),
            MetamorphicRelation(name="repeat_first", transform=_repeat_first),
        ],
        equivalence=lambda a, b: a == b,
        cluster_key=lambda args: min(len(args[0]) // 13, 4),
        metrics=[Metric(name="distinct", extract=lambda out, args: float(len(out)), seed=7)],
    )


def cli() -> None:
    """``metamorphic-guard`` with this spec registered (argv as the command's)."""
    register_spec(NAME, dedupe_spec(), overwrite=True)
    sys.exit(main())


if __name__ == "__main__":
    cli()
