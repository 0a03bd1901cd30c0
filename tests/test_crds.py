"""The CRDs in crds/ are generated from the models and structurally sound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proctor.api.crdgen import KINDS, crd, render, render_all

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_crd_file_matches_models(kind: Any) -> None:
    path = ROOT / "crds" / kind.file_name
    assert path.read_text() == render(kind), (
        f"{path} drifted from the models: run `proctor crds --out-dir crds`"
    )


def test_crds_folder_holds_exactly_the_generated_files() -> None:
    assert sorted(p.name for p in (ROOT / "crds").glob("*.yaml")) == sorted(
        k.file_name for k in KINDS
    )


def test_render_all_is_every_file_in_order() -> None:
    docs = list(yaml.safe_load_all(render_all()))
    assert [d["spec"]["names"]["kind"] for d in docs] == [k.kind for k in KINDS]


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key in ("properties",):
            for name, child in node.get(key, {}).items():
                out.extend(_walk(child, f"{path}.{name}"))
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                out.extend(_walk(node[key], f"{path}[{key}]"))
    return out


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_schema_is_structural(kind: Any) -> None:
    schema = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        for forbidden in ("$ref", "$defs", "title", "const", "oneOf", "allOf", "nullable"):
            assert forbidden not in node, f"{path} has {forbidden}"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node
            continue
        if "x-kubernetes-preserve-unknown-fields" in node:
            assert node["type"] == "object"
            continue
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if node["type"] != "object":
            assert "properties" not in node, path
    for path, node in _walk(schema["properties"]["spec"]):
        if path.endswith(("[items]", "[additionalProperties]")):
            continue
        if path.count(".") >= 1 and node.get("type") != "object":
            assert node.get("description"), f"spec{path} has no description"


def test_cel_rules_are_present() -> None:
    schema = crd(KINDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    workers = schema["properties"]["spec"]["properties"]["workers"]
    assert workers["x-kubernetes-validations"] == [
        {
            "rule": "self.min <= self.max",
            "message": "workers.min must not exceed workers.max",
            "fieldPath": ".min",
        }
    ]


def test_names_columns_and_subresources() -> None:
    evalrun = crd(KINDS[0])["spec"]
    assert evalrun["names"]["categories"] == ["proctor"]
    assert evalrun["names"]["shortNames"] == ["er"]
    version = evalrun["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = version["additionalPrinterColumns"]
    default = [c["name"] for c in columns if not c.get("priority")]
    assert default == ["Phase", "Progress", "Workers", "ETA", "Decision", "Age"]
    # `kubectl get -o wide` shows the priority-1 columns too.
    wide = [(c["name"], c["jsonPath"]) for c in columns if c.get("priority") == 1]
    assert wide == [
        ("Cases", ".status.counts.total"),
        ("Failed", ".status.counts.failed"),
        ("Delta", ".status.result.delta"),
        ("Results", ".status.result.resultsUri"),
    ]
    eta = next(c for c in columns if c["name"] == "ETA")
    assert (eta["type"], eta["jsonPath"]) == ("string", ".status.eta")
    suite = crd(KINDS[1])["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [(c["name"], c["jsonPath"]) for c in suite if c.get("priority") == 1] == [
        ("Run", ".status.runId"),
        ("Report", ".status.reportUri"),
    ]
