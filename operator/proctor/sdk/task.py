"""What a task author writes: a :class:`Task` with properties and metamorphic relations."""

from __future__ import annotations

import importlib
import importlib.util
import random
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_MASK64 = (1 << 64) - 1


class TaskLoadError(Exception):
    """A task entrypoint or implementation reference could not be loaded."""


@dataclass(frozen=True, slots=True)
class Property:
    """A check on one output: ``check(case, output)`` is true when the property holds."""

    name: str
    check: Callable[[Any, Any], bool]
    description: str = ""


@dataclass(frozen=True, slots=True)
class Relation:
    """A metamorphic relation: transform the input, run the implementation again, relate outputs.

    ``transform(case)`` (or ``transform(case, rng)`` with ``uses_rng``; the rng is seeded from the
    run seed, the case index and the relation's name) gives the follow-up case. The relation holds
    when ``relate(source_output, follow_up_output)`` is true, or, without ``relate``, when the
    task's :meth:`Task.equivalent` says the two outputs are equivalent. With ``sees_cases``,
    ``relate(case, follow_up_case, output, follow_up_output)`` also gets the two inputs, for
    relations that depend on how the input was changed.
    """

    name: str
    transform: Callable[..., Any]
    relate: Callable[..., bool] | None = None
    uses_rng: bool = False
    sees_cases: bool = False
    description: str = ""


class Task:
    """A task: generates case ``index`` from a seed, runs an implementation, checks the output.

    A case passes for an implementation when every property holds on its output and every
    metamorphic relation holds. Subclass it, give :meth:`generate`, ``properties`` (or override
    :meth:`check`) and ``relations``; give :meth:`solve` for runs without a comparison. In a run
    over a dataset (``cases.dataset``) case ``index`` is row ``index`` (a dict) and
    :meth:`generate` is not called, so a task made only for datasets may leave it out. An
    ``EvalRun``'s ``task.entrypoint`` names either a Task instance or a factory called with
    ``task.params`` (the subclass itself is such a factory).
    """

    properties: Sequence[Property] = ()
    relations: Sequence[Relation] = ()
    fork_safe: bool = True
    """Whether a forked copy of the worker can evaluate this task's cases. After a worker died,
    its cases run again with each side in a forked child, to find the side that crashed; set
    False when the task holds state a fork breaks (an initialised CUDA context is detected
    without it). Then a crashing case is dead-lettered after ``retries`` instead."""
    cacheable: bool = True
    """Whether a side's result on a case may be reused by later runs (``spec.cache``): set
    False for a nondeterministic task (one that samples, or reads a clock or a service), whose
    results are then never cached (docs/cache.md)."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        self.params: dict[str, Any] = dict(params or {})

    def generate(self, seed: int, index: int) -> Any:
        """The input of case ``index``: JSON-serialisable and deterministic in (seed, index).

        Not called in a run over a dataset, whose rows are the cases."""
        raise NotImplementedError(
            f"{type(self).__name__} generates no cases: override generate(), or give the "
            "EvalRun a cases.dataset whose rows are the cases"
        )

    def case_of_row(self, row: dict[str, Any], seed: int, index: int) -> Any:
        """Case ``index`` of a run over a dataset, from its row (a dict of its columns): the
        row itself unless a task takes its inputs apart (Metamorphic Guard's arguments). An
        exception here errors the case as bad input (``badInput``)."""
        return row

    def check(self, case: Any, output: Any) -> list[str]:
        """Names of the violated properties (empty: the output is acceptable)."""
        return [p.name for p in self.properties if not p.check(case, output)]

    def run(self, impl: Callable[..., Any], case: Any) -> Any:
        """Call an implementation on a case; override when it takes the case apart."""
        return impl(case)

    def equivalent(self, output: Any, follow_up: Any) -> bool:
        """Whether two outputs are equivalent, for relations without their own ``relate``."""
        return bool(output == follow_up)

    def solve(self, case: Any) -> Any:
        """The task's own implementation, used when the run has no ``compare``."""
        raise NotImplementedError(
            f"{type(self).__name__} has no implementation of its own: override solve() or give "
            "the EvalRun a compare section with baseline and candidate"
        )

    def resolve(self, ref: str) -> Callable[..., Any]:
        """An implementation named by ``ref``; bare names are looked up in the task's module."""
        impl: Callable[..., Any] = resolve_ref(ref, default_module=type(self).__module__)
        return impl

    def close(self) -> None:
        """Release what the task holds; called once when the worker is done with it."""


def case_rng(seed: int, index: int, salt: str = "") -> random.Random:
    """A random generator for case ``index`` of a run seeded ``seed``, independent of others.

    The pair is mixed with SplitMix64 so that neighbouring indices and seeds give unrelated
    streams; ``salt`` separates streams used for different purposes within one case.
    """
    x = (seed * 0x9E3779B97F4A7C15 + index) & _MASK64
    for ch in salt.encode():
        x = ((x ^ ch) * 0x100000001B3) & _MASK64
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return random.Random(x ^ (x >> 31))


def resolve_ref(ref: str, *, default_module: str | None = None) -> Any:
    """The object ``ref`` names: ``package.module:attr``, ``path/to/file.py:attr``, or a bare
    ``attr`` of ``default_module``."""
    module_name, sep, attr = ref.rpartition(":")
    if not sep:
        if default_module is None:
            raise TaskLoadError(f"{ref!r} is not a reference; write it as module:name")
        module_name, attr = default_module, ref
    if not module_name or not attr:
        raise TaskLoadError(f"{ref!r} is not a reference; write it as module:name or file.py:name")
    module = _import(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TaskLoadError(f"{ref!r}: {module.__name__} has no attribute {attr!r}") from None
    return obj


def _import(name: str) -> Any:
    if name.endswith(".py") or "/" in name:
        path = Path(name).resolve()
        key = f"proctor_task_{abs(hash(str(path))):x}"
        if key in sys.modules:
            return sys.modules[key]
        spec = importlib.util.spec_from_file_location(key, path)
        if spec is None or spec.loader is None or not path.is_file():
            raise TaskLoadError(f"cannot load {name}: no such Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[key]
            raise TaskLoadError(f"importing {name} failed: {type(exc).__name__}: {exc}") from exc
        return module
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise TaskLoadError(f"cannot import {name}: {exc}") from exc
