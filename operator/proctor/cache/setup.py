"""Opening a run's cache and wrapping its loaded task: the keys of each side, from the spec
and the code the task loaded."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import structlog

from proctor.api.quantity import parse_duration
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.cache.keys import (
    SideKey,
    UnfingerprintableError,
    code_identity,
    command_files,
    generated_space,
    implementation_fingerprint,
    ref_identity,
    rows_space,
    task_fingerprint,
)
from proctor.cache.store import CacheStore, Event
from proctor.cache.task import CachedTask, CacheUse, MemoRows, Observe
from proctor.sdk import CommandTask, LoadedTask, PythonTask, Task
from proctor.storage import Blobs, LocalBlobs, StorageError, open_blobs

log = structlog.get_logger("proctor.cache")


def open_cache_blobs(uri: str, *, endpoint: str | None = None, region: str | None = None) -> Blobs:
    """The cache's store; a local folder is not created until a piece is written (a cache
    that cannot be written is still read)."""
    parts = urlsplit(uri)
    if parts.scheme in ("", "file"):
        return LocalBlobs(Path(parts.path if parts.scheme else uri), create=False)
    return open_blobs(uri, endpoint=endpoint, region=region)


def probe_writable(blobs: Blobs, run: str) -> str:
    """Why the cache cannot be written ("" when it can): writes and removes a probe object."""
    key = f"probes/{run.replace('/', '-')}-{time.time_ns()}"
    try:
        blobs.put(key, b"")
        blobs.delete(key)
    except (StorageError, OSError) as exc:
        return f"the cache at {blobs.uri()} cannot be written: {type(exc).__name__}: {exc}"
    return ""


@dataclass(frozen=True)
class TaskKeys:
    """A loaded task's key parts: the task's and each side's implementation's."""

    task: str
    implementations: tuple[str, ...]
    roles: tuple[str, ...]


def task_code(task: Task) -> dict[str, str]:
    """What pins a task's code: the source (or version) of its own module and of each module
    its properties' and relations' functions come from, by module name."""
    fns: list[Any] = [task]
    for prop in task.properties:
        fns.append(prop.check)
    for rel in task.relations:
        fns += [rel.transform, rel.relate] if rel.relate is not None else [rel.transform]
    code: dict[str, str] = {}
    for fn in fns:
        ident = code_identity(fn)
        code[ident["module"]] = ident.get("source") or ident.get("package", "")
    return code


def setting(spec: EvalRunSpec) -> dict[str, Any]:
    """What the code runs with besides its own files: the image (other libraries, another
    Python) and the environment variables (a model version, a feature flag), as the spec
    names them (a Secret's variable by its reference, never its value)."""
    env = [e.model_dump(by_alias=True, exclude_none=True) for e in spec.env or ()]
    return {"image": spec.image, "env": env}


def task_keys(spec: EvalRunSpec, task: LoadedTask) -> TaskKeys | None:
    """The key parts of ``task`` loaded from ``spec``; None when it is not cacheable (a
    ``cacheable = False`` task, or code that cannot be fingerprinted)."""
    max_output = spec.results.max_output_bytes if spec.results.outputs else None
    compare = spec.compare
    refs: list[tuple[str, str, dict[str, Any] | None]] = [("task", "solve", None)]
    if compare is not None:
        refs = [
            ("baseline", compare.baseline.ref, compare.baseline.params),
            ("candidate", compare.candidate.ref, compare.candidate.params),
        ]
    try:
        if isinstance(task, PythonTask):
            if not getattr(task.task, "cacheable", True):
                return None
            code = task_code(task.task)
            entry: str | list[str] = spec.task.entrypoint or ""
            impl_code = [
                {**code_identity(fn), **ref_identity(ref)}
                for fn, (_, ref, _) in zip(task.implementations, refs, strict=True)
            ]
        elif isinstance(task, CommandTask):
            code = command_files(task.command)
            entry = list(task.command)
            # The command's files, and the file a ref names (impl.py:solve), if it is one.
            impl_code = [{**code, **ref_identity(ref)} for _, ref, _ in refs]
        else:
            return None
    except UnfingerprintableError as exc:
        log.warning("results are not cached: the code cannot be fingerprinted", error=str(exc))
        return None
    impls = tuple(
        implementation_fingerprint(c, f"{role}:{ref}", params)
        for c, (role, ref, params) in zip(impl_code, refs, strict=True)
    )
    return TaskKeys(
        task=task_fingerprint(
            entry,
            spec.task.params,
            code,
            max_output,
            parse_duration(spec.case_timeout),
            setting=setting(spec),
        ),
        implementations=impls,
        roles=tuple(role for role, _, _ in refs),
    )


def with_cache(
    task: LoadedTask,
    spec: EvalRunSpec,
    blobs: Blobs,
    *,
    run: str,
    rows: MemoRows | None = None,
    dataset: str | None = None,
    observe: Observe | None = None,
    on_event: Event | None = None,
) -> LoadedTask:
    """``task`` reading and writing the cache in ``blobs`` as ``spec.cache`` says, or ``task``
    itself when the cache is off or the task is not cacheable. ``rows`` is the memo the task
    reads a dataset's rows through, ``dataset`` the dataset's location."""
    if spec.cache.mode == "off":
        return task
    parts = task_keys(spec, task)
    if parts is None:
        return task
    space = (
        rows_space(dataset or "", spec.cases.seed)
        if rows is not None
        else generated_space(spec.cases.seed)
    )
    keys = [
        SideKey(impl, parts.task, space, role)
        for impl, role in zip(parts.implementations, parts.roles, strict=True)
    ]
    store = CacheStore(blobs, run, writes=spec.cache.writes, on_event=on_event)
    use = CacheUse(store, keys, reads=spec.cache.reads, writes=spec.cache.writes)
    return CachedTask(task, use, rows, observe)
