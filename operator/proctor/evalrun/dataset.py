"""A run's dataset in the operator: admitted on the first pass, watched while the run runs.

Admission lists the files and counts the rows (Parquet footers; one pass over a JSONL or CSV
file, which stores its row-offset index with the run), stores the manifest with the run and
fixes the run's total; an operator that restarts reads the stored manifest back. Every
checkpoint interval the listing is compared with the manifest: a file replaced, removed or
added before the run's files fails the run (``DatasetChanged``), naming the file, with every
result recorded so far kept. A dataset that cannot serve the run (no files, an unreadable one,
a schema change, ``cases.count`` over its rows, a local path) fails it at admission
(``DatasetInvalid``).
"""

from __future__ import annotations

import time

import structlog

from proctor.api.conditions import Problem
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.connection import Connection, RunRef, SharedClients
from proctor.dataset import DatasetError, changed
from proctor.dataset.run import admit, dataset_location, total_cases
from proctor.evalrun.runtime import RunRuntime
from proctor.storage import RunStorage, StorageError

log = structlog.get_logger("proctor.operator")


def admit_dataset(
    spec: EvalRunSpec,
    *,
    ref: RunRef,
    conn: Connection,
    rt: RunRuntime,
    storage: RunStorage,
    clients: SharedClients,
) -> Problem | None:
    """Fix the run's total (``rt.total``); for a dataset, admit it once and check it for
    changes every checkpoint interval. A Problem fails the run."""
    if spec.cases.dataset is None:
        rt.total = spec.cases.total()
        return None
    uri = spec.cases.dataset.uri
    if not uri.startswith("s3://"):
        return Problem(
            "DatasetInvalid",
            f"cases.dataset.uri {uri!r} is not in S3: the operator's workers read datasets from "
            "s3://BUCKET/PREFIX (a local path is for proctor run)",
        )
    try:
        if rt.dataset is None:
            endpoint = spec.cases.dataset.endpoint or conn.storage_endpoint
            region = spec.cases.dataset.region or conn.storage_region
            creds = conn.dataset_credentials or conn.storage_credentials
            client = clients.s3(endpoint, region, creds)
            rt.dataset = dataset_location(spec, endpoint=endpoint, region=region, client=client)
        if rt.manifest is None:
            rt.manifest = admit(spec, storage, rt.dataset)
            rt.total = total_cases(spec, rt.manifest)
            rt.dataset_checked = time.monotonic()
            log.info("dataset admitted", run=ref.name, rows=rt.manifest.rows, total=rt.total)
    except DatasetError as exc:
        return Problem("DatasetInvalid", str(exc))
    return _watch(spec, rt)


def _watch(spec: EvalRunSpec, rt: RunRuntime) -> Problem | None:
    """DatasetChanged when the listing no longer matches the manifest (checked every
    checkpoint interval); a listing that fails is retried at the next interval."""
    if rt.manifest is None or rt.dataset is None:
        return None
    if time.monotonic() - rt.dataset_checked < spec.checkpoint_seconds():
        return None
    rt.dataset_checked = time.monotonic()
    try:
        why = changed(rt.manifest, rt.dataset)
    except StorageError as exc:
        log.warning("dataset listing failed", error=str(exc))
        return None
    if why is None:
        return None
    return Problem(
        "DatasetChanged",
        f"{why}; the run's cases are the rows it was admitted with, so it cannot go on. The "
        "results recorded so far are kept; create a new EvalRun over the dataset as it is now",
    )
