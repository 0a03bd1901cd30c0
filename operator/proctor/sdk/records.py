"""The case record: what one evaluated case writes to the results, whoever evaluated it.

A side (the only one of a plain run; baseline or candidate of a comparison) is
``{"passed", "errored", "violations", "error", "errorType"}``; the record is ``{"index",
"status", "durationMs", "error", "errorType"}`` plus ``"violations"`` (one side) or
``"baseline"`` and ``"candidate"`` (a comparison, whose top level describes the candidate).
``errorType`` is None unless the side errored, then one of :data:`ERROR_TYPES`.

A case of a dataset run also has ``"id"`` (the row's identity) and ``"partition"`` (the Hive
partition of its file, or None); with ``spec.results.outputs`` each side keeps its
``"output"`` (one side: at the record's top level). A side reused from the result cache
(:mod:`proctor.cache`) has ``"cached": true`` and ``"cachedFrom"`` (the run that evaluated it);
one side's at the record's top level.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

Record = dict[str, Any]

ErrorType = Literal[
    "exception", "timeout", "crashed", "unencodable", "badOutput", "task", "badInput"
]
ERROR_TYPES: tuple[ErrorType, ...] = (
    "exception",
    "timeout",
    "crashed",
    "unencodable",
    "badOutput",
    "task",
    "badInput",
)
"""``exception``: the implementation or the task's check raised; ``task``: the task's
generate() raised, so no implementation is to blame (the case counts as not evaluated);
``timeout``: the case overran ``caseTimeout``; ``crashed``: the implementation killed its
process; ``unencodable``: the task returned what cannot be recorded (violations that are not a
list of strings, an output over ``spec.results.maxOutputBytes``); ``badOutput``: a command
task's answer is not a valid result; ``badInput``: the case's dataset row cannot be read (not
JSON, a missing column), so, as with ``task``, no implementation ran and the case counts as not
evaluated."""

_MAX_ERROR_CHARS = 1000


def describe_error(exc: BaseException) -> str:
    """``Type: message (at file:line in function)`` of the innermost frame, bounded."""
    text = f"{type(exc).__name__}: {exc}"
    tb = exc.__traceback__
    if tb is not None:
        while tb.tb_next is not None:
            tb = tb.tb_next
        code = tb.tb_frame.f_code
        text += f" (at {os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name})"
    return bounded(text)


def bounded(text: str) -> str:
    """An error text cut to a length a record can carry."""
    return text if len(text) <= _MAX_ERROR_CHARS else text[: _MAX_ERROR_CHARS - 3] + "..."


def status_of(violations: Sequence[str], error: str | None) -> str:
    """``errored``, ``failed`` or ``passed``."""
    if error is not None:
        return "errored"
    return "failed" if violations else "passed"


_NO_OUTPUT = object()


def side_record(
    violations: list[str],
    error: str | None,
    error_type: ErrorType | None = None,
    output: Any = _NO_OUTPUT,
) -> Record:
    """One side's result; an error without a type is an ``exception``. ``output`` is kept
    (under ``"output"``) only when given: a run that keeps outputs."""
    if error is not None and error_type is None:
        error_type = "exception"
    side: Record = {
        "passed": error is None and not violations,
        "errored": error is not None,
        "violations": violations if error is None else [],
        "error": error,
        "errorType": error_type if error is not None else None,
    }
    if output is not _NO_OUTPUT:
        side["output"] = output
    return side


def case_record(
    index: int,
    sides: Sequence[Record],
    duration_ms: float,
    identity: Mapping[str, Any] | None = None,
) -> Record:
    """The record of case ``index`` from its one side, or its baseline and candidate;
    ``identity`` (``id``, ``partition``) says which dataset row the case is."""
    last = sides[-1]
    record: Record = {
        "index": index,
        "status": status_of(last["violations"], last["error"]),
        "durationMs": duration_ms,
        "error": last["error"],
        "errorType": last["errorType"],
    }
    if identity:
        record.update(identity)
    if len(sides) == 1:
        record["violations"] = last["violations"]
        if "output" in last:
            record["output"] = last["output"]
        if "cachedFrom" in last:
            record["cached"], record["cachedFrom"] = True, last["cachedFrom"]
    else:
        record["baseline"], record["candidate"] = sides
    return record


def with_output(side: Record, output: Any, max_bytes: int | None) -> Record:
    """``side`` with its output when the run keeps outputs (``max_bytes`` set): None for an
    errored side; an output over ``max_bytes`` or not JSON errors the side (``unencodable``)."""
    if max_bytes is None:
        return side
    if side["errored"]:
        return {**side, "output": None}
    kept, why = kept_output(output, max_bytes)
    if why is not None:
        return side_record([], why, "unencodable", output=None)
    return {**side, "output": kept}


def kept_output(output: Any, max_bytes: int) -> tuple[Any, str | None]:
    """(output, None) when it can be kept: JSON-encodable and at most ``max_bytes`` encoded;
    else (None, why), which errors the side (``unencodable``)."""
    try:
        size = len(json.dumps(output, separators=(",", ":")).encode())
    except (TypeError, ValueError) as exc:
        return None, bounded(f"the output cannot be kept as JSON: {type(exc).__name__}: {exc}")
    if size > max_bytes:
        return None, (
            f"the output is {size} bytes of JSON, over spec.results.maxOutputBytes "
            f"({max_bytes}); return less, or raise the cap"
        )
    return output, None


def violation_names(value: Any, source: str) -> tuple[list[str], str | None]:
    """(violations, None) for a list or tuple of strings; ([], why) for anything else, which
    would crash the worker when its record is written."""
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return list(value), None
    kind = type(value).__name__
    if isinstance(value, list | tuple):
        kind = f"{kind} holding {sorted({type(v).__name__ for v in value} - {'str'})}"
    return [], bounded(f"{source} returned a {kind}; it must return a list of violation names")


def encodable(record: Record) -> Record:
    """``record``, or, when it cannot be written as JSON, an errored ``unencodable`` record of
    the same case that says why (so a bad result errors its case instead of the worker)."""
    try:
        json.dumps(record, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        return unencodable(record, exc)
    return record


def unencodable(record: Record, exc: BaseException) -> Record:
    """The errored ``unencodable`` record of ``record``'s case, saying why (``exc``): in a
    comparison the side that cannot be written as JSON errors (the candidate when both can)."""
    why = bounded(f"the case's result cannot be recorded: {type(exc).__name__}: {exc}")
    why = why.encode("utf-8", "backslashreplace").decode()
    sides = [side_record([], why, "unencodable")]
    if "baseline" in record:
        sides = [_encodable_side(record.get(k), why) for k in ("baseline", "candidate")]
        if all(not s["errored"] for s in sides):
            sides[1] = side_record([], why, "unencodable")
    out = case_record(int(record["index"]), sides, float(record.get("durationMs") or 0.0))
    for key in ("id", "partition"):  # a dataset row's identity stays with its case
        if isinstance(record.get(key), str):
            out[key] = record[key]
    return out


def _encodable_side(side: Any, why: str) -> Record:
    try:
        json.dumps(side).encode()
    except (TypeError, ValueError):
        return side_record([], why, "unencodable")
    return dict(side) if isinstance(side, dict) else side_record([], why, "unencodable")
