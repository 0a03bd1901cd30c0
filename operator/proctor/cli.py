"""The ``proctor`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from proctor import __version__


def _cmd_crds(args: argparse.Namespace) -> int:
    from proctor.api.crdgen import KINDS, render, render_all

    if args.out_dir is None:
        sys.stdout.write(render_all())
        return 0
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        (out / kind.file_name).write_text(render(kind))
        print(f"wrote {out / kind.file_name}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from proctor.validation import ManifestError, validate_file

    failed = False
    for name in args.files:
        try:
            results = validate_file(Path(name))
        except ManifestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
            continue
        for result in results:
            if result.ok:
                print(f"{result.describe()}: valid")
                continue
            failed = True
            print(f"{result.describe()}: invalid", file=sys.stderr)
            for error in result.errors:
                print(f"  {error}", file=sys.stderr)
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proctor",
        description="Run evaluation runs and benchmark suites on Kubernetes, or on this machine.",
    )
    parser.add_argument("--version", action="version", version=f"proctor {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    crds = sub.add_parser("crds", help="print the CustomResourceDefinitions")
    crds.add_argument("--out-dir", help="write one file per CRD into this folder instead")
    crds.set_defaults(func=_cmd_crds)

    validate = sub.add_parser("validate", help="validate manifests against the API")
    validate.add_argument("files", nargs="+", metavar="FILE", help="YAML manifests")
    validate.set_defaults(func=_cmd_validate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
