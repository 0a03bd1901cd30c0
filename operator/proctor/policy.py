"""Admission of a run against the operator's tenant policy (pure; docs/security.md).

Creating an EvalRun creates pods with its image, ServiceAccount and Secrets in its namespace,
and makes the operator read its storage. The policy in :class:`proctor.config.TenantPolicy`
narrows that; whatever it refuses becomes a ``PolicyViolation`` condition and Event saying what
is not allowed and how to allow it. The operator never lends its own credentials to a run's
storage unless the policy names the bucket.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase

from proctor.api.conditions import Problem
from proctor.api.v1alpha1.base import StorageSpec
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.config import OperatorConfig

POLICY_VIOLATION = "PolicyViolation"
SPEC_TOO_LARGE = "SpecTooLarge"

SPEC_ENV_MAX_BYTES = 120 * 1024
"""Workers receive the spec as JSON in PROCTOR_SPEC; Linux refuses to start a process with
one variable over 128 KiB (MAX_ARG_STRLEN), so a larger spec is refused before any pod."""


def allowed(value: str, patterns: Sequence[str]) -> bool:
    """Whether ``value`` matches one of ``patterns`` (an empty list allows anything)."""
    return not patterns or any(fnmatchcase(value, p) for p in patterns)


def _violation(what: str, setting: str) -> Problem:
    return Problem(
        POLICY_VIOLATION,
        f"{what} is not allowed by the operator's policy; use an allowed one, or ask the "
        f"operator's administrator to add it to OperatorConfig policy.{setting}",
    )


def bucket_of(uri: str) -> str:
    return uri.removeprefix("s3://").partition("/")[0]


def storage_problem(
    storage: StorageSpec, config: OperatorConfig, field: str = "spec.storage"
) -> Problem | None:
    """Whether the operator may use the run's own storage (or what ``field`` names: a
    dataset), and with whose credentials."""
    policy = config.policy
    bucket = bucket_of(storage.uri)
    if storage.endpoint and not allowed(storage.endpoint, policy.allowed_storage_endpoints):
        return _violation(f"{field}.endpoint {storage.endpoint!r}", "allowedStorageEndpoints")
    if not allowed(bucket, policy.allowed_storage_buckets):
        return _violation(f"bucket {bucket!r} of {field}.uri", "allowedStorageBuckets")
    if storage.secret_ref is not None:
        return None
    at_home = storage.endpoint in (None, config.default_storage_endpoint)
    if at_home and any(fnmatchcase(bucket, p) for p in policy.ambient_credential_buckets):
        return None
    return Problem(
        POLICY_VIOLATION,
        f"{field} names bucket {bucket!r} without a secretRef, and the operator reads a "
        f"run's objects only with the run's own credentials; add {field}.secretRef (a "
        "Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), or ask the operator's "
        "administrator to list the bucket in OperatorConfig policy.ambientCredentialBuckets",
    )


def baseline_problem(
    uri: str, storage: StorageSpec | None, config: OperatorConfig
) -> Problem | None:
    """A suite's ``baseline.resultsUri`` is read from S3 only, at the suite's own endpoint
    with its own credentials, and only where the policy lets the suite's storage be."""
    if not uri.startswith("s3://"):
        return Problem(
            POLICY_VIOLATION,
            f"spec.baseline.resultsUri {uri!r} is not an s3:// URI; the operator reads a "
            "baseline only from S3, with the suite's own storage credentials: copy the "
            "results to the suite's bucket, or use baseline.suiteRun",
        )
    read = (
        storage.model_copy(update={"uri": uri})
        if storage is not None
        else StorageSpec.model_construct(uri=uri, endpoint=config.default_storage_endpoint)
    )
    problem = storage_problem(read, config)
    if problem is None:
        return None
    return Problem(problem.reason, f"spec.baseline.resultsUri: {problem.message}")


def cache_uri_problem(
    uri: str, storage: StorageSpec | None, config: OperatorConfig
) -> Problem | None:
    """An EvalRun's or a suite's ``cache.uri`` is an S3 prefix the operator and its workers
    read and write with the owner's own storage endpoint and credentials, only where the
    policy lets its storage be."""
    if not uri.startswith("s3://"):
        return Problem(
            POLICY_VIOLATION,
            f"spec.cache.uri {uri!r} is not an s3:// URI; on a cluster the cache is kept in "
            "S3 with the storage's own credentials (a local folder is for proctor run): "
            "name an s3:// prefix, or leave uri unset to keep it beside the storage",
        )
    kept = (
        storage.model_copy(update={"uri": uri})
        if storage is not None
        else StorageSpec.model_construct(uri=uri, endpoint=config.default_storage_endpoint)
    )
    problem = storage_problem(kept, config, field="spec.cache")
    if problem is None:
        return None
    # The cache has no credentials of its own: it is read and written with the storage's.
    return Problem(
        problem.reason, problem.message.replace("spec.cache.secretRef", "spec.storage.secretRef")
    )


def dataset_problem(spec: EvalRunSpec, config: OperatorConfig) -> Problem | None:
    """Whether the operator may read the run's dataset, and with whose credentials: the
    dataset's Secret, else the storage's, else (ambient credentials) only a bucket the policy
    lists, as for storage."""
    dataset = spec.cases.dataset
    if dataset is None or not dataset.uri.startswith("s3://"):
        return None  # a local path fails at admission (DatasetInvalid)
    storage = spec.storage
    endpoint = dataset.endpoint or (storage.endpoint if storage else None)
    secret = dataset.secret_ref or (storage.secret_ref if storage else None)
    read = StorageSpec.model_construct(
        uri=dataset.uri,
        endpoint=endpoint or (None if storage else config.default_storage_endpoint),
        secret_ref=secret,
    )
    return storage_problem(read, config, "spec.cases.dataset")


def cache_problem(spec: EvalRunSpec, config: OperatorConfig) -> Problem | None:
    """Whether the run's workers may use its cache (``spec.cache.uri``); the default cache is
    beside the storage, which is checked already."""
    if spec.cache.mode == "off" or spec.cache.uri is None:
        return None
    return cache_uri_problem(spec.cache.uri, spec.storage, config)


def spec_size_problem(spec_json: str) -> Problem | None:
    """A spec too large to reach workers through their environment."""
    size = len(spec_json.encode())
    if size <= SPEC_ENV_MAX_BYTES:
        return None
    return Problem(
        SPEC_TOO_LARGE,
        f"the spec is {size // 1024} KiB as JSON, over the {SPEC_ENV_MAX_BYTES // 1024} KiB "
        "a worker's environment can hold; keep task.params small and let the task load "
        "large data itself (from the image or storage)",
    )


def admit(spec: EvalRunSpec, config: OperatorConfig) -> Problem | None:
    """The first thing about the run the policy refuses, or None (pure)."""
    policy = config.policy
    image = config.worker_image or spec.image
    if not allowed(image, policy.allowed_images):
        return _violation(f"image {image!r}", "allowedImages")
    account = spec.service_account_name or "default"
    if not allowed(account, policy.allowed_service_accounts):
        return _violation(f"serviceAccountName {account!r}", "allowedServiceAccounts")
    if spec.storage is not None:
        problem = storage_problem(spec.storage, config)
        if problem is not None:
            return problem
    problem = dataset_problem(spec, config) or cache_problem(spec, config)
    if problem is not None:
        return problem
    return spec_size_problem(spec.model_dump_json(by_alias=True, exclude_none=True))
