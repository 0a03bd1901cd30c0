"""Generate CustomResourceDefinitions from the pydantic models.

The models are the single source of the schema. Pydantic's JSON Schema is turned into a
structural OpenAPI v3 schema the apiserver accepts: references inlined, nullable unions
collapsed, JSON-Schema-only keywords rewritten, and only scalar defaults kept (the apiserver
applies them before CEL rules run, so rules may rely on them).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import yaml
from pydantic import BaseModel

from proctor.api.names import GROUP, VERSION
from proctor.api.v1alpha1 import benchmarksuite, evalrun
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec, BenchmarkSuiteStatus
from proctor.api.v1alpha1.evalrun import EvalRunSpec, EvalRunStatus

_DROP = {"title", "$defs", "discriminator"}


@dataclass(frozen=True)
class Kind:
    """Everything the CRD needs to know about one kind."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    printer_columns: tuple[dict[str, Any], ...]
    description: str

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def file_name(self) -> str:
        return f"{GROUP}_{self.plural}.yaml"


KINDS: tuple[Kind, ...] = (
    Kind(
        kind=evalrun.KIND,
        plural=evalrun.PLURAL,
        singular="evalrun",
        short_names=("er",),
        spec=EvalRunSpec,
        status=EvalRunStatus,
        description="EvalRun evaluates N cases of a task on elastic, preemption-tolerant "
        "workers and reports pass rates and an accept/reject decision.",
        printer_columns=(
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {
                "name": "Progress",
                "type": "number",
                "jsonPath": ".status.progressPercent",
                "description": "Percent of cases completed.",
            },
            {
                "name": "Workers",
                "type": "integer",
                "jsonPath": ".status.workers.ready",
                "description": "Ready worker pods.",
            },
            {
                "name": "ETA",
                "type": "string",
                "jsonPath": ".status.eta",
                "description": "Estimated time to finish, as a duration.",
            },
            {"name": "Decision", "type": "string", "jsonPath": ".status.result.decision"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            # priority 1: shown by `kubectl get -o wide` only.
            {
                "name": "Cases",
                "type": "integer",
                "jsonPath": ".status.counts.total",
                "description": "Cases in the run.",
                "priority": 1,
            },
            {
                "name": "Failed",
                "type": "integer",
                "jsonPath": ".status.counts.failed",
                "description": "Completed cases whose checks failed.",
                "priority": 1,
            },
            {
                "name": "Delta",
                "type": "number",
                "jsonPath": ".status.result.delta",
                "description": "Candidate minus baseline pass rate.",
                "priority": 1,
            },
            {
                "name": "Results",
                "type": "string",
                "jsonPath": ".status.result.resultsUri",
                "description": "Where the merged results are.",
                "priority": 1,
            },
        ),
    ),
    Kind(
        kind=benchmarksuite.KIND,
        plural=benchmarksuite.PLURAL,
        singular="benchmarksuite",
        short_names=("bs", "bench"),
        spec=BenchmarkSuiteSpec,
        status=BenchmarkSuiteStatus,
        description="BenchmarkSuite measures benchmarks x variants x repetitions in isolation "
        "and reports statistics and regressions against a baseline.",
        printer_columns=(
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {
                "name": "Progress",
                "type": "number",
                "jsonPath": ".status.progressPercent",
                "description": "Percent of repetitions done.",
            },
            {
                "name": "Regressions",
                "type": "integer",
                "jsonPath": ".status.regressionCount",
                "description": "Cells slower than the baseline.",
            },
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
            # priority 1: shown by `kubectl get -o wide` only.
            {
                "name": "Run",
                "type": "string",
                "jsonPath": ".status.runId",
                "description": "The current (or last) run.",
                "priority": 1,
            },
            {
                "name": "Report",
                "type": "string",
                "jsonPath": ".status.reportUri",
                "description": "Where the report is.",
                "priority": 1,
            },
        ),
    ),
)


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline every ``$ref`` (the models have no recursion)."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        merged = {**_resolve(target, defs), **_resolve(siblings, defs)}
        return merged
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = _resolve(node["allOf"][0], defs)
        siblings = {k: _resolve(v, defs) for k, v in node.items() if k != "allOf"}
        return {**inner, **siblings}
    return {k: _resolve(v, defs) for k, v in node.items()}


def _collapse_nullable(node: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` becomes ``X``: absence, not null, is how the API says "unset"."""
    if "anyOf" not in node or node.get("x-kubernetes-int-or-string"):
        return node
    branches = [b for b in node["anyOf"] if b.get("type") != "null"]
    if len(branches) != 1:
        raise ValueError(f"cannot express union in a structural schema: {node['anyOf']}")
    outer = {k: v for k, v in node.items() if k != "anyOf"}
    return {**branches[0], **outer}


def _openapi_keywords(node: dict[str, Any]) -> dict[str, Any]:
    """JSON-Schema-only keywords rewritten or dropped, in place; only scalar defaults kept."""
    for key in _DROP:
        node.pop(key, None)
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if "default" in node and (node["default"] is None or isinstance(node["default"], dict | list)):
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, base in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = node.get(bound)
        if isinstance(value, int | float) and not isinstance(value, bool):
            node[base] = value
            node[bound] = True
    if node.get("required") == []:
        del node["required"]
    return node


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = _openapi_keywords(_collapse_nullable(dict(node)))
    if "properties" in node:
        node["properties"] = {k: _structural(v) for k, v in node["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _structural(node[key])
    if "anyOf" in node:
        node["anyOf"] = [_structural(b) for b in node["anyOf"]]
    return node


_FIRST = ("description", "type", "default", "enum", "format")


def _ordered(node: Any) -> Any:
    """Stable, readable key order: description and type first, the rest as generated."""
    if isinstance(node, list):
        return [_ordered(item) for item in node]
    if not isinstance(node, dict):
        return node
    head = [k for k in _FIRST if k in node]
    tail = [k for k in node if k not in _FIRST]
    return {k: _ordered(node[k]) for k in head + tail}


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A structural OpenAPI v3 schema for one model."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    return dict(_ordered(_structural(_resolve(raw, defs))))


def crd(kind: Kind) -> dict[str, Any]:
    """The CustomResourceDefinition for one kind."""
    status = openapi_schema(kind.status)
    status["description"] = f"Observed state of the {kind.kind}."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": kind.crd_name,
            "labels": {"app.kubernetes.io/name": "proctor", "app.kubernetes.io/part-of": "proctor"},
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["proctor"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [dict(c) for c in kind.printer_columns],
                    "schema": {
                        "openAPIV3Schema": {
                            "description": kind.description,
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": openapi_schema(kind.spec),
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def render(kind: Kind) -> str:
    """One CRD as YAML, exactly as stored in ``crds/``."""
    header = "# Generated by `proctor crds` from the pydantic models. Do not edit.\n"
    return header + yaml.safe_dump(crd(kind), sort_keys=False, width=100, allow_unicode=True)


def render_all() -> str:
    """All CRDs as one multi-document stream, in the order of ``KINDS``."""
    return "---\n".join(render(kind) for kind in KINDS)
