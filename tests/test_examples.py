"""The example tasks: equal implementations agree, the buggy one is caught by relations."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from proctor.api.v1alpha1.evalrun import CompareSpec, TaskSpec
from proctor.examples import matmul, sorting_cmd, topk
from proctor.sdk import Relation, load_task
from proctor.stats.passrates import Aggregate, summarize


def run(
    entrypoint: str, baseline: str, candidate: str, cases: int, **spec: Any
) -> tuple[Aggregate, CompareSpec]:
    compare = CompareSpec.model_validate(
        {"baseline": {"ref": baseline}, "candidate": {"ref": candidate}, **spec}
    )
    agg = Aggregate()
    with load_task(TaskSpec(entrypoint=entrypoint), compare, seed=11) as task:
        for record in task.evaluate_batch(0, cases, 10.0):
            agg.add(record)
    return agg, compare


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ({"values": [5, 1, 5, 3], "k": 2}, [5, 5]),
        ({"values": [], "k": 3}, []),
        ({"values": [2, 9], "k": 5}, [9, 2]),
        ({"values": [-1, -1, -2], "k": 1}, [-1]),
    ],
)
def test_top_k_correct_implementations(case: dict[str, Any], expected: list[int]) -> None:
    assert topk.top_k_sorted(case) == expected
    assert topk.top_k_heap(case) == expected


def test_top_k_buggy_skips_the_element_at_position_k() -> None:
    case = {"values": [1, 2, 9, 3], "k": 2}
    assert topk.top_k_sorted(case) == [9, 3]
    assert topk.top_k_buggy(case) == [3, 2]
    # Still the right length, sorted and drawn from the input: the properties cannot see it.
    assert topk.TopKTask().check(case, topk.top_k_buggy(case)) == []


def test_topk_equal_implementations_are_accepted_with_a_margin() -> None:
    agg, compare = run(
        "proctor.examples.topk:task", "top_k_sorted", "top_k_heap", 1500, minDelta=-0.01
    )
    assert agg.candidate_passed == agg.baseline_passed == 1500
    assert summarize(agg, compare, complete=True).decision == "accept"


def test_topk_relations_catch_the_buggy_candidate() -> None:
    agg, compare = run(
        "proctor.examples.topk:task", "top_k_sorted", "top_k_buggy", 1500, minDelta=-0.01
    )
    assert agg.baseline_passed == 1500
    assert agg.candidate_pass_rate is not None
    assert agg.candidate_pass_rate < 0.8
    caught_by = {name.removeprefix("candidate/") for name in agg.violations}
    assert caught_by <= {f"relation:{r.name}" for r in topk.TopKTask.relations}
    assert "relation:permutation" in caught_by
    summary = summarize(agg, compare, complete=True)
    assert summary.decision == "reject"
    assert summary.delta_upper is not None
    assert summary.delta_upper < -0.1


@pytest.mark.parametrize("candidate", ["matmul_tiled", "matmul_transposed"])
def test_matmul_implementations_agree(candidate: str) -> None:
    agg, _ = run("proctor.examples.matmul:task", "matmul_naive", candidate, 40)
    assert agg.baseline_passed == agg.candidate_passed == 40


def loop_one_short(case: dict[str, Any]) -> matmul.Matrix:
    """An inner loop bound one short: every sum misses its last term."""
    c = matmul.matmul_naive(case)
    inner = len(case["b"])
    if inner > 1:
        a, b = case["a"], case["b"]
        for i, row in enumerate(c):
            for j in range(len(row)):
                row[j] -= a[i][inner - 1] * b[inner - 1][j]
    return c


def transposed_output(case: dict[str, Any]) -> matmul.Matrix:
    """Right numbers, wrong layout for non-square results."""
    return matmul.transpose(matmul.matmul_naive(case))


@pytest.mark.parametrize(
    ("impl", "violated"),
    [(loop_one_short, "freivalds"), (transposed_output, "shape")],
)
def test_matmul_checks_catch_wrong_kernels(impl: Any, violated: str) -> None:
    task = matmul.MatmulTask({"maxSize": 6})
    caught = [
        task.check(case, impl(case))
        for case in (task.generate(3, i) for i in range(30))
        if len(case["b"]) > 1 and len(case["a"]) != len(case["b"][0])
    ]
    assert caught
    assert all(violated in names for names in caught)


def test_matmul_relations_hold_for_the_reference() -> None:
    task = matmul.MatmulTask({"maxSize": 8})
    relations: list[Relation] = list(task.relations)
    assert {r.name for r in relations} == {"transpose", "scale", "row_permutation"}
    agg, _ = run("proctor.examples.matmul:task", "matmul_naive", "matmul_naive", 20)
    assert agg.violations == {}


def test_sorting_command_protocol() -> None:
    requests = [
        {"index": 0, "seed": 4, "role": None, "implementation": None},
        {"index": 1, "seed": 4, "role": "candidate", "implementation": "insertion"},
        {"index": 2, "seed": 4, "role": "candidate", "implementation": "nope"},
    ]
    out = io.StringIO()
    sorting_cmd.serve(io.StringIO("".join(json.dumps(r) + "\n" for r in requests)), out, 30, 0.0)
    answers = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [a["index"] for a in answers] == [0, 1, 2]
    assert answers[0]["passed"] is True
    assert answers[0]["output"] == sorted(sorting_cmd.generate(4, 0, 30))
    assert answers[1]["violations"] == []
    assert "no implementation 'nope'" in answers[2]["error"]


@pytest.mark.parametrize(
    ("xs", "violations"),
    [([3, 1, 2], []), ([2, 2, 1], ["permutation"]), ([], [])],
)
def test_sorting_buggy_implementation_is_caught(xs: list[int], violations: list[str]) -> None:
    assert sorting_cmd.evaluate(sorting_cmd.dedup_buggy, xs)[0] == violations
    assert sorting_cmd.evaluate(sorting_cmd.merge_sort, xs)[0] == []
