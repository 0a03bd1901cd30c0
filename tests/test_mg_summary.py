"""A Metamorphic Guard run's summary is Metamorphic Guard's: ``proctor run`` reports its
report, decision and exit code, and the summary the operator writes uses the same function."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("metamorphic_guard")

from metamorphic_guard.specs import Metric, Spec, get_task

from proctor.api.v1alpha1.evalrun import (
    CompareSpec,
    EvalRunSpec,
    Implementation,
    ResultSummary,
    TaskSpec,
)
from proctor.cli import main
from proctor.integrations.metamorphic_guard.report import report_from_storage
from proctor.integrations.metamorphic_guard.summary import (
    REPORT_NAME,
    is_mg_run,
    report_rows,
    summary_from_report,
    unavailable,
    with_mg_report,
)
from proctor.local.run import EXIT_ACCEPT, EXIT_INCOMPLETE, EXIT_REJECT
from proctor.queue import Range
from proctor.sdk import load_task
from proctor.storage import RunStorage, open_storage

IMPLS = "proctor.integrations.metamorphic_guard.impls"


def spec_with_metric() -> Spec:
    """Metamorphic Guard's top_k with a metric (extracting it calls the implementations)."""
    metric = Metric(name="length", extract=lambda out, args: float(len(out)), kind="mean")
    return dataclasses.replace(get_task("top_k"), metrics=[metric])


def run_spec(
    candidate: str = "top_k_heap",
    *,
    n: int = 200,
    entrypoint: str = "proctor.mgadapter:task",
    compare: bool = True,
    **params: Any,
) -> EvalRunSpec:
    return EvalRunSpec(
        image="x",
        task=TaskSpec(entrypoint=entrypoint, params={"task": "top_k", **params}),
        cases={"count": n, "seed": 3},
        compare=CompareSpec(
            baseline=Implementation(ref=f"{IMPLS}:top_k_sorted"),
            candidate=Implementation(ref=f"{IMPLS}:{candidate}"),
        )
        if compare
        else None,
    )


def stored(tmp_path: Path, spec: EvalRunSpec, count: int | None = None) -> RunStorage:
    """A run's storage holding the records of its first ``count`` cases (all by default)."""
    storage = open_storage(tmp_path.as_uri(), "run")
    end = spec.cases.count if count is None else count
    if end == 0:
        return storage
    with load_task(spec.task, spec.compare, spec.cases.seed) as loaded:
        records = list(loaded.evaluate_batch(0, end, 10.0))
    storage.write_results(Range(0, end), records)
    return storage


# -- pure pieces --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (run_spec(), True),
        (run_spec(entrypoint="proctor.mgadapter:MGTask"), True),
        (run_spec(compare=False), False),
        (run_spec(entrypoint="proctor.examples.topk:task"), False),
    ],
)
def test_is_mg_run(spec: EvalRunSpec, expected: bool) -> None:
    assert is_mg_run(spec) is expected


REPORT: dict[str, Any] = {
    "proctor": {
        "decision": "accept",
        "reason": "meets_gate",
        "baselinePassRate": 0.9,
        "candidatePassRate": 0.95,
        "delta": 0.05,
        "deltaInterval": [0.03, 0.07],
        "relativeRisk": 0.5,
        "relativeRiskInterval": [0.3, None],
        "propertyViolations": {"baseline": 4, "candidate": 0},
        "relationViolations": {"baseline": 1, "candidate": 0},
    },
    "relation_coverage": {
        "relations": [
            {
                "name": "permute_input",
                "baseline": {"total": 10, "failures": 1},
                "candidate": {"total": 10, "failures": 0},
            }
        ]
    },
}


