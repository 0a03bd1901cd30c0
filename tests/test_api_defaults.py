"""Defaults live once, in the models: unset nested specs read as their defaults, and the
queue/storage defaults (which belong to the operator's default queue and storage too) come
from one method each. The API's names (group, version, plurals, keys) agree with the models
and the CRDs in crds/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from proctor.api import names
from proctor.api.v1alpha1 import (
    API_VERSION,
    EVALRUN_KIND,
    EVALRUN_PLURAL,
    SUITE_KIND,
    SUITE_PLURAL,
    BenchmarkSuite,
    BenchmarkSuiteSpec,
    EvalRun,
    EvalRunSpec,
)
from proctor.api.v1alpha1.base import Compression, Placement, SpotPolicy, kind_of, plural_of
from proctor.api.v1alpha1.dataset import ResultsSpec
from proctor.api.v1alpha1.evalrun import BatchSpec, EarlyStoppingSpec, WorkersSpec
from proctor.api.v1alpha1.placement import DEFAULT_TOPOLOGY_SPREAD, RunPlacement

ROOT = Path(__file__).resolve().parents[1]

RUN: dict[str, Any] = {
    "image": "img",
    "task": {"entrypoint": "proctor.examples.topk:task"},
    "cases": {"count": 10},
}
SUITE: dict[str, Any] = {
    "image": "img",
    "benchmarks": [{"name": "b", "command": ["true"]}],
    "variants": [{"name": "v"}],
}
STORAGE = {"uri": "s3://bucket/p"}


def run(**spec: Any) -> EvalRunSpec:
    return EvalRunSpec.model_validate({**RUN, **spec})


def suite(**spec: Any) -> BenchmarkSuiteSpec:
    return BenchmarkSuiteSpec.model_validate({**SUITE, **spec})


def stored_compression(spec: EvalRunSpec) -> Compression:
    assert spec.storage is not None
    return spec.storage.compression


@pytest.mark.parametrize(
    ("read", "expected"),
    [
        (lambda: run().workers, WorkersSpec()),
        (lambda: run().batch, BatchSpec()),
        (lambda: run().early_stopping, EarlyStoppingSpec()),
        (lambda: run().placement, RunPlacement()),
        (run().placement.spread_constraints, DEFAULT_TOPOLOGY_SPREAD),
        (lambda: run(placement={"spread": "none"}).placement.spot, SpotPolicy()),
        (lambda: stored_compression(run(storage=STORAGE)), Compression()),
        (lambda: suite().placement, Placement()),
        (lambda: run().results, ResultsSpec()),
    ],
    ids=[
        "workers",
        "batch",
        "earlyStopping",
        "placement",
        "placement.topologySpread",
        "placement.spot",
        "compression",
        "suite.placement",
        "results",
    ],
)
def test_unset_nested_specs_read_as_their_defaults(read: Any, expected: BaseModel) -> None:
    assert read() == expected


@pytest.mark.parametrize("field", ["workers", "batch", "earlyStopping", "placement", "results"])
def test_an_empty_nested_spec_is_the_same_as_none(field: str) -> None:
    assert run(**{field: {}}) == run()


@pytest.mark.parametrize(
    ("spec", "lease", "checkpoint", "compression"),
    [
        ({}, 60.0, 30.0, Compression()),
        ({"queue": {"type": "redis"}}, 60.0, 30.0, Compression()),
        ({"queue": {"type": "sqs", "lease": "5m"}}, 300.0, 30.0, Compression()),
        ({"storage": STORAGE}, 60.0, 30.0, Compression()),
        ({"storage": {**STORAGE, "checkpointInterval": "2m"}}, 60.0, 120.0, Compression()),
        (
            {"storage": {**STORAGE, "compression": {"algorithm": "gzip", "level": 5}}},
            60.0,
            30.0,
            Compression(algorithm="gzip", level=5),
        ),
    ],
    ids=["nothing", "queue-no-lease", "queue-lease", "storage", "checkpoint", "gzip"],
)
def test_queue_and_storage_defaults_come_from_the_model(
    spec: dict[str, Any], lease: float, checkpoint: float, compression: Compression
) -> None:
    evalrun = run(**spec)
    assert (evalrun.lease_seconds(), evalrun.checkpoint_seconds()) == (lease, checkpoint)
    assert evalrun.compression() == compression
    bench = suite(**spec)
    assert (bench.lease_seconds(), bench.compression()) == (lease, compression)


@pytest.mark.parametrize(
    ("spec", "level"),
    [
        ({}, 0.95),
        ({"baseline": {"suiteRun": "old"}}, 0.95),
        ({"baseline": {"suiteRun": "old", "confidenceLevel": 0.99}}, 0.99),
    ],
    ids=["no-baseline", "baseline-default", "baseline-set"],
)
def test_suite_confidence_level(spec: dict[str, Any], level: float) -> None:
    assert suite(**spec).confidence_level() == level


def test_specs_whose_absence_means_something_stay_optional() -> None:
    evalrun, bench = run(), suite()
    assert (evalrun.compare, evalrun.queue, evalrun.storage) == (None, None, None)
    assert (bench.baseline, bench.schedule, bench.queue, bench.storage) == (None,) * 4


def test_the_crd_does_not_materialize_nested_defaults() -> None:
    # Unset stays unset on the server (what `kubectl get` shows is what was applied): the
    # models fill the defaults when they read the object.
    crd = yaml.safe_load((ROOT / "crds" / f"{names.GROUP}_{EVALRUN_PLURAL}.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["image", "task", "cases"]
    for field in ("workers", "batch", "earlyStopping", "placement", "results"):
        assert "default" not in spec["properties"][field], field
    assert spec["properties"]["workers"]["properties"]["max"]["default"] == 10


@pytest.mark.parametrize(
    ("model", "kind", "plural"),
    [(EvalRun, EVALRUN_KIND, EVALRUN_PLURAL), (BenchmarkSuite, SUITE_KIND, SUITE_PLURAL)],
    ids=["EvalRun", "BenchmarkSuite"],
)
def test_names_agree_with_the_models_and_the_crds(
    model: type[BaseModel], kind: str, plural: str
) -> None:
    assert (kind_of(model), plural_of(model)) == (kind, plural)
    assert model.model_fields["api_version"].default == API_VERSION == names.API_VERSION
    crd = yaml.safe_load((ROOT / "crds" / f"{names.GROUP}_{plural}.yaml").read_text())
    assert crd["metadata"]["name"] == f"{plural}.{names.GROUP}"
    assert crd["spec"]["group"] == names.GROUP
    assert crd["spec"]["names"]["kind"] == kind
    assert crd["spec"]["names"]["plural"] == plural
    assert [v["name"] for v in crd["spec"]["versions"]] == [names.VERSION]


def test_kind_of_a_model_without_a_kind_says_so() -> None:
    with pytest.raises(TypeError, match="WorkersSpec declares no kind"):
        kind_of(WorkersSpec)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (names.FINALIZER, "proctor.dev/finalizer"),
        (names.LABEL_RUN, "proctor.dev/run"),
        (names.LABEL_RUN_UID, "proctor.dev/run-uid"),
        (names.LABEL_POOL, "proctor.dev/pool"),
        (names.LABEL_CAPACITY, "proctor.dev/capacity"),
        (names.LABEL_CELL, "proctor.dev/cell"),
        (names.LABEL_SUITE_RUN, "proctor.dev/suite-run"),
        (names.LABEL_ISOLATION, "proctor.dev/isolation"),
        (names.ANNOTATION_CELL, "proctor.dev/cell"),
        (names.ANNOTATION_PROFILE, "proctor.dev/profile"),
        (names.ANNOTATION_ENQUEUED, "proctor.dev/enqueued"),
    ],
)
def test_keys_keep_their_values(key: str, value: str) -> None:
    # Live objects carry these keys: a changed value would orphan their pods and finalizers.
    assert key == value
    assert key.startswith(names.KEY_PREFIX)


@pytest.mark.parametrize(
    ("cases", "rows", "total"),
    [
        ({"count": 7}, None, 7),
        ({"dataset": {"uri": "d"}}, 10, 10),
        ({"dataset": {"uri": "d", "limit": 4}}, 10, 4),
        ({"dataset": {"uri": "d", "limit": 40}}, 10, 10),
        ({"count": 3, "dataset": {"uri": "d"}}, 10, 3),
        ({"count": 3, "dataset": {"uri": "d", "limit": 5}}, 10, 3),
    ],
    ids=["generated", "every-row", "limit", "limit-over-rows", "count", "count-and-limit"],
)
def test_the_total_of_cases(cases: dict[str, Any], rows: int | None, total: int) -> None:
    assert run(cases=cases).cases.total(rows) == total


@pytest.mark.parametrize(
    ("cases", "rows", "message"),
    [
        ({"count": 11, "dataset": {"uri": "d"}}, 10, "cases.count is 11 but the dataset has 10"),
        ({"dataset": {"uri": "d"}}, None, "known once it is listed"),
    ],
    ids=["count-over-rows", "not-listed"],
)
def test_a_total_that_cannot_be(cases: dict[str, Any], rows: int | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        run(cases=cases).cases.total(rows)
