"""``proctor plan FILE``: a dry run of an EvalRun against the current kubeconfig context.

It reads what the operator's pass reads (nodes, the pods bound to them, the namespace's
quota) and plans with the operator's own code (:mod:`proctor.evalrun.preview`): how many
workers, what bound them, per pool and per node; then how long the cases take on them (from
``--calibrate N``, ``--case-seconds`` or the manifest's ``proctor.dev/case-seconds``
annotation), their memory, and what they cost at the nodes' prices. Nothing is written.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from proctor.api.names import ANNOTATION_CASE_SECONDS
from proctor.api.quantity import format_bytes, format_duration, parse_duration
from proctor.api.v1alpha1.cost import CostStatus
from proctor.api.v1alpha1.evalrun import EvalRun
from proctor.cli.context import (
    EXIT_NO,
    EXIT_NO_ACCESS,
    EXIT_OK,
    EXIT_STORAGE,
    EXIT_USAGE,
    CommandError,
    Target,
    add_cluster_options,
    codes,
    connect,
    reported,
    run_command,
)
from proctor.cli.usage import HelpFormatter, exit_codes
from proctor.config import OperatorConfig, load_config
from proctor.dataset import DatasetError
from proctor.dataset.run import admit, dataset_location, open_reader
from proctor.evalrun.preview import Preview, plan_new_run
from proctor.local.admission import dataset_cases, with_dataset_path
from proctor.planning.cost import (
    capacity_type,
    estimate_cost,
    estimate_seconds,
    hourly_price,
    place_workers,
)
from proctor.redact import redact_text
from proctor.sdk.cases import RowSource
from proctor.sdk.runner import load_task
from proctor.storage import LocalBlobs, RunStorage, StorageError
from proctor.validation import ManifestError, load_evalrun

DESCRIPTION = (
    "Plan an EvalRun against the cluster of the current kubeconfig context without creating "
    "it: the workers the operator would start (and the limit that bound them, per pool and per "
    "node), memory per worker, the expected duration and cost. Read-only; the permissions it "
    'needs are in docs/security.md ("proctor plan and cancel").'
)
EPILOG = exit_codes(
    (EXIT_OK, "planned"),
    (EXIT_NO, "the cluster cannot hold one worker of the run (the message says why)"),
    (
        EXIT_USAGE,
        "bad manifest, arguments or operator configuration, or a task --calibrate cannot run",
    ),
    *codes(EXIT_NO_ACCESS),
    (EXIT_STORAGE, "the dataset's store cannot be listed to count its rows"),
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    plan = sub.add_parser(
        "plan",
        help="dry-run an EvalRun on the cluster",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    plan.add_argument("file", metavar="FILE", help="YAML manifest holding one EvalRun")
    add_cluster_options(plan)
    timing = plan.add_mutually_exclusive_group()
    timing.add_argument(
        "--calibrate", type=int, metavar="N", help="time N cases of the task on this machine"
    )
    timing.add_argument(
        "--case-seconds", type=float, metavar="S",
        help=f"seconds one case takes (default: the manifest's {ANNOTATION_CASE_SECONDS} "
        "annotation)",
    )  # fmt: skip
    source = plan.add_mutually_exclusive_group()
    source.add_argument(
        "--config", help="the operator's configuration YAML (default: $PROCTOR_CONFIG)"
    )
    source.add_argument(
        "--config-map", metavar="NAMESPACE/NAME",
        help="read the operator's configuration (key config.yaml) from this ConfigMap",
    )  # fmt: skip
    plan.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="output format"
    )
    plan.set_defaults(func=run_plan)


class PlanInputError(Exception):
    """The manifest, the arguments or the operator configuration cannot be used."""


def run_plan(args: argparse.Namespace) -> int:
    return run_command(args, _plan)


def _plan(args: argparse.Namespace) -> int:
    try:
        run = load_evalrun(Path(args.file))
        total = dataset_cases(run.spec, Path(args.file))
        timing = case_timing(args, run, total)
    except (ManifestError, PlanInputError, DatasetError) as exc:
        raise CommandError(redact_text(str(exc)), EXIT_USAGE) from exc
    except StorageError as exc:  # the dataset's store cannot be listed with these credentials
        raise CommandError(
            f"cannot count the dataset's rows: {redact_text(str(exc))}", EXIT_STORAGE
        ) from exc
    target = connect(args)
    try:
        config = operator_config(args, target)
        with reported("list nodes, pods and resourcequotas", target.server):
            preview = plan_new_run(run.spec, target.cluster, target.where, config, total=total)
    except PlanInputError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from exc
    finally:
        target.api.close()
    report = build_report(run, target.where, preview, config, timing, total=total)
    if args.output == "json":
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    if not preview.plan.feasible:
        print(f"error: the cluster cannot hold this run: {preview.plan.infeasible_reason}",
              file=sys.stderr)  # fmt: skip
        return EXIT_NO
    return EXIT_OK


def operator_config(args: argparse.Namespace, target: Target) -> OperatorConfig:
    """The operator's configuration: a file, a ConfigMap on the cluster, or the defaults."""
    try:
        if not args.config_map:
            return load_config(args.config)
        namespace, _, name = args.config_map.partition("/")
        if not name:
            raise PlanInputError("--config-map takes NAMESPACE/NAME")
        with reported(f"get ConfigMap {args.config_map}", target.server):
            data = target.cluster.config_map(namespace, name)
        if data is None or "config.yaml" not in data:
            raise PlanInputError(f"ConfigMap {args.config_map} has no key config.yaml")
        return OperatorConfig.model_validate(yaml.safe_load(data["config.yaml"]) or {})
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise PlanInputError(f"cannot read the operator configuration: {exc}") from exc