@pytest.mark.parametrize(
    ("base", "field", "expected"),
    [
        (ResultSummary(decision="reject", reason="newcombe"), "decision", "accept"),
        (ResultSummary(decision="reject"), "reason", "Metamorphic Guard: meets_gate"),
        (ResultSummary(delta_lower=-0.2), "delta_lower", 0.03),
        (ResultSummary(delta_upper=0.2), "delta_upper", 0.07),
        (ResultSummary(early_stopped=False), "early_stopped", False),
        (ResultSummary(results_uri="file:///r"), "results_uri", "file:///r"),
        (ResultSummary(), "candidate_pass_rate", 0.95),
    ],
)
def test_summary_from_report(base: ResultSummary, field: str, expected: Any) -> None:
    before = base.model_copy(deep=True)
    report = copy.deepcopy(REPORT)
    assert getattr(summary_from_report(report, base), field) == expected
    assert base == before
    assert report == REPORT


def test_metamorphic_guard_never_decides_over_cases_not_evaluated() -> None:
    """Red-team finding (merge review): Metamorphic Guard counted unreadable dataset rows as
    execution failures and its accept replaced Proctor's undecided. Not evaluated stays
    undecided; its figures are still shown."""
    base = ResultSummary(decision="undecided", reason="2 of 40 cases were not evaluated",
                         not_evaluated=2)  # fmt: skip
    summary = summary_from_report(copy.deepcopy(REPORT), base)
    assert (summary.decision, summary.not_evaluated) == ("undecided", 2)
    assert summary.reason is not None
    assert summary.reason.startswith("2 of 40 cases were not evaluated")
    assert "Metamorphic Guard would say accept" in summary.reason
    assert (summary.delta_lower, summary.delta_upper) == (0.03, 0.07)


def test_unavailable_is_undecided_and_says_why() -> None:
    out = unavailable(ResultSummary(decision="accept", delta=0.1), "no module")
    assert out.decision == "undecided"
    assert out.reason is not None
    assert "no module" in out.reason
    assert "report" in out.reason
    assert out.delta == 0.1


def test_report_rows() -> None:
    rows = dict(report_rows(REPORT))
    assert rows["relative risk"] == "0.5000  [0.3000, -]"
    assert rows["property violations"] == "baseline 4, candidate 0"
    assert rows["relation permute_input"] == "failed: baseline 1 of 10, candidate 0 of 10"


# -- with_mg_report on a real run's storage ------------------------------------------------


def test_other_runs_pass_through_untouched(tmp_path: Path) -> None:
    spec = run_spec(entrypoint="proctor.examples.topk:task")
    storage = stored(tmp_path, spec, 0)
    base = ResultSummary(decision="reject", reason="newcombe")
    assert with_mg_report(spec, storage, base) == (base, None)
    assert not (tmp_path / "run" / REPORT_NAME).exists()


def test_report_replaces_the_decision_and_is_stored(tmp_path: Path) -> None:
    spec = run_spec("top_k_dedup")
    storage = stored(tmp_path, spec)
    summary, report = with_mg_report(spec, storage, ResultSummary(decision="accept"))
    assert report is not None
    assert summary.decision == "reject"
    assert report["decision"]["adopt"] is False
    assert summary.reason == f"Metamorphic Guard: {report['decision']['reason']}"
    assert report["proctor"]["propertyViolations"]["candidate"] > 0
    assert json.loads((tmp_path / "run" / REPORT_NAME).read_text()) == report


def test_partial_run_is_undecided(tmp_path: Path) -> None:
    spec = run_spec()
    summary, report = with_mg_report(spec, stored(tmp_path, spec, 120), ResultSummary())
    assert summary.decision == "undecided"
    assert report is not None
    assert "120 of 200" in (summary.reason or "")


def test_a_task_that_cannot_load_here_leaves_the_run_undecided(tmp_path: Path) -> None:
    spec = run_spec()
    storage = stored(tmp_path, spec)
    broken = spec.model_copy(
        update={"task": TaskSpec(entrypoint="proctor.mgadapter:task", params={"task": "nope"})}
    )
    summary, report = with_mg_report(broken, storage, ResultSummary(decision="accept"))
    assert report is None
    assert summary.decision == "undecided"
    assert "nope" in (summary.reason or "")


