"""A run's dataset: admitted once (listed, counted, stored), then opened by each worker.

Credentials: ``cases.dataset.secretRef``'s keys reach workers as ``PROCTOR_DATASET_AWS_*``
variables (secretKeyRef entries, never values); without it, the dataset is read with the
run's storage credentials. The endpoint and region default to the storage's.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from proctor import aws
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.dataset.location import DatasetError, Location, locate
from proctor.dataset.manifest import Manifest, build_manifest, load_manifest, store_manifest
from proctor.dataset.reader import DatasetReader
from proctor.storage import RunStorage

ENV_PREFIX = "PROCTOR_DATASET_"
"""``PROCTOR_DATASET_AWS_ACCESS_KEY_ID`` and so on: the dataset's own credentials."""


def credentials_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """The dataset's own keys among ``env`` (empty: the storage's ambient credentials)."""
    return {k: env[ENV_PREFIX + k] for k in aws.AWS_KEYS if env.get(ENV_PREFIX + k)}


def _client(endpoint: str | None, region: str | None, creds: Mapping[str, str]) -> Any:
    if not creds:
        return None
    return aws.client("s3", endpoint_url=endpoint, region=region, credentials=creds)


def dataset_location(
    spec: EvalRunSpec,
    *,
    endpoint: str | None = None,
    region: str | None = None,
    creds: Mapping[str, str] | None = None,
    client: Any = None,
    base: Path | None = None,
) -> Location:
    """Where ``spec``'s dataset is; ``endpoint``/``region`` are the storage's (the defaults)."""
    dataset = spec.cases.dataset
    if dataset is None:
        raise DatasetError("the run has no cases.dataset")
    endpoint = dataset.endpoint or endpoint
    region = dataset.region or region
    if client is None and dataset.uri.startswith("s3://"):
        client = _client(endpoint, region, creds or {})
    return locate(dataset, endpoint=endpoint, region=region, client=client, base=base)


def admit(
    spec: EvalRunSpec, storage: RunStorage, location: Location, *, fresh: bool = False
) -> Manifest:
    """The run's manifest: the stored one (unless ``fresh``), else built now and stored;
    checks ``cases.count`` against it.

    Raises :class:`DatasetError` (the file, and what to do) when the dataset cannot serve."""
    dataset = spec.cases.dataset
    assert dataset is not None
    manifest = None if fresh else load_manifest(storage)
    if manifest is None or manifest.uri != dataset.uri:
        bounds = [x for x in (spec.cases.count, dataset.limit) if x is not None]
        manifest = build_manifest(dataset, location, storage, min(bounds) if bounds else None)
        store_manifest(storage, manifest)
    total_cases(spec, manifest)
    return manifest


def total_cases(spec: EvalRunSpec, manifest: Manifest | None) -> int:
    """The run's cases: ``cases.count``, or the dataset's rows (up to its limit)."""
    if spec.cases.dataset is None:
        return spec.cases.total()
    if manifest is None:
        raise DatasetError("the dataset's manifest is not built yet")
    try:
        return spec.cases.total(manifest.rows)
    except ValueError as exc:
        raise DatasetError(f"{exc} (dataset {spec.cases.dataset.uri})") from exc


def open_reader(spec: EvalRunSpec, storage: RunStorage, location: Location) -> DatasetReader:
    """The reader a worker's task takes its rows from (the manifest stored at admission)."""
    manifest = load_manifest(storage)
    if manifest is None:
        raise DatasetError(
            f"run {storage.run_id} has no dataset manifest at {storage.uri}; the run was not "
            "admitted (the operator or proctor run builds it before any worker starts)"
        )
    return DatasetReader(manifest, location, storage)
