"""What ``proctor run`` prints at the end: the summary as a table, or one JSON line."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


def table(data: dict[str, Any], extra: Sequence[tuple[str, str]] = ()) -> Table:
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
        if data["decision"]:
            table.add_row("decision", f"[bold]{data['decision']}[/bold]")
        if data["reason"]:
            table.add_row("reason", escape(data["reason"]))
    else:
        table.add_row("baseline pass rate", pct(data["baselinePassRate"]))
        table.add_row("candidate pass rate", pct(data["candidatePassRate"]))
        lo_hi = data["interval"]
        interval = f"[{pct(lo_hi[0])}, {pct(lo_hi[1])}]" if lo_hi else "-"
        table.add_row("delta (candidate - baseline)", f"{pct(data['delta'])}  {interval}")
        table.add_row("decision", f"[bold]{data['decision']}[/bold]")
        if data["reason"]:
            table.add_row("reason", escape(data["reason"]))
    for label, value in extra:  # what the task's summary hook adds (Metamorphic Guard's)
        table.add_row(label, value)
    if data["earlyStopped"]:
        table.add_row("early stopped", "yes")
    rate = data["casesPerSecond"]
    table.add_row("time", f"{data['seconds']:.1f}s" + (f" ({rate:,.0f} cases/s)" if rate else ""))
    table.add_row("results", data["resultsUri"])
    return table


def print_summary(json_output: bool, data: dict[str, Any], rows: Sequence[tuple[str, str]]) -> None:
    """The summary as one JSON line on stdout (``--json``), or as a table."""
    if json_output:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()
    else:
        Console().print(table(data, rows))
