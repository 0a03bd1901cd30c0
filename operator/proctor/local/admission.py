"""A local run's dataset: its path taken from the manifest's folder, admitted at the start
(listed, counted, stored with the run), checked again on ``--resume`` and when cases are left."""

from __future__ import annotations

from pathlib import Path

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.dataset import DatasetError, Location, Manifest, changed, load_manifest
from proctor.dataset.manifest import build_manifest
from proctor.dataset.run import admit, dataset_location, total_cases
from proctor.storage import RunStorage, StorageError
from proctor.worker.config import WorkerConfig


def with_dataset_path(spec: EvalRunSpec, manifest: Path) -> EvalRunSpec:
    """``spec`` with a relative local dataset path made absolute from the manifest's folder,
    so the workers (and a resume from elsewhere) read the same files."""
    dataset = spec.cases.dataset
    if dataset is None or "://" in dataset.uri or Path(dataset.uri).is_absolute():
        return spec
    uri = (manifest.resolve().parent / dataset.uri).as_posix()
    cases = spec.cases.model_copy(update={"dataset": dataset.model_copy(update={"uri": uri})})
    return spec.model_copy(update={"cases": cases})


def with_cache_path(spec: EvalRunSpec, manifest: Path) -> EvalRunSpec:
    """``spec`` with a relative local ``cache.uri`` made absolute from the manifest's folder,
    as a dataset's path is."""
    uri = spec.cache.uri
    if uri is None or "://" in uri or Path(uri).is_absolute():
        return spec
    absolute = (manifest.resolve().parent / uri).as_posix()
    return spec.model_copy(update={"cache": spec.cache.model_copy(update={"uri": absolute})})


def admit_dataset(
    spec: EvalRunSpec, storage: RunStorage, config: WorkerConfig, *, fresh: bool
) -> tuple[Location | None, Manifest | None]:
    """The dataset's location and manifest (built now for a fresh run; for a resume the one
    stored, refused when a file changed since)."""
    if spec.cases.dataset is None:
        return None, None
    location = dataset_location(
        spec, endpoint=config.storage_endpoint, region=config.storage_region
    )
    manifest = admit(spec, storage, location, fresh=fresh)
    if not fresh:
        why = changed(manifest, location)
        if why is not None:
            raise DatasetError(
                f"cannot --resume: {why}; the run's cases would no longer be the rows it "
                "started with. Run without --resume to start afresh"
            )
    return location, manifest


def dataset_changed(storage: RunStorage, location: Location | None) -> str | None:
    """Why the run's dataset no longer serves its cases (a file replaced), or None."""
    if location is None:
        return None
    try:
        manifest = load_manifest(storage)
        return None if manifest is None else changed(manifest, location)
    except StorageError as exc:
        return str(exc)


def dataset_cases(spec: EvalRunSpec, manifest: Path) -> int:
    """The cases of ``spec`` (from the manifest file ``manifest``): ``cases.count``, or its
    dataset's rows, listed and counted now with this machine's credentials (nothing stored).
    Raises :class:`DatasetError` when the dataset cannot serve the run."""
    dataset = spec.cases.dataset
    if dataset is None:
        return spec.cases.total()
    spec = with_dataset_path(spec, manifest)
    location = dataset_location(spec)
    bounds = [x for x in (spec.cases.count, dataset.limit) if x is not None]
    found = build_manifest(spec.cases.dataset or dataset, location, None, min(bounds, default=None))
    return total_cases(spec, found)


def local_dataset_problem(spec: EvalRunSpec, manifest: Path) -> str | None:
    """What makes a local dataset unable to serve ``spec`` (``proctor validate``), or None:
    its files cannot be read, or ``cases.count`` asks for more rows than they hold. An S3
    dataset is checked at admission, where its credentials are."""
    dataset = spec.cases.dataset
    if dataset is None or dataset.uri.startswith("s3://"):
        return None
    try:
        dataset_cases(spec, manifest)
    except DatasetError as exc:
        return str(exc)
    return None