def test_metrics_are_left_out_when_asked(tmp_path: Path) -> None:
    spec = run_spec(task="tests.test_mg_summary:spec_with_metric")
    storage = stored(tmp_path, spec)
    _, with_metrics = with_mg_report(spec, storage, ResultSummary())
    _, without = with_mg_report(spec, storage, ResultSummary(), metrics=False)
    assert with_metrics is not None
    assert without is not None
    assert "length" in with_metrics["metrics"]
    assert "metrics" not in without
    assert with_metrics["decision"] == without["decision"]


# -- proctor run -------------------------------------------------------------------------

MANIFEST = """
apiVersion: proctor.dev/v1alpha1
kind: EvalRun
metadata: {{name: {name}}}
spec:
  image: proctor/proctor:0.1.0
  task:
    entrypoint: proctor.mgadapter:task
    params: {{task: top_k, minDelta: 0.0}}
  cases: {{count: 300, seed: 5}}
  compare:
    baseline: {{ref: proctor.integrations.metamorphic_guard.impls:top_k_sorted}}
    candidate: {{ref: proctor.integrations.metamorphic_guard.impls:{candidate}}}
    minDelta: 0.0
  batch: {{initialSize: 40}}
  caseTimeout: 30s
"""


@pytest.mark.parametrize(
    "case",
    # Equal implementations at minDelta 0: Metamorphic Guard adopts (its bootstrap interval
    # is [0, 0]) where Proctor's own Newcombe rule rejects; a planted bug is rejected.
    [("top_k_heap", EXIT_ACCEPT, "accept"), ("top_k_dedup", EXIT_REJECT, "reject")],
)
def test_proctor_run_reports_metamorphic_guards_decision(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, int, str],
) -> None:
    candidate, code, decision = case
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mg.yaml"
    name = f"mg-{candidate.replace('_', '-')}"
    path.write_text(MANIFEST.format(name=name, candidate=candidate))
    capsys.readouterr()
    assert main(["run", str(path), "--workers", "2", "--json"]) == code
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    report = summary["metamorphicGuard"]
    assert summary["decision"] == decision == report["proctor"]["decision"]
    assert summary["reason"] == f"Metamorphic Guard: {report['decision']['reason']}"
    assert summary["exitCode"] == code
    assert (summary["completed"], summary["total"]) == (300, 300)
    assert [summary["baselinePassRate"], summary["candidatePassRate"]] == [
        report["baseline"]["pass_rate"],
        report["candidate"]["pass_rate"],
    ]
    assert summary["interval"] == report["delta_ci"]
    # The same report, made again from the stored records.
    from proctor.local.run import load_evalrun

    storage = open_storage((tmp_path / "proctor-results").as_uri(), name).of_current_attempt()
    again = report_from_storage(load_evalrun(path).spec, storage)
    assert again["decision"] == report["decision"]
    assert again["delta_ci"] == report["delta_ci"]


def test_proctor_run_table_shows_metamorphic_guards_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "mg.yaml"
    path.write_text(MANIFEST.format(name="mg-table", candidate="top_k_skip_first"))
    assert main(["run", str(path), "--workers", "1"]) == EXIT_REJECT
    out = capsys.readouterr().out
    for label in ("relative risk", "property violations", "relation violations"):
        assert label in out
    assert "relation permute_input" in out
    assert "Metamorphic Guard:" in out


def test_proctor_run_of_an_unloadable_spec_is_not_judged(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "mg.yaml"
    path.write_text(
        MANIFEST.format(name="mg-bad", candidate="top_k_heap").replace("task: top_k", "task: nope")
    )
    code = main(["run", str(path), "--workers", "1", "--json"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code != EXIT_ACCEPT
    assert code != EXIT_REJECT
    assert summary["decision"] == "undecided"
    assert "metamorphicGuard" not in summary
    assert code in (2, EXIT_INCOMPLETE)
