"""What ``proctor run`` reports when a run ends: the summary object (``summary.json`` and
``--json``) and the table people read."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from rich.markup import escape
from rich.table import Table

from proctor.api.v1alpha1.evalrun import ResultSummary
from proctor.console import make_console, plain
from proctor.storage import ProgressSnapshot


def summary_dict(
    *,
    name: str,
    run_id: str,
    snap: ProgressSnapshot,
    summary: ResultSummary,
    results_uri: str,
    seconds: float,
    exit_code: int,
    stopped: str | None,
) -> dict[str, Any]:
    interval = (
        [summary.delta_lower, summary.delta_upper] if summary.delta_lower is not None else None
    )
    return {
        "run": name,
        "runId": run_id,
        "total": snap.total,
        "completed": snap.completed,
        "passed": snap.passed,
        "failed": snap.failed,
        "errored": snap.errored,
        "deadLettered": snap.dead_lettered,
        "notEvaluated": summary.not_evaluated,
        "passRate": summary.pass_rate,
        "baselinePassRate": summary.baseline_pass_rate,
        "candidatePassRate": summary.candidate_pass_rate,
        "delta": summary.delta,
        "interval": interval,
        "decision": summary.decision,
        "reason": summary.reason,
        "earlyStopped": bool(summary.early_stopped),
        "stopped": stopped,
        "topViolations": [v.model_dump() for v in summary.top_violations or ()],
        "firstFailing": list(summary.first_failing or ()),
        "resultsUri": results_uri,
        "outputsUri": summary.outputs_uri,
        "seconds": round(seconds, 3),
        "casesPerSecond": round(snap.completed / seconds, 1) if seconds > 0 else None,
        "exitCode": exit_code,
    }


def _table(data: dict[str, Any], extra: Sequence[tuple[str, str]] = ()) -> Table:
    table = Table(title=f"EvalRun {data['run']}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.2f}%"

    table.add_row("cases", f"{data['completed']:,} of {data['total']:,} recorded")
    table.add_row(
        "outcomes",
        f"{data['passed']:,} passed, {data['failed']:,} failed, {data['errored']:,} errored",
    )
    if data["deadLettered"]:
        table.add_row("dead-lettered", f"{data['deadLettered']:,} cases (see dead/)")
    if data["notEvaluated"]:
        table.add_row("not evaluated", f"{data['notEvaluated']:,} cases")
    if data["decision"] in (None, "interrupted") and data["baselinePassRate"] is None:
        table.add_row("pass rate", pct(data["passRate"]))
    else:
        table.add_row("baseline pass rate", pct(data["baselinePassRate"]))
        table.add_row("candidate pass rate", pct(data["candidatePassRate"]))
        lo_hi = data["interval"]
        interval = f"[{pct(lo_hi[0])}, {pct(lo_hi[1])}]" if lo_hi else "-"
        table.add_row("delta (candidate - baseline)", plain(f"{pct(data['delta'])}  {interval}"))
    if data["decision"]:
        table.add_row("decision", f"[bold]{escape(data['decision'])}[/bold]")
    if data["reason"]:
        table.add_row("reason", plain(data["reason"]))
    if data["topViolations"]:
        top = ", ".join(f"{escape(v['name'])} ({v['count']:,})" for v in data["topViolations"])
        table.add_row("top violations", top)
    if data["firstFailing"]:
        table.add_row("first failing cases", ", ".join(map(str, data["firstFailing"])))
    for label, value in extra:  # what the task's summary hook adds (Metamorphic Guard's)
        table.add_row(plain(label), plain(value))
    _add_tail(table, data)
    return table


def _add_tail(table: Table, data: dict[str, Any]) -> None:
    """Early stopping, the cache, time, where the results are, how to resume."""
    if data["earlyStopped"]:
        table.add_row("early stopped", "yes")
    if data.get("cache"):
        table.add_row("cache", cache_line(data["cache"]))
    rate = data["casesPerSecond"]
    table.add_row("time", f"{data['seconds']:.1f}s" + (f" ({rate:,.0f} cases/s)" if rate else ""))
    table.add_row("results", plain(data["resultsUri"]))
    if data["outputsUri"]:
        table.add_row("outputs", plain(data["outputsUri"]))
    if data.get("resume"):
        table.add_row("resume", plain(data["resume"]))


def cache_line(cache: dict[str, Any]) -> str:
    """``12 hits, 3 misses (baseline 10/0, candidate 2/3)``, and whether it was only read."""
    line = f"{cache['hits']:,} hits, {cache['misses']:,} misses"
    if "baseline" in cache:
        b, c = cache["baseline"], cache["candidate"]
        line += (
            f" (baseline {b['hits']:,}/{b['misses']:,}, candidate {c['hits']:,}/{c['misses']:,})"
        )
    if cache.get("readOnly"):
        line += "; read-only"
    return line


def print_summary(
    data: dict[str, Any], rows: Sequence[tuple[str, str]], *, json_output: bool
) -> None:
    """The summary as one JSON line on stdout (``--json``), or as a table."""
    if json_output:
        print(json.dumps(data), flush=True)
    else:
        make_console().print(_table(data, rows))
