"""The matrix of a suite: every benchmark under every variant, as :class:`Cell`."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from proctor.api.quantity import parse_duration
from proctor.api.v1alpha1.base import Resources
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.api.v1alpha1.env import EnvVar


@dataclass(frozen=True)
class Cell:
    """One benchmark under one variant: what a benchmark pod (or local worker) measures."""

    benchmark: str
    variant: str
    image: str
    command: tuple[str, ...]
    env: tuple[EnvVar, ...]
    warmup: int
    repetitions: int
    timeout_seconds: float
    profile: str | None
    resources: Resources | None

    @property
    def id(self) -> str:
        """``benchmark.variant``: unique in a suite, since names are DNS labels (no dots)."""
        return f"{self.benchmark}.{self.variant}"

    def literal_env(self) -> dict[str, str]:
        """The variables with a literal value (``valueFrom`` ones are set by the pod spec)."""
        return {e.name: e.value or "" for e in self.env if e.value_from is None}


def merge_env(*layers: list[EnvVar] | None) -> tuple[EnvVar, ...]:
    """Later layers override earlier ones by name; first-seen order is kept."""
    merged: dict[str, EnvVar] = {}
    for layer in layers:
        for var in layer or ():
            merged[var.name] = var
    return tuple(merged.values())


def cells(spec: BenchmarkSuiteSpec) -> list[Cell]:
    """Benchmarks x variants, in spec order (benchmark-major)."""
    out = []
    for b in spec.benchmarks:
        for v in spec.variants:
            out.append(
                Cell(
                    benchmark=b.name,
                    variant=v.name,
                    image=v.image or b.image or spec.image,
                    command=(*b.command, *(b.args or ()), *(v.args or ())),
                    env=merge_env(b.env, v.env),
                    warmup=b.warmup,
                    repetitions=b.repetitions,
                    timeout_seconds=parse_duration(b.timeout),
                    profile=b.profile or (None if b.resources else spec.profile),
                    resources=b.resources,
                )
            )
    return out


def find_cell(spec: BenchmarkSuiteSpec, cell_id: str) -> Cell:
    """The cell ``benchmark.variant`` of ``spec``; ValueError naming the cells there are."""
    for cell in cells(spec):
        if cell.id == cell_id:
            return cell
    known = ", ".join(c.id for c in cells(spec))
    raise ValueError(f"the suite has no cell {cell_id!r}; its cells are: {known}")


def cell_queue_id(namespace: str, suite: str, run_id: str, cell_id: str) -> str:
    """The queue run id of one cell of one suite run.

    Readable head (suite and cell) plus a hash of all four parts, so it stays unique within
    SQS's 80-character queue names (``proctor-<id>-dead.fifo``) and Redis's key alphabet.
    """
    digest = hashlib.sha256(f"{namespace}/{suite}/{run_id}/{cell_id}".encode()).hexdigest()
    head = re.sub(r"[^A-Za-z0-9_-]", "-", f"{suite}-{cell_id}")[:36]
    return f"bench-{head}-{digest[:16]}"
