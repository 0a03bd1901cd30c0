"""charts/proctor/README.md lists exactly the chart's values: its table is what
charts/generate-readme writes from values.yaml's `# --` comments, every value is in it, and it
names no value that does not exist."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "proctor"
SCRIPT = ROOT / "charts" / "generate-readme"


def generator() -> ModuleType:
    """The script as a module (it has no .py suffix)."""
    if "generate_readme" not in sys.modules:
        loader = SourceFileLoader("generate_readme", str(SCRIPT))
        spec = importlib.util.spec_from_loader(loader.name, loader)
        assert spec is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[loader.name] = module  # dataclasses look their module up
        loader.exec_module(module)
    return sys.modules["generate_readme"]


def readme_keys(text: str) -> list[str]:
    """The keys of the README's values table (first column, in backticks)."""
    return re.findall(r"^\| `([^`]+)` \|", text, flags=re.MULTILINE)


def leaf_paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return {p for k, v in node.items() for p in leaf_paths(v, f"{prefix}.{k}".lstrip("."))}
    return {prefix}


def exists(values: dict[str, Any], key: str) -> bool:
    node: Any = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_readme_table_is_what_generate_readme_writes() -> None:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr


def test_readme_lists_every_value_and_no_other() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    keys = readme_keys((CHART / "README.md").read_text())
    assert len(keys) == len(set(keys)), "a key listed twice"
    assert [k for k in keys if not exists(values, k)] == [], "README lists values that do not exist"
    undocumented = {
        leaf
        for leaf in leaf_paths(values)
        if not any(leaf == k or leaf.startswith(k + ".") for k in keys)
    }
    assert undocumented == set(), "values missing from the README"
    # The new values of issue 19 are there.
    assert {
        "operator.extraArgs",
        "operator.extraVolumes",
        "operator.extraVolumeMounts",
        "extraObjects",
        "config.workerMetricsPort",
        "metrics.workerPodMonitor.enabled",
        "metrics.prometheusRule.runbookUrl",
    } <= set(keys)


@pytest.mark.parametrize(
    ("text", "keys", "missing"),
    [
        pytest.param("# -- a\na: 1\n", [("a", 1, "a")], [], id="documented"),
        pytest.param("a: 1\n", [], ["a"], id="undocumented"),
        pytest.param(
            "# -- one\n# two\nb: x\n", [("b", "x", "one two")], [], id="continued-comment"
        ),
        pytest.param(
            "s:\n  # -- x\n  x: 1\n  y: 2\n", [("s.x", 1, "x")], ["s", "s.y"], id="section"
        ),
        pytest.param(
            "# -- r\nr:\n  requests:\n    cpu: 1\n", [("r", {"requests": {"cpu": 1}}, "r")], [],
            id="inside-a-documented-value",
        ),
        pytest.param(
            "# Plain comment.\n# -- l\nl:\n  - a: 1\nb: 2\n", [("l", [{"a": 1}], "l")], ["b"],
            id="list-then-undocumented",
        ),
    ],
)  # fmt: skip
def test_documented_reads_values_comments(
    text: str, keys: list[tuple[str, Any, str]], missing: list[str]
) -> None:
    values, undocumented = generator().documented(text)
    assert [(v.key, v.default, v.description) for v in values] == keys
    assert undocumented == missing


def test_table_escapes_pipes_and_tags_but_not_code() -> None:
    gen = generator()
    value = gen.Value("k", "a|b", "reads <dir>/x, `#<anchor>`")
    row = gen.table([value]).splitlines()[-1]
    assert row == '| `k` | string | `"a\\|b"` | reads \\<dir>/x, `#<anchor>` |'
