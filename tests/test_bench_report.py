"""Summaries and reports from records: pure functions, checked against NumPy, and a report
that is self-contained."""

from __future__ import annotations

import copy
import re
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
from scipy import stats

from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.bench.report import box_stats, render_html, render_markdown
from proctor.bench.summary import summarize_suite, wall_times

SPEC: dict[str, Any] = {
    "image": "img",
    "benchmarks": [
        {"name": "status", "command": ["x"], "repetitions": 8},
        {"name": "log", "command": ["y"], "repetitions": 8},
    ],
    "variants": [{"name": "git"}, {"name": "jj"}],
}


def spec(baseline: bool = False) -> BenchmarkSuiteSpec:
    data = copy.deepcopy(SPEC)
    if baseline:
        data["baseline"] = {"resultsUri": "file:///base", "threshold": 0.1}
    return BenchmarkSuiteSpec.model_validate(data)


def records(
    seed: int, slow: dict[str, float] | None = None, n: int = 8
) -> dict[str, list[dict[str, Any]]]:
    rng = np.random.default_rng(seed)
    out: dict[str, list[dict[str, Any]]] = {}
    for b, base in (("status", 0.2), ("log", 0.5)):
        for v, factor in (("git", 1.0), ("jj", 0.5)):
            cell = f"{b}.{v}"
            scale = base * factor * (slow or {}).get(cell, 1.0)
            out[cell] = [
                {
                    "benchmark": b,
                    "variant": v,
                    "repetition": i,
                    "wall_seconds": float(scale * rng.lognormal(0, 0.02)),
                    "user_seconds": 0.1,
                    "system_seconds": 0.01,
                    "max_rss_bytes": 8 << 20,
                    "exit_code": 0,
                    "timed_out": False,
                    "ok": True,
                }
                for i in range(n)
            ]
    return out


def test_cell_statistics_match_numpy_and_failures_are_counted_not_measured() -> None:
    recs = records(1)
    recs["status.git"][3] = {
        **recs["status.git"][3],
        "ok": False,
        "exit_code": 1,
        "wall_seconds": 99.0,
    }
    del recs["log.jj"][5:]
    before = copy.deepcopy(recs)
    summary = summarize_suite(spec(), recs)
    assert recs == before  # inputs untouched
    by = {(c.benchmark, c.variant): c for c in summary.cells}
    sg = by[("status", "git")]
    xs = [r["wall_seconds"] for r in recs["status.git"] if r["ok"]]
    assert (sg.completed, sg.total, sg.failed) == (8, 8, 1)
    assert sg.mean == pytest.approx(np.mean(xs))
    assert sg.stddev == pytest.approx(np.std(xs, ddof=1))
    assert sg.p50 == pytest.approx(np.median(xs))
    assert sg.p95 == pytest.approx(np.percentile(xs, 95))
    assert sg.p99 == pytest.approx(np.percentile(xs, 99))
    assert (sg.min, sg.max) == (min(xs), max(xs))
    assert sg.mean_ci is not None
    assert sg.mean_ci == pytest.approx(
        [np.mean(xs) + s * stats.t.ppf(0.975, len(xs) - 1) * stats.sem(xs) for s in (-1, 1)]
    )
    assert sg.regression is None
    assert (by[("log", "jj")].completed, by[("log", "jj")].failed) == (5, 0)
    assert (summary.total, summary.completed, summary.failed) == (32, 29, 1)
    assert summary.regressions == []


def test_variants_are_compared_to_the_first_with_an_interval() -> None:
    summary = summarize_suite(spec(), records(2))
    assert [(c.benchmark, c.variant, c.reference) for c in summary.comparisons] == [
        ("status", "jj", "git"),
        ("log", "jj", "git"),
    ]
    for c in summary.comparisons:
        assert c.ratio == pytest.approx(0.5, rel=0.05)
        assert c.ratio_ci[0] <= c.ratio <= c.ratio_ci[1]