@dataclass(frozen=True)
class CaseTiming:
    """Seconds per case, and where the figure comes from."""

    seconds: float
    source: str


def case_timing(args: argparse.Namespace, run: EvalRun, total: int) -> CaseTiming | None:
    if args.calibrate is not None:
        return calibrate(run, min(args.calibrate, total), Path(args.file))
    if args.case_seconds is not None:
        if args.case_seconds <= 0:
            raise PlanInputError("--case-seconds must be above 0")
        return CaseTiming(args.case_seconds, "--case-seconds")
    declared = (run.metadata.get("annotations") or {}).get(ANNOTATION_CASE_SECONDS)
    if declared is None:
        return None
    try:
        seconds = float(declared)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):
        raise PlanInputError(f"annotation {ANNOTATION_CASE_SECONDS}={declared!r}: not seconds")
    return CaseTiming(seconds, f"annotation {ANNOTATION_CASE_SECONDS}")


def calibrate(run: EvalRun, count: int, manifest: Path) -> CaseTiming:
    """Time the first ``count`` cases of the run's task on this machine, as a worker runs
    them (both sides of a comparison, its checks and relations; a dataset's first rows)."""
    spec = run.spec
    if count < 1:
        raise PlanInputError("--calibrate takes a number of cases above 0")
    try:
        with (
            tempfile.TemporaryDirectory(prefix="proctor-plan-") as scratch,
            load_task(
                spec.task, spec.compare, spec.cases.seed, rows=_rows(run, manifest, scratch)
            ) as task,
        ):
            started = time.perf_counter()
            done = sum(1 for _ in task.evaluate_batch(0, count, parse_duration(spec.case_timeout)))
            elapsed = time.perf_counter() - started
    except Exception as exc:
        raise PlanInputError(
            f"--calibrate: the task does not run on this machine ({type(exc).__name__}: {exc}); "
            "install it here, or give --case-seconds"
        ) from exc
    return CaseTiming(elapsed / max(done, 1), f"--calibrate: {done} cases timed here")


def _rows(run: EvalRun, manifest: Path, scratch: str) -> RowSource | None:
    """The dataset's rows for calibration, admitted into a scratch folder; None for generated
    cases."""
    if run.spec.cases.dataset is None:
        return None
    spec = with_dataset_path(run.spec, manifest)
    storage = RunStorage(LocalBlobs(Path(scratch)), "plan")
    location = dataset_location(spec)
    admit(spec, storage, location, fresh=True)
    return open_reader(spec, storage, location)


