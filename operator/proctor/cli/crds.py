"""``proctor crds``: the CustomResourceDefinitions, generated from the API models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proctor.api.crdgen import KINDS, render, render_all
from proctor.cli.usage import HelpFormatter, exit_codes


def add_crds(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    crds = sub.add_parser(
        "crds",
        help="print the CustomResourceDefinitions",
        description="Print the CRDs of EvalRun and BenchmarkSuite, generated from the API "
        "models (what crds/ and the chart ship), as one multi-document YAML.",
        epilog=exit_codes(
            (0, "printed (or written)"), (1, "--out-dir cannot be written"), (2, "bad arguments")
        ),
        formatter_class=HelpFormatter,
    )
    crds.add_argument("--out-dir", help="write one file per CRD into this folder instead")
    crds.set_defaults(func=cmd_crds)


def cmd_crds(args: argparse.Namespace) -> int:
    if args.out_dir is None:
        sys.stdout.write(render_all())
        return 0
    out = Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            (out / kind.file_name).write_text(render(kind))
            print(f"wrote {out / kind.file_name}")
    except OSError as exc:
        print(f"error: --out-dir {out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0