def test_a_planted_slowdown_is_flagged_exactly_and_a_rerun_flags_nothing() -> None:
    baseline = records(3)
    slowed = summarize_suite(spec(True), records(4, slow={"log.jj": 1.3}), baseline)
    assert [(r.benchmark, r.variant) for r in slowed.regressions] == [("log", "jj")]
    assert slowed.regressions[0].ratio == pytest.approx(1.3, rel=0.05)
    assert [c.regression for c in slowed.cells] == [False, False, False, True]
    rerun = summarize_suite(spec(True), records(5), baseline)
    assert rerun.regressions == []
    assert len(rerun.baseline) == 4
    # A baseline without the cell: nothing to compare, nothing flagged.
    partial = summarize_suite(
        spec(True), records(4, slow={"log.jj": 1.3}), {"status.git": baseline["status.git"]}
    )
    assert [(b.benchmark, b.variant) for b in partial.baseline] == [("status", "git")]


def test_the_same_records_always_give_the_same_summary() -> None:
    a = summarize_suite(spec(True), records(6), records(7)).to_json()
    b = summarize_suite(spec(True), records(6), records(7)).to_json()
    assert a == b


def test_wall_times_count_each_repetition_once() -> None:
    recs = [
        {"repetition": 1, "ok": True, "wall_seconds": 2.0},
        {"repetition": 0, "ok": True, "wall_seconds": 1.0},
        {"repetition": 1, "ok": True, "wall_seconds": 9.0},
        {"repetition": 2, "ok": False, "wall_seconds": 5.0},
    ]
    assert wall_times(recs) == [1.0, 2.0]


def test_box_stats_are_tukeys() -> None:
    xs = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 100.0]
    b = box_stats(xs)
    assert (b["q1"], b["median"], b["q3"]) == (3.0, 5.0, 7.0)
    assert (b["lo"], b["hi"]) == (1.0, 8.0)  # 100 is an outlier, drawn as a point


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_html_report_is_self_contained_with_a_plot_per_benchmark() -> None:
    now, base = records(8, slow={"status.git": 1.5}), records(9)
    summary = summarize_suite(spec(True), now, base)
    page = render_html(summary, now, base, title="vcs <suite>", details={"run": "r1"})
    parser = _Collect()
    parser.feed(page)
    tags = parser.tags
    assert not [t for t, a in tags if t in ("script", "link", "img", "iframe")]
    assert not [a for _, a in tags if "src" in a or "href" in a]
    assert "url(" not in page
    assert "@import" not in page
    assert "vcs &lt;suite&gt;" in page
    plots = [a["data-benchmark"] for t, a in tags if t == "svg"]
    assert plots == ["status", "log"]
    boxes = [
        (a["data-cell"], a["data-series"]) for t, a in tags if t == "g" and a.get("class") == "box"
    ]
    assert sorted(boxes) == sorted((c, s) for c in now for s in ("now", "baseline"))
    assert sum(1 for t, a in tags if t == "circle") == 64
    assert page.count('class="regression"') >= 1
    markdown = render_markdown(summary, now, title="vcs", details={"run": "r1"})
    assert "| status | git | 8/8 | 0 |" in markdown
    assert re.search(r"\| status \| git \| .* \| REGRESSION \|", markdown)
    assert "## Against the baseline" in markdown
    assert "Mann-Whitney" in markdown


def test_report_says_when_the_median_interval_falls_short_of_the_level() -> None:
    recs = records(10, n=5)
    markdown = render_markdown(summarize_suite(spec(), recs), recs)
    assert "covers the median with probability 1 - 2^(1-n) only (0.938 at n = 5)" in markdown


def test_a_cell_without_successful_repetitions_still_renders() -> None:
    recs = records(11)
    recs["log.git"] = [{**r, "ok": False} for r in recs["log.git"]]
    summary = summarize_suite(spec(), recs)
    page = render_html(summary, recs)
    assert "log" in page
    cell = next(c for c in summary.cells if c.variant == "git" and c.benchmark == "log")
    assert (cell.failed, cell.p50) == (8, None)
