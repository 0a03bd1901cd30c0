"""The queue and storage clients both kinds share, and the connection a run or suite reaches.

A :class:`Connection` is built from a **queue spec and a storage spec** (an EvalRun's and a
BenchmarkSuite's are the same models), the namespace their Secrets live in and the operator's
defaults. Credentials read from Secrets stay in the Connection and reach pods only as
``secretKeyRef`` env entries, never as values.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from proctor import aws
from proctor.api.conditions import Problem
from proctor.api.v1alpha1.base import QueueSpec, StorageSpec
from proctor.api.v1alpha1.dataset import DatasetSpec
from proctor.cluster.api import ClusterApi
from proctor.config import OperatorConfig
from proctor.queue import QueueConnections

CONNECTION_TTL_SECONDS = 30.0
"""How long a run's Secrets, once read, are trusted before they are read again (a spec change
reads them at once). A missing Secret is looked for on every pass."""


@dataclass(frozen=True)
class RunRef:
    """Which object a pass is about: an EvalRun or a BenchmarkSuite."""

    namespace: str
    name: str
    uid: str
    generation: int
    annotations: Mapping[str, str]
    labels: Mapping[str, str] = field(default_factory=dict)


class SharedClients:
    """Queue and S3 clients shared by every run (kept in ``memo``, closed on cleanup).

    A boto3 client costs 10-20 MB and tens of milliseconds to create; with hundreds of runs
    one per run was most of the operator's memory and of a new run's first pass.
    """

    def __init__(self) -> None:
        self.queues = QueueConnections()
        self._lock = threading.Lock()
        self._s3: dict[tuple[str, ...], Any] = {}

    def s3(self, endpoint: str | None, region: str | None, creds: Mapping[str, str]) -> Any:
        """One S3 client per endpoint, region and credentials."""
        key = (endpoint or "", region or "", *(creds.get(k, "") for k in aws.AWS_KEYS))
        with self._lock:
            if key not in self._s3:
                self._s3[key] = aws.client(
                    "s3", endpoint_url=endpoint, region=region, credentials=creds
                )
            return self._s3[key]

    def close(self) -> None:
        self.queues.close()
        with self._lock:
            clients = list(self._s3.values())
            self._s3.clear()
        for client in clients:
            client.close()


@dataclass
class Connection:
    """Where a run's queue and storage are, and the worker env that reaches them."""

    queue_url: str
    storage_uri: str
    storage_endpoint: str | None
    storage_region: str | None
    storage_credentials: dict[str, str]
    env: list[dict[str, Any]]
    queue_credentials: dict[str, str] = field(default_factory=dict)  # SQS keys of the Secret
    dataset_credentials: dict[str, str] = field(default_factory=dict)  # cases.dataset.secretRef


def _secret_env(name: str, secret: str, key: str, optional: bool = False) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": secret, "key": key}
    if optional:
        ref["optional"] = True
    return {"name": name, "valueFrom": {"secretKeyRef": ref}}


def _has_keys(creds: Mapping[str, str]) -> bool:
    return bool(creds.get("AWS_ACCESS_KEY_ID") and creds.get("AWS_SECRET_ACCESS_KEY"))


def _no_keys(field: str, secret: str) -> Problem:
    # Without keys, boto3 would sign with the operator's own credentials.
    return Problem(
        "SecretKeyMissing",
        f"{field}.secretRef names Secret {secret!r}, which lacks AWS_ACCESS_KEY_ID or "
        "AWS_SECRET_ACCESS_KEY; the operator reaches a run's queue and storage only with the "
        "run's own credentials: add both keys to the Secret",
    )


def _queue_connection(
    queue: QueueSpec | None, namespace: str, config: OperatorConfig, api: ClusterApi
) -> tuple[str, list[dict[str, Any]], dict[str, str]] | Problem:
    """The queue URL, the worker env that reaches it and the keys that sign for it."""
    queue_url = config.default_queue_url or ""
    if queue is None or queue.secret_ref is None:
        if not queue_url:
            return Problem(
                "NoQueue",
                "the run names no queue (spec.queue) and the operator has no defaultQueueUrl; "
                "set spec.queue with a secretRef",
            )
        return queue_url, [{"name": "PROCTOR_QUEUE_URL", "value": queue_url}], {}
    secret_name = queue.secret_ref.name
    data = api.read_secret(namespace, secret_name)
    if data is None:
        return Problem(
            "SecretNotFound",
            f"spec.queue.secretRef names Secret {secret_name!r}, which does not exist in "
            f"namespace {namespace}; create it with key 'url' (redis://...)",
        )
    if queue.type == "redis":
        if "url" not in data:
            return Problem(
                "SecretKeyMissing",
                f"Secret {secret_name!r} has no key 'url'; add the redis:// URL under 'url'",
            )
        return data["url"], [_secret_env("PROCTOR_QUEUE_URL", secret_name, "url")], {}
    query = f"?region={data.get('region', '')}" if data.get("region") else ""
    host = data.get("endpoint", "").removeprefix("http://").removeprefix("https://")
    queue_url = f"sqs://{host}{query}"
    env = [{"name": "PROCTOR_QUEUE_URL", "value": queue_url}]
    env += [_secret_env(k, secret_name, k, optional=True) for k in aws.AWS_KEYS]
    keys = {k: data[k] for k in aws.AWS_KEYS if k in data}
    if not _has_keys(keys):
        return _no_keys("spec.queue", secret_name)
    return queue_url, env, keys


