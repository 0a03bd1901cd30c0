"""``proctor status NAME``: one run in detail, from its status (phase and why, progress,
workers and plan, the result and where it is, conditions); ``-o json|yaml`` prints the object."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

import yaml
from rich.console import Group, RenderableType
from rich.table import Table

from proctor.api.crdgen import Kind
from proctor.api.v1alpha1 import SUITE_KIND
from proctor.cli.context import ACCESS_CODES, add_cluster_options, connect, run_command
from proctor.cli.lookup import find_run
from proctor.cli.usage import HelpFormatter, exit_codes
from proctor.cli.views import age, conditions_table
from proctor.console import make_console, plain
from proctor.local.summary import cache_line

OUTPUTS = ("view", "json", "yaml")


def add_status(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status",
        help="show one run (EvalRun or BenchmarkSuite) in detail",
        description="Show a run's phase and why, progress, workers and plan, result, results "
        "and report URIs and conditions, read from the current kubeconfig context. NAME is a "
        "run of either kind, or KIND/NAME (evalrun/NAME, benchmarksuite/NAME, er/NAME, bs/NAME).",
        epilog=exit_codes(*ACCESS_CODES),
        formatter_class=HelpFormatter,
    )
    status.add_argument("name", metavar="NAME", help="the run: NAME or KIND/NAME")
    status.add_argument(
        "-o", "--output", choices=OUTPUTS, default="view", help="view (default), json or yaml"
    )
    add_cluster_options(status)
    status.set_defaults(func=lambda args: run_command(args, cmd_status))


def cmd_status(args: argparse.Namespace) -> int:
    target = connect(args)
    kind, body = find_run(target, args.name)
    print_run(kind, body, args.output)
    return 0


def print_run(kind: Kind, body: dict[str, Any], output: str = "view") -> None:
    """The run as ``output`` (view, json or yaml) on stdout."""
    if output == "json":
        print(json.dumps(body, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(body, sort_keys=False), end="")
    else:
        make_console().print(run_view(kind, body, datetime.now(UTC)))


def run_view(kind: Kind, body: dict[str, Any], now: datetime) -> RenderableType:
    """The detailed view of one run (pure)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    rows = suite_rows(status) if kind.kind == SUITE_KIND else evalrun_rows(status)
    head = Table(box=None, show_header=False, pad_edge=False)
    head.add_column(style="bold")
    head.add_column()
    head.add_row("run", plain(f"{kind.kind} {meta.get('namespace')}/{meta.get('name')}"))
    head.add_row("phase", plain(_phase(status)))
    for label, value in rows:
        head.add_row(label, plain(value))
    head.add_row("age", plain(age(meta.get("creationTimestamp"), now)))
    for label, key in (("started", "startTime"), ("finished", "completionTime")):
        if status.get(key):
            head.add_row(label, plain(status[key]))
    parts: list[RenderableType] = [head]
    if kind.kind == SUITE_KIND and status.get("cells"):
        parts.append(_cells(status["cells"]))
    if status.get("conditions"):
        parts.append(conditions_table(status, now))
    return Group(*parts)


def _phase(status: dict[str, Any]) -> str:
    phase = str(status.get("phase") or "Pending")
    conds = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)}
    why = conds.get(phase) or conds.get("Ready") or {}
    detail = ": ".join(str(x) for x in (why.get("reason"), why.get("message")) if x)
    return f"{phase} ({detail})" if detail else phase


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"


def evalrun_rows(status: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) of an EvalRun's status, in reading order (pure)."""
    counts = status.get("counts") or {}
    total, done = counts.get("total", 0), counts.get("completed", 0)
    rate = status.get("casesPerSecond")
    progress = f"{done:,} of {total:,} cases ({status.get('progressPercent') or 0:.1f}%)"
    if rate:
        progress += f", {rate:,.1f} cases/s"
    if status.get("eta"):
        progress += f", eta {status['eta']}"
    rows = [("progress", progress)]
    rows.append((
        "outcomes",
        f"{counts.get('passed', 0):,} passed, {counts.get('failed', 0):,} failed, "
        f"{counts.get('errored', 0):,} errored, {counts.get('inFlight', 0):,} in flight, "
        f"{counts.get('deadLettered', 0):,} dead-lettered",
    ))  # fmt: skip
    workers = status.get("workers") or {}
    rows.append((
        "workers",
        f"{workers.get('ready', 0)} ready of {workers.get('desired', 0)} desired, "
        f"{workers.get('failures', 0)} failures, {status.get('disruptions') or 0} disruptions",
    ))  # fmt: skip
    plan = status.get("plan")
    if plan:
        pools = ", ".join(f"{p['name']}={p['replicas']}" for p in plan.get("pools") or [])
        rows.append((
            "plan",
            f"{plan.get('replicas')} workers (bound by {plan.get('boundBy')}; {plan.get('fit')} "
            f"fit on {plan.get('eligibleNodes')} nodes), profile {plan.get('profile')}: "
            f"{plan.get('cpu')} CPU, {plan.get('memory')} per worker"
            + (f", {plan['gpus']} GPUs" if plan.get("gpus") else "")
            + (f"; pools {pools}" if pools else ""),
        ))  # fmt: skip
    if status.get("cache"):
        rows.append(("cache", cache_line(status["cache"])))
    return rows + _result_rows(status.get("result") or {}, status)


