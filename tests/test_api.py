"""Table-driven validation of EvalRun and BenchmarkSuite specs, with exact messages."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from proctor.api.v1alpha1 import EvalRun
from proctor.api.v1alpha1.base import PROFILE_NAMES
from proctor.validation import validate_document

BASE_RUN: dict[str, Any] = {
    "apiVersion": "proctor.dev/v1alpha1",
    "kind": "EvalRun",
    "metadata": {"name": "r"},
    "spec": {
        "image": "proctor/proctor:0.1.0",
        "task": {"entrypoint": "proctor.examples.topk:task"},
        "cases": {"count": 100},
    },
}

BASE_SUITE: dict[str, Any] = {
    "apiVersion": "proctor.dev/v1alpha1",
    "kind": "BenchmarkSuite",
    "metadata": {"name": "s"},
    "spec": {
        "image": "img",
        "benchmarks": [{"name": "status", "command": ["git", "status"]}],
        "variants": [{"name": "git"}, {"name": "jj"}],
    },
}


def with_spec(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    for dotted, value in changes.items():
        target = doc["spec"]
        *parents, leaf = dotted.split("__")
        for p in parents:
            target = target.setdefault(p, {})
        if value is ...:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return doc


VALID = {
    "minimal": BASE_RUN,
    "command task": with_spec(BASE_RUN, task={"command": ["python3", "t.py"]}),
    "explicit resources": with_spec(BASE_RUN, resources={"cpu": "1500m", "memory": "3Gi"}),
    "integer cpu": with_spec(BASE_RUN, resources={"cpu": 2, "memory": "1Gi"}),
    "workers equal": with_spec(BASE_RUN, workers={"min": 3, "max": 3}),
    "compare": with_spec(
        BASE_RUN,
        compare={"baseline": {"ref": "m:a"}, "candidate": {"ref": "m:b"}, "minDelta": -0.05},
    ),
    "placement": with_spec(
        BASE_RUN,
        placement={
            "spread": "required",
            "tolerations": [{"key": "k", "operator": "Exists"}],
            "pools": [{"name": "a", "nodeSelector": {"pool": "a"}, "weight": 3}],
            "spot": {"allowed": True, "fallbackToOnDemandAfter": 2},
        },
    ),
    "exclusive with topology spread": with_spec(
        BASE_RUN,
        placement={
            "isolation": "exclusive",
            "topologySpread": [
                {"topologyKey": "topology.kubernetes.io/zone", "maxSkew": 1},
                {
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                },
                {"topologyKey": "kubernetes.io/hostname", "maxSkew": 2, "minDomains": 3},
                {"topologyKey": "rack"},
            ],
        },
    ),
    "no topology spread": with_spec(BASE_RUN, placement={"topologySpread": []}),
    "env from secret": with_spec(
        BASE_RUN, env=[{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    ),
    "durations": with_spec(BASE_RUN, caseTimeout="1m30s", batch={"targetDuration": "500ms"}),
    "suite": BASE_SUITE,
    "suite baseline": with_spec(BASE_SUITE, baseline={"suiteRun": "yesterday", "threshold": 0.2}),
}

INVALID = {
    "min above max": (
        with_spec(BASE_RUN, workers={"min": 5, "max": 2}),
        "spec.workers.min: workers.min must not exceed workers.max",
    ),
    "both task kinds": (
        with_spec(BASE_RUN, task={"entrypoint": "a:b", "command": ["x"]}),
        "spec.task: task needs exactly one of entrypoint (a Python task) or command",
    ),
    "no task kind": (
        with_spec(BASE_RUN, task={}),
        "spec.task: task needs exactly one of entrypoint (a Python task) or command",
    ),
    "unknown profile": (
        with_spec(BASE_RUN, profile="huge"),
        'spec.profile: Unsupported value: "huge": supported values: "micro", "small", '
        '"medium", "large", "xlarge", "auto"',
    ),
    "profile and resources": (
        with_spec(BASE_RUN, profile="small", resources={"cpu": "1", "memory": "1Gi"}),
        "spec.resources: set either profile or resources, not both",
    ),
    "zero cases": (
        with_spec(BASE_RUN, cases={"count": 0}),
        "spec.cases.count: Invalid value: 0: spec.cases.count in body should be greater than "
        "or equal to 1",
    ),
    "missing image": (with_spec(BASE_RUN, image=...), "spec.image: Required value"),
    "unknown field": (with_spec(BASE_RUN, profil="small"), 'unknown field "spec.profil"'),
    "bad duration": (
        with_spec(BASE_RUN, caseTimeout="10"),
        'spec.caseTimeout: Invalid value: "10": spec.caseTimeout in body should match',
    ),
    "bad memory": (
        with_spec(BASE_RUN, resources={"cpu": "1", "memory": "lots"}),
        'spec.resources.memory: Invalid value: "lots": spec.resources.memory in body should match',
    ),
    "bad entrypoint": (
        with_spec(BASE_RUN, task={"entrypoint": "no-colon"}),
        'spec.task.entrypoint: Invalid value: "no-colon": spec.task.entrypoint in body should '
        "match",
    ),
    "batch sizes": (
        with_spec(BASE_RUN, batch={"initialSize": 50, "maxSize": 10}),
        "spec.batch.initialSize: batch sizes must satisfy minSize <= initialSize <= maxSize",
    ),
    "env value and valueFrom": (
        with_spec(
            BASE_RUN,
            env=[
                {
                    "name": "X",
                    "value": "1",
                    "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
                }
            ],
        ),
        "spec.env[0]: env needs value or valueFrom, not both",
    ),
    "bad spread": (
        with_spec(BASE_RUN, placement={"spread": "always"}),
        'spec.placement.spread: Unsupported value: "always": supported values: "preferred", '
        '"required", "none"',
    ),
    "bad isolation": (
        with_spec(BASE_RUN, placement={"isolation": "solo"}),
        'spec.placement.isolation: Unsupported value: "solo": supported values: "shared", '
        '"exclusive"',
    ),
    "topologyKey not a label key": (
        with_spec(BASE_RUN, placement={"topologySpread": [{"topologyKey": "zone/"}]}),
        "spec.placement.topologySpread[0].topologyKey: topologyKey must be a node label key, "
        "such as topology.kubernetes.io/zone (zones), kubernetes.io/hostname (nodes)",
    ),
    "topologyKey with a space": (
        with_spec(BASE_RUN, placement={"topologySpread": [{"topologyKey": "my zone"}]}),
        "spec.placement.topologySpread[0].topologyKey: topologyKey must be a node label key",
    ),
    "topologyKey missing": (
        with_spec(BASE_RUN, placement={"topologySpread": [{"maxSkew": 1}]}),
        "spec.placement.topologySpread[0].topologyKey: Required value",
    ),
    "maxSkew zero": (
        with_spec(BASE_RUN, placement={"topologySpread": [{"topologyKey": "rack", "maxSkew": 0}]}),
        "spec.placement.topologySpread[0].maxSkew: Invalid value: 0: "
        "spec.placement.topologySpread[0].maxSkew in body should be greater than or equal to 1",
    ),
    "bad whenUnsatisfiable": (
        with_spec(
            BASE_RUN,
            placement={"topologySpread": [{"topologyKey": "rack", "whenUnsatisfiable": "Never"}]},
        ),
        'spec.placement.topologySpread[0].whenUnsatisfiable: Unsupported value: "Never": '
        'supported values: "DoNotSchedule", "ScheduleAnyway"',
    ),
    "minDomains with ScheduleAnyway": (
        with_spec(
            BASE_RUN,
            placement={
                "topologySpread": [
                    {"topologyKey": "rack", "whenUnsatisfiable": "ScheduleAnyway", "minDomains": 2}
                ]
            },
        ),
        "spec.placement.topologySpread[0].minDomains: minDomains is only allowed with "
        "whenUnsatisfiable: DoNotSchedule",
    ),
    "spread selector is the operator's": (
        with_spec(
            BASE_RUN,
            placement={
                "topologySpread": [
                    {"topologyKey": "rack", "labelSelector": {"matchLabels": {"app": "db"}}}
                ]
            },
        ),
        'unknown field "spec.placement.topologySpread[0].labelSelector"',
    ),
    "duplicate spread constraint": (
        with_spec(
            BASE_RUN,
            placement={
                "topologySpread": [
                    {"topologyKey": "topology.kubernetes.io/zone", "maxSkew": 1},
                    {
                        "topologyKey": "topology.kubernetes.io/zone",
                        "maxSkew": 2,
                        "whenUnsatisfiable": "DoNotSchedule",
                    },
                ]
            },
        ),
        "spec.placement.topologySpread[1]: Duplicate value: "
        '{"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"DoNotSchedule"}',
    ),
    "too many spread constraints": (
        with_spec(
            BASE_RUN, placement={"topologySpread": [{"topologyKey": f"k{i}"} for i in range(9)]}
        ),
        "spec.placement.topologySpread: Too many: spec.placement.topologySpread must have at "
        "most 8 items",
    ),
    "delta out of range": (
        with_spec(
            BASE_RUN, compare={"baseline": {"ref": "a"}, "candidate": {"ref": "b"}, "minDelta": 2}
        ),
        "spec.compare.minDelta: Invalid value: 2: spec.compare.minDelta in body should be less "
        "than or equal to 1",
    ),
    "storage uri": (
        with_spec(BASE_RUN, storage={"uri": "gs://bucket"}),
        'spec.storage.uri: Invalid value: "gs://bucket": spec.storage.uri in body should match',
    ),
    "suite duplicate variant": (
        with_spec(BASE_SUITE, variants=[{"name": "git"}, {"name": "git"}]),
        'spec.variants[1]: Duplicate value: {"name":"git"}',
    ),
    "suite no benchmarks": (
        with_spec(BASE_SUITE, benchmarks=[]),
        "spec.benchmarks: Invalid value: spec.benchmarks in body should have at least 1",
    ),
    "suite bad isolation": (
        with_spec(BASE_SUITE, isolation="solo"),
        'spec.isolation: Unsupported value: "solo": supported values: "exclusive", "spread", '
        '"shared"',
    ),
    "suite baseline both": (
        with_spec(BASE_SUITE, baseline={"suiteRun": "a", "resultsUri": "s3://b/c"}),
        "spec.baseline: baseline needs exactly one of suiteRun or resultsUri",
    ),
    "wrong apiVersion": (
        {**BASE_RUN, "apiVersion": "proctor.dev/v1"},
        'apiVersion: Unsupported value: "proctor.dev/v1": supported values: "proctor.dev/v1alpha1"',
    ),
    "wrong kind": (
        {**BASE_RUN, "kind": "EvalJob"},
        'kind: Unsupported value: "EvalJob": supported values: "EvalRun", "BenchmarkSuite"',
    ),
}


@pytest.mark.parametrize("doc", VALID.values(), ids=VALID.keys())
def test_valid(doc: dict[str, Any]) -> None:
    result = validate_document(doc)
    assert result.errors == ()
    assert result.model is not None


@pytest.mark.parametrize(("doc", "message"), INVALID.values(), ids=INVALID.keys())
def test_invalid(doc: dict[str, Any], message: str) -> None:
    result = validate_document(doc)
    assert result.model is None
    rendered = [str(e) for e in result.errors]
    assert any(r.startswith(message) for r in rendered), rendered


def test_validation_does_not_mutate_input() -> None:
    doc = with_spec(BASE_RUN, workers={"min": 1})
    before = copy.deepcopy(doc)
    validate_document(doc)
    assert doc == before


def test_defaults_and_profile_resolution() -> None:
    run = EvalRun.model_validate(BASE_RUN)
    assert run.spec.retries == 3
    assert run.spec.case_timeout == "60s"
    assert run.spec.profile_name() == "auto"
    sized = EvalRun.model_validate(with_spec(BASE_RUN, resources={"cpu": 1, "memory": "1Gi"}))
    assert sized.spec.profile_name() == "custom"
    assert sized.spec.resources is not None
    assert sized.spec.resources.cpu == "1"


def test_profile_names_match_the_enum() -> None:
    field = EvalRun.model_fields["spec"].annotation
    assert field is not None
    assert set(PROFILE_NAMES) == {"micro", "small", "medium", "large", "xlarge", "auto"}


def test_round_trip_to_wire_is_camel_case() -> None:
    run = EvalRun.model_validate(with_spec(BASE_RUN, workers={"targetBacklogPerWorker": 4}))
    wire = run.to_wire()
    assert wire["spec"]["workers"]["targetBacklogPerWorker"] == 4
    assert "target_backlog_per_worker" not in str(wire)
    assert EvalRun.model_validate(wire) == run
