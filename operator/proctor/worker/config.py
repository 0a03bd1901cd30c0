"""A worker's configuration (``PROCTOR_*`` variables) and its batch sizing."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proctor.api.quantity import parse_duration
from proctor.api.v1alpha1.evalrun import FIRST_BATCH, BatchSpec, EvalRun, EvalRunSpec
from proctor.cache import MemoRows, open_cache_blobs, with_cache
from proctor.dataset.run import ENV_PREFIX, credentials_from_env, dataset_location, open_reader
from proctor.sdk import LoadedTask, load_task
from proctor.storage import RunStorage, open_storage
from proctor.worker.common import ConfigError, Env, host_pid
from proctor.worker.metrics import WorkerMetrics

__all__ = [
    "BatchSizer",
    "ConfigError",
    "WorkerConfig",
    "load_run_task",
    "open_run_storage",
    "parse_spec",
]


@dataclass
class WorkerConfig:
    """Everything a worker needs; :meth:`from_env` reads it from ``PROCTOR_*`` variables."""

    run_id: str
    spec: EvalRunSpec
    queue_url: str
    storage_uri: str
    run_name: str = ""
    worker_id: str = field(default_factory=host_pid)
    storage_endpoint: str | None = None
    storage_region: str | None = None
    metrics_port: int | None = None
    lease_seconds: float | None = None
    shutdown_grace: float = 1.0
    poll_interval: float = 0.5
    attempt: str = ""
    dataset_credentials: dict[str, str] = field(default_factory=dict)
    """The dataset's own keys (``PROCTOR_DATASET_AWS_*``); empty: the storage's."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WorkerConfig:
        """Read the configuration the operator (or ``proctor run``) sets on a worker.

        Required: ``PROCTOR_SPEC`` (the EvalRun spec, or the whole EvalRun, as JSON) or
        ``PROCTOR_SPEC_FILE`` (a JSON or YAML file of either), ``PROCTOR_QUEUE_URL`` and
        ``PROCTOR_STORAGE_URI``; ``PROCTOR_RUN_ID`` (the run's uid) or ``PROCTOR_RUN``
        (``namespace/name``). Optional: ``PROCTOR_WORKER_ID`` (default ``POD_NAME``, else
        host-pid), ``PROCTOR_STORAGE_ENDPOINT``, ``PROCTOR_STORAGE_REGION``,
        ``PROCTOR_METRICS_PORT``, ``PROCTOR_LEASE_SECONDS``, ``PROCTOR_SHUTDOWN_GRACE``,
        ``PROCTOR_ATTEMPT`` (the run attempt whose queue and results are this worker's),
        ``PROCTOR_DATASET_AWS_ACCESS_KEY_ID``/``..._SECRET_ACCESS_KEY``/``..._SESSION_TOKEN``
        (the dataset's own credentials, from ``cases.dataset.secretRef``).
        """
        e = Env(env, docs="docs/engine.md")
        if e.get("PROCTOR_SPEC"):
            spec = parse_spec(json.loads(e.get("PROCTOR_SPEC")))
        elif e.get("PROCTOR_SPEC_FILE"):
            spec = parse_spec(yaml.safe_load(Path(e.get("PROCTOR_SPEC_FILE")).read_text()))
        else:
            raise ConfigError("set PROCTOR_SPEC (JSON) or PROCTOR_SPEC_FILE to the EvalRun spec")
        run_name = e.get("PROCTOR_RUN")
        run_id = e.get("PROCTOR_RUN_ID") or run_name.replace("/", "-")
        if not run_id:
            raise ConfigError("set PROCTOR_RUN_ID (the run's uid) or PROCTOR_RUN (ns/name)")
        port = e.get("PROCTOR_METRICS_PORT").strip()
        return cls(
            run_id=run_id,
            run_name=run_name,
            spec=spec,
            queue_url=e.need("PROCTOR_QUEUE_URL"),
            storage_uri=e.need("PROCTOR_STORAGE_URI"),
            worker_id=e.worker_id(),
            storage_endpoint=e.optional("PROCTOR_STORAGE_ENDPOINT"),
            storage_region=e.optional("PROCTOR_STORAGE_REGION"),
            metrics_port=int(port) if port and port != "0" else None,
            lease_seconds=e.seconds("PROCTOR_LEASE_SECONDS"),
            shutdown_grace=float(e.get("PROCTOR_SHUTDOWN_GRACE", "1.0")),
            attempt=e.get("PROCTOR_ATTEMPT").strip(),
            dataset_credentials=credentials_from_env(e.values),
        )

    @property
    def namespace(self) -> str | None:
        """The run's namespace on a cluster (``PROCTOR_RUN`` is ``namespace/name``); None
        for ``proctor run``."""
        namespace, slash, _ = self.run_name.partition("/")
        return namespace if slash else None

    def env(self) -> dict[str, str]:
        """The inverse of :meth:`from_env`: variables that configure a worker like this one."""
        out = {
            "PROCTOR_RUN_ID": self.run_id,
            "PROCTOR_SPEC": json.dumps(self.spec.to_wire()),
            "PROCTOR_QUEUE_URL": self.queue_url,
            "PROCTOR_STORAGE_URI": self.storage_uri,
            "PROCTOR_WORKER_ID": self.worker_id,
            "PROCTOR_SHUTDOWN_GRACE": str(self.shutdown_grace),
        }
        if self.run_name:
            out["PROCTOR_RUN"] = self.run_name
        if self.storage_endpoint:
            out["PROCTOR_STORAGE_ENDPOINT"] = self.storage_endpoint
        if self.storage_region:
            out["PROCTOR_STORAGE_REGION"] = self.storage_region
        if self.metrics_port:
            out["PROCTOR_METRICS_PORT"] = str(self.metrics_port)
        if self.lease_seconds:
            out["PROCTOR_LEASE_SECONDS"] = str(self.lease_seconds)
        if self.attempt:
            out["PROCTOR_ATTEMPT"] = self.attempt
        out.update({ENV_PREFIX + k: v for k, v in self.dataset_credentials.items()})
        return out


