"""``proctor plan`` and ``proctor cancel`` without a cluster: the report from a preview (pure),
where the seconds per case come from, a real calibration of a task, and what each kind of bad
input says and exits with. On the real control plane: e2e/test_plan_cancel.py."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from proctor.api.v1alpha1.evalrun import EvalRun
from proctor.cli import main
from proctor.cli.plan import CaseTiming, PlanInputError, build_report, case_timing, render_text
from proctor.config import OperatorConfig
from proctor.evalrun.preview import Preview, fresh_demand
from proctor.local.admission import dataset_cases
from proctor.planning.plan import Capacity, NodeInfo, QuotaHeadroom, compute_plan
from proctor.validation import load_evalrun

GIB = 2**30
SPOT = {"karpenter.sh/capacity-type": "spot", "node.kubernetes.io/instance-type": "m5.xlarge"}
ON_DEMAND = {"node.kubernetes.io/instance-type": "m5.xlarge"}


def evalrun(**spec: Any) -> dict[str, Any]:
    annotations = spec.pop("annotations", None)
    doc: dict[str, Any] = {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "plan-me", **({"annotations": annotations} if annotations else {})},
        "spec": {
            "image": "registry.example/eval:1",
            "task": {"entrypoint": "proctor.examples.topk:task", "params": {"maxLength": 50}},
            "cases": {"count": 1000},
            "compare": {
                "baseline": {"ref": "proctor.examples.topk:top_k_sorted"},
                "candidate": {"ref": "proctor.examples.topk:top_k_heap"},
            },
            "profile": "small",
            "batch": {"initialSize": 100},
            "workers": {"max": 4},
            **spec,
        },
    }
    return doc


def preview(run: EvalRun, nodes: list[NodeInfo], config: OperatorConfig) -> Preview:
    demand = fresh_demand(run.spec, run.spec.cases.total())
    plan = compute_plan(run.spec, nodes, demand, config, quota=QuotaHeadroom())
    return Preview(plan, tuple(nodes), QuotaHeadroom(), demand)


CONFIG = OperatorConfig.model_validate(
    {"prices": {"instanceTypes": {"m5.xlarge": {"onDemand": 0.2, "spot": 0.08}}}}
)


def test_report_of_a_plan_on_two_nodes() -> None:
    run = EvalRun.model_validate(evalrun())
    nodes = [
        NodeInfo("od", Capacity(4000, 16 * GIB, 0, 110), labels=ON_DEMAND),
        NodeInfo("spot", Capacity(4000, 16 * GIB, 0, 110), labels=SPOT),
        NodeInfo("tiny", Capacity(500, GIB, 0, 110), labels=ON_DEMAND),
    ]
    report = build_report(
        run,
        "ns",
        preview(run, nodes, CONFIG),
        CONFIG,
        CaseTiming(0.01, "x"),
        total=run.spec.cases.total(),
    )
    assert report["plan"]["replicas"] == 4  # max 4; backlog 10 batches wants 5
    assert report["plan"]["boundBy"] == "max"
    assert report["backlog"] == 10
    assert (report["memoryPerWorker"], report["memoryTotal"]) == ("1Gi", "4Gi")
    by_node = {n["name"]: n for n in report["nodes"]}
    assert {n: (v["fit"], v["workers"]) for n, v in by_node.items()} == {
        "od": (3, 2),
        "spot": (3, 2),
        "tiny": (0, 0),
    }
    assert (by_node["od"]["hourlyPrice"], by_node["spot"]["capacityType"]) == (0.2, "spot")
    assert report["durationSeconds"] == pytest.approx(1000 * 0.01 / 4)
    # Two quarter-node workers on each node for 2.5 s.
    assert report["cost"]["nodeSeconds"] == pytest.approx(2 * 2 * 0.25 * 2.5)
    per_hour = report["costPerHour"]["estimatedCost"]
    assert per_hour == pytest.approx(2 * 0.25 * 0.2 + 2 * 0.25 * 0.08)
    json.dumps(report)  # JSON-ready
    text = render_text(report)
    assert "Workers: 4 of small (1 CPU, 1Gi memory each), bound by max" in text
    assert "Duration: about 2s (1000 cases at 0.01s each from x, on 4 workers)" in text
    assert "on-demand" in text
    assert "spot" in text


def test_report_without_timing_gives_the_cost_per_hour() -> None:
    run = EvalRun.model_validate(evalrun())
    nodes = [NodeInfo("n", Capacity(4000, 16 * GIB, 0, 110))]
    report = build_report(
        run, "ns", preview(run, nodes, CONFIG), CONFIG, None, total=run.spec.cases.total()
    )
    assert report["durationSeconds"] is None
    assert report["cost"] is None
    text = render_text(report)
    assert "Duration: unknown (give --calibrate N or --case-seconds S" in text
    assert "unknown (no node has a price)" in text


def args(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"calibrate": None, "case_seconds": None, "file": "run.yaml", **kw})


@pytest.mark.parametrize(
    ("given", "annotations", "expected"),
    [
        pytest.param({}, None, None, id="nothing declared"),
        pytest.param({"case_seconds": 0.5}, None, CaseTiming(0.5, "--case-seconds"), id="flag"),
        pytest.param(
            {},
            {"proctor.dev/case-seconds": "0.25"},
            CaseTiming(0.25, "annotation proctor.dev/case-seconds"),
            id="annotation",
        ),
        pytest.param(
            {"case_seconds": 2.0},
            {"proctor.dev/case-seconds": "0.25"},
            CaseTiming(2.0, "--case-seconds"),
            id="the flag wins",
        ),
    ],
)
def test_case_timing(
    given: dict[str, Any], annotations: dict[str, str] | None, expected: CaseTiming | None
) -> None:
    run = EvalRun.model_validate(evalrun(annotations=annotations))
    assert case_timing(args(**given), run, 1000) == expected


@pytest.mark.parametrize(
    ("given", "annotations", "message"),
    [
        pytest.param({"case_seconds": 0.0}, None, "above 0", id="zero seconds"),
        pytest.param({}, {"proctor.dev/case-seconds": "fast"}, "not seconds", id="not a number"),
        pytest.param({}, {"proctor.dev/case-seconds": "-1"}, "not seconds", id="negative"),
        pytest.param({"calibrate": 0}, None, "above 0", id="calibrate nothing"),
    ],
)
def test_case_timing_refuses(
    given: dict[str, Any], annotations: dict[str, str] | None, message: str
) -> None:
    run = EvalRun.model_validate(evalrun(annotations=annotations))
    with pytest.raises(PlanInputError, match=message):
        case_timing(args(**given), run, 1000)


def test_calibrate_times_the_task_here() -> None:
    run = EvalRun.model_validate(evalrun())
    timing = case_timing(args(calibrate=20), run, 1000)
    assert timing is not None
    assert 0 < timing.seconds < 5
    assert timing.source == "--calibrate: 20 cases timed here"


def test_calibrate_a_task_that_does_not_load_here() -> None:
    doc = evalrun()
    doc["spec"]["task"] = {"entrypoint": "not_installed_here:task"}
    doc["spec"].pop("compare")
    with pytest.raises(PlanInputError, match="does not run on this machine"):
        case_timing(args(calibrate=5), EvalRun.model_validate(doc), 1000)


def write(tmp_path: Path, doc: Any) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


KUBECONFIG = {
    "apiVersion": "v1",
    "kind": "Config",
    # Port 1 on loopback: nothing listens, the connection is refused at once.
    "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
    "users": [{"name": "u", "user": {"token": "secret-token-value"}}],
    "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u"}}],
    "current-context": "ctx",
}


BAD_CLUSTER_INPUT = {  # exit 7: no cluster access, as for every cluster command
    "no kubeconfig": (["--kubeconfig", "{missing}"], 7, "no such file"),
    "unknown context": (["--context", "other"], 7, "context 'other' is not in kubeconfig"),
    "no cluster": ([], 7, "the API server https://127.0.0.1:1 cannot be reached"),
}


@pytest.mark.parametrize("command", ["plan", "cancel"])
@pytest.mark.parametrize("case", BAD_CLUSTER_INPUT.values(), ids=BAD_CLUSTER_INPUT.keys())
def test_bad_cluster_input_says_which(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    command: str,
    case: tuple[list[str], int, str],
) -> None:
    extra, code, message = case
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump(KUBECONFIG))
    target = write(tmp_path, evalrun()) if command == "plan" else "plan-me"
    given = [a.replace("{missing}", str(tmp_path / "none")) for a in extra]
    if "--kubeconfig" not in given:
        given += ["--kubeconfig", str(kubeconfig)]
    assert main([command, target, *given]) == code
    err = capsys.readouterr().err
    assert message in err
    assert "secret-token-value" not in err


def test_plan_of_a_bad_manifest_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = evalrun()
    doc["spec"]["cases"]["count"] = 0
    assert main(["plan", write(tmp_path, doc)]) == 2
    assert "spec.cases.count" in capsys.readouterr().err


def test_plan_and_cancel_have_help_with_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("plan", "cancel"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "exit codes:\n  0" in out
        assert re.search(r"^  7 +no cluster access", out, re.MULTILINE)
        assert "--context" in out
        assert "--namespace" in out


def test_a_dataset_run_is_planned_and_calibrated_over_its_rows(tmp_path: Path) -> None:
    """A dataset run without cases.count has as many cases as rows: plan counts them here
    (merge finding: plan read cases.count, which a dataset run may leave unset)."""
    sample = Path(__file__).parents[1] / "manifests" / "samples" / "dataset-parquet-python.yaml"
    run = load_evalrun(sample)
    assert run.spec.cases.count is None
    total = dataset_cases(run.spec, sample)
    assert total > 0
    timing = case_timing(args(calibrate=5, file=str(sample)), run, total)
    assert timing is not None
    assert timing.source == "--calibrate: 5 cases timed here"
