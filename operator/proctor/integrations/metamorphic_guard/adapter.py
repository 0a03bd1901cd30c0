"""A Metamorphic Guard ``Spec`` as a Proctor task, evaluated in process case by case.

One case of an EvalRun is one input of the spec's generator. For each side (baseline and
candidate) the worker calls the implementation on the input, checks the spec's *hard*
properties, and, only when they all hold, runs the relations in order with their transforms
(seeded with Metamorphic Guard's own ``relation_rng``), re-running the implementation and
comparing with the spec's ``equivalence`` (``expect: equal``) or the hard properties
(``expect: properties_hold``), stopping at the first relation that fails. That is
``metamorphic_guard.harness.reporting.evaluate_results`` case by case, so a side passes exactly
when Metamorphic Guard counts it as a pass. Violations are recorded as
``property:<description>`` and ``relation:<name>``; an implementation that raises or times out
errors the side, which Metamorphic Guard reports as an ``execution`` property violation.

Inputs come from Metamorphic Guard's ``ChunkedInputGenerator``: case ``i`` is input
``i % chunkSize`` of ``gen_inputs(chunkSize, seed + chunkStart)`` with ``chunkStart = i -
i % chunkSize``, so a worker holds one or two chunks, never all ``n`` inputs. With ``n <=
chunkSize`` (the default chunk is 10,000) this is exactly ``gen_inputs(n, seed)``, the inputs
``metamorphic-guard evaluate`` uses, for any generator whose first ``m`` inputs do not depend
on how many are asked for (all built-ins; checked when the task loads).
"""

from __future__ import annotations

import copy
import pickle
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from proctor.sdk import Task, TaskLoadError, resolve_ref

_T = TypeVar("_T")

INSTALL_HINT = "install it with: pip install 'proctor[metamorphic-guard]'"

DEFAULT_CHUNK_SIZE = 10_000
"""Metamorphic Guard's own default chunk size (``ChunkedInputGenerator``)."""

CHUNKS_CACHED = 2
"""Chunks of inputs a worker keeps: the current one and its neighbour."""

FIRST_PREFIX = 256
"""Inputs generated the first time a chunk is touched (more when a later input is asked for)."""

RELATION_CORRECTIONS = ("holm", "hochberg", "fdr", "none")
CI_METHODS = (
    "bootstrap",
    "bootstrap_bca",
    "bootstrap_cluster",
    "bootstrap_cluster_bca",
    "newcombe",
    "wilson",
    "bayesian",
)


def import_mg() -> Any:
    """The ``metamorphic_guard`` package, or a TaskLoadError saying how to install it."""
    try:
        import metamorphic_guard  # noqa: PLC0415 - optional dependency (the metamorphic-guard extra)
    except ImportError as exc:
        raise TaskLoadError(f"metamorphic-guard is not installed ({exc}); {INSTALL_HINT}") from exc
    return metamorphic_guard


