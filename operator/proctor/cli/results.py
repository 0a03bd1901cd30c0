"""``proctor results FILE.yaml`` or ``proctor results NAME``: a run's results, one row per case,
or what failed and what was not evaluated.

``FILE`` (a path ending .yaml, .yml or .json, or any existing file) is a run of ``proctor run``,
found as ``proctor run`` finds it: ``--run-id`` (default: the manifest's name) under
``--storage`` (``s3://BUCKET/PREFIX``, credentials and endpoint the usual boto3 way) or
``--results-dir`` (default ``proctor-results``), as its current attempt sees it.

``NAME`` (or ``evalrun/NAME``) is an EvalRun of the current kubeconfig context: its objects are
read from its storage (``spec.storage``, else the folder its status names) with the run's
Secret or the user's own credentials (:mod:`proctor.cli.storage_access` says which wins).

With ``--out PATH`` every case is written once (``--format parquet|jsonl|csv``, the columns of
docs/datasets.md#results); without, the counts, the top violations with their counts, the
first failing case indexes and the cases not evaluated with why (``--json``: one JSON object).
Cases not evaluated (unreadable dataset rows, a failed ``generate()``, both sides errored,
dead-lettered batches, no record) are counted apart, never among the evaluated ones.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from proctor.api.v1alpha1 import EVALRUN_KIND
from proctor.api.v1alpha1.base import Compression
from proctor.api.v1alpha1.evalrun import FIRST_FAILING, TOP_VIOLATIONS
from proctor.cli.context import (
    ACCESS_CODES,
    EXIT_STORAGE,
    CommandError,
    Target,
    add_cluster_options,
    codes,
    connect,
    run_command,
)
from proctor.cli.lookup import find_run
from proctor.cli.storage_access import add_storage_options, location, open_store, read_or_fail
from proctor.cli.usage import HelpFormatter, exit_codes
from proctor.local.run import RunError, load_evalrun
from proctor.redact import redact_text
from proctor.storage import CorruptObjectError, RunProgress, RunStorage, StorageError, open_storage
from proctor.storage.export import FORMATS, export
from proctor.validation import dns_label_error

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NO_RESULTS = 3
EXIT_UNREADABLE = 4
DEFAULT_RESULTS_DIR = "proctor-results"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
REASONS_SHOWN = 5
"""Reasons for cases not evaluated printed one per line; the rest are summed on one line."""


class _Exit(Exception):  # noqa: N818 - a control-flow signal carrying an exit code
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


EPILOG = exit_codes(
    (EXIT_OK, "done"),
    (EXIT_USAGE, "bad manifest, run id or arguments"),
    (EXIT_NO_RESULTS, "no results for the run there (not started, another run id)"),
    (EXIT_UNREADABLE, "the storage or a result object cannot be read"),
    title="exit codes of FILE (a run of proctor run on this machine)",
) + exit_codes(
    *ACCESS_CODES,
    *codes(EXIT_STORAGE),
    title="exit codes of NAME (an EvalRun on the cluster)",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    results = sub.add_parser(
        "results",
        help="a run's results: what failed and what was not evaluated, or every case exported",
        description="Print a run's counts, top violations, first failing cases and the cases "
        "not evaluated (with why), or write every case once to --out (Parquet, JSON lines or "
        "CSV; columns in docs/datasets.md#results). FILE is a manifest run with proctor run "
        "here; NAME (or evalrun/NAME) an EvalRun on the cluster, read from its storage with "
        "the run's Secret or your own credentials.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    results.add_argument(
        "target", metavar="FILE|NAME", help="an EvalRun manifest (.yaml), or a run's NAME"
    )
    results.add_argument(
        "--format", choices=FORMATS, default="parquet", help="with --out (default: parquet)"
    )
    results.add_argument("--out", help="write one row per case here instead of a summary")
    results.add_argument("--json", action="store_true", help="print the summary as JSON")
    local = results.add_argument_group("a run of proctor run (FILE)")
    local.add_argument("--run-id", help="the run's id (default: the manifest's name)")
    where = local.add_mutually_exclusive_group()
    where.add_argument("--storage", help="s3://BUCKET/PREFIX or file:///PATH the run wrote to")
    where.add_argument(
        "--results-dir",
        help=f"the local results folder of proctor run (default: {DEFAULT_RESULTS_DIR})",
    )
    add_cluster_options(results)
    add_storage_options(results)
    results.set_defaults(func=cmd_results)


def is_manifest(target: str) -> bool:
    """Whether ``results`` reads a local run (a manifest) rather than a run on the cluster."""
    return target.endswith(MANIFEST_SUFFIXES) or Path(target).is_file()


def cmd_results(args: argparse.Namespace) -> int:
    if not is_manifest(args.target):
        return run_command(args, cluster_results)
    try:
        storage = _open(args)
        _output(storage, args)
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


def _output(storage: RunStorage, args: argparse.Namespace, total: int | None = None) -> None:
    if args.out is None:
        _print(summary(storage, total), as_json=args.json)
    else:
        rows = export(storage, args.format, Path(args.out))
        print(f"wrote {rows:,} cases to {args.out} ({args.format})")


def _open(args: argparse.Namespace) -> RunStorage:
    """The run's storage as its current attempt sees it; :class:`_Exit` when it has none."""
    try:
        evalrun = load_evalrun(Path(args.target))
    except RunError as exc:
        raise _Exit(EXIT_USAGE, str(exc)) from exc
    run_id = args.run_id or str(evalrun.metadata.get("name") or Path(args.target).stem)
    problem = dns_label_error(run_id)
    if problem is not None:
        raise _Exit(EXIT_USAGE, f"--run-id: {problem}")
    uri = args.storage or Path(args.results_dir or DEFAULT_RESULTS_DIR).resolve().as_uri()
    compression = evalrun.spec.compression()
    try:
        base = open_storage(uri, run_id, compression=compression.algorithm)
    except StorageError as exc:
        raise _Exit(EXIT_USAGE, str(exc)) from exc
    storage = base.of_current_attempt()
    if next(storage.result_keys(), None) is None:
        raise _Exit(EXIT_NO_RESULTS, f"no results of run {run_id!r} under {storage.uri}")
    return storage


