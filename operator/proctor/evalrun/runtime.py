"""What an EvalRun's passes remember between them (kept in kopf's ``memo``).

Everything here is rebuilt from storage and the run's status after an operator restart; it
saves reads and writes, and keeps a pass from acting twice on what it already did.
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from pydantic import BaseModel

from proctor.cluster.losses import LossLedger
from proctor.connection import ConnectionCache
from proctor.dataset import Location, Manifest
from proctor.planning.scaling import ScaleState
from proctor.queue import WorkQueue
from proctor.storage import RunProgress, RunStorage

ModelT = TypeVar("ModelT", bound=BaseModel)

PROGRESS_REFRESH_SECONDS = 10.0
"""Result objects are listed when the queue changed (an ack, a handback, a dead letter) and at
least this often otherwise, so an idle run costs no storage requests on most passes."""

PROGRESS_REFRESH_MAX_SECONDS = 120.0
"""Each listing that finds nothing new while the queue stood still doubles the wait before the
next unprompted one, up to this: a thousand runs whose workers wait for nodes must not list
storage a hundred times a second."""


def next_refresh_interval(current: float, found: bool) -> float:
    """Seconds until the next unprompted listing of result objects (pure)."""
    if found:
        return PROGRESS_REFRESH_SECONDS
    return min(PROGRESS_REFRESH_MAX_SECONDS, max(current, PROGRESS_REFRESH_SECONDS) * 2)


def refresh_due(
    *,
    signature: tuple[object, ...],
    untouched: tuple[object, ...] | None,
    moved: bool,
    waited: float,
    every: float,
) -> bool:
    """Whether a pass lists the run's result objects (pure). Never while the queue's depth is
    still what it was when the run was first enqueued (``untouched``): no worker has taken a
    case, so no result can be in storage, and a thousand runs waiting for nodes list nothing.
    Otherwise when the queue moved, or after ``every`` seconds without a listing."""
    if untouched is not None and signature == untouched:
        return False
    return moved or waited >= every


SUPERSEDED_KEPT = 4
"""How many of the statuses a run's latest writes replaced are remembered (as digests)."""


def status_digest(status: Mapping[str, Any] | None) -> str:
    """A digest of a status body that does not depend on key order (pure)."""
    text = json.dumps(dict(status or {}), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass
class RunRuntime:
    """Per-run state kept between passes (in memo); rebuilt from storage after a restart."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    pass_generation: int = 0  # the spec generation the latest pass started with
    queue: WorkQueue | None = None
    queue_owned: bool = True
    storage: RunStorage | None = None
    progress: RunProgress | None = None
    enqueued: bool = False
    total: int | None = None  # the run's cases, once known (a dataset's: at admission)
    dataset: Location | None = None
    manifest: Manifest | None = None
    dataset_checked: float = 0.0  # when the dataset's listing was last compared
    scale: ScaleState = field(default_factory=ScaleState)
    ledger: LossLedger = field(default_factory=LossLedger)
    # Pods created but not yet in the pod index: name -> (uid, monotonic time of creation).
    expected: dict[str, tuple[str, float]] = field(default_factory=dict)
    expected_pool: dict[str, str] = field(default_factory=dict)  # their node pools
    last_checkpoint: float = field(default_factory=time.monotonic)
    checkpointed: tuple[int, int, int] | None = None
    refreshed_at: float = 0.0
    refresh_every: float = PROGRESS_REFRESH_SECONDS
    depth_seen: tuple[object, ...] | None = None
    connection: ConnectionCache = field(default_factory=ConnectionCache)
    status_written: float = 0.0
    deleting: bool = False  # the run's TTL passed and its deletion was requested
    finalized: bool = False  # the run's finalizer ran: no pass may follow
    last_error: str | None = None  # the error of the latest failed pass, posted once
    stopped: str | None = None
    cache_problem: str | None = None  # why its cache cannot be written ("" it can), once probed
    untouched: tuple[object, ...] | None = None  # the queue's depth as enqueued, until it moves
    # The status this operator last wrote, until a body shows it, and digests of the statuses
    # those writes replaced (see :meth:`current_status`).
    written: dict[str, Any] | None = None
    superseded: list[str] = field(default_factory=list)
    # Validated spec and status with the data they came from (see :meth:`parsed`).
    models: dict[type, tuple[dict[str, Any], Any]] = field(default_factory=dict)

    def current_status(self, observed: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        """The run's status as the next pass should see it: what this operator last wrote
        when ``observed`` (the body the pass was handed) predates that write. Only the operator
        writes status, but the body of a pass that follows a write closely may not show it yet;
        planning from it again would write the same status and emit the same Events twice.
        A status nobody here wrote (another writer, a restarted operator) is taken as it is."""
        if self.written is None:
            return observed
        seen = dict(observed or {})
        if seen == self.written:
            self.written, self.superseded = None, []  # the body has caught up
            return observed
        if status_digest(seen) in self.superseded:
            return self.written
        self.written, self.superseded = None, []
        return observed

    def wrote(self, before: Mapping[str, Any] | None, status: dict[str, Any]) -> None:
        """Record a status write that replaced ``before``."""
        self.superseded = [*self.superseded[-(SUPERSEDED_KEPT - 1) :], status_digest(before)]
        self.written = status

    def parsed(self, model: type[ModelT], data: Mapping[str, Any]) -> ModelT:
        """``model.model_validate(data)``, kept for the next pass: most passes see the same
        spec and status as the last, and validating them was a tenth of a pass's CPU."""
        cached = self.models.get(model)
        if cached is not None and cached[0] == data:
            return cast(ModelT, cached[1])
        value = model.model_validate(dict(data))
        self.models[model] = (copy.deepcopy(dict(data)), value)
        return value

    def close(self) -> None:
        if self.queue is not None:
            if self.queue_owned:
                self.queue.close()
            self.queue = None
