"""Validate manifests against the API models, with errors that name the field.

Messages follow the apiserver's wording where the rule is the same (``spec.workers.min:
workers.min must not exceed workers.max``), so a user sees one message whether the spec was
rejected by ``proctor validate`` or by ``kubectl apply``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from proctor.api.names import API_VERSION
from proctor.api.quantity import DURATION_PATTERN, QUANTITY_PATTERN
from proctor.api.v1alpha1 import EVALRUN_KIND, SUITE_KIND
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuite
from proctor.api.v1alpha1.evalrun import EvalRun
from proctor.api.v1alpha1.placement import SPREAD_KEYS, TopologySpread
from proctor.policy import spec_size_problem

MODELS: dict[str, type[BaseModel]] = {EVALRUN_KIND: EvalRun, SUITE_KIND: BenchmarkSuite}

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_LABEL_MAX = 63


def dns_label_error(value: str) -> str | None:
    """Why ``value`` is not a DNS-1123 label (what run names and run ids must be), or None.

    Run names and ids become folder names, queue keys and pod-name prefixes: a label cannot
    hold ``/`` or ``..``, so none of them can reach outside the run's own folder or keys.
    """
    if len(value) <= DNS_LABEL_MAX and DNS_LABEL.match(value):
        return None
    shown = value if len(value) <= 80 else value[:77] + "..."
    return (
        f'Invalid value: "{shown}": a lowercase RFC 1123 label (DNS-1123) must consist of '
        "lower case alphanumeric characters or '-', start and end with an alphanumeric "
        f"character and be at most {DNS_LABEL_MAX} characters (e.g. 'my-run')"
    )


@dataclass(frozen=True)
class FieldError:
    """One problem in one document."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


@dataclass(frozen=True)
class DocumentResult:
    """The outcome of validating one YAML document."""

    source: str
    index: int
    kind: str
    name: str
    errors: tuple[FieldError, ...]
    model: BaseModel | None

    @property
    def ok(self) -> bool:
        return not self.errors

    def describe(self) -> str:
        return f"{self.source}: {self.kind or '?'}/{self.name or '?'}"


class ManifestError(Exception):
    """A manifest that cannot be parsed or validated."""


