"""Alert rules (charts/proctor/files/prometheus-rules.yaml) and the Grafana dashboard
(charts/proctor/files/dashboards/proctor.json): promtool checks and unit-tests the rules
(tests/promtool/*.yaml), parses every dashboard query, and every metric either uses is one the
operator or the worker really exports.

promtool is built from Go modules by e2e/install-promtool (e2e/setup runs it).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from e2e.harness.promql import (
    DASHBOARD,
    RULES,
    dashboard_exprs,
    exported_names,
    metric_names,
    rules,
)
from proctor.controller.metrics import OperatorMetrics
from proctor.worker.metrics import WorkerMetrics

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ROOT / "docs" / "operations.md"
PROMTOOL_TESTS = sorted((ROOT / "tests" / "promtool").glob("*.yaml"))
ALERTS = {
    "ProctorLowThroughput",
    "ProctorRunStalled",
    "ProctorWorkersNotReady",
    "ProctorHighDisruptionRate",
    "ProctorOperatorDown",
    "ProctorReconcileErrors",
}
# The project's docs; the chart's metrics.prometheusRule.runbookUrl defaults to its operations.md.
DOCS_URL = "https://github.com/proctor-dev/proctor/blob/main/docs"


def promtool_path() -> Path:
    out = subprocess.run(
        [str(ROOT / "e2e" / "install-promtool"), "--print-bin"],
        capture_output=True,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip())


PROMTOOL = promtool_path()
needs_promtool = pytest.mark.skipif(
    not PROMTOOL.is_file(), reason=f"{PROMTOOL} is missing: run e2e/install-promtool"
)


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROMTOOL), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("max by (namespace, run) (proctor_operator_stalled) == 1", {"proctor_operator_stalled"}),
        (
            'histogram_quantile(0.95, sum by (le) (rate(a_bucket{x=~"$ns", y="b c"}[5m])))',
            {"a_bucket"},
        ),
        ("a / on (run) group_left b > 0.5 and c unless d offset 5m", {"a", "b", "c", "d"}),
        ('label_values(m{namespace=~"$namespace"}, run)', {"m"}),
        ("sum(x) or vector(0)", {"x"}),
        ("rec:rule_name[1h]", {"rec:rule_name"}),
    ],
)  # fmt: skip
def test_metric_names_reads_promql(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_metric_in_rules_and_dashboard_is_exported() -> None:
    known = exported_names(OperatorMetrics().registry, WorkerMetrics().registry)
    known |= {r["record"] for r in rules() if "record" in r}
    used: dict[str, set[str]] = {}
    for where, exprs in (
        ("rules", [r["expr"] for r in rules()]),
        ("dashboard", dashboard_exprs()),
    ):
        for expr in exprs:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(where)
    unknown = {name: where for name, where in used.items() if name not in known}
    assert not unknown, (
        f"metrics not exported by controller/metrics.py or worker/metrics.py: {unknown}; "
        f"exported: {sorted(known)}"
    )
    # The dashboard shows every area the issue asks for.
    assert {
        "proctor_operator_runs",
        "proctor_operator_progress_ratio",
        "proctor_operator_cases_per_second",
        "proctor_operator_desired_workers",
        "proctor_operator_ready_workers",
        "proctor_operator_backlog_batches",
        "proctor_operator_disruptions_total",
        "proctor_worker_case_duration_seconds_bucket",
        "proctor_worker_gpu_utilization_ratio",
        "proctor_operator_suites",
        "proctor_operator_suite_progress_ratio",
        "proctor_operator_suite_cells_done",
        "proctor_operator_suite_regressions",
    } <= {n for n, where in used.items() if "dashboard" in where}


def github_anchors(markdown: str) -> set[str]:
    anchors = set()
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            title = re.sub(r"[^\w\- ]", "", title)
            anchors.add(title.replace(" ", "-"))
    return anchors


def test_alerts_carry_a_summary_and_an_absolute_runbook_url_whose_anchor_exists() -> None:
    alerts = {r["alert"]: r for r in rules() if "alert" in r}
    assert set(alerts) == ALERTS
    anchors = github_anchors(OPERATIONS.read_text())
    for name, rule in alerts.items():
        assert name.startswith("Proctor"), name
        notes = rule["annotations"]
        assert notes["summary"], name
        assert notes["description"], name
        doc, _, anchor = notes["runbook_url"].partition("#")
        assert doc == f"{DOCS_URL}/operations.md", name
        assert anchor == name.lower(), f"{name}: runbook anchor #{anchor}"
        assert anchor in anchors, f"{name}: docs/operations.md has no heading #{anchor}"
        assert rule["labels"]["severity"] in {"warning", "critical"}, name


def test_dashboard_layout() -> None:
    board = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in board["panels"]:
        grid = p["gridPos"]
        assert grid["x"] + grid["w"] <= 24, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
    names = {v["name"] for v in board["templating"]["list"]}
    assert {"datasource", "namespace", "run"} <= names


@needs_promtool
def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


@needs_promtool
@pytest.mark.parametrize("test_file", PROMTOOL_TESTS, ids=[p.name for p in PROMTOOL_TESTS])
def test_promtool_rule_unit_tests(test_file: Path) -> None:
    done = promtool("test", "rules", str(test_file))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rule_unit_tests_cover_every_alert() -> None:
    covered = {
        alert["alertname"]
        for path in PROMTOOL_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for alert in test.get("alert_rule_test", [])
    }
    assert covered == ALERTS


@needs_promtool
def test_dashboard_queries_parse() -> None:
    for expr in dashboard_exprs():
        if expr.startswith("label_values("):
            continue  # Grafana's own function, not PromQL
        promql = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*")
        promql = promql.replace("$run", ".*")
        done = promtool("--experimental", "promql", "format", promql)
        assert done.returncode == 0, f"{expr}\n{done.stderr}"
