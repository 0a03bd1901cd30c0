"""``proctor get [NAME]``: runs of both kinds in a table, as ``kubectl get`` lays them out
(``-o wide`` adds cases, failed, delta, run id and results; ``-o name|json|yaml``)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

import yaml

from proctor.cli.context import ACCESS_CODES, add_cluster_options, connect, run_command
from proctor.cli.lookup import find_run, list_runs
from proctor.cli.usage import HelpFormatter, exit_codes
from proctor.cli.views import get_table
from proctor.console import make_console

OUTPUTS = ("table", "wide", "name", "json", "yaml")


def add_get(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    get = sub.add_parser(
        "get",
        help="list runs (EvalRuns and BenchmarkSuites) of a namespace",
        description="List the EvalRuns and BenchmarkSuites of the namespace (or of every "
        "namespace with -A), or the one NAME, from the current kubeconfig context: phase, "
        "progress, ready workers, ETA, decision or regressions, age.",
        epilog=exit_codes(*ACCESS_CODES),
        formatter_class=HelpFormatter,
    )
    get.add_argument("name", nargs="?", metavar="NAME", help="one run: NAME or KIND/NAME")
    get.add_argument(
        "-o", "--output", choices=OUTPUTS, default="table",
        help="table (default), wide (more columns), name, json or yaml",
    )  # fmt: skip
    add_cluster_options(get, all_namespaces=True)
    get.set_defaults(func=lambda args: run_command(args, cmd_get))


def cmd_get(args: argparse.Namespace) -> int:
    target = connect(args)
    runs = [find_run(target, args.name)] if args.name else list_runs(target)
    if args.output in ("json", "yaml"):
        items = [body for _, body in runs]
        doc = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}
        if args.output == "json":
            sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        else:
            sys.stdout.write(yaml.safe_dump(doc, sort_keys=False))
        return 0
    if args.output == "name":
        for kind, body in runs:
            print(f"{kind.singular}.{kind.crd_name.split('.', 1)[1]}/{body['metadata']['name']}")
        return 0
    if not runs:
        where = f"namespace {target.namespace}" if target.namespace else "any namespace"
        make_console(stderr=True).print(f"No runs found in {where}.", markup=False)
        return 0
    table = get_table(
        runs, datetime.now(UTC), wide=args.output == "wide", namespaces=target.namespace is None
    )
    make_console().print(table)
    return 0
