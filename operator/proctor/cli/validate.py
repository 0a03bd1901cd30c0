"""``proctor validate``: manifests checked against the API models, as ``kubectl -f`` reads them
(files, folders, ``-`` for standard input), with the apiserver's messages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proctor.api.v1alpha1.evalrun import EvalRun
from proctor.cli.usage import HelpFormatter
from proctor.local.admission import local_dataset_problem
from proctor.validation import (
    STDIN,
    DocumentResult,
    ManifestError,
    manifest_paths,
    validate_file,
    validate_text,
)

EXIT_VALID = 0
EXIT_INVALID = 1

EPILOG = """\
Each PATH is a file, a folder (its .yaml, .yml and .json files; -R for sub-folders) or - for
standard input. Every document is checked: EvalRun and BenchmarkSuite against the API models,
with the messages `kubectl apply` would give; any other kind is reported as unsupported.

exit codes:
  0  every document is valid
  1  some document is invalid (each error is printed with its field), or a path cannot be
     read, a folder holds no manifest file, or a file is not YAML
  2  bad arguments
"""


def add_validate(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    validate = sub.add_parser(
        "validate",
        help="validate manifests against the API (files, folders, - for stdin)",
        description="Validate EvalRun and BenchmarkSuite manifests without a cluster.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    validate.add_argument(
        "paths", nargs="+", metavar="PATH", help="a manifest file, a folder, or - for stdin"
    )
    validate.add_argument(
        "-R", "--recursive", action="store_true", help="read folders' sub-folders too"
    )
    validate.set_defaults(func=cmd_validate)


def _results(name: str, recursive: bool) -> list[tuple[Path, DocumentResult]]:
    """The validated documents of one PATH argument, each with the file it came from (a local
    dataset's relative path is read from that file's folder; stdin's is the working
    directory); raises ManifestError."""
    if name == STDIN:
        return [(Path("stdin.yaml"), r) for r in validate_text(sys.stdin.read(), "<stdin>")]
    results: list[tuple[Path, DocumentResult]] = []
    for path in manifest_paths(Path(name), recursive=recursive):
        results += [(path, r) for r in validate_file(path)]
    return results


def _dataset_problem(path: Path, result: DocumentResult) -> str | None:
    """What keeps a valid EvalRun's local dataset from serving it (unreadable files, fewer
    rows than ``cases.count``), or None."""
    if not result.ok or not isinstance(result.model, EvalRun):
        return None
    return local_dataset_problem(result.model.spec, path)


def cmd_validate(args: argparse.Namespace) -> int:
    invalid = False
    for name in args.paths:
        try:
            results = _results(name, args.recursive)
        except ManifestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            invalid = True
            continue
        for path, result in results:
            problem = _dataset_problem(path, result)
            if result.ok and problem is None:
                print(f"{result.describe()}: valid")
                continue
            invalid = True
            print(f"{result.describe()}: invalid", file=sys.stderr)
            errors = result.errors if problem is None else [f"spec.cases.dataset: {problem}"]
            for error in errors:
                print(f"  {error}", file=sys.stderr)
    return EXIT_INVALID if invalid else EXIT_VALID
