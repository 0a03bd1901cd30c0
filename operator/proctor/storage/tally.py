"""Counting a result table into an :class:`~proctor.stats.aggregate.Aggregate`, column at a time.

What :meth:`Aggregate.add` counts for each case's record, computed with Arrow's compute
kernels over a result object's columns (:data:`proctor.storage.columns.SCHEMA`) instead of
turning every row into a dict first: ``proctor run`` and the operator count every result object
as it appears, and row by row that cost the following process a sixth of the CPU its workers
used (issue 21). ``tests/test_tally.py`` checks it against :meth:`Aggregate.add` record by
record.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from proctor.stats.aggregate import MAX_FIRST_FAILING, Aggregate

_UNATTRIBUTABLE = ("task", "badInput")
"""Error types no side is blamed for. A tuple, not an Arrow array: building any Arrow array
makes pyarrow import pandas when it is installed (half a second), so none is built at import."""


def _count(mask: pa.ChunkedArray | pa.Array) -> int:
    """True values of a boolean column (nulls are not true)."""
    return int(pc.sum(pc.fill_null(mask, False)).as_py() or 0)


def _names(table: pa.Table, column: str, prefix: str) -> list[tuple[str, int]]:
    """(violation name with ``prefix``, count) over ``column``, in order of first appearance."""
    if table.num_rows == 0:
        return []
    counts = pc.value_counts(pc.list_flatten(table.column(column)))
    names, numbers = counts.field("values").to_pylist(), counts.field("counts").to_pylist()
    return [(f"{prefix}{v}", n) for v, n in zip(names, numbers, strict=True)]


def _all_passed(table: pa.Table) -> bool:
    """Whether no side of any row errored or broke a property (the common table), told from
    null counts and list lengths without a pass over the rows in Python."""
    n = table.num_rows
    compared = n - table.column("baseline_passed").null_count
    if compared not in (0, n) or table.column("error").null_count != n:
        return False
    sides = ("", "baseline_") if compared else ("",)
    return all(
        table.column(f"{side}error").null_count == n
        and len(pc.list_flatten(table.column(f"{side}violations"))) == 0
        for side in sides
    )


def _passed(table: pa.Table) -> Aggregate:
    """The aggregate of a table of which every row passed on every side."""
    n = table.num_rows
    agg = Aggregate(total=n, passed=n)
    if table.column("baseline_passed").null_count == 0:
        agg.baseline_total = agg.candidate_total = n
        agg.baseline_passed = agg.candidate_passed = n
    return agg


def _count_cached(agg: Aggregate, table: pa.Table) -> Aggregate:
    """The result cache's hits: a side with a ``cached_from`` run was reused, per side where
    the row compares two, else the row's one side (``cached``)."""
    if table.column("cached_from").null_count == table.num_rows and (
        table.column("baseline_cached_from").null_count == table.num_rows
    ):
        return agg  # no hit at all: the common table
    hits = pc.is_valid(table.column("cached_from"))
    compared = pc.is_valid(table.column("baseline_passed"))
    agg.baseline_cached = _count(
        pc.and_(compared, pc.is_valid(table.column("baseline_cached_from")))
    )
    agg.candidate_cached = _count(pc.and_(compared, hits))
    agg.cached = _count(pc.and_(pc.invert(compared), hits))
    return agg


def aggregate_table(table: pa.Table) -> Aggregate:
    """The aggregate of a conformed result table's rows: what ``Aggregate.add`` of each row's
    record (:func:`proctor.storage.columns.to_records`) would count."""
    if table.num_rows == 0:
        return Aggregate()
    return _count_cached(_counted(table), table)


def _counted(table: pa.Table) -> Aggregate:
    """Everything but the cache's hits (:func:`_count_cached`)."""
    agg = Aggregate()
    if _all_passed(table):
        return _passed(table)
    outcome = table.column("outcome")
    passed = pc.equal(outcome, "passed")
    agg.total = table.num_rows
    agg.passed = _count(passed)
    agg.failed = _count(pc.equal(outcome, "failed"))
    agg.errored = agg.total - agg.passed - agg.failed
    failing = pc.filter(table.column("index"), pc.invert(passed)).to_pylist()
    agg.first_failing = sorted(failing)[:MAX_FIRST_FAILING]
    compared = pc.is_valid(table.column("baseline_passed"))
    base_errored = pc.and_(compared, pc.is_valid(table.column("baseline_error")))
    cand_errored = pc.and_(compared, pc.is_valid(table.column("error")))
    error_type = table.column("errorType")
    task_fault = pc.fill_null(pc.or_(*(pc.equal(error_type, t) for t in _UNATTRIBUTABLE)), False)
    agg.unattributable = _count(pc.or_(task_fault, pc.and_(base_errored, cand_errored)))
    n_compared = _count(compared)
    if n_compared:
        base_ok = pc.and_(
            pc.fill_null(table.column("baseline_passed"), False),
            pc.invert(base_errored),
        )
        cand_ok = pc.and_(table.column("passed"), pc.is_null(table.column("error")))
        base_ok, cand_ok = pc.and_(base_ok, compared), pc.and_(cand_ok, compared)
        agg.baseline_total = agg.candidate_total = n_compared
        agg.baseline_passed, agg.candidate_passed = _count(base_ok), _count(cand_ok)
        agg.candidate_only_passed = _count(pc.and_(cand_ok, pc.invert(base_ok)))
        agg.baseline_only_passed = _count(pc.and_(base_ok, pc.invert(cand_ok)))
        agg.baseline_errored, agg.candidate_errored = _count(base_errored), _count(cand_errored)
        both = table.filter(compared)
        agg.count_violations(_names(both, "baseline_violations", "baseline/"))
        agg.count_violations(_names(both, "violations", "candidate/"))
    if n_compared < table.num_rows:
        agg.count_violations(_names(table.filter(pc.invert(compared)), "violations", ""))
    return agg