def _result_rows(result: dict[str, Any], status: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if result.get("baselinePassRate") is not None or result.get("candidatePassRate") is not None:
        rows.append(("baseline pass rate", _pct(result.get("baselinePassRate"))))
        rows.append(("candidate pass rate", _pct(result.get("candidatePassRate"))))
        interval = ""
        if result.get("deltaLower") is not None:
            interval = f" [{_pct(result['deltaLower'])}, {_pct(result.get('deltaUpper'))}]"
        rows.append(("delta", _pct(result.get("delta")) + interval))
    elif result.get("passRate") is not None:
        rows.append(("pass rate", _pct(result["passRate"])))
    for label, key in (("decision", "decision"), ("reason", "reason")):
        if result.get(key):
            rows.append((label, str(result[key])))
    if result.get("notEvaluated"):
        rows.append(("not evaluated", f"{result['notEvaluated']:,} cases"))
    if result.get("resultsUri"):
        rows.append(("results", str(result["resultsUri"])))
    checkpoint = status.get("lastCheckpoint") or {}
    if checkpoint.get("uri"):
        rows.append(("checkpoint", f"{checkpoint['uri']} ({checkpoint.get('time')})"))
    return rows


def suite_rows(status: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) of a BenchmarkSuite's status, in reading order (pure)."""
    cells = status.get("cells") or []
    done = sum(int(c.get("completed") or 0) for c in cells)
    total = sum(int(c.get("total") or 0) for c in cells)
    rows = [
        ("progress", f"{done} of {total} repetitions ({status.get('progressPercent') or 0:.1f}%)"),
        (
            "pods",
            f"{status.get('readyPods') or 0} ready, {status.get('failures') or 0} failures, "
            f"{status.get('disruptions') or 0} disruptions",
        ),
    ]
    if status.get("runId"):
        rows.append(("run id", str(status["runId"])))
    regressions = status.get("regressions") or []
    if status.get("regressionCount") is not None:
        named = ", ".join(f"{r['benchmark']}.{r['variant']} {r['ratio']:.3f}x" for r in regressions)
        rows.append(
            ("regressions", f"{status['regressionCount']}" + (f": {named}" if named else ""))
        )
    for label, key in (
        ("report", "reportUri"),
        ("results", "resultsUri"),
        ("baseline", "baselineUri"),
        ("last scheduled", "lastScheduleTime"),
        ("next scheduled", "nextScheduleTime"),
    ):
        if status.get(key):
            rows.append((label, str(status[key])))
    if status.get("history"):
        rows.append(("history", f"{len(status['history'])} finished runs"))
    return rows


def _cells(cells: list[dict[str, Any]]) -> Table:
    table = Table(title="cells", title_justify="left", box=None, pad_edge=False)
    columns = ("BENCHMARK", "VARIANT", "DONE", "FAILED", "P50", "MEAN", "REGRESSION", "REUSED FROM")
    for column in columns:
        table.add_column(column, no_wrap=True)
    for c in cells:
        table.add_row(
            plain(c.get("benchmark")),
            plain(c.get("variant")),
            plain(f"{c.get('completed', 0)}/{c.get('total', 0)}"),
            plain(c.get("failed", 0)),
            plain("-" if c.get("p50") is None else f"{c['p50']:.4g}s"),
            plain("-" if c.get("mean") is None else f"{c['mean']:.4g}s"),
            plain("yes" if c.get("regression") else "-"),
            plain(c.get("reusedFrom") or "-"),  # spec.cache: the run that measured it
        )
    return table
