"""What Proctor's alert rules and Grafana dashboard query: their PromQL, the metric names in
it, and the series names a scrape of a registry shows. Used by tests/test_alerts.py (names
against the registries) and e2e/test_operator_metrics.py (names against a live scrape)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "charts" / "proctor" / "files" / "prometheus-rules.yaml"
DASHBOARD = ROOT / "charts" / "proctor" / "files" / "dashboards" / "proctor.json"


def rules() -> list[dict[str, Any]]:
    """Every rule of the rule file, across its groups."""
    doc = yaml.safe_load(RULES.read_text())
    if set(doc) != {"groups"}:
        raise ValueError(f"{RULES}: a rule file has exactly one top-level key, groups")
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    """Every panel query and templating query of the dashboard."""
    board = json.loads(DASHBOARD.read_text())
    exprs = [str(t["expr"]) for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(str(var["query"]["query"]))
    return exprs


def exported_names(*registries: CollectorRegistry) -> set[str]:
    """Series names a scrape shows: counters get _total, histograms _bucket/_sum/_count."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in suffixes[family.type]
    }


_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_OPERATORS = {"and", "or", "unless", "bool", "offset"}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (or a Grafana label_values() query)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    grouping = "|".join(_GROUPING)
    text = re.sub(rf"\b({grouping})\s*\([^)]*\)", "", text)  # label lists
    text = re.sub(r"label_values\(([^,()]*),[^)]*\)", r"\1", text)  # label_values(m, label)
    text = re.sub(r"(?<![\w:])\d[\w.]*", "", text)  # numbers and durations
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        rest = text[match.end() :].lstrip()
        word = match.group()
        if rest.startswith("(") or word in _OPERATORS | _GROUPING:
            continue  # a function call or an operator
        names.add(word)
    return names
