"""Metamorphic Guard specs on Proctor: per-case semantics, chunked inputs, the bootstrap at
scale, and the same decision as ``metamorphic-guard evaluate`` (run for real, marked slow)."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("metamorphic_guard")

from metamorphic_guard.generators import gen_top_k_inputs
from metamorphic_guard.harness.reporting import evaluate_results
from metamorphic_guard.harness.statistics import compute_delta_ci
from metamorphic_guard.scalability import ChunkedInputGenerator
from metamorphic_guard.specs import get_task

from proctor.api.v1alpha1.evalrun import CompareSpec, EvalRunSpec, Implementation, TaskSpec
from proctor.integrations.metamorphic_guard import MGParams, MGTask, mg_report
from proctor.integrations.metamorphic_guard import impls as topk
from proctor.integrations.metamorphic_guard.adapter import ChunkedInputs
from proctor.integrations.metamorphic_guard.cli import manifest
from proctor.integrations.metamorphic_guard.report import (
    DIRECT_LIMIT,
    chunked_bootstrap_deltas,
    delta_interval,
)
from proctor.sdk import TaskLoadError, load_task

IMPLS = "proctor.integrations.metamorphic_guard.impls"


def spec_for(baseline: str, candidate: str, n: int, seed: int, **params: Any) -> EvalRunSpec:
    return EvalRunSpec(
        image="x",
        task=TaskSpec(entrypoint="proctor.mgadapter:task", params={"task": "top_k", **params}),
        cases={"count": n, "seed": seed},
        compare=CompareSpec(
            baseline=Implementation(ref=baseline), candidate=Implementation(ref=candidate)
        ),
    )


def proctor_records(spec: EvalRunSpec) -> list[dict[str, Any]]:
    with load_task(spec.task, spec.compare, spec.cases.seed) as loaded:
        return list(loaded.evaluate_batch(0, spec.cases.count, 5.0))


def mg_in_process(
    impl: Callable[..., Any], n: int, seed: int, role: str = "candidate"
) -> dict[str, Any]:
    """Metamorphic Guard's evaluate_results with calls made in process (no sandbox)."""
    spec = get_task("top_k")
    inputs = spec.gen_inputs(n, seed)

    def call(args: tuple[Any, ...]) -> dict[str, Any]:
        try:
            return {
                "success": True,
                "result": impl(*[list(a) if isinstance(a, list) else a for a in args]),
            }
        except Exception as exc:
            return {"success": False, "error": str(exc)}

    results = [call(args) for args in inputs]
    metrics: dict[str, Any] = evaluate_results(
        results, spec, inputs, 10**9, role=role, seed=seed, rerun=call
    )
    return metrics


# -- parameters --------------------------------------------------------------------------------


def test_params_defaults_are_metamorphic_guards() -> None:
    p = MGParams.from_params({"task": "top_k"})
    assert (p.min_delta, p.min_pass_rate, p.alpha) == (0.02, 0.80, 0.05)
    assert (p.ci_method, p.bootstrap_samples, p.relation_correction) == ("bootstrap", 1000, "holm")
    assert MGParams.from_params({"task": "top_k", "ciMethod": "bootstrap-bca"}).ci_method == (
        "bootstrap_bca"
    )


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "task.params.task"),
        ({"task": "top_k", "minDelta": "x"}, "minDelta"),
        ({"task": "top_k", "improveDelta": 0.1}, "unknown"),
        ({"task": "top_k", "ciMethod": "magic"}, "ciMethod"),
        ({"task": "top_k", "relationCorrection": "bonferroni"}, "relationCorrection"),
        ({"task": "top_k", "chunkSize": 0}, "chunk_size"),
        ({"task": "top_k", "bootstrapSamples": 1.5}, "bootstrapSamples"),
    ],
)
def test_bad_params_are_load_errors(params: dict[str, Any], message: str) -> None:
    with pytest.raises(TaskLoadError, match=message):
        MGParams.from_params(params)


def test_unknown_task_and_bad_factory() -> None:
    with pytest.raises(TaskLoadError, match="not found"):
        MGTask({"task": "no_such_task"})
    with pytest.raises(TaskLoadError, match=r"failed|not a metamorphic_guard Spec"):
        MGTask({"task": f"{IMPLS}:top_k_sorted"})


def test_factory_reference_and_file_implementations(tmp_path: Path) -> None:
    impl = tmp_path / "cand.py"
    impl.write_text("def solve(L, k):\n    return sorted(L, reverse=True)[:k]\n")
    spec = spec_for(f"{IMPLS}:top_k_heap", str(impl), 50, 3, task="metamorphic_guard:top_k_spec")
    records = proctor_records(spec)
    assert all(r["status"] == "passed" for r in records)


# -- inputs --------------------------------------------------------------------------------------


def test_inputs_equal_one_shot_generation_up_to_a_chunk() -> None:
    inputs = ChunkedInputs(get_task("top_k"), 11, chunk_size=500)
    one_shot = gen_top_k_inputs(300, 11)
    assert [inputs.get(i) for i in range(300)] == [tuple(a) for a in one_shot]