@dataclass(frozen=True)
class MGParams:
    """``task.params`` of a Metamorphic Guard EvalRun, with Metamorphic Guard's CLI defaults.

    Every knob that changes the verdict is here, under the CLI option's name in camelCase.
    """

    task: str
    min_delta: float = 0.02
    min_pass_rate: float = 0.80
    alpha: float = 0.05
    ci_method: str = "bootstrap"
    bootstrap_samples: int = 1000
    relation_correction: str = "holm"
    rr_ci_method: str = "log"
    violation_cap: int = 25
    bayesian_samples: int = 5000
    bayesian_hierarchical: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    input_columns: tuple[str, ...] = ()
    """Over a dataset: the columns that are the spec's arguments, in order (unset: the row's
    ``input`` column, a list of them, as Metamorphic Guard's replay files hold them)."""

    _KEYS = {
        "task": "task",
        "minDelta": "min_delta",
        "minPassRate": "min_pass_rate",
        "alpha": "alpha",
        "ciMethod": "ci_method",
        "bootstrapSamples": "bootstrap_samples",
        "relationCorrection": "relation_correction",
        "rrCiMethod": "rr_ci_method",
        "violationCap": "violation_cap",
        "bayesianSamples": "bayesian_samples",
        "bayesianHierarchical": "bayesian_hierarchical",
        "chunkSize": "chunk_size",
        "inputColumns": "input_columns",
    }

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> MGParams:
        """Read and check ``task.params``; a TaskLoadError names the offending key."""
        data = dict(params or {})
        unknown = sorted(set(data) - set(cls._KEYS))
        if unknown:
            raise TaskLoadError(
                f"unknown Metamorphic Guard task params {unknown}; known: {sorted(cls._KEYS)}"
            )
        if not isinstance(data.get("task"), str) or not data["task"]:
            raise TaskLoadError(
                "task.params.task must name a Metamorphic Guard task (e.g. top_k) or a "
                "module:factory returning a metamorphic_guard Spec"
            )
        kwargs: dict[str, Any] = {}
        for key, raw in data.items():
            name = cls._KEYS[key]
            try:
                kwargs[name] = _typed(raw, getattr(cls, name, None))
            except (TypeError, ValueError) as exc:
                raise TaskLoadError(f"task.params.{key} must be {exc}, got {raw!r}") from None
        made = cls(**kwargs)
        made.check()
        return made

    def check(self) -> None:
        """Range checks, with Metamorphic Guard's spelling of choices accepted."""
        method = self.ci_method.lower().replace("-", "_")
        if method not in CI_METHODS:
            raise TaskLoadError(f"task.params.ciMethod must be one of {CI_METHODS}")
        object.__setattr__(self, "ci_method", method)
        if self.relation_correction not in RELATION_CORRECTIONS:
            raise TaskLoadError(
                f"task.params.relationCorrection must be one of {RELATION_CORRECTIONS}"
            )
        if not 0.0 < self.alpha < 1.0:
            raise TaskLoadError("task.params.alpha must be in (0, 1)")
        if not -1.0 <= self.min_delta <= 1.0:
            raise TaskLoadError("task.params.minDelta must be in [-1, 1]")
        if not 0.0 <= self.min_pass_rate <= 1.0:
            raise TaskLoadError("task.params.minPassRate must be in [0, 1]")
        if self.rr_ci_method != "log":
            raise TaskLoadError("task.params.rrCiMethod must be log")
        for name in ("bootstrap_samples", "violation_cap", "bayesian_samples", "chunk_size"):
            if getattr(self, name) < 1:
                raise TaskLoadError(f"task.params: {name} must be at least 1")

    def correction(self) -> str | None:
        """``relation_correction`` as ``run_eval`` takes it."""
        return None if self.relation_correction == "none" else self.relation_correction


