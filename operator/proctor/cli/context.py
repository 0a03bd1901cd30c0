"""The one session of every cluster command (``get``, ``status``, ``watch``, ``plan``,
``cancel``, ``results``, ``report``, ``logs``): which cluster and namespace it talks to
(``--kubeconfig``, ``--context``, ``-n/--namespace``, ``-A``, read as kubectl reads them), the
client it opens (Proctor's own, :mod:`proctor.cluster.client`), the one table of exit codes
(:data:`EXIT_CODES`, docs/cli.md), and the errors it turns into one line and an exit code
instead of a traceback."""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import urllib3

from proctor.cluster.api import ClusterApi
from proctor.cluster.client import (
    KubeApi,
    KubeApiError,
    LoginError,
    keep_kubernetes_client_out,
    user_login,
)
from proctor.redact import redact_text

EXIT_OK = 0
EXIT_NO = 1
EXIT_USAGE = 2
EXIT_UNDECIDED = 3
EXIT_FAILED = 4
EXIT_CANCELLED = 5
EXIT_NOT_FOUND = 6
EXIT_NO_ACCESS = 7
EXIT_STORAGE = 8
EXIT_TIMEOUT = 124
EXIT_INTERRUPTED = 130

NO_ACCESS = (
    "no cluster access: no kubeconfig, an unknown --context, the API server cannot be "
    "reached, the credentials are refused (401) or lack RBAC (403), or the CRDs are not "
    "installed"
)

EXIT_CODES: tuple[tuple[int, str], ...] = (
    (EXIT_OK, "done (watch: the run Succeeded, accepted or with nothing to decide)"),
    (
        EXIT_NO,
        "the answer is no: plan: the cluster cannot hold one worker; cancel: the run has "
        "already finished; watch: the run was rejected (suites: regressions)",
    ),
    (EXIT_USAGE, "bad arguments or manifest, or a NAME that is both kinds"),
    (EXIT_UNDECIDED, "watch: the run Succeeded undecided (not every case was evaluated)"),
    (EXIT_FAILED, "watch: the run Failed"),
    (EXIT_CANCELLED, "watch: the run was Cancelled"),
    (
        EXIT_NOT_FOUND,
        "no such run in the namespace (logs: no pod of it; logs --previous: none has restarted)",
    ),
    (EXIT_NO_ACCESS, NO_ACCESS),
    (
        EXIT_STORAGE,
        "the run's storage cannot be read (unreachable, credentials refused, a torn object) "
        "or holds nothing for it yet (report: a finished run with no report; a running one "
        "gets a partial report, exit 0); the error names the URI",
    ),
    (EXIT_TIMEOUT, "--timeout (watch) or --wait's timeout (cancel) elapsed"),
    (EXIT_INTERRUPTED, "interrupted (Ctrl-C); the run goes on"),
)
"""The exit codes of every cluster command, one meaning each (docs/cli.md prints this table;
codes 0 to 3 mean what they mean for ``proctor run``). Each command's --help lists its own."""


def codes(*which: int) -> tuple[tuple[int, str], ...]:
    """The rows of :data:`EXIT_CODES` for these codes, for a command's --help."""
    return tuple(row for row in EXIT_CODES if row[0] in which)


ACCESS_CODES = ((EXIT_OK, "done"), *codes(EXIT_USAGE, EXIT_NOT_FOUND, EXIT_NO_ACCESS))
"""The exit codes every cluster command shares (its --help lists them)."""


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

    @functools.cached_property
    def cluster(self) -> ClusterApi:
        """The operator's calls (nodes, quotas, Secrets, runs) on the same client."""
        return ClusterApi(self.api)

    @property
    def where(self) -> str:
        """The namespace, or ``default`` for a command given ``-A`` that needs one."""
        return self.namespace or "default"


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
