"""Generate ``docs/api.md`` from the models: every field with its type, default and description.

Run ``python -m proctor.api.docgen > docs/api.md``; a test fails when the file drifts.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from proctor.api.crdgen import KINDS
from proctor.api.names import API_VERSION
from proctor.api.v1alpha1.base import ApiModel

_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _strip_annotated(tp: Any) -> Any:
    while get_origin(tp) is typing.Annotated:
        tp = get_args(tp)[0]
    return tp


def _type_name(tp: Any, field: FieldInfo | None = None) -> str:
    tp = _strip_annotated(tp)
    origin = get_origin(tp)
    if field is not None:
        for meta in field.metadata:
            schema = getattr(meta, "json_schema", None)
            if isinstance(schema, dict) and schema.get("x-kubernetes-int-or-string"):
                return "quantity"
            if isinstance(schema, dict) and schema.get("x-kubernetes-preserve-unknown-fields"):
                return "object (free-form)"
            if isinstance(schema, dict) and "pattern" in schema and "ns|us" in schema["pattern"]:
                return "duration"
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _type_name(args[0], field)
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return "enum: " + ", ".join(f"`{a}`" for a in get_args(tp))
    if origin is list:
        return f"[]{_type_name(get_args(tp)[0])}"
    if origin is dict:
        return f"map[string]{_type_name(get_args(tp)[1])}"
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return f"[{tp.__name__}](#{tp.__name__.lower()})"
    return _SCALARS.get(tp, getattr(tp, "__name__", str(tp)))


def _nested_models(tp: Any) -> list[type[BaseModel]]:
    tp = _strip_annotated(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    found: list[type[BaseModel]] = []
    for arg in get_args(tp):
        found.extend(_nested_models(arg))
    return found


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    if field.default is PydanticUndefined or field.default is None:
        return ""
    if isinstance(field.default, bool):
        return f"`{str(field.default).lower()}`"
    return f"`{field.default}`"


def _section(model: type[BaseModel]) -> list[str]:
    doc = (model.__doc__ or "").strip().splitlines()[0]
    lines = [f"### {model.__name__}", "", doc, ""]
    if issubclass(model, ApiModel) and model.rules:
        lines.append("Rules (checked by the apiserver as CEL and by `proctor validate`):")
        lines.extend(f"- {rule.message}" for rule in model.rules)
        lines.append("")
    lines += ["| Field | Type | Default | Description |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        wire = field.alias or name
        description = (field.description or "").replace("|", "\\|")
        lines.append(
            f"| `{wire}` | {_type_name(field.annotation, field)} | {_default(field)} "
            f"| {description} |"
        )
    lines.append("")
    return lines


def render() -> str:
    out = [
        f"# API reference: {API_VERSION}",
        "",
        "Generated from the pydantic models by `python -m proctor.api.docgen`; "
        "do not edit by hand (a test fails when this file drifts).",
        "",
        "Quantities are written as Kubernetes writes them (`500m`, `2`, `512Mi`, `2Gi`); "
        "durations as Go durations (`500ms`, `30s`, `5m`, `1h30m`).",
        "",
    ]
    seen: set[type[BaseModel]] = set()
    for kind in KINDS:
        out += [f"## {kind.kind}", "", kind.description, ""]
        queue: list[type[BaseModel]] = [kind.spec, kind.status]
        while queue:
            model = queue.pop(0)
            if model in seen:
                continue
            seen.add(model)
            out += _section(model)
            for field in model.model_fields.values():
                queue.extend(m for m in _nested_models(field.annotation) if m not in seen)
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