def summary(storage: RunStorage, total: int | None = None) -> dict[str, Any]:
    """Counts, top violations, first failing cases and the cases not evaluated (each case
    counted once; ``total``, when known, also counts the cases without a record)."""
    progress = RunProgress(storage, total=0)
    progress.refresh()
    agg = progress.aggregate
    dead = storage.dead_letters()
    reasons = not_evaluated(storage) if agg.unattributable else Counter()
    reasons.update(_dead_reasons(dead))
    dead_cases = sum(e - s for s, e in progress.dead.intervals())
    missing = (total - agg.total - dead_cases) if total is not None else 0
    if missing > 0:
        reasons["no record: not run (cancelled, stopped early or still running)"] += missing
    return {
        "runId": storage.run_id,
        "attempt": storage.attempt or None,
        "recorded": agg.total,
        "evaluated": agg.total - agg.unattributable,
        "passed": agg.passed,
        "failed": agg.failed,
        "errored": agg.errored - agg.unattributable,
        "deadLettered": dead_cases,
        "notEvaluated": [{"reason": r, "cases": n} for r, n in reasons.most_common()],
        "topViolations": [{"name": n, "count": c} for n, c in agg.top_violations(TOP_VIOLATIONS)],
        "firstFailing": agg.first_failing[:FIRST_FAILING],
        "unreadable": sorted(progress.corrupt),
        "resultsUri": storage.results_uri(),
    }


def not_evaluated(storage: RunStorage) -> Counter[str]:
    """Cases recorded but not evaluated, by reason: an unreadable dataset row (``badInput``),
    a failed ``generate()`` (``task``), both sides errored."""
    found: Counter[str] = Counter()
    for table in storage.iter_tables():
        found.update(_unattributable(table))
    return found


def _unattributable(table: pa.Table) -> list[str]:
    kind = table.column("errorType")
    blameless = pc.is_in(kind, value_set=pa.array(["badInput", "task"]))
    both = pc.and_(pc.is_valid(kind), pc.is_valid(table.column("baseline_errorType")))
    picked = table.filter(pc.fill_null(pc.or_(blameless, both), False))
    rows = zip(
        picked.column("errorType").to_pylist(),
        picked.column("error").to_pylist(),
        picked.column("baseline_errorType").to_pylist(),
        strict=True,
    )
    return [_reason(kind, error, baseline) for kind, error, baseline in rows]


def _reason(kind: str | None, error: str | None, baseline: str | None) -> str:
    if kind == "badInput":
        return f"badInput: the dataset row cannot be read: {error or '?'}"
    if kind == "task":
        return f"task: the task's generate() failed: {error or '?'}"
    return f"both sides errored (baseline {baseline}, candidate {kind})"


