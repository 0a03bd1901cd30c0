"""AWS clients (S3, SQS) for every part of Proctor, with boto3 and botocore imported on first use.

Importing boto3 costs a tenth to a quarter of a second, paid by every ``proctor`` command and
every worker at start-up while a run on a local folder with the embedded queue never makes an
AWS call (issue 21: start to the first recorded case). So no module imports boto3 or botocore
at its top: clients come from :func:`client`, and the error types from :func:`client_error` and
:func:`botocore_error` (an ``except`` clause evaluates its expression only when an exception
is being matched, by which time a client exists and botocore is imported). botocore has no
type stubs, so its classes are typed ``Any`` here as they would be at an import.

A client is used only by the process that made it: a forked copy of the process (a worker's
isolation child, :mod:`proctor.worker.isolation`) that calls it gets a client of its own, made
on that first call from a session of its own. The copy's pooled keep-alive connections are the
parent's sockets: a request over one while the parent uses it too would interleave with the
parent's and either process could read the other's answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def client(
    service: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    credentials: Mapping[str, str] | None = None,
    max_attempts: int = 5,
    connect_timeout: float | None = None,
    profile: str | None = None,
) -> Any:
    """A boto3 client for ``service``, signing with ``credentials`` (AWS_* keys) when given,
    else with the ambient ones (of ``profile`` when named); botocore retries each request up
    to ``max_attempts`` times (standard mode)."""
    import boto3  # noqa: PLC0415 - imported on first use: see the module's docstring
    from botocore.config import Config  # noqa: PLC0415 - as above

    keys = credentials or {}
    extra: dict[str, Any] = {} if connect_timeout is None else {"connect_timeout": connect_timeout}

    def make(forked: bool) -> Any:
        # boto3.client reuses boto3's default session; a new Session per client would load
        # botocore's service models again (tens of milliseconds and megabytes each). A forked
        # copy makes one session of its own: the default one's credential provider may hold
        # the parent's connections (to the instance metadata service, to STS) and locks.
        new = (
            _session_of_this_process(profile).client
            if forked
            else boto3.Session(profile_name=profile).client
            if profile
            else boto3.client
        )
        return new(
            service,
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID"),
            aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY"),
            aws_session_token=keys.get("AWS_SESSION_TOKEN"),
            config=Config(retries={"max_attempts": max_attempts, "mode": "standard"}, **extra),
        )

    return ProcessClient(make)


_sessions: dict[tuple[int, str | None], Any] = {}


def _session_of_this_process(profile: str | None) -> Any:
    """A boto3 session made in this process (one per profile), for the clients of a fork."""
    import boto3  # noqa: PLC0415 - imported on first use: see the module's docstring

    key = (os.getpid(), profile)
    if key not in _sessions:
        for stale in [k for k in _sessions if k[0] != key[0]]:
            del _sessions[stale]  # a parent's, inherited
        _sessions[key] = boto3.Session(profile_name=profile)
    return _sessions[key]


class ProcessClient:
    """A boto3 client (every attribute is the client's) used only by the process that made
    it: in a forked copy of that process, the first use makes another one there, connecting
    afresh (see the module's docstring). The inherited one is never used nor closed there."""

    __slots__ = ("_client", "_inherited", "_make", "_pid")

    def __init__(self, make: Callable[[bool], Any]) -> None:
        self._make = make
        self._client = make(False)
        self._pid = os.getpid()
        # Kept, not collected: collecting a client closes its pooled connections' sockets.
        self._inherited: list[Any] = []

    def _mine(self) -> Any:
        pid = os.getpid()
        if pid != self._pid:
            self._inherited.append(self._client)
            self._client = self._make(True)
            self._pid = pid
        return self._client

    def __getattr__(self, name: str) -> Any:
        if name in ProcessClient.__slots__:  # not set yet: a copy made without __init__
            raise AttributeError(name)
        return getattr(self._mine(), name)

    def close(self) -> None:
        """Close this process's client and its connections (a parent's stay the parent's)."""
        if self._pid == os.getpid():
            self._client.close()


def client_error() -> Any:
    """botocore's ``ClientError``: the service answered with an error."""
    from botocore.exceptions import ClientError  # noqa: PLC0415 - as in client()

    return ClientError


def botocore_error() -> Any:
    """botocore's ``BotoCoreError``: no answer (connection, credentials, a bad parameter)."""
    from botocore.exceptions import BotoCoreError  # noqa: PLC0415 - as in client()

    return BotoCoreError


def param_validation_error() -> Any:
    """botocore's ``ParamValidationError``: the request itself is wrong."""
    from botocore.exceptions import ParamValidationError  # noqa: PLC0415 - as in client()

    return ParamValidationError