def load_spec(ref: str) -> Any:
    """A Metamorphic Guard ``Spec``: a registered task name (built-ins, plugins) or a
    ``module:factory`` / ``file.py:factory`` returning one (a Spec object itself also works)."""
    mg = import_mg()
    from metamorphic_guard.specs import Spec, get_task  # noqa: PLC0415 - optional dependency (the metamorphic-guard extra)

    if ":" in ref:
        obj = resolve_ref(ref)
        try:
            spec = obj() if callable(obj) and not isinstance(obj, Spec) else obj
        except Exception as exc:
            raise TaskLoadError(f"{ref}() failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            spec = get_task(ref)
        except (ValueError, TypeError) as exc:
            raise TaskLoadError(f"Metamorphic Guard task {ref!r}: {exc}") from exc
    if not isinstance(spec, mg.Spec):
        raise TaskLoadError(f"{ref!r} gave {type(spec).__name__}, not a metamorphic_guard Spec")
    return spec


def resolve_implementation(ref: str) -> Callable[..., Any]:
    """An implementation as Metamorphic Guard names it: ``path/to/file.py`` (its ``solve``),
    ``file.py:function`` or ``module:function``."""
    if ref.endswith(".py") and ":" not in ref:
        ref = f"{ref}:solve"
    fn = resolve_ref(ref)
    if not callable(fn):
        raise TaskLoadError(f"implementation {ref!r} is not callable")
    return fn  # type: ignore[no-any-return]


def fresh_copy(value: Any) -> Any:
    """An independent copy of an input, as the sandbox's serialisation gives each call."""
    try:
        return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:
        return copy.deepcopy(value)


def _untimed(make: Callable[[], _T]) -> _T:
    """Run ``make`` with the case's ``ITIMER_REAL`` paused, so that generating a whole chunk
    (which one case pays for) does not count against that case's timeout."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(
        signal, "getitimer"
    ):
        return make()
    remaining, interval = signal.getitimer(signal.ITIMER_REAL)
    if remaining:
        signal.setitimer(signal.ITIMER_REAL, 0)
    try:
        return make()
    finally:
        if remaining:
            signal.setitimer(signal.ITIMER_REAL, remaining, interval)


class ChunkedInputs:
    """Input ``i`` of a run, generating Metamorphic Guard chunks on demand and keeping few.

    Only the prefix of a chunk that has been asked for is generated, doubling as later inputs
    are needed (from :data:`FIRST_PREFIX`; past a quarter of the chunk, the whole chunk): a
    run of 400 cases does not pay for a whole 10,000-input chunk, and a worker that sweeps a
    whole chunk generates at most about 1.4 chunks' worth.
    The prefix property (checked when the task loads) makes a prefix of ``gen_inputs(m, s)``
    equal to the first inputs of ``gen_inputs(C, s)``.
    """

    def __init__(self, spec: Any, seed: int, chunk_size: int, cached: int = CHUNKS_CACHED) -> None:
        self.chunk_size = chunk_size
        self.seed = seed
        self._gen_inputs = spec.gen_inputs
        self._cached = cached
        self._chunks: OrderedDict[int, list[tuple[Any, ...]]] = OrderedDict()
        self.generated = 0
        """Inputs generated so far, prefixes regenerated while doubling included."""

    def _generate(self, chunk: int, count: int) -> list[tuple[Any, ...]]:
        from metamorphic_guard.scalability import ChunkedInputGenerator  # noqa: PLC0415 - optional dependency (the metamorphic-guard extra)

        # Metamorphic Guard's own chunking (seed + chunk start), bounded to the prefix needed.
        start = chunk * self.chunk_size
        gen = ChunkedInputGenerator(self._gen_inputs, start + count, self.seed, self.chunk_size)
        inputs = _untimed(lambda: [tuple(args) for args in gen.get_chunk(chunk)])
        self.generated += len(inputs)
        return inputs

    def get(self, index: int) -> tuple[Any, ...]:
        """Input ``index`` (shared: copy it before handing it to an implementation)."""
        chunk, offset = divmod(index, self.chunk_size)
        inputs = self._chunks.get(chunk)
        if inputs is None or offset >= len(inputs):
            have = len(inputs) if inputs is not None else 0
            count = max(FIRST_PREFIX, 2 * have)
            while count <= offset:
                count *= 2
            if 4 * count > self.chunk_size:
                # Far into the chunk: the whole of it, rather than more regenerated prefixes.
                count = self.chunk_size
            inputs = self._generate(chunk, count)
            self._chunks[chunk] = inputs
            while len(self._chunks) > self._cached:
                self._chunks.popitem(last=False)
        self._chunks.move_to_end(chunk)
        return inputs[offset]

    def iter_range(self, start: int, end: int) -> Any:
        """Inputs ``start`` to ``end - 1`` in order, one chunk in memory at a time."""
        for index in range(start, end):
            yield index, self.get(index)


def _typed(value: Any, default: Any) -> Any:
    """``value`` as the type of a parameter's ``default``; TypeError says which it must be."""
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError("a list of column names")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise TypeError("a boolean")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or int(value) != value:
            raise TypeError("an integer")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool):
            raise TypeError("a number")
        return float(value)
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def row_arguments(row: Mapping[str, Any], columns: Sequence[str]) -> tuple[Any, ...]:
    """The spec's arguments in a dataset row: ``columns`` in order, or the row's ``input``
    list (Metamorphic Guard's replay format, ``{"input": [...]}``)."""
    if columns:
        missing = [c for c in columns if c not in row]
        if missing:
            raise ValueError(f"the row has no column {', '.join(map(repr, missing))}")
        return tuple(row[c] for c in columns)
    args = row.get("input")
    if not isinstance(args, list | tuple):
        raise ValueError(
            "a Metamorphic Guard row needs an 'input' column holding the spec's arguments as a "
            "list, or task.params.inputColumns naming the columns that are"
        )
    return tuple(args)


class RowInputs:
    """Input ``i`` of a run over a dataset: row ``i`` as the spec's arguments, read a block of
    rows at a time (the report's view of the inputs, like :class:`ChunkedInputs`)."""

    BLOCK = 1000

    def __init__(self, rows: Any, columns: Sequence[str]) -> None:
        self.rows = rows
        self.columns = tuple(columns)
        self._block = -1
        self._args: list[tuple[Any, ...] | None] = []

    def get(self, index: int) -> tuple[Any, ...]:
        block, offset = divmod(index, self.BLOCK)
        if block != self._block:
            start = block * self.BLOCK
            read = self.rows.rows(start, min(start + self.BLOCK, self.rows.manifest.rows))
            self._args = [
                None if r.error is not None else _arguments_or_none(r.case, self.columns)
                for r in read
            ]
            self._block = block
        args = self._args[offset] if offset < len(self._args) else None
        if args is None:
            raise ValueError(f"row {index} of the dataset is not an input of the spec")
        return args


