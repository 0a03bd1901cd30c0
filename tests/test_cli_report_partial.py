"""``proctor report NAME`` of a suite still running: a partial report of the repetitions recorded
so far, marked as such, instead of exit 8 (issue 19)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.bench.store import SuiteStore
from proctor.bench.summary import summarize_suite
from proctor.cli.report import in_progress, partial_heading, partial_report

SPEC: dict[str, Any] = {
    "image": "proctor/proctor:0.1.0",
    "benchmarks": [
        {"name": "alpha", "command": ["true"], "warmup": 0, "repetitions": 2},
        {"name": "beta", "command": ["true"], "warmup": 0, "repetitions": 5},
    ],
    "variants": [{"name": "a"}],
    "storage": {"uri": "s3://bucket/suites"},
}


def suite(phase: str | None, run_id: str | None = "r1") -> dict[str, Any]:
    status = {k: v for k, v in (("phase", phase), ("runId", run_id)) if v is not None}
    return {"metadata": {"name": "slow", "namespace": "ns"}, "spec": SPEC, "status": status}


@pytest.mark.parametrize(
    ("phase", "current", "asked", "expected"),
    [
        ("Running", "r1", None, True),
        ("Running", "r1", "r1", True),
        ("Pending", "r1", None, True),
        ("Suspended", "r1", None, True),
        ("Running", "r1", "r0", False),  # an earlier run: its report or nothing
        ("Running", None, None, False),  # no run started: nothing to report
        ("Succeeded", "r1", None, False),  # finished: the operator's report, or exit 8
        ("Failed", "r1", None, False),
        ("Cancelled", "r1", None, False),
    ],
)
def test_in_progress(phase: str, current: str | None, asked: str | None, expected: bool) -> None:
    assert in_progress(suite(phase, current), asked) is expected


def _record(rep: int, seconds: float = 0.5, ok: bool = True) -> dict[str, Any]:
    return {
        "repetition": rep, "ok": ok, "wall_seconds": seconds, "user_seconds": 0.01,
        "system_seconds": 0.01, "max_rss_bytes": 2**20,
    }  # fmt: skip


def test_partial_heading_says_what_is_measured_and_what_is_pending() -> None:
    spec = BenchmarkSuiteSpec.model_validate(SPEC)
    records = {"alpha.a": [_record(0), _record(1)], "beta.a": [_record(0)]}
    title, details = partial_heading("slow", "Running", summarize_suite(spec, records))
    assert title == "Benchmark suite slow (partial: Running, 3 of 7 repetitions recorded)"
    assert details["measured"] == "alpha.a"
    assert details["pending"] == "beta.a (1 of 5 recorded)"
    _, none = partial_heading("slow", "Pending", summarize_suite(spec, {}))
    assert none["measured"] == "no cell yet"
    assert none["pending"] == "alpha.a (0 of 2 recorded), beta.a (0 of 5 recorded)"


def test_partial_report_reads_the_records_so_far(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SuiteStore(str(tmp_path / "st"), "ns", "slow", "r1")
    for rep in (0, 1):
        store.write_record("alpha.a", _record(rep, 0.25))
    store.write_record("beta.a", _record(3, 1.5))
    body = suite("Running")
    markdown = partial_report(store, "yours", body, html=False).decode()
    assert markdown.startswith(
        "# Benchmark suite slow (partial: Running, 3 of 7 repetitions recorded)\n"
    )
    assert "| alpha | a | 2/2 | 0 | this run | 250.00 ms |" in markdown
    assert "| beta | a | 1/5 | 0 | this run | 1.500 s |" in markdown
    assert "- **pending**: beta.a (1 of 5 recorded)" in markdown
    assert "- **run**: r1" in markdown
    assert capsys.readouterr().err == (
        "partial report: BenchmarkSuite slow is Running, 3 of 7 repetitions recorded\n"
    )
    html = partial_report(store, "yours", body, html=True).decode()
    assert "<h1>Benchmark suite slow (partial: Running" in html
    assert "beta.a (1 of 5 recorded)" in html
