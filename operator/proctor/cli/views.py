"""How runs read on the terminal (pure): the rows of ``proctor get``, the detailed view of
``proctor status``, the progress ``proctor watch`` follows, and the exit code of a finished
run. Every value from the cluster is user text: it goes into cells as :func:`plain` text."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.table import Table

from proctor.api.crdgen import Kind
from proctor.api.quantity import format_duration
from proctor.api.times import parse_time
from proctor.api.v1alpha1 import SUITE_KIND
from proctor.console import plain

FINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})
"""Phases a run does not leave; ``proctor watch`` stops at them."""

EXIT_SUCCEEDED = 0
EXIT_REJECTED = 1
EXIT_UNDECIDED = 3
EXIT_FAILED = 4
EXIT_CANCELLED = 5

FINAL_CODES = (
    (EXIT_SUCCEEDED, "the run Succeeded: accepted, or nothing to decide (suites: no regression)"),
    (EXIT_REJECTED, "the run Succeeded but was rejected (suites: regressions found)"),
    (EXIT_UNDECIDED, "the run Succeeded undecided: not every case was evaluated"),
    (EXIT_FAILED, "the run Failed (its Failed condition says why)"),
    (EXIT_CANCELLED, "the run was Cancelled"),
)
"""The exit codes of ``proctor watch`` by the final phase, as ``proctor run``'s where they meet."""


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _status(body: dict[str, Any]) -> dict[str, Any]:
    return _obj(body.get("status"))


def _meta(body: dict[str, Any]) -> dict[str, Any]:
    return _obj(body.get("metadata"))


def age(timestamp: Any, now: datetime) -> str:
    """``3m20s`` since ``timestamp`` (RFC 3339), as kubectl's AGE column; ``-`` when unset."""
    then = parse_time(timestamp)
    if then is None:
        return "-"
    return format_duration(max(0, int((now - then).total_seconds())))


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"


def _num(value: Any, fmt: str = "{:,}") -> str:
    return "-" if value is None else fmt.format(value)


def final_exit_code(kind: Kind, body: dict[str, Any]) -> int | None:
    """The exit code of a run in a final phase (see :data:`FINAL_CODES`); None while running."""
    status = _status(body)
    phase = status.get("phase")
    if phase not in FINAL_PHASES:
        return None
    if phase == "Failed":
        return EXIT_FAILED
    if phase == "Cancelled":
        return EXIT_CANCELLED
    if kind.kind == SUITE_KIND:
        return EXIT_REJECTED if status.get("regressionCount") else EXIT_SUCCEEDED
    decision = _obj(status.get("result")).get("decision")
    if decision == "reject":
        return EXIT_REJECTED
    if decision == "undecided":
        return EXIT_UNDECIDED
    return EXIT_SUCCEEDED


@dataclass(frozen=True)
class Progress:
    """Where a run stands, for the progress bar."""

    phase: str
    completed: int
    total: int
    rate: str
    eta: str


def progress_of(kind: Kind, body: dict[str, Any]) -> Progress:
    status = _status(body)
    phase = str(status.get("phase") or "Pending")
    if kind.kind == SUITE_KIND:
        cells = [_obj(c) for c in status.get("cells") or []]
        done = sum(int(c.get("completed") or 0) for c in cells)
        return Progress(phase, done, sum(int(c.get("total") or 0) for c in cells), "", "")
    counts = _obj(status.get("counts"))
    rate = status.get("casesPerSecond")
    return Progress(
        phase,
        int(counts.get("completed") or 0) + int(counts.get("deadLettered") or 0),
        int(counts.get("total") or 0),
        f"{float(rate):,.1f} cases/s" if rate else "",
        f"eta {status['eta']}" if status.get("eta") and phase == "Running" else "",
    )


def _result(kind: Kind, status: dict[str, Any]) -> str:
    if kind.kind == SUITE_KIND:
        count = status.get("regressionCount")
        return "-" if count is None else f"{count} regressions"
    return str(_obj(status.get("result")).get("decision") or "-")


def get_table(runs: list[tuple[Kind, dict[str, Any]]], now: datetime, *, wide: bool,
              namespaces: bool) -> Table:  # fmt: skip
    """``proctor get``: one row per run of both kinds, as ``kubectl get`` lays them out."""
    table = Table(box=None, pad_edge=False, show_edge=False)
    columns = ["NAMESPACE"] if namespaces else []
    columns += ["NAME", "PHASE", "PROGRESS", "WORKERS", "ETA", "RESULT", "AGE"]
    if wide:
        columns += ["CASES", "FAILED", "DELTA", "RUN", "RESULTS"]
    for column in columns:
        table.add_column(column, no_wrap=True)
    for kind, body in runs:
        status, meta = _status(body), _meta(body)
        counts = _obj(status.get("counts"))
        result = _obj(status.get("result"))
        suite = kind.kind == SUITE_KIND
        workers = status.get("readyPods") if suite else _obj(status.get("workers")).get("ready")
        row = [meta.get("namespace")] if namespaces else []
        row += [
            f"{kind.singular}/{meta.get('name')}",
            status.get("phase") or "Pending",
            _num(status.get("progressPercent"), "{:.1f}%"),
            _num(workers),
            status.get("eta") or "-",
            _result(kind, status),
            age(meta.get("creationTimestamp"), now),
        ]
        if wide:
            delta = result.get("delta")
            row += [
                "-" if suite else _num(counts.get("total")),
                "-" if suite else _num(counts.get("failed")),
                "-" if suite else _pct(delta),
                status.get("runId") or "-",
                (status.get("reportUri") if suite else result.get("resultsUri")) or "-",
            ]
        table.add_row(*(plain(cell if cell is not None else "-") for cell in row))
    return table


def conditions_table(status: dict[str, Any], now: datetime) -> Table:
    table = Table(title="conditions", title_justify="left", box=None, pad_edge=False)
    for column in ("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"):
        table.add_column(column)
    for cond in status.get("conditions") or []:
        c = _obj(cond)
        table.add_row(
            *(plain(c.get(k) or "") for k in ("type", "status", "reason")),
            plain(age(c.get("lastTransitionTime"), now)),
            plain(c.get("message") or ""),
        )
    return table
