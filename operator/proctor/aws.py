"""AWS clients (S3, SQS) for every part of Proctor, with boto3 and botocore imported on first use.

Importing boto3 costs a tenth to a quarter of a second, paid by every ``proctor`` command and
every worker at start-up while a run on a local folder with the embedded queue never makes an
AWS call (issue 21: start to the first recorded case). So no module imports boto3 or botocore
at its top: clients come from :func:`client`, and the error types from :func:`client_error` and
:func:`botocore_error` (an ``except`` clause evaluates its expression only when an exception
is being matched, by which time a client exists and botocore is imported). botocore has no
type stubs, so its classes are typed ``Any`` here as they would be at an import.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    # boto3.client reuses boto3's default session; a new Session per client would load
    # botocore's service models again (tens of milliseconds and megabytes each).
    make = boto3.Session(profile_name=profile).client if profile else boto3.client
    return make(
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=keys.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=keys.get("AWS_SECRET_ACCESS_KEY"),
        aws_session_token=keys.get("AWS_SESSION_TOKEN"),
        config=Config(retries={"max_attempts": max_attempts, "mode": "standard"}, **extra),
    )


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