def _path(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _join_field(base: str, field_path: str) -> str:
    if not field_path:
        return base
    return base + field_path if base else field_path.lstrip(".")


def _message(error: ErrorDetails) -> tuple[str, str]:
    """(path, message) of a pydantic error in the apiserver's words."""
    loc = [p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    # Pydantic adds the union branch or validator kind to the location; drop those parts.
    loc = [p for p in loc if p not in {"str", "int", "float", "bool"}]
    path = _path(loc)
    kind = error["type"]
    ctx: dict[str, Any] = dict(error.get("ctx") or {})
    value = error.get("input")
    if kind == "proctor_rule":
        return _join_field(path, str(ctx.get("field_path", ""))), str(ctx["message"])
    if kind == "missing":
        return path, "Required value"
    if kind == "extra_forbidden":
        return "", f'unknown field "{path}"'
    if kind == "literal_error":
        expected = str(ctx.get("expected", ""))
        options = ", ".join(
            f'"{o.strip().strip(chr(39))}"' for o in expected.replace(" or ", ", ").split(", ")
        )
        return path, f'Unsupported value: "{value}": supported values: {options}'
    if kind in {"greater_than_equal", "greater_than", "less_than_equal", "less_than"}:
        words = {
            "greater_than_equal": "greater than or equal to",
            "greater_than": "greater than",
            "less_than_equal": "less than or equal to",
            "less_than": "less than",
        }[kind]
        bound = next(iter(ctx.values()))
        return path, f"Invalid value: {value}: {path} in body should be {words} {bound}"
    if kind == "string_pattern_mismatch":
        return path, f"Invalid value: \"{value}\": {path} in body should match '{ctx['pattern']}'"
    if kind in {"too_short", "string_too_short"}:
        return path, f"Invalid value: {path} in body should have at least {ctx.get('min_length')} "
    if kind in {"too_long", "string_too_long"}:
        return path, f"Too many: {path} must have at most {ctx.get('max_length')} items"
    if kind in {"quantity", "duration"}:
        pattern = QUANTITY_PATTERN if kind == "quantity" else DURATION_PATTERN
        example = "500m, 2, 512Mi or 2Gi" if kind == "quantity" else "500ms, 30s, 5m or 1h30m"
        return path, (
            f"Invalid value: \"{value}\": {path} in body should match '{pattern}' "
            f"(a {kind} such as {example})"
        )
    return path, error["msg"]


def _duplicates(doc: dict[str, Any]) -> list[FieldError]:
    """Lists keyed like maps in the CRD (benchmarks, variants and pools by name, topology
    spread constraints by key and policy), with the apiserver's message."""
    errors: list[FieldError] = []
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return errors
    by_name: dict[str, Any] = {"name": None}
    candidates: list[tuple[str, Any, dict[str, Any]]] = [
        ("spec.benchmarks", spec.get("benchmarks"), by_name),
        ("spec.variants", spec.get("variants"), by_name),
    ]
    placement = spec.get("placement")
    if isinstance(placement, dict):
        candidates += [
            ("spec.placement.pools", placement.get("pools"), by_name),
            ("spec.placement.topologySpread", placement.get("topologySpread"), SPREAD),
        ]
    for path, items, keys in candidates:
        if isinstance(items, list):
            errors += _duplicate_items(path, items, keys)
    return errors


SPREAD: dict[str, Any] = dict(
    zip(SPREAD_KEYS, (None, TopologySpread.model_fields["when_unsatisfiable"].default), strict=True)
)
"""The keys of a topology spread constraint, each with its default (None: required)."""


def _duplicate_items(path: str, items: list[Any], keys: dict[str, Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    seen: set[tuple[Any, ...]] = set()
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        values = tuple(item.get(k, default) for k, default in keys.items())
        if any(v is None for v in values):
            continue
        if values in seen:
            # As kube-apiserver 1.37 words it: the item's keys as compact JSON, sorted.
            item_keys = dict(zip(keys, values, strict=True))
            shown = json.dumps(item_keys, separators=(",", ":"), sort_keys=True)
            errors.append(FieldError(f"{path}[{i}]", f"Duplicate value: {shown}"))
        seen.add(values)
    return errors


def validate_document(doc: Any, source: str = "<input>", index: int = 0) -> DocumentResult:
    """Validate one parsed document."""
    if not isinstance(doc, dict):
        err = FieldError("", "a manifest must be a YAML mapping with apiVersion, kind and spec")
        return DocumentResult(source, index, "", "", (err,), None)
    kind = str(doc.get("kind", ""))
    meta = doc.get("metadata") or {}
    name = str(meta.get("name", "")) if isinstance(meta, dict) else ""
    errors: list[FieldError] = []
    if doc.get("apiVersion") != API_VERSION:
        errors.append(
            FieldError(
                "apiVersion",
                f'Unsupported value: "{doc.get("apiVersion")}": supported values: "{API_VERSION}"',
            )
        )
    model_type = MODELS.get(kind)
    if model_type is None:
        supported = ", ".join(f'"{k}"' for k in MODELS)
        errors.append(
            FieldError("kind", f'Unsupported value: "{kind}": supported values: {supported}')
        )
        return DocumentResult(source, index, kind, name, tuple(errors), None)
    if not name:
        errors.append(
            FieldError("metadata.name", "Required value: name or generateName is required")
        )
    elif (problem := dns_label_error(name)) is not None:
        errors.append(FieldError("metadata.name", problem))
    model: BaseModel | None = None
    errors.extend(_duplicates(doc))
    try:
        model = model_type.model_validate(doc)
    except ValidationError as exc:
        for detail in exc.errors():
            path, message = _message(detail)
            errors.append(FieldError(path, message))
    if isinstance(model, EvalRun):
        too_large = spec_size_problem(model.spec.model_dump_json(by_alias=True, exclude_none=True))
        if too_large is not None:
            errors.append(FieldError("spec.task.params", too_large.message))
    return DocumentResult(source, index, kind, name, tuple(errors), None if errors else model)


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
"""The files a folder contributes, as ``kubectl apply -f DIR`` reads them."""

STDIN = "-"
"""The path that means standard input, as in ``kubectl apply -f -``."""


def manifest_paths(target: Path, *, recursive: bool = False) -> list[Path]:
    """The files ``target`` names, as ``kubectl -f`` reads them: a file itself; a folder's
    ``.yaml``, ``.yml`` and ``.json`` files in name order (its sub-folders' too with
    ``recursive``). Raises :class:`ManifestError` for a path that does not exist or a folder
    that holds no manifest file."""
    if not target.is_dir():
        if not target.exists():
            raise ManifestError(f"{target}: cannot read: no such file or folder")
        return [target]
    pattern = "**/*" if recursive else "*"
    found = sorted(
        p for p in target.glob(pattern) if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES
    )
    if not found:
        suffixes = ", ".join(MANIFEST_SUFFIXES)
        raise ManifestError(
            f"{target}: the folder holds no {suffixes} file"
            + ("" if recursive else " (-R/--recursive reads its sub-folders)")
        )
    return found


def parse_documents(text: str, source: str) -> Iterator[tuple[int, Any]]:
    """The non-empty YAML (or JSON) documents of ``text``, read from ``source``."""
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise ManifestError(f"{source}: the YAML is nested too deeply to be a manifest") from exc
    for i, doc in enumerate(docs):
        if doc is not None:
            yield i, doc


def iter_documents(path: Path) -> Iterator[tuple[int, Any]]:
    """The non-empty YAML documents of a file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path}: not a text file ({exc.reason})") from exc
    yield from parse_documents(text, str(path))


def validate_text(text: str, source: str) -> list[DocumentResult]:
    """Validate every document in ``text`` (a file's or standard input's content)."""
    results = [validate_document(doc, source, i) for i, doc in parse_documents(text, source)]
    if not results:
        err = FieldError("", "the file holds no manifest")
        results.append(DocumentResult(source, 0, "", "", (err,), None))
    return results


def validate_file(path: Path) -> list[DocumentResult]:
    """Validate every document in a file."""
    results = [validate_document(doc, str(path), i) for i, doc in iter_documents(path)]
    if not results:
        err = FieldError("", "the file holds no manifest")
        results.append(DocumentResult(str(path), 0, "", "", (err,), None))
    return results


def load_evalrun(path: Path) -> EvalRun:
    """Load exactly one valid EvalRun from a file, or raise ManifestError saying what is wrong."""
    results = [r for r in validate_file(path) if r.kind == EVALRUN_KIND]
    if len(results) != 1:
        raise ManifestError(f"{path}: expected exactly one EvalRun, found {len(results)}")
    result = results[0]
    if not result.ok or not isinstance(result.model, EvalRun):
        lines = "\n".join(f"  {e}" for e in result.errors)
        raise ManifestError(f"{result.describe()} is invalid:\n{lines}")
    return result.model
