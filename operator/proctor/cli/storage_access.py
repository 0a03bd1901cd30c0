"""How ``proctor results NAME`` and ``proctor report NAME`` read a run's storage from the user's
machine: where it is (the run's ``spec.storage``, else the folder its status names) and whose
credentials sign for it.

Which credentials win, in order: ``--profile``/``--my-credentials`` (the user's own, the usual
boto3 way: environment, ``~/.aws``, the profile); else the run's ``spec.storage.secretRef``,
read through the API (``get secrets`` in the run's namespace); else, when the run names no
Secret or reading it is forbidden, the user's own, with a note on stderr. Credentials never
appear in a message (:mod:`proctor.redact`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from proctor import aws
from proctor.cli.context import EXIT_STORAGE, CommandError, Target, reported
from proctor.cluster.client import KubeApiError
from proctor.redact import redact_text
from proctor.storage import Blobs, LocalBlobs, S3Blobs, StorageError

READ_DEADLINE_SECONDS = 10.0
"""How long a read of the store is retried before the command says it cannot be reached (the
operator waits minutes; a person at a terminal should not)."""


def add_storage_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "storage",
        "Whose credentials read the run's storage: by default the run's Secret "
        "(spec.storage.secretRef, which needs get on secrets), else your own.",
    )
    group.add_argument(
        "--my-credentials", action="store_true",
        help="read with your own AWS credentials (environment, ~/.aws), never the run's Secret",
    )  # fmt: skip
    group.add_argument("--profile", help="your AWS profile (implies --my-credentials)")
    group.add_argument(
        "--endpoint",
        help="the S3 endpoint to reach the store from here (default: the run's "
        "spec.storage.endpoint; needed for the operator's default storage)",
    )


@dataclass(frozen=True)
class Location:
    """Where a run's objects are: ``uri`` (``s3://BUCKET/PREFIX`` or a folder), its endpoint
    and region, and the Secret that signs for it (None: none named)."""

    uri: str
    endpoint: str | None
    region: str | None
    secret: str | None


def location(body: dict[str, Any], root_of: str | None) -> Location | None:
    """The storage the run's spec names; else the root of the URI its status gives
    (``root_of``, cut before the run's own folder); None when neither says (pure)."""
    storage = (body.get("spec") or {}).get("storage") or {}
    if storage.get("uri"):
        secret = (storage.get("secretRef") or {}).get("name")
        return Location(storage["uri"], storage.get("endpoint"), storage.get("region"), secret)
    if root_of:
        return Location(root_of, None, None, None)
    return None


def use_own(args: argparse.Namespace, where: Location) -> bool:
    """Whether the user's credentials read the store rather than the run's Secret (pure)."""
    return bool(args.my_credentials or args.profile or where.secret is None)


def open_store(target: Target, args: argparse.Namespace, where: Location) -> tuple[Blobs, str]:
    """The store's blobs at ``where.uri`` and whose credentials open them, for messages."""
    parts = urlsplit(where.uri)
    if parts.scheme in ("", "file"):
        folder = Path(parts.path if parts.scheme else where.uri)
        return LocalBlobs(folder, create=False), "this machine's files"
    if parts.scheme != "s3":
        raise CommandError(f"cannot read {where.uri}: not an s3:// URI or a folder", EXIT_STORAGE)
    creds, whose = _credentials(target, args, where)
    try:
        client = aws.client(
            "s3",
            endpoint_url=args.endpoint or where.endpoint,
            region=where.region,
            credentials=creds,
            max_attempts=2,
            connect_timeout=5,
            profile=args.profile,
        )
    except aws.botocore_error() as exc:  # an unknown --profile, say
        raise unreadable(where.uri, "your own AWS credentials", exc) from exc
    prefix = parts.path.strip("/")
    blobs = S3Blobs(parts.netloc, prefix, client=client, retry_deadline=READ_DEADLINE_SECONDS)
    return blobs, whose


def _credentials(
    target: Target, args: argparse.Namespace, where: Location
) -> tuple[dict[str, str], str]:
    """The keys that sign for the store and whose they are."""
    mine = f"your own AWS credentials{f' (profile {args.profile})' if args.profile else ''}"
    if use_own(args, where) or where.secret is None:
        return {}, mine
    namespace = target.where
    with reported(f"read Secret {where.secret} in namespace {namespace}", target.server):
        try:
            data = target.cluster.read_secret(namespace, where.secret)
        except KubeApiError as exc:
            if exc.status != 403:
                raise
            print(
                f"note: no permission to read Secret {where.secret} (the run's storage "
                f"credentials) in namespace {namespace}; reading with {mine}",
                file=sys.stderr,
            )
            return {}, mine
    if data is None:
        raise CommandError(
            f"the run's Secret {where.secret} does not exist in namespace {namespace}; "
            "read with your own credentials (--my-credentials)",
            EXIT_STORAGE,
        )
    return {k: data[k] for k in aws.AWS_KEYS if data.get(k)}, f"the run's Secret {where.secret}"


def unreadable(where: str, whose: str, exc: Exception) -> CommandError:
    """The error of a store that cannot be read: which URI, why, with whose credentials."""
    why = redact_text(str(exc))
    return CommandError(f"cannot read {where} (with {whose}): {why}", EXIT_STORAGE)


T = TypeVar("T")


def read_or_fail(what: str, whose: str, read: Callable[[], T]) -> T:
    """``read()``, a storage failure turned into :func:`unreadable`."""
    try:
        return read()
    except (StorageError, OSError, aws.botocore_error()) as exc:
        raise unreadable(what, whose, exc) from exc
