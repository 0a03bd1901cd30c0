"""The mergeable aggregate of a run's case records: what pass rates and decisions are computed
from (:mod:`proctor.stats.passrates`). Counts only, so batches merge in any order."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from proctor.api.v1alpha1.evalrun import FIRST_FAILING

MAX_VIOLATION_KEYS = 256
"""Distinct violation names an aggregate keeps; the rest are counted under ``(other)``."""
OTHER_VIOLATIONS = "(other)"
MAX_FIRST_FAILING = FIRST_FAILING
"""Indexes of failing (failed or errored) cases an aggregate keeps: the smallest ones."""


@dataclass
class Aggregate:
    """A mergeable running aggregate over case records (see :func:`proctor.sdk` record schema).

    Errored sides count as not passed: an implementation that raises, times out or kills its
    process (``errorType`` ``crashed``, see :mod:`proctor.worker.isolation`) on a case has not shown
    that it handles it; ``baseline_errored`` and ``candidate_errored`` count them per side.
    ``candidate_only_passed`` and ``baseline_only_passed`` are the discordant pairs, which the
    paired confidence sequence needs.

    ``unattributable`` counts the cases no side can be blamed for: both sides errored, or the
    task itself failed (``errorType`` ``task``: its generate() raised), or the case's dataset row
    cannot be read (``badInput``). They say the task, the input or the harness is broken, so
    they count as not evaluated and keep the run undecided.

    ``cached`` (a run without compare), ``baseline_cached`` and ``candidate_cached`` count
    the sides reused from the result cache: the hits, reported apart and otherwise counted
    like any result.

    ``first_failing`` holds the smallest indexes of cases that did not pass (at most
    :data:`MAX_FIRST_FAILING`), whatever order records arrive in.
    """

    total: int = 0
    passed: int = 0
    failed: int = 0
    errored: int = 0
    baseline_passed: int = 0
    baseline_total: int = 0
    candidate_passed: int = 0
    candidate_total: int = 0
    candidate_only_passed: int = 0
    baseline_only_passed: int = 0
    baseline_errored: int = 0
    candidate_errored: int = 0
    unattributable: int = 0
    cached: int = 0
    baseline_cached: int = 0
    candidate_cached: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    first_failing: list[int] = field(default_factory=list)

    def add(self, record: Mapping[str, Any]) -> None:
        """Count one case record."""
        self.total += 1
        status = record.get("status")
        if status == "passed":
            self.passed += 1
        elif status == "failed":
            self.failed += 1
        else:
            self.errored += 1
        index = record.get("index")
        if status != "passed" and isinstance(index, int):
            self._note_failing(index)
        baseline = record.get("baseline")
        candidate = record.get("candidate")
        self.unattributable += _unattributable(record, baseline, candidate)
        if isinstance(baseline, Mapping) and isinstance(candidate, Mapping):
            base_ok = bool(baseline.get("passed")) and not baseline.get("errored")
            cand_ok = bool(candidate.get("passed")) and not candidate.get("errored")
            self.baseline_total += 1
            self.candidate_total += 1
            self.baseline_passed += base_ok
            self.candidate_passed += cand_ok
            self.candidate_only_passed += cand_ok and not base_ok
            self.baseline_only_passed += base_ok and not cand_ok
            self.baseline_errored += bool(baseline.get("errored"))
            self.candidate_errored += bool(candidate.get("errored"))
            self.baseline_cached += bool(baseline.get("cached"))
            self.candidate_cached += bool(candidate.get("cached"))
            for name in baseline.get("violations") or ():
                self._count_violation(f"baseline/{name}", 1)
            for name in candidate.get("violations") or ():
                self._count_violation(f"candidate/{name}", 1)
        else:
            self.cached += bool(record.get("cached"))
            for name in record.get("violations") or ():
                self._count_violation(str(name), 1)

    def count_violations(self, counts: Iterable[tuple[str, int]]) -> None:
        """Add ``(name, count)`` pairs to the violation counts, in order (the cap keeps the
        first :data:`MAX_VIOLATION_KEYS` names seen)."""
        for name, count in counts:
            self._count_violation(name, count)

    def _count_violation(self, name: str, count: int) -> None:
        if name in self.violations or len(self.violations) < MAX_VIOLATION_KEYS:
            self.violations[name] = self.violations.get(name, 0) + count
        else:
            self.violations[OTHER_VIOLATIONS] = self.violations.get(OTHER_VIOLATIONS, 0) + count

    def _note_failing(self, index: int) -> None:
        kept = self.first_failing
        if len(kept) < MAX_FIRST_FAILING or index < kept[-1]:
            i = bisect.bisect_left(kept, index)
            if i == len(kept) or kept[i] != index:
                kept.insert(i, index)
                del kept[MAX_FIRST_FAILING:]

    def top_violations(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` most counted violation names (ties by name)."""
        return sorted(self.violations.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def merge(self, other: Aggregate) -> Aggregate:
        """Add ``other``'s counts into this aggregate and return it (``other`` is unchanged).

        In place so that both ``agg.merge(part)`` and ``agg = agg.merge(part)`` accumulate.
        """
        for f in fields(self):
            if f.name not in _NOT_COUNTS:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        for name, count in other.violations.items():
            self._count_violation(name, count)
        for index in other.first_failing:
            self._note_failing(index)
        return self

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict (camelCase keys) for checkpoints."""
        out: dict[str, Any] = {_camel(f.name): getattr(self, f.name) for f in fields(self)}
        out["violations"] = dict(self.violations)
        out["firstFailing"] = list(self.first_failing)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Aggregate:
        """Read :meth:`to_json`'s output; missing counts (older checkpoints) read as zero."""
        agg = cls()
        for f in fields(agg):
            if f.name in _NOT_COUNTS:
                continue
            value = data.get(_camel(f.name), data.get(f.name, 0))
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"aggregate field {f.name!r} must be a count, got {value!r}")
            setattr(agg, f.name, value)
        violations = data.get("violations") or {}
        if not isinstance(violations, Mapping):
            raise ValueError("aggregate violations must be a mapping of name to count")
        agg.violations = {str(k): int(v) for k, v in violations.items()}
        failing = data.get("firstFailing") or []
        if not isinstance(failing, list):
            raise ValueError("aggregate firstFailing must be a list of case indexes")
        for index in failing:
            agg._note_failing(int(index))
        return agg

    @property
    def pass_rate(self) -> float | None:
        """Passed over total cases, or None before any case."""
        return self.passed / self.total if self.total else None

    @property
    def baseline_pass_rate(self) -> float | None:
        """The baseline's pass rate, or None without comparison records."""
        return self.baseline_passed / self.baseline_total if self.baseline_total else None

    @property
    def candidate_pass_rate(self) -> float | None:
        """The candidate's pass rate, or None without comparison records."""
        return self.candidate_passed / self.candidate_total if self.candidate_total else None


def _unattributable(record: Mapping[str, Any], baseline: Any, candidate: Any) -> bool:
    """Whether neither implementation can be blamed for the case (see :class:`Aggregate`)."""
    if record.get("errorType") in ("task", "badInput"):
        return True
    if isinstance(baseline, Mapping) and isinstance(candidate, Mapping):
        return bool(baseline.get("errored")) and bool(candidate.get("errored"))
    return False


_NOT_COUNTS = frozenset({"violations", "first_failing"})


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)