def _arguments_or_none(row: Mapping[str, Any], columns: Sequence[str]) -> tuple[Any, ...] | None:
    try:
        return row_arguments(row, columns)
    except ValueError:
        return None


def check_prefix_property(spec: Any, seed: int) -> None:
    """Chunked generation equals one-shot generation only if the first m inputs do not depend
    on n. Cheap to test on small sizes; a generator that fails it is refused, not silently
    evaluated on other inputs than ``metamorphic-guard evaluate`` would use."""
    small = [tuple(a) for a in spec.gen_inputs(8, seed)]
    large = [tuple(a) for a in spec.gen_inputs(24, seed)][:8]
    if small != large:
        raise TaskLoadError(
            "this spec's gen_inputs(n, seed) gives different first inputs for different n, so "
            "it cannot be generated in chunks; make the first inputs independent of n"
        )


@dataclass(slots=True)
class Case:
    """One input and where it came from (the relation RNG needs seed and index)."""

    seed: int
    index: int
    args: tuple[Any, ...]


class MGTask(Task):
    """A Metamorphic Guard Spec as a Proctor task (see the module docstring)."""

    cacheable = False
    """The spec's generator, properties and relations live in the user's Metamorphic Guard
    task module, which the result cache does not fingerprint: never cached (docs/cache.md)."""

    def __init__(self, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(params)
        self.mg = MGParams.from_params(params)
        self.spec = load_spec(self.mg.task)
        from metamorphic_guard.harness.execution import relation_rng  # noqa: PLC0415 - optional dependency (the metamorphic-guard extra)

        self._relation_rng = relation_rng
        self._hard = [p for p in self.spec.properties if p.mode == "hard"]
        self._relations = list(self.spec.relations)
        for rel in self._relations:
            if rel.expect not in ("equal", "properties_hold"):
                raise TaskLoadError(
                    f"relation {rel.name!r}: unsupported expect {rel.expect!r} "
                    "(Metamorphic Guard supports equal and properties_hold)"
                )
        self._inputs: ChunkedInputs | None = None

    def inputs(self, seed: int) -> ChunkedInputs:
        """The run's inputs (one generator per task; a new seed starts afresh)."""
        current = self._inputs
        if current is None or current.seed != seed:
            _untimed(lambda: check_prefix_property(self.spec, seed))
            current = self._inputs = ChunkedInputs(self.spec, seed, self.mg.chunk_size)
        return current

    def generate(self, seed: int, index: int) -> Case:
        """Input ``index`` of the spec's generator for ``seed``, in chunks."""
        return Case(seed, index, self.inputs(seed).get(index))

    def case_of_row(self, row: dict[str, Any], seed: int, index: int) -> Case:
        """Row ``index`` of a dataset as the spec's arguments (``explicit_inputs``)."""
        return Case(seed, index, row_arguments(row, self.mg.input_columns))

    def resolve(self, ref: str) -> Callable[..., Any]:
        """Implementations as Metamorphic Guard names them (see :func:`resolve_implementation`)."""
        return resolve_implementation(ref)

    def _holds(self, output: Any, args: Sequence[Any]) -> list[str]:
        failed = []
        for prop in self._hard:
            try:
                ok = bool(prop.check(output, *args))
            except Exception:
                ok = False
            if not ok:
                failed.append(f"property:{prop.description}")
        return failed

    def run(self, impl: Callable[..., Any], case: Case) -> list[str]:
        """Evaluate one side of one case the way Metamorphic Guard does; the violations.

        An exception from the implementation's first call propagates (the side errors); one
        from a relation's re-run is a violation of that relation, as in Metamorphic Guard.
        """
        args = case.args
        output = impl(*fresh_copy(args))
        failed = self._holds(output, args)
        if failed:
            return failed
        for ri, rel in enumerate(self._relations):
            violation = [f"relation:{rel.name}"]
            try:
                if rel.accepts_rng:
                    rng = self._relation_rng(case.seed, case.index, ri, rel.name)
                    follow_args = rel.transform(*args, rng=rng)
                else:
                    follow_args = rel.transform(*args)
                follow_out = impl(*fresh_copy(follow_args))
                if rel.expect == "equal":
                    same = bool(self.spec.equivalence(output, follow_out))
                else:
                    same = not self._holds(follow_out, follow_args)
            except Exception:
                return violation
            if not same:
                return violation
        return []

    def check(self, case: Any, output: Any) -> list[str]:
        """``run`` already checked everything; its result is the list of violations."""
        return list(output)


def task(params: Mapping[str, Any] | None = None) -> MGTask:
    """The EvalRun entrypoint ``proctor.mgadapter:task``."""
    return MGTask(params)
