"""``proctor cache clear``: empty the result cache, all of it or what one manifest or one
implementation fingerprint would reuse (docs/cache.md)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.markup import escape

from proctor.cache import open_cache_blobs, task_keys
from proctor.cache.clear import clear, implementation_prefix, side_prefix
from proctor.cli.context import EXIT_OK, EXIT_STORAGE, EXIT_USAGE
from proctor.cli.usage import HelpFormatter, exit_codes
from proctor.console import make_console
from proctor.local.admission import with_cache_path
from proctor.local.run import RunError, load_evalrun
from proctor.redact import redact_text
from proctor.sdk import TaskLoadError, load_task
from proctor.storage import StorageError

EPILOG = exit_codes(
    (EXIT_OK, "cleared (also when nothing was there)"),
    (EXIT_USAGE, "bad arguments, an invalid manifest, or a task that cannot be loaded"),
    (EXIT_STORAGE, "the cache cannot be listed or its objects removed; names the URI"),
)
DESCRIPTION = """\
Remove result-cache entries, so the next run evaluates those cases again. With FILE, the cache
the manifest's EvalRun uses (spec.cache.uri, or proctor-cache/ beside --storage or
--results-dir, as proctor run finds it) and only the entries it would reuse: both sides, or
--side's (this imports the task, as proctor run does). With --uri, that cache: everything, or
the entries of each --implementation fingerprint."""


def add_cache(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cache = sub.add_parser(
        "cache",
        help="manage the result cache (clear)",
        description="Manage the result cache that EvalRuns with spec.cache share "
        "(docs/cache.md): `proctor cache clear` removes entries.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    actions = cache.add_subparsers(dest="action", required=True, metavar="ACTION")
    clr = actions.add_parser(
        "clear",
        help="remove result-cache entries",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    clr.add_argument("file", metavar="FILE", nargs="?", help="an EvalRun manifest")
    clr.add_argument("--uri", help="the cache: s3://BUCKET/PREFIX or a folder")
    clr.add_argument(
        "--implementation",
        action="append",
        default=[],
        metavar="FINGERPRINT",
        help="with --uri: only this implementation's entries (repeatable)",
    )
    clr.add_argument(
        "--side",
        choices=("baseline", "candidate", "task"),
        help="with FILE: only this side's entries (task: a run without compare)",
    )
    clr.add_argument("--storage", help="with FILE: the storage proctor run used (--storage)")
    clr.add_argument(
        "--results-dir", default="proctor-results", help="with FILE: proctor run's --results-dir"
    )
    clr.add_argument("--endpoint", help="S3 endpoint URL (MinIO, moto); unset for AWS")
    clr.add_argument("--region", help="S3 region")
    clr.set_defaults(func=cmd_cache_clear)


def _targets(args: argparse.Namespace) -> tuple[str, list[str] | None]:
    """The cache's URI and the prefixes to remove (None: all); raises RunError."""
    if (args.file is None) == (args.uri is None):
        raise RunError("give either FILE or --uri")
    if args.uri is not None:
        if args.side:
            raise RunError("--side needs FILE: the fingerprints come from its task")
        prefixes = [implementation_prefix(fp) for fp in args.implementation]
        return args.uri, prefixes or None
    if args.implementation:
        raise RunError("--implementation goes with --uri; with FILE use --side")
    path = Path(args.file)
    spec = with_cache_path(load_evalrun(path).spec, path)
    root = args.storage or Path(args.results_dir).resolve().as_uri()
    try:
        with load_task(spec.task, spec.compare, spec.cases.seed) as task:
            parts = task_keys(spec, task)
    except TaskLoadError as exc:
        raise RunError(f"the task cannot be loaded: {exc}") from exc
    if parts is None:
        raise RunError("this task is never cached (cacheable = False, or no fingerprint)")
    if args.side is not None and args.side not in parts.roles:
        raise RunError(f"--side {args.side}: the run's sides are {', '.join(parts.roles)}")
    prefixes = [
        side_prefix(impl, parts.task)
        for impl, role in zip(parts.implementations, parts.roles, strict=True)
        if args.side in (None, role)
    ]
    return spec.cache.location(root), prefixes


def cmd_cache_clear(args: argparse.Namespace) -> int:
    out = make_console(stderr=True)
    try:
        uri, prefixes = _targets(args)
    except RunError as exc:
        out.print(f"[red]error:[/red] {escape(redact_text(str(exc)))}")
        return EXIT_USAGE
    try:
        blobs = open_cache_blobs(uri, endpoint=args.endpoint, region=args.region)
        removed = clear(blobs, prefixes)
    except (StorageError, OSError) as exc:
        out.print(f"[red]error:[/red] {escape(redact_text(str(exc)))}")
        return EXIT_STORAGE
    where = redact_text(blobs.uri())
    print(f"removed {removed} cache objects from {where}")
    for prefix in prefixes or ():
        print(f"  {prefix}")  # v1/<implementation>/[<task>/]: the fingerprints cleared
    return EXIT_OK
