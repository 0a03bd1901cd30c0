"""``proctor validate``: manifests checked against the API models, as ``kubectl -f`` reads them
(files, folders, ``-`` for standard input), with the apiserver's messages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proctor.cli.usage import HelpFormatter
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


def _results(name: str, recursive: bool) -> list[DocumentResult]:
    """The validated documents of one PATH argument; raises ManifestError."""
    if name == STDIN:
        return validate_text(sys.stdin.read(), "<stdin>")
    results: list[DocumentResult] = []
    for path in manifest_paths(Path(name), recursive=recursive):
        results += validate_file(path)
    return results


def cmd_validate(args: argparse.Namespace) -> int:
    invalid = False
    for name in args.paths:
        try:
            results = _results(name, args.recursive)
        except ManifestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            invalid = True
            continue
        for result in results:
            if result.ok:
                print(f"{result.describe()}: valid")
                continue
            invalid = True
            print(f"{result.describe()}: invalid", file=sys.stderr)
            for error in result.errors:
                print(f"  {error}", file=sys.stderr)
    return EXIT_INVALID if invalid else EXIT_VALID