def test_inputs_beyond_a_chunk_follow_metamorphic_guards_chunked_generator() -> None:
    chunked = ChunkedInputGenerator(gen_top_k_inputs, 1000, 5, chunk_size=300)
    inputs = ChunkedInputs(get_task("top_k"), 5, chunk_size=300, cached=1)
    # Out of order, as batches arrive: only one chunk is held at a time.
    order = list(range(600, 1000)) + list(range(0, 600))
    expected = [tuple(a) for a in chunked]
    assert all(inputs.get(i) == expected[i] for i in order)
    assert len(inputs._chunks) == 1


# -- per-case semantics against Metamorphic Guard's evaluate_results ------------------------------


@pytest.mark.parametrize(
    "impl", [topk.top_k_sorted, topk.top_k_heap, topk.top_k_dedup, topk.top_k_skip_first]
)
def test_cases_pass_and_fail_as_metamorphic_guard_counts_them(impl: Callable[..., Any]) -> None:
    n, seed = 400, 9
    spec = spec_for(f"{IMPLS}:top_k_sorted", f"{IMPLS}:{impl.__name__}", n, seed)
    records = proctor_records(spec)
    expected = mg_in_process(impl, n, seed)
    assert [int(r["candidate"]["passed"]) for r in records] == expected["pass_indicators"]
    report = mg_report(spec, records)
    coverage = {r["name"]: r["candidate"] for r in report.get("relation_coverage", {})["relations"]}
    for name, stats in expected["relation_stats"].items():
        assert coverage[name]["total"] == stats["total"]
        assert coverage[name]["failures"] == stats["failures"]
    assert report["candidate"]["passes"] == expected["passes"]
    assert report["proctor"]["propertyViolations"]["candidate"] == sum(
        1 for _ in expected["prop_violations"]
    )


def test_planted_bugs_are_caught_by_the_expected_checks() -> None:
    spec = spec_for(f"{IMPLS}:top_k_skip_first", f"{IMPLS}:top_k_dedup", 400, 1)
    report = mg_report(spec, proctor_records(spec))
    assert report["proctor"]["propertyViolations"]["candidate"] > 0
    assert report["proctor"]["relationViolations"]["baseline"] > 0
    assert report["decision"]["adopt"] is False


def test_an_implementation_that_raises_errors_the_side_and_reports_execution() -> None:
    spec = spec_for(f"{IMPLS}:top_k_sorted", "operator:truediv", 20, 2)
    records = proctor_records(spec)
    assert all(r["candidate"]["errored"] for r in records)
    report = mg_report(spec, records)
    assert report["candidate"]["prop_violations"][0]["property"] == "execution"
    assert report["proctor"]["decision"] == "reject"


def test_partial_runs_are_undecided() -> None:
    spec = spec_for(f"{IMPLS}:top_k_sorted", f"{IMPLS}:top_k_heap", 100, 2)
    report = mg_report(spec, proctor_records(spec)[:50])
    assert report["proctor"]["decision"] == "undecided"


# -- the interval at scale --------------------------------------------------------------------


def _indicators(n: int, rate: float, seed: int) -> list[int]:
    import random

    rng = random.Random(seed)
    return [int(rng.random() < rate) for _ in range(n)]


@pytest.mark.parametrize("method", ["bootstrap", "bootstrap_cluster"])
def test_chunked_bootstrap_is_bit_identical_to_metamorphic_guards(method: str) -> None:
    import numpy as np
    from metamorphic_guard.harness.statistics import generate_bootstrap_deltas

    n = 3000
    b, c = _indicators(n, 0.9, 1), _indicators(n, 0.93, 2)
    clusters = [i % 37 for i in range(n)] if method == "bootstrap_cluster" else None
    expected = generate_bootstrap_deltas(
        b, c, rng=np.random.default_rng(4), samples=250, clusters=clusters
    )
    got = chunked_bootstrap_deltas(b, c, seed=4, samples=250, clusters=clusters)
    assert got == expected


