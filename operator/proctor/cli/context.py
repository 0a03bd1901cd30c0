"""What every cluster command shares: which cluster and namespace it talks to (``--kubeconfig``,
``--context``, ``-n/--namespace``, ``-A``, read as kubectl reads them), the client it opens
(Proctor's own, :mod:`proctor.cluster.client`), its exit codes, and the errors it turns into
one line and an exit code instead of a traceback."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import urllib3

from proctor.cluster.client import (
    KubeApi,
    KubeApiError,
    LoginError,
    keep_kubernetes_client_out,
    user_login,
)
from proctor.redact import redact_text

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_NOT_FOUND = 6
EXIT_NO_ACCESS = 7
EXIT_INTERRUPTED = 130

ACCESS_CODES = (
    (EXIT_OK, "done"),
    (EXIT_USAGE, "bad arguments"),
    (EXIT_NOT_FOUND, "no such run in the namespace"),
    (
        EXIT_NO_ACCESS,
        "no cluster access: no kubeconfig, an unknown --context, the API server cannot be "
        "reached, the credentials are refused (401) or lack RBAC (403), or the CRDs are not "
        "installed",
    ),
)
"""The exit codes every cluster command shares (its --help and docs/cli.md list them)."""


CommandBody = Callable[[argparse.Namespace], int]


class CommandError(Exception):
    """A failure the command reports as one line and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Target:
    """The API client and the namespace a command reads (None: every namespace)."""

    api: KubeApi
    namespace: str | None
    server: str = ""


def add_cluster_options(parser: argparse.ArgumentParser, *, all_namespaces: bool = False) -> None:
    group = parser.add_argument_group("cluster")
    group.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)"
    )
    group.add_argument("--context", help="kubeconfig context (default: its current context)")
    group.add_argument(
        "-n", "--namespace", help="namespace (default: the context's namespace, else default)"
    )
    if all_namespaces:
        group.add_argument(
            "-A", "--all-namespaces", action="store_true", help="runs of every namespace"
        )


def connect(args: argparse.Namespace) -> Target:
    """Log in as kubectl would; raises :class:`CommandError` when that is impossible."""
    keep_kubernetes_client_out()  # kopf (for its ConnectionInfo) must not load the client
    try:
        info = user_login(args.kubeconfig, args.context)
    except LoginError as exc:
        raise CommandError(redact_text(str(exc)), EXIT_NO_ACCESS) from exc
    if getattr(args, "all_namespaces", False):
        namespace = None
    else:
        namespace = args.namespace or info.default_namespace or "default"
    return Target(KubeApi(lambda: info, pool_size=2), namespace, str(info.server))


def access_error(exc: Exception, what: str, server: str = "") -> CommandError:
    """The error of a request that failed for want of access (or of the API server)."""
    if isinstance(exc, KubeApiError):
        if exc.status == 401:
            why = "the API server refused the credentials (401 Unauthorized)"
        elif exc.status == 403:
            why = f"forbidden (403): {exc.message}; the RBAC it needs is in docs/cli.md"
        else:
            why = f"the API server answered {exc.status}: {exc.message}"
        return CommandError(f"cannot {what}: {redact_text(why)}", EXIT_NO_ACCESS)
    # urllib3 wraps the cause in a "Max retries exceeded with url" sentence: say the cause.
    cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    server_named = f"the API server {server}" if server else "the API server"
    return CommandError(
        f"cannot {what}: {server_named} cannot be reached: {redact_text(str(cause))}",
        EXIT_NO_ACCESS,
    )


@contextlib.contextmanager
def reported(what: str, server: str = "") -> Iterator[None]:
    """Turn access failures inside the block into :class:`CommandError` (``cannot WHAT``)."""
    try:
        yield
    except (KubeApiError, urllib3.exceptions.HTTPError, OSError) as exc:
        raise access_error(exc, what, server) from exc


def run_command(args: argparse.Namespace, command: CommandBody) -> int:
    """Run a cluster command: its :class:`CommandError` is one line on stderr and its code."""
    try:
        return command(args)
    except CommandError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