def _dead_reasons(dead: list[dict[str, Any]]) -> Counter[str]:
    found: Counter[str] = Counter()
    for letter in dead:
        deliveries = letter.get("deliveries")
        found[f"dead-lettered after {deliveries} deliveries: {letter.get('reason') or '?'}"] += int(
            letter.get("end", 0)
        ) - int(letter.get("start", 0))
    return found


def _print(data: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(data))
        return
    print(f"run {data['runId']}: {data['recorded']:,} cases recorded")
    print(
        f"  {data['evaluated']:,} evaluated: {data['passed']:,} passed, {data['failed']:,} "
        f"failed, {data['errored']:,} errored"
    )
    _print_not_evaluated(data["notEvaluated"])
    if data["topViolations"]:
        print("top violations:")
        _counted((v["count"], v["name"]) for v in data["topViolations"])
    if data["firstFailing"]:
        print("first failing cases: " + ", ".join(map(str, data["firstFailing"])))
    for key in data["unreadable"]:
        print(f"warning: result object {key} cannot be read and is not counted")
    print(f"results: {data['resultsUri']}")


def _print_not_evaluated(rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    print(f"not evaluated: {sum(r['cases'] for r in rows):,} cases (not counted above)")
    shown = [(r["cases"], r["reason"]) for r in rows[:REASONS_SHOWN]]
    rest = rows[REASONS_SHOWN:]
    if rest:
        shown.append((sum(r["cases"] for r in rest), f"{len(rest)} more reason(s)"))
    _counted(shown)


def _counted(rows: Any) -> None:
    rows = list(rows)
    width = max(len(f"{n:,}") for n, _ in rows)
    for n, what in rows:
        print(f"  {n:>{width},}  {what}")


# -- NAME: an EvalRun on the cluster -------------------------------------------------------------


def cluster_results(args: argparse.Namespace) -> int:
    if args.run_id or args.storage or args.results_dir:
        raise CommandError(
            "--run-id, --storage and --results-dir are for a run of proctor run (FILE.yaml); "
            f"{args.target!r} is read as a run on the cluster",
            EXIT_USAGE,
        )
    target = connect(args)
    try:
        kind, body = find_run(target, args.target)
        if kind.kind != EVALRUN_KIND:
            raise CommandError(
                f"{args.target!r} is a {kind.kind}: its results are its report "
                f"(proctor report {body['metadata']['name']})",
                EXIT_USAGE,
            )
        storage, whose = run_storage(target, args, body)
        total = ((body.get("status") or {}).get("counts") or {}).get("total")
        what = f"the results of EvalRun {body['metadata']['name']} in {storage.uri}"
        read_or_fail(what, whose, lambda: _cluster_output(storage, args, total))
    finally:
        target.api.close()
    return EXIT_OK


def _cluster_output(storage: RunStorage, args: argparse.Namespace, total: int | None) -> None:
    if next(storage.result_keys(), None) is None and not storage.dead_letters():
        raise CommandError(
            f"no results under {storage.uri} yet: the run has recorded no case", EXIT_STORAGE
        )
    _output(storage, args, total)


def run_storage(
    target: Target, args: argparse.Namespace, body: dict[str, Any]
) -> tuple[RunStorage, str]:
    """The run's storage (its objects under ``<storage>/<uid>/``) and whose credentials read
    it."""
    uid = str(body["metadata"]["uid"])
    result = (body.get("status") or {}).get("result") or {}
    where = location(body, root_before(result.get("resultsUri"), uid))
    if where is None:
        raise CommandError(
            f"EvalRun {body['metadata']['name']} names no storage (spec.storage) and its status "
            "no results URI yet (the operator's default storage): try again once it runs",
            EXIT_STORAGE,
        )
    blobs, whose = open_store(target, args, where)
    storage_spec = (body.get("spec") or {}).get("storage") or {}
    compression = Compression.model_validate(storage_spec.get("compression") or {})
    return RunStorage(blobs, uid, compression=compression.algorithm), whose


def root_before(uri: str | None, folder: str) -> str | None:
    """``uri`` cut before its ``/<folder>/`` part: the storage root of a run's results URI
    (pure)."""
    if not uri or f"/{folder}/" not in uri:
        return None
    return uri[: uri.index(f"/{folder}/")]
