"""``python -m proctor.mgadapter``: Metamorphic Guard's report for a Proctor run, and
``evaluate`` with ``metamorphic-guard evaluate``'s options run through ``proctor run``.

``report MANIFEST`` reads the run's records (``proctor run``'s results folder by default) and
prints Metamorphic Guard's decision; ``evaluate --task --baseline --candidate --n --seed ...``
writes the EvalRun for those options, runs it with ``proctor run`` and reports. Exit codes, as
``metamorphic-guard evaluate``: 0 adopt, 1 reject; and 2 usage, 3 incomplete run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from proctor.console import make_console
from proctor.integrations.metamorphic_guard.adapter import load_spec
from proctor.integrations.metamorphic_guard.report import report_from_storage
from proctor.local.run import LocalRunOptions, load_evalrun, run_local
from proctor.sdk import TaskLoadError
from proctor.storage import open_storage

EXIT_ADOPT = 0
EXIT_REJECT = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3


def manifest(
    *,
    name: str,
    task: str,
    baseline: str,
    candidate: str,
    n: int,
    seed: int,
    params: dict[str, Any] | None = None,
    case_timeout: str = "2s",
    batch_size: int = 250,
    workers: int = 2,
) -> dict[str, Any]:
    """The EvalRun for ``metamorphic-guard evaluate --task --baseline --candidate --n --seed``.

    ``params`` are further ``task.params`` (``minDelta``, ``alpha``, ...); ``case_timeout`` is
    Metamorphic Guard's ``--timeout-s`` default, here for a whole side of a case.
    """
    return {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": name},
        "spec": {
            "image": "proctor/proctor:0.1.0",
            "task": {
                "entrypoint": "proctor.mgadapter:task",
                "params": {"task": task, **(params or {})},
            },
            "cases": {"count": n, "seed": seed},
            "compare": {"baseline": {"ref": baseline}, "candidate": {"ref": candidate}},
            # At least four entries per worker, so that a small run is shared out evenly.
            "batch": {
                "initialSize": max(1, min(batch_size, n // (4 * workers))),
                "maxSize": 10_000,
            },
            "caseTimeout": case_timeout,
        },
    }


def _storage(
    manifest_path: Path, results: Path, run_id: str | None, storage_uri: str | None
) -> Any:

    run = load_evalrun(manifest_path)
    name = str(run.metadata.get("name") or manifest_path.stem)
    uri = storage_uri or results.resolve().as_uri()
    # The results of the run's current attempt (see proctor.local.attempts).
    return run, open_storage(uri, run_id or name).of_current_attempt()


def _print(report: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(report) + "\n")
        return
    p = report["proctor"]
    lo, hi = p["deltaInterval"]
    print(f"Metamorphic Guard task {report['task']}: n={report['n']} seed={report['seed']}")
    print(f"  baseline pass rate   {p['baselinePassRate']:.4f}")
    print(f"  candidate pass rate  {p['candidatePassRate']:.4f}")
    print(f"  delta                {p['delta']:.4f}  CI [{lo:.4f}, {hi:.4f}]")
    print(f"  relative risk        {p['relativeRisk']}  CI {p['relativeRiskInterval']}")
    print(f"  property violations  {p['propertyViolations']}")
    print(f"  relation violations  {p['relationViolations']}")
    print(f"  decision             {p['decision']} ({p['reason']})")


def _code(report: dict[str, Any]) -> int:
    decision = report["proctor"]["decision"]
    return {"accept": EXIT_ADOPT, "reject": EXIT_REJECT}.get(decision, EXIT_INCOMPLETE)


def cmd_report(args: argparse.Namespace) -> int:

    run, storage = _storage(Path(args.manifest), Path(args.results_dir), args.run_id, args.storage)
    report = report_from_storage(run.spec, storage)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    _print(report, args.json)
    return _code(report)


def cmd_evaluate(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {
        "minDelta": args.min_delta,
        "minPassRate": args.min_pass_rate,
        "alpha": args.alpha,
        "ciMethod": args.ci_method,
        "bootstrapSamples": args.bootstrap_samples,
        "relationCorrection": args.relation_correction,
        "violationCap": args.violation_cap,
    }
    name = args.name or f"mg-{args.task.replace(':', '-').replace('_', '-').lower()}"
    doc = manifest(
        name=name,
        task=args.task,
        baseline=args.baseline,
        candidate=args.candidate,
        n=args.n,
        seed=args.seed,
        params=params,
        case_timeout=f"{args.timeout_s:g}s",
        workers=args.workers or os.cpu_count() or 1,
    )
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", dir=results, delete=False) as f:
        yaml.safe_dump(doc, f, sort_keys=False)
        path = Path(f.name)

    # A wrong task fails here, before any worker starts; and local workers, forked from this
    # process, find Metamorphic Guard imported (the report needs it here anyway).
    load_spec(args.task)
    captured = io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(captured):
        code = run_local(
            LocalRunOptions(
                manifest=path,
                workers=args.workers,
                results_dir=results,
                json_output=True,
                refresh_seconds=0.05,
            ),
            make_console(stderr=True),
        )
    seconds = time.monotonic() - t0
    lines = captured.getvalue().strip().splitlines()
    if code not in (EXIT_ADOPT, EXIT_REJECT, EXIT_INCOMPLETE) or not lines:
        return EXIT_USAGE if code == EXIT_USAGE else EXIT_INCOMPLETE
    summary = json.loads(lines[-1])
    report = summary.pop("metamorphicGuard", None)
    if report is None:
        sys.stderr.write(f"error: no Metamorphic Guard report: {summary.get('reason')}\n")
        return EXIT_INCOMPLETE
    report["proctor"]["seconds"] = round(seconds, 3)
    report["proctor"]["runSummary"] = summary
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    _print(report, args.json)
    return _code(report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m proctor.mgadapter", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("report", help="Metamorphic Guard's report for a proctor run")
    rep.add_argument("manifest", help="the EvalRun manifest that was run")
    rep.add_argument("--results-dir", default="proctor-results", help="proctor run's folder")
    rep.add_argument("--run-id", help="the run's key (default: its name)")
    rep.add_argument("--storage", help="s3://BUCKET/PREFIX or file:///PATH instead")
    rep.add_argument("--json", action="store_true", help="print the report as JSON")
    rep.add_argument("--out", help="also write the full report (JSON) here")
    rep.set_defaults(func=cmd_report)

    ev = sub.add_parser("evaluate", help="metamorphic-guard evaluate's options, run by proctor")
    ev.add_argument("--task", required=True, help="registered task name or module:factory")
    ev.add_argument("--baseline", required=True, help="file.py, file.py:fn or module:fn")
    ev.add_argument("--candidate", required=True, help="file.py, file.py:fn or module:fn")
    ev.add_argument("--n", type=int, default=400)
    ev.add_argument("--seed", type=int, default=42)
    ev.add_argument("--timeout-s", type=float, default=2.0)
    ev.add_argument("--alpha", type=float, default=0.05)
    ev.add_argument("--min-delta", type=float, default=0.02)
    ev.add_argument("--min-pass-rate", type=float, default=0.80)
    ev.add_argument("--violation-cap", type=int, default=25)
    ev.add_argument("--bootstrap-samples", type=int, default=1000)
    ev.add_argument("--ci-method", default="bootstrap")
    ev.add_argument(
        "--relation-correction", default="holm", choices=["holm", "hochberg", "fdr", "none"]
    )
    ev.add_argument("--workers", type=int, default=None, help="local workers (default: CPUs)")
    ev.add_argument("--name", help="run name (default: from the task)")
    ev.add_argument("--results-dir", default="proctor-results")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--out", help="also write the full report (JSON) here")
    ev.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    try:
        code: int = args.func(args)
    except (TaskLoadError, ValueError, OSError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    return code
