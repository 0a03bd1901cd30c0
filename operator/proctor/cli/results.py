"""``proctor results FILE.yaml``: a run's results, one row per case, or what failed.

The run is found as ``proctor run`` finds it: ``--run-id`` (default: the manifest's name) under
``--storage`` (``s3://BUCKET/PREFIX``, credentials and endpoint the usual boto3 way, as for
``proctor run``) or ``--results-dir`` (default ``proctor-results``), as its current attempt
sees it. With ``--out PATH`` it writes every case once (``--format parquet|jsonl|csv``, the
columns of docs/datasets.md#results); without, it prints the counts, the top violations with
their counts and the first failing case indexes (``--json``: as one JSON object).

Exit codes: 0 done; 2 the manifest, the run id or an argument is wrong; 3 the run has no
results there (not started, another run id or storage); 4 the storage cannot be read, or a
result object is torn (``proctor run --resume`` evaluates its range again).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from proctor.api.v1alpha1.evalrun import FIRST_FAILING, TOP_VIOLATIONS
from proctor.local.run import RunError, load_evalrun
from proctor.redact import redact_text
from proctor.storage import CorruptObjectError, RunProgress, RunStorage, StorageError, open_storage
from proctor.storage.export import FORMATS, export
from proctor.validation import dns_label_error

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NO_RESULTS = 3
EXIT_UNREADABLE = 4


class _Exit(Exception):  # noqa: N818 - a control-flow signal carrying an exit code
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    results = sub.add_parser(
        "results",
        help="export a run's results (one row per case) or print what failed",
        description="Write every case of a run once to --out (Parquet, JSON lines or CSV; "
        "columns in docs/datasets.md#results), or print its counts, top violations and first "
        "failing cases. Exit code: 0 done, 2 bad manifest, run id or arguments, 3 no results "
        "for the run there, 4 the storage or a result object cannot be read.",
    )
    results.add_argument("file", metavar="FILE", help="the run's EvalRun manifest")
    results.add_argument("--run-id", help="the run's id (default: the manifest's name)")
    where = results.add_mutually_exclusive_group()
    where.add_argument("--storage", help="s3://BUCKET/PREFIX or file:///PATH the run wrote to")
    where.add_argument(
        "--results-dir", default="proctor-results",
        help="the local results folder of proctor run (default: proctor-results)",
    )  # fmt: skip
    results.add_argument(
        "--format", choices=FORMATS, default="parquet", help="with --out (default: parquet)"
    )
    results.add_argument("--out", help="write one row per case here instead of a summary")
    results.add_argument("--json", action="store_true", help="print the summary as JSON")
    results.set_defaults(func=cmd_results)


def cmd_results(args: argparse.Namespace) -> int:
    try:
        storage = _open(args)
        if args.out is None:
            _print(_summary(storage), as_json=args.json)
        else:
            rows = export(storage, args.format, Path(args.out))
            print(f"wrote {rows:,} cases to {args.out} ({args.format})")
    except _Exit as exc:
        print(f"error: {redact_text(str(exc))}", file=sys.stderr)
        return exc.code
    except CorruptObjectError as exc:
        print(
            f"error: {redact_text(str(exc))}; resume the run to evaluate its range again",
            file=sys.stderr,
        )
        return EXIT_UNREADABLE
    except (StorageError, OSError) as exc:
        print(f"error: cannot read the results: {redact_text(str(exc))}", file=sys.stderr)
        return EXIT_UNREADABLE
    return EXIT_OK


def _open(args: argparse.Namespace) -> RunStorage:
    """The run's storage as its current attempt sees it; :class:`_Exit` when it has none."""
    try:
        evalrun = load_evalrun(Path(args.file))
    except RunError as exc:
        raise _Exit(EXIT_USAGE, str(exc)) from exc
    run_id = args.run_id or str(evalrun.metadata.get("name") or Path(args.file).stem)
    problem = dns_label_error(run_id)
    if problem is not None:
        raise _Exit(EXIT_USAGE, f"--run-id: {problem}")
    uri = args.storage or Path(args.results_dir).resolve().as_uri()
    compression = evalrun.spec.compression()
    try:
        base = open_storage(uri, run_id, compression=compression.algorithm)
    except StorageError as exc:
        raise _Exit(EXIT_USAGE, str(exc)) from exc
    storage = base.of_current_attempt()
    if next(storage.result_keys(), None) is None:
        raise _Exit(EXIT_NO_RESULTS, f"no results of run {run_id!r} under {storage.uri}")
    return storage


def _summary(storage: RunStorage) -> dict[str, Any]:
    """Counts, top violations and first failing cases, each case counted once."""
    progress = RunProgress(storage, total=0)
    progress.refresh()
    agg = progress.aggregate
    return {
        "runId": storage.run_id,
        "attempt": storage.attempt or None,
        "recorded": agg.total,
        "passed": agg.passed,
        "failed": agg.failed,
        "errored": agg.errored,
        "deadLettered": sum(e - s for s, e in progress.dead.intervals()),
        "topViolations": [{"name": n, "count": c} for n, c in agg.top_violations(TOP_VIOLATIONS)],
        "firstFailing": agg.first_failing[:FIRST_FAILING],
        "unreadable": sorted(progress.corrupt),
        "resultsUri": storage.results_uri(),
    }


def _print(data: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data))
        return
    print(f"run {data['runId']}: {data['recorded']:,} cases recorded")
    print(f"  {data['passed']:,} passed, {data['failed']:,} failed, {data['errored']:,} errored")
    if data["deadLettered"]:
        print(f"  {data['deadLettered']:,} cases dead-lettered (see dead/)")
    if data["topViolations"]:
        print("top violations:")
        width = max(len(f"{v['count']:,}") for v in data["topViolations"])
        for v in data["topViolations"]:
            print(f"  {v['count']:>{width},}  {v['name']}")
    if data["firstFailing"]:
        print("first failing cases: " + ", ".join(map(str, data["firstFailing"])))
    for key in data["unreadable"]:
        print(f"warning: result object {key} cannot be read and is not counted")
    print(f"results: {data['resultsUri']}")