def parse_spec(data: Mapping[str, Any]) -> EvalRunSpec:
    """An EvalRunSpec from the spec itself or a whole EvalRun object."""
    if "spec" in data and "kind" in data:
        return EvalRun.model_validate(data).spec
    return EvalRunSpec.model_validate(data)


def open_run_storage(config: WorkerConfig) -> RunStorage:
    compression = config.spec.compression()
    return open_storage(
        config.storage_uri,
        config.run_id,
        compression=compression.algorithm,
        level=compression.level,
        endpoint=config.storage_endpoint,
        region=config.storage_region,
        attempt=config.attempt,
    )


def load_run_task(
    spec: EvalRunSpec,
    config: WorkerConfig,
    storage: RunStorage,
    metrics: WorkerMetrics | None = None,
) -> LoadedTask:
    """The run's task, reading its cases from the run's dataset when it has one (the manifest
    admission stored, the dataset's credentials or the storage's), keeping outputs when asked,
    through the result cache when ``spec.cache`` uses one (``metrics`` count its hits and
    troubles)."""
    rows: Any = None
    if spec.cases.dataset is not None:
        location = dataset_location(
            spec,
            endpoint=config.storage_endpoint,
            region=config.storage_region,
            creds=config.dataset_credentials,
        )
        rows = open_reader(spec, storage, location)
        if spec.cache.mode != "off":
            rows = MemoRows(rows)
    max_output = spec.results.max_output_bytes if spec.results.outputs else None
    task = load_task(spec.task, spec.compare, spec.cases.seed, rows=rows, max_output=max_output)
    if spec.cache.mode == "off":
        return task
    blobs = open_cache_blobs(
        spec.cache.location(config.storage_uri, config.namespace),
        endpoint=config.storage_endpoint,
        region=config.storage_region,
    )
    return with_cache(
        task,
        spec,
        blobs,
        run=config.run_name or config.run_id,
        rows=rows if isinstance(rows, MemoRows) else None,
        dataset=spec.cases.dataset.uri if spec.cases.dataset is not None else None,
        observe=metrics.observe_cache if metrics else None,
        on_event=metrics.cache_event if metrics else None,
    )


class BatchSizer:
    """Batch size toward a target duration: cases per batch = target / seconds per case,
    from a moving average, within [min, max] and at most doubling or halving per step.

    The first batch holds at most ``FIRST_BATCH`` cases (:mod:`proctor.api.v1alpha1.evalrun`);
    it is not timed (a task's first cases pay its warm-up), and sizing starts from
    ``batch.initialSize`` after it."""

    def __init__(self, batch: BatchSpec) -> None:
        self.initial = batch.initial_size
        self.size = max(batch.min_size, min(batch.initial_size, FIRST_BATCH))
        self.min = batch.min_size
        self.max = batch.max_size
        self.target = parse_duration(batch.target_duration)
        self._per_case: float | None = None
        self._first = self.size < self.initial

    def observe(self, cases: int, seconds: float) -> None:
        if cases <= 0:
            return
        if self._first:
            self._first = False
            self.size = self.initial
            return
        per_case = max(seconds / cases, 1e-9)
        self._per_case = (
            per_case if self._per_case is None else 0.7 * self._per_case + 0.3 * per_case
        )
        wanted = int(self.target / self._per_case)
        self.size = max(self.min, min(self.max, max(self.size // 2, min(wanted, self.size * 2))))