def _storage_credentials(
    storage: StorageSpec, namespace: str, api: ClusterApi
) -> tuple[dict[str, str], list[dict[str, Any]]] | Problem:
    """The keys of ``storage.secretRef`` and the env entries that hand them to pods."""
    if storage.secret_ref is None:
        return {}, []
    return _aws_secret("spec.storage", storage.secret_ref.name, namespace, api, env_prefix="")


def _dataset_credentials(
    dataset: DatasetSpec | None, namespace: str, api: ClusterApi
) -> tuple[dict[str, str], list[dict[str, Any]]] | Problem:
    """The keys of ``cases.dataset.secretRef`` and the env entries that hand them to workers
    (``PROCTOR_DATASET_AWS_*``); none without one (the dataset is read as the storage is)."""
    if dataset is None or dataset.secret_ref is None:
        return {}, []
    name = dataset.secret_ref.name
    return _aws_secret("spec.cases.dataset", name, namespace, api, env_prefix="PROCTOR_DATASET_")


def _aws_secret(
    field: str, secret_name: str, namespace: str, api: ClusterApi, *, env_prefix: str
) -> tuple[dict[str, str], list[dict[str, Any]]] | Problem:
    """The AWS keys of Secret ``secret_name`` (named by ``field``) and the env entries that hand
    them to pods, each named ``env_prefix`` + the key."""
    data = api.read_secret(namespace, secret_name)
    if data is None:
        return Problem(
            "SecretNotFound",
            f"{field}.secretRef names Secret {secret_name!r}, which does not exist in "
            f"namespace {namespace}; create it with AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY",
        )
    creds = {k: data[k] for k in aws.AWS_KEYS if k in data}
    if not _has_keys(creds):
        return _no_keys(field, secret_name)
    return creds, [_secret_env(env_prefix + k, secret_name, k) for k in aws.AWS_KEYS if k in data]


def build_connection(
    queue: QueueSpec | None,
    storage: StorageSpec | None,
    namespace: str,
    config: OperatorConfig,
    api: ClusterApi,
    *,
    dataset: DatasetSpec | None = None,
) -> Connection | Problem:
    """Queue and storage (and a dataset's own credentials) from the specs' Secrets (in
    ``namespace``) or the operator's defaults; the Problem says what is missing and how to
    supply it."""
    queued = _queue_connection(queue, namespace, config, api)
    if isinstance(queued, Problem):
        return queued
    queue_url, env, queue_creds = queued
    uri = storage.uri if storage else (config.default_storage_uri or "")
    endpoint = storage.endpoint if storage else config.default_storage_endpoint
    region = storage.region if storage else None
    if not uri:
        return Problem(
            "NoStorage",
            "the run names no storage (spec.storage) and the operator has no "
            "defaultStorageUri; set spec.storage.uri",
        )
    creds: dict[str, str] = {}
    if storage is not None:
        found = _storage_credentials(storage, namespace, api)
        if isinstance(found, Problem):
            return found
        creds, secret_env = found
        env += secret_env
    env.append({"name": "PROCTOR_STORAGE_URI", "value": uri})
    if endpoint:
        env.append({"name": "PROCTOR_STORAGE_ENDPOINT", "value": endpoint})
    if region:
        env += [
            {"name": "PROCTOR_STORAGE_REGION", "value": region},
            {"name": "AWS_DEFAULT_REGION", "value": region},
        ]
    found_dataset = _dataset_credentials(dataset, namespace, api)
    if isinstance(found_dataset, Problem):
        return found_dataset
    dataset_creds, dataset_env = found_dataset
    env += dataset_env
    return Connection(queue_url, uri, endpoint, region, creds, env, queue_creds, dataset_creds)


@dataclass
class ConnectionCache:
    """The connection one object's passes last read, with what it was read for and when."""

    connection: Connection | None = None
    key: Hashable = None
    read_at: float = 0.0


def cached_connection(
    cache: ConnectionCache, key: Hashable, read: Callable[[], Connection | Problem]
) -> Connection | Problem:
    """``read()`` (admission, then :func:`build_connection`), reused for
    :data:`CONNECTION_TTL_SECONDS` while ``key`` (the object's uid and spec generation) stays
    the same; a problem is never cached, so a Secret created later is found on the next pass."""
    fresh = time.monotonic() - cache.read_at < CONNECTION_TTL_SECONDS and cache.key == key
    if cache.connection is not None and fresh:
        return cache.connection
    conn = read()
    cache.connection = conn if isinstance(conn, Connection) else None
    cache.key, cache.read_at = key, time.monotonic()
    return conn
