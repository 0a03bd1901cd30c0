"""What a cached result is keyed by, and where its entry lives.

A side's result on a case is reused only when three fingerprints agree (docs/cache.md):

- the **implementation**: the digest of the source file of the module that defines it (or,
  for a module without one, its distribution's name and version), the digest of the file of
  the module its ``ref`` names, its ``ref`` and ``params``;
  a command task's: the digest of every file its command names, with the side's role and ref;
- the **task**: its entrypoint (or command), ``params``, the source digest of the task's own
  module (its checks and relations decide pass and fail), whether outputs are kept and how
  large, ``caseTimeout`` (a pass reached in 30 s is a timeout under a 1 s limit), and the
  version of the record schema and of the cache format;
- the **case**: ``(seed, index)`` for a generated case; for a dataset row, the digest of the
  row's content (checked on every hit), found by the dataset's location, seed and index.

Entries are found by key prefix, never by listing the whole cache::

    v1/<implementation>/<task>/<space>/<block:08d>/<piece:06d>.arrow.zst

``space`` is ``seed-<seed>`` for generated cases, ``rows-<digest of the dataset location and
seed>`` for rows; ``block`` is ``index // BLOCK``, so a range's entries are in the blocks it
touches.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import inspect
import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proctor.storage.columns import SCHEMA_VERSION

FORMAT = "v1"
"""The cache's layout and entry format; a new one starts an empty cache beside the old."""
BLOCK = 1000
"""Case indexes per block: a lookup lists the blocks its range touches."""
_DIGEST_CHARS = 32


class UnfingerprintableError(ValueError):
    """An implementation or task whose code cannot be pinned down: it is not cached."""


def digest(value: Any) -> str:
    """A short hex digest of a JSON-encodable value, in a canonical encoding."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:_DIGEST_CHARS]


def file_digest(path: Path) -> str:
    """The sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def code_identity(obj: Any) -> dict[str, str]:
    """What pins ``obj``'s code: the digest of its module's source file, or, for a module
    without one, its distribution and version (Python's for the standard library's built-in
    modules). Raises :class:`UnfingerprintableError`."""
    while isinstance(obj, functools.partial):
        obj = obj.func
    module = inspect.getmodule(obj)
    if module is None and not (inspect.isroutine(obj) or inspect.isclass(obj)):
        module = sys.modules.get(type(obj).__module__)  # an instance: its class's module
    if module is None:
        raise UnfingerprintableError(f"{obj!r} belongs to no module")
    source = getattr(module, "__file__", None)
    if source and source.endswith(".py") and Path(source).is_file():
        return {"module": module.__name__, "source": file_digest(Path(source))}
    top = module.__name__.partition(".")[0]
    if top in sys.stdlib_module_names or top == "builtins":
        return {"module": module.__name__, "package": f"python=={sys.version}"}
    for dist in importlib.metadata.packages_distributions().get(top, []):
        return {"module": module.__name__, "package": f"{dist}=={importlib.metadata.version(dist)}"}
    raise UnfingerprintableError(
        f"module {module.__name__} has neither a source file nor a version"
    )


def ref_identity(ref: str) -> dict[str, str]:
    """The digest of the source file of the module ``ref`` names (``module:attr`` or
    ``file.py:attr``), which may hold what the object alone does not show (a
    ``functools.partial`` of a library function and its arguments, a wrapper without
    ``__wrapped__``); empty for a bare name (the task's module, in the task's key) or a
    module without a source file."""
    name = ref.rpartition(":")[0]
    if not name:
        return {}
    if name.endswith(".py") or "/" in name:
        source: str | None = name
    else:
        source = getattr(sys.modules.get(name), "__file__", None)
    if source and source.endswith(".py") and Path(source).is_file():
        return {"refModule": name, "refSource": file_digest(Path(source))}
    return {}


def implementation_fingerprint(code: Mapping[str, str], ref: str, params: Any) -> str:
    """The implementation's key part: its code identity, ref and params."""
    return digest({"code": dict(code), "ref": ref, "params": params or {}})


def task_fingerprint(
    entrypoint: str | Sequence[str],
    params: Any,
    code: Mapping[str, str],
    max_output: int | None,
    case_timeout: float,
    *,
    setting: Mapping[str, Any] | None = None,
) -> str:
    """The task's key part: entrypoint (or command), params, its code, what a record keeps,
    the case timeout (a result reached in 30 s is a timeout under a 1 s limit) and the run's
    setting (``setting``: the image and the environment variables the code runs with)."""
    return digest(
        {
            "entrypoint": entrypoint,
            "params": params or {},
            "code": dict(code),
            "outputs": max_output,
            "caseTimeout": case_timeout,
            "setting": dict(setting or {}),
            "records": SCHEMA_VERSION,
            "format": FORMAT,
        }
    )


def command_files(command: Sequence[str]) -> dict[str, str]:
    """The digest of each file a command names (its program, found on PATH, and any argument
    that is a file): a command task's code."""
    out: dict[str, str] = {}
    for i, arg in enumerate(command):
        found = shutil.which(arg) if i == 0 and "/" not in arg else arg
        path = Path(found) if found else None
        if path is not None and path.is_file():
            out[arg] = file_digest(path)
    if not out:
        raise UnfingerprintableError(f"the command {list(command)!r} names no file to fingerprint")
    return out


def row_digest(case: Any) -> str:
    """A dataset row's content hash: its case key."""
    return digest(case)


def generated_space(seed: int) -> str:
    return f"seed-{seed}"


def rows_space(location: str, seed: int) -> str:
    return f"rows-{digest({'dataset': location, 'seed': seed})[:16]}"


@dataclass(frozen=True, slots=True)
class SideKey:
    """Where one side's entries for one run's cases live: a key prefix."""

    implementation: str
    task: str
    space: str
    role: str
    """``baseline``, ``candidate`` or ``task`` (a run without compare): for counts and logs."""

    @property
    def prefix(self) -> str:
        return f"{FORMAT}/{self.implementation}/{self.task}/{self.space}/"

    def block_prefix(self, block: int) -> str:
        return f"{self.prefix}{block:08d}/"

    def piece_key(self, block: int, piece: int) -> str:
        return f"{self.block_prefix(block)}{piece:06d}.arrow.zst"


def blocks(start: int, end: int) -> range:
    """The blocks the cases ``[start, end)`` are in."""
    if end <= start:
        return range(0)
    return range(start // BLOCK, (end - 1) // BLOCK + 1)


def piece_number(key: str) -> int | None:
    """The piece number of an entry key, or None for another key."""
    name = key.rsplit("/", 1)[-1]
    stem = name.removesuffix(".arrow.zst")
    return int(stem) if stem != name and stem.isdigit() else None
