"""``proctor run`` of a BenchmarkSuite on this machine: the sample end to end, its HTML report
rendered by headless Chromium, and baselines (by results URI and by suite name)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "manifests" / "samples" / "benchmarksuite.yaml"


def proctor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "proctor", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "chromium is not installed: run e2e/setup (or e2e/install-chromium), which installs "
        "Debian's chromium; CI does"
    )


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def test_sample_runs_locally_and_its_report_renders_in_chromium(tmp_path: Path) -> None:
    browser = chromium()
    result = proctor(
        "run", str(SAMPLE), "--results-dir", str(tmp_path / "res"), "--run-id", "r1", "--json",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert (data["total"], data["completed"], data["failed"]) == (20, 20, 0)
    assert [(c["benchmark"], c["variant"]) for c in data["cells"]] == [
        ("sort", "builtin"),
        ("sort", "pure-python"),
        ("sum", "builtin"),
        ("sum", "pure-python"),
    ]
    assert all(c["p50"] > 0 and len(c["medianCi"]) == 2 for c in data["cells"])
    assert {(c["benchmark"], c["variant"]) for c in data["comparisons"]} == {
        ("sort", "pure-python"),
        ("sum", "pure-python"),
    }
    run_dir = tmp_path / "res" / "default" / "builtin-vs-python" / "r1"
    report = run_dir / "report.html"
    assert data["reportUri"] == report.as_uri()
    lines = gzip.decompress((run_dir / "records.jsonl.gz").read_bytes()).splitlines()
    assert len(lines) == 20
    assert (run_dir / "report.md").read_text().startswith("# BenchmarkSuite builtin-vs-python")

    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom", report.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = _Tags()
    parser.feed(dom.stdout)
    plots = [a.get("data-benchmark") for t, a in parser.tags if t == "svg"]
    assert plots == ["sort", "sum"], "Chromium's DOM lacks the box plots"
    boxes = [a.get("data-cell") for t, a in parser.tags if t == "g" and a.get("class") == "box"]
    assert sorted(b or "" for b in boxes) == [
        "sort.builtin", "sort.pure-python", "sum.builtin", "sum.pure-python",
    ]  # fmt: skip
    assert sum(1 for t, _ in parser.tags if t == "circle") == 20
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu",
         f"--user-data-dir={tmp_path / 'chromium'}", f"--screenshot={shot}",
         "--window-size=1280,1400", report.as_uri()],
        capture_output=True, timeout=120, check=True,
    )  # fmt: skip
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 20_000


def sleep_suite(path: Path, name: str, jj_seconds: str, baseline: dict[str, Any] | None) -> Path:
    spec: dict[str, Any] = {
        "image": "unused",
        "benchmarks": [{"name": "nap", "command": ["sleep"], "warmup": 1, "repetitions": 6}],
        "variants": [{"name": "git", "args": ["0.2"]}, {"name": "jj", "args": [jj_seconds]}],
    }
    if baseline is not None:
        spec["baseline"] = baseline
    doc = {"apiVersion": "proctor.dev/v1alpha1", "kind": "BenchmarkSuite",
           "metadata": {"name": name}, "spec": spec}  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


def test_baseline_flags_exactly_the_slowed_cell_and_a_rerun_flags_nothing(tmp_path: Path) -> None:
    res = str(tmp_path / "res")
    first = proctor(
        "run", str(sleep_suite(tmp_path / "a.yaml", "nap", "0.2", None)),
        "--results-dir", res, "--run-id", "r1", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    base_uri = json.loads(first.stdout)["resultsUri"]
    assert urlsplit(base_uri).scheme == "file"

    # 30% slower jj, compared with the first run by its results URI.
    slowed = proctor(
        "run", str(sleep_suite(tmp_path / "b.yaml", "nap", "0.26", {"resultsUri": base_uri})),
        "--results-dir", res, "--run-id", "r2", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert slowed.returncode == 1, slowed.stderr
    data = json.loads(slowed.stdout)
    assert [(r["benchmark"], r["variant"]) for r in data["regressions"]] == [("nap", "jj")]
    assert data["regressions"][0]["ratio"] == pytest.approx(1.3, rel=0.1)
    assert data["baselineUri"] == base_uri

    # No change since r2, compared with the newest earlier run of the suite by name.
    rerun = proctor(
        "run", str(sleep_suite(tmp_path / "c.yaml", "nap", "0.26", {"suiteRun": "nap"})),
        "--results-dir", res, "--run-id", "r3", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert rerun.returncode == 0, rerun.stderr
    data = json.loads(rerun.stdout)
    assert data["regressions"] == []
    assert data["baselineUri"].rstrip("/").endswith("/nap/r2")
    assert [b["regression"] for b in data["baseline"]] == [False, False]


def test_a_missing_baseline_is_a_clear_error(tmp_path: Path) -> None:
    manifest = sleep_suite(
        tmp_path / "m.yaml", "nap", "0.01", {"resultsUri": str(tmp_path / "none")}
    )
    result = proctor("run", str(manifest), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert result.returncode == 2
    assert "no suite results at" in result.stderr
    assert "baseline.resultsUri" in result.stderr


def test_failed_repetitions_make_the_run_incomplete_and_the_table_says_so(tmp_path: Path) -> None:
    doc = {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "BenchmarkSuite",
        "metadata": {"name": "broken"},
        "spec": {
            "image": "unused",
            "benchmarks": [{"name": "f", "command": ["false"], "warmup": 0, "repetitions": 2}],
            "variants": [{"name": "only"}],
        },
    }
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    result = proctor("run", str(manifest), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "report: file://" in result.stdout
    assert "2/2" in result.stdout


def test_records_report_and_baseline_on_s3(
    tmp_path: Path, s3_bucket: str, aws_env: dict[str, str]
) -> None:
    import boto3

    storage = f"s3://{s3_bucket}/suites"

    def run(manifest: Path, run_id: str) -> subprocess.CompletedProcess[str]:
        env = dict(aws_env)
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
        return subprocess.run(
            [sys.executable, "-m", "proctor", "run", str(manifest), "--storage", storage,
             "--results-dir", str(tmp_path / "local"), "--run-id", run_id, "--json"],
            capture_output=True, text=True, check=False, cwd=tmp_path, env=env, timeout=300,
        )  # fmt: skip

    first = run(sleep_suite(tmp_path / "a.yaml", "s3nap", "0.05", None), "r1")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["reportUri"] == f"{storage}/default/s3nap/r1/report.html"
    s3: Any = boto3.client("s3", endpoint_url=aws_env["AWS_ENDPOINT_URL"], region_name="us-east-1")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    prefix = "suites/default/s3nap/r1/"
    assert {f"{prefix}{k}" for k in ("report.html", "report.md", "records.jsonl.gz")} <= keys
    assert sum(1 for k in keys if k.startswith(f"{prefix}cells/nap.git/results/")) == 6
    second = run(
        sleep_suite(tmp_path / "b.yaml", "s3nap", "0.05", {"resultsUri": data["reportUri"]}), "r2"
    )
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["baselineUri"] == data["reportUri"]
    assert len(again["baseline"]) == 2
