"""What `plan` and `cancel` share: the kubeconfig options kubectl has
(``--context``, ``--kubeconfig``, ``-n/--namespace``), the client they make, and how a failure
to reach or use the cluster is told to the user."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3

from proctor.cluster.api import ClusterApi
from proctor.cluster.client import KubeApi, KubeApiError, LoginError, user_login

EXIT_UNREACHABLE = 3
"""Exit code of a cluster command when the API server cannot be reached or refuses a call."""


def add_cluster_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n", "--namespace", help="namespace (default: the context's, else default)"
    )
    parser.add_argument("--context", help="kubeconfig context (default: the current one)")
    parser.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)"
    )


@dataclass
class ClusterSession:
    """A client on the chosen context and the namespace the command works in."""

    api: ClusterApi
    namespace: str
    server: str


def connect(args: argparse.Namespace) -> ClusterSession:
    """Log in as kubectl would. Raises :class:`LoginError` (no kubeconfig, unknown context)."""
    info = user_login(context=args.context, kubeconfig=args.kubeconfig)
    namespace = args.namespace or info.default_namespace or "default"
    kube = KubeApi(lambda: info, pool_size=2)
    return ClusterSession(ClusterApi(kube), namespace, str(info.server))


def refusal(exc: KubeApiError, what: str) -> str:
    """What a refused call means for the user, without echoing credentials."""
    if exc.status == 401:
        return (
            f"the API server did not accept the credentials ({what}): log in again "
            "(kubectl's credentials for this context have expired or are wrong)"
        )
    if exc.status == 403:
        return (
            f"no permission to {what}: {exc.message}. Ask for the role in docs/security.md "
            '("proctor plan and cancel")'
        )
    return f"the API server refused to {what}: HTTP {exc.status} {exc.message}"


def call(session: ClusterSession, what: str, do: Callable[[], Any]) -> Any:
    """``do()``, with a failure to reach the cluster or a refusal turned into
    :class:`ClusterError` saying which."""
    try:
        return do()
    except KubeApiError as exc:
        raise ClusterError(refusal(exc, what), status=exc.status) from exc
    except urllib3.exceptions.HTTPError as exc:
        reason = getattr(exc, "reason", None) or exc
        raise ClusterError(
            f"cannot reach the API server at {session.server} (to {what}): {reason}"
        ) from exc


class ClusterError(Exception):
    """The cluster could not be reached, or refused what the command asked."""

    def __init__(self, message: str, *, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


__all__ = [
    "EXIT_UNREACHABLE",
    "ClusterError",
    "ClusterSession",
    "LoginError",
    "add_cluster_args",
    "call",
    "connect",
]