def build_report(
    run: EvalRun,
    namespace: str,
    preview: Preview,
    config: OperatorConfig,
    timing: CaseTiming | None,
    *,
    total: int,
) -> dict[str, Any]:
    """Everything ``plan`` prints, as one JSON-ready mapping (pure)."""
    plan = preview.plan
    placed = place_workers(plan)
    nodes = {n.name: n for n in preview.nodes}
    seconds = None
    if timing is not None:
        seconds = estimate_seconds(total, timing.seconds, plan.replicas)
    hour = estimate_cost(plan, preview.nodes, placed, config.prices, seconds=3600.0).status
    whole = None
    if seconds is not None:
        whole = estimate_cost(plan, preview.nodes, placed, config.prices, seconds=seconds).status
    return {
        "name": str(run.metadata.get("name", "")),
        "namespace": namespace,
        "plan": plan.to_status().to_wire(),
        "backlog": preview.demand.backlog,
        "feasible": plan.feasible,
        "infeasibleReason": plan.infeasible_reason or None,
        "memoryPerWorker": format_bytes(plan.size.memory),
        "memoryTotal": format_bytes(plan.size.memory * plan.replicas),
        "nodes": [
            {
                "name": n.name,
                "pool": n.pool or None,
                "capacityType": capacity_type(nodes[n.name]),
                "fit": n.fit,
                "workers": placed.get(n.name, 0),
                "hourlyPrice": hourly_price(nodes[n.name], config.prices),
            }
            for n in plan.per_node
        ],
        "cases": total,
        "caseSeconds": None if timing is None else timing.seconds,
        "caseSecondsFrom": None if timing is None else timing.source,
        "durationSeconds": seconds,
        "costPerHour": _cost(hour),
        "cost": None if whole is None else _cost(whole),
    }


def _cost(status: CostStatus) -> dict[str, Any]:
    out = status.to_wire()
    out.pop("accruedUntil", None)
    return out


def render_text(report: dict[str, Any]) -> str:
    """The report for a terminal (never cut to a width)."""
    plan = report["plan"]
    gpus = f", {plan['gpus']} GPU" if plan.get("gpus") else ""
    lines = [
        f"EvalRun {report['name']} in namespace {report['namespace']}",
        f"Workers: {plan['replicas']} of {plan['profile']} ({plan['cpu']} CPU, "
        f"{plan['memory']} memory{gpus} each), bound by {plan['boundBy']}",
        f"  {plan['message']}",
        f"Memory: {report['memoryPerWorker']} per worker, {report['memoryTotal']} in all",
    ]
    if plan.get("pools"):
        lines.append("Pools:")
        lines += _table(
            ["POOL", "REPLICAS", "FIT"],
            [[p["name"], str(p["replicas"]), str(p["fit"])] for p in plan["pools"]],
        )
    lines.append("Nodes (eligible):" if report["nodes"] else "Nodes: none eligible")
    lines += _table(
        ["NODE", "POOL", "CAPACITY", "FIT", "WORKERS", "PRICE/H"],
        [
            [n["name"], n["pool"] or "-", n["capacityType"], str(n["fit"]), str(n["workers"]),
             "-" if n["hourlyPrice"] is None else f"{n['hourlyPrice']:g}"]
            for n in report["nodes"]
        ],
    )  # fmt: skip
    lines += _duration_lines(report)
    return "\n".join(lines)


def _duration_lines(report: dict[str, Any]) -> list[str]:
    per_hour, cost = report["costPerHour"], report["cost"]
    if report["caseSeconds"] is None:
        return [
            "Duration: unknown (give --calibrate N or --case-seconds S, or annotate the "
            f"manifest {ANNOTATION_CASE_SECONDS})",
            f"Cost per hour: {_money(per_hour)}",
        ]
    if report["durationSeconds"] is None:
        return ["Duration: never (no worker would run)"]
    return [
        f"Duration: about {format_duration(report['durationSeconds'])} ({report['cases']} cases "
        f"at {report['caseSeconds']:.4g}s each from {report['caseSecondsFrom']}, on "
        f"{report['plan']['replicas']} workers)",
        f"Cost: about {_money(cost)}",
    ]


def _money(cost: dict[str, Any]) -> str:
    hours = cost["nodeSeconds"] / 3600.0
    currency = cost.get("currency", "")
    parts = []
    for pool in cost.get("pools") or []:
        price = "no price" if pool.get("cost") is None else f"{pool['cost']:.4g} {currency}"
        parts.append(f"{pool['pool']} {pool['capacityType']} {price}")
    total = cost.get("estimatedCost")
    head = "unknown (no node has a price)" if total is None else f"{total:.4g} {currency}"
    text = f"{head} for {hours:.3g} node-hours" + (f" ({'; '.join(parts)})" if parts else "")
    if cost.get("unpricedNodeSeconds"):
        text += f"; {cost['unpricedNodeSeconds'] / 3600:.3g} node-hours on nodes without a price"
    return text


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
            for r in [header, *rows]]  # fmt: skip