@pytest.mark.parametrize("method", ["bootstrap", "bootstrap_bca", "bootstrap_cluster"])
def test_interval_above_the_direct_limit_equals_metamorphic_guards(
    method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from proctor.integrations.metamorphic_guard import report

    n = 2000
    b, c = _indicators(n, 0.8, 3), _indicators(n, 0.85, 4)
    labels = [i // 10 for i in range(n)]

    def side(ind: list[int]) -> dict[str, Any]:
        return {
            "passes": sum(ind),
            "total": n,
            "pass_rate": sum(ind) / n,
            "pass_indicators": ind,
            "cluster_labels": labels,
        }

    params = MGParams.from_params({"task": "top_k", "ciMethod": method, "bootstrapSamples": 300})
    expected = compute_delta_ci(side(b), side(c), alpha=0.05, seed=8, samples=300, method=method)
    assert n * 300 <= DIRECT_LIMIT
    monkeypatch.setattr(report, "DIRECT_LIMIT", 0)
    monkeypatch.setattr(report, "ROW_BUDGET", 7 * n)
    assert delta_interval(params, side(b), side(c), seed=8) == expected


# -- the same decision as metamorphic-guard evaluate --------------------------------------------

SOLVERS = {
    "sorted": "def solve(L, k):\n    return sorted(L, reverse=True)[:k]\n",
    "heap": "import heapq\n\ndef solve(L, k):\n    return heapq.nlargest(k, L) if k > 0 else []\n",
    # Planted bug: duplicates dropped (the length property catches it).
    "dedup": "def solve(L, k):\n    return sorted(set(L), reverse=True)[:k]\n",
}
# (baseline, candidate, extra CLI options): equal implementations at minDelta 0 (adopt, where
# Proctor's own Newcombe rule would reject), a buggy candidate, a buggy baseline.
PAIRS = {
    "equal": ("sorted", "heap", {"min-delta": 0.0}),
    "candidate-bug": ("sorted", "dedup", {}),
    "baseline-bug": ("dedup", "heap", {}),
}
N, SEED = 100, 7
# Generous per-call timeouts on both sides: on a loaded machine Metamorphic Guard's sandbox
# (2 s by default) times calls out, which turns its verdict into a reject on its own.
TIMEOUT = "--timeout-s=60"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_decisions_equal_metamorphic_guard_evaluate(tmp_path: Path) -> None:
    for name, body in SOLVERS.items():
        (tmp_path / f"{name}.py").write_text(body)

    def mg_evaluate(pair: str) -> subprocess.Popen[bytes]:
        base, cand, extra = PAIRS[pair]
        options = [f"--{k}={v}" for k, v in extra.items()]
        with (tmp_path / f"mg-{pair}.log").open("wb") as log:
            return subprocess.Popen(
                ["metamorphic-guard", "evaluate", "--task", "top_k", f"--baseline={base}.py",
                 f"--candidate={cand}.py", f"--n={N}", f"--seed={SEED}", "--parallel=2",
                 TIMEOUT, f"--report-dir=mg-{pair}", *options],
                cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    mg_procs = {pair: mg_evaluate(pair) for pair in PAIRS}
    ours = {}
    for pair, (base, cand, extra) in PAIRS.items():
        options = [f"--{k}={v}" for k, v in extra.items()]
        run = subprocess.run(
            [sys.executable, "-m", "proctor.mgadapter", "evaluate", "--task", "top_k",
             f"--baseline={base}.py", f"--candidate={cand}.py", f"--n={N}", f"--seed={SEED}",
             "--workers=1", f"--name={pair}", "--json", TIMEOUT, *options],
            cwd=tmp_path, capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert run.returncode in (0, 1), run.stderr
        ours[pair] = json.loads(run.stdout.splitlines()[-1])
    for pair, proc in mg_procs.items():
        assert proc.wait(timeout=360) in (0, 1), pair
        reports = glob.glob(str(tmp_path / f"mg-{pair}" / "report_*[0-9].json"))
        if not reports:
            # Metamorphic Guard itself, three at once on a loaded machine, once exited without
            # a report (exit 1, as a reject would); the reference is run again, alone.
            first = (tmp_path / f"mg-{pair}.log").read_text(errors="replace")
            assert mg_evaluate(pair).wait(timeout=360) in (0, 1), pair
            reports = glob.glob(str(tmp_path / f"mg-{pair}" / "report_*[0-9].json"))
            assert reports, f"{pair}: no Metamorphic Guard report; its output:\n{first[-3000:]}"
        (path,) = reports
        theirs = json.loads(Path(path).read_text())
        mine = ours[pair]
        assert mine["decision"]["adopt"] == theirs["decision"]["adopt"], pair
        assert mine["decision"] == theirs["decision"], pair
        assert mine["delta_ci"] == theirs["delta_ci"], pair
        for side in ("baseline", "candidate"):
            assert mine[side]["passes"] == theirs[side]["passes"], (pair, side)
        assert (
            mine["relation_coverage"]["relations"] == (theirs["relation_coverage"]["relations"])
        ), pair
    assert [ours[p]["decision"]["adopt"] for p in PAIRS] == [True, False, True]


def test_manifest_helper_validates() -> None:
    from proctor.api.v1alpha1.evalrun import EvalRun

    doc = manifest(name="m", task="top_k", baseline="b.py", candidate="c.py", n=10, seed=1)
    run = EvalRun.model_validate(doc)
    assert run.spec.task.entrypoint == "proctor.mgadapter:task"


def test_generating_a_chunk_does_not_count_against_the_case_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from metamorphic_guard import generators

    def slow(n: int, seed: int) -> list[tuple[list[int], int]]:
        time.sleep(0.6)
        return [(list(a[0]), a[1]) for a in generators.gen_top_k_inputs(n, seed)]

    spec = spec_for(f"{IMPLS}:top_k_sorted", f"{IMPLS}:top_k_heap", 20, 1)
    with load_task(spec.task, spec.compare, 1) as loaded:
        loaded.task.spec.gen_inputs = slow  # type: ignore[attr-defined]
        records = list(loaded.evaluate_batch(0, 20, 0.3))
    assert [r["status"] for r in records] == ["passed"] * 20
