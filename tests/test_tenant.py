"""Findings 10 and 11 of issue 15: a run cannot rewrite the operator's variables, and never
borrows the operator's credentials (tenant policy)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from proctor.api.conditions import Problem
from proctor.api.crdgen import KINDS, crd
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.config import OperatorConfig, TenantPolicy
from proctor.connection import Connection, RunRef
from proctor.evalrun.decide import worker_env
from proctor.evalrun.gather import run_connection
from proctor.evalrun.runtime import RunRuntime
from proctor.policy import SPEC_ENV_MAX_BYTES, admit
from proctor.suite.decide import admit_suite
from proctor.validation import validate_document

SPEC: dict[str, Any] = {
    "image": "registry.example.com/evals/topk:1",
    "task": {"entrypoint": "proctor.examples.topk:task"},
    "cases": {"count": 100},
}
REF = RunRef("ns", "run1", "uid-1", 1, {})


def spec_with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(SPEC)
    data.update(changes)
    return data


# -- finding 10: spec.env cannot name the operator's variables ---------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "PROCTOR_RUN_ID",
        "PROCTOR_QUEUE_URL",
        "PROCTOR_STORAGE_URI",
        "PROCTOR_SPEC",
        "PROCTOR_SPEC_FILE",
        "PROCTOR_ANYTHING",
        "POD_NAME",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_DEFAULT_REGION",
    ],
)
def test_finding10_env_cannot_set_operator_variables(name: str) -> None:
    with pytest.raises(ValidationError, match="the operator sets them"):
        EvalRunSpec.model_validate(spec_with(env=[{"name": name, "value": "x"}]))
    doc = {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r"},
        "spec": spec_with(env=[{"name": name, "value": "other-run"}]),
    }
    result = validate_document(doc)
    assert not result.ok
    assert any(e.path == "spec.env[0].name" for e in result.errors), result.errors


@pytest.mark.parametrize("name", ["PROCTOR_METRICS_PORT", "PROCTOR_LOG_LEVEL", "MY_PROCTOR_X"])
def test_finding10_env_may_set_user_variables(name: str) -> None:
    EvalRunSpec.model_validate(spec_with(env=[{"name": name, "value": "1"}]))


def test_finding10_the_crd_refuses_operator_variables() -> None:
    schema = crd(KINDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    env_item = schema["properties"]["spec"]["properties"]["env"]["items"]
    rules = [v["rule"] for v in env_item["x-kubernetes-validations"]]
    assert any("startsWith('PROCTOR_')" in r and "'POD_NAME'" in r for r in rules)


def test_finding10_worker_env_keeps_the_operators_variables() -> None:
    # A spec admitted by an older CRD (no env rule): the pod builder still wins.
    spec = EvalRunSpec.model_validate(SPEC)
    hostile = [
        {"name": "PROCTOR_RUN_ID", "value": "another-run"},
        {"name": "PROCTOR_STORAGE_URI", "value": "s3://other/runs"},
        {"name": "POD_NAME", "value": "x"},
        {"name": "OK", "value": "1"},
    ]
    spec = spec.model_copy(update={"env": [_env(e) for e in hostile]})
    conn = Connection("redis://r:6379/0", "s3://mine/runs", None, None, {}, [])
    env = worker_env(spec, REF, conn)
    by_name: dict[str, list[Any]] = {}
    for e in env:
        by_name.setdefault(e["name"], []).append(e.get("value"))
    assert by_name["PROCTOR_RUN_ID"] == ["uid-1"]
    assert by_name["POD_NAME"] == [None]  # the fieldRef, once
    assert by_name["OK"] == ["1"]
    assert "PROCTOR_STORAGE_URI" not in by_name  # conn.env here had none; no user value either


def _env(data: dict[str, Any]) -> Any:
    from proctor.api.v1alpha1.env import EnvVar

    return EnvVar.model_construct(name=data["name"], value=data["value"], value_from=None)


def test_finding10_a_spec_too_large_for_the_environment_is_refused() -> None:
    big = {"blob": "x" * (SPEC_ENV_MAX_BYTES + 1)}
    spec = EvalRunSpec.model_validate(spec_with(task={**SPEC["task"], "params": big}))
    problem = admit(spec, OperatorConfig())
    assert problem is not None
    assert problem.reason == "SpecTooLarge"
    assert "KiB" in problem.message
    assert "task.params" in problem.message
    small = EvalRunSpec.model_validate(spec_with(task={**SPEC["task"], "params": {"k": 1}}))
    assert admit(small, OperatorConfig()) is None
    doc = {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r"},
        "spec": spec_with(task={**SPEC["task"], "params": big}),
    }
    result = validate_document(doc)
    assert not result.ok
    assert any("KiB" in e.message for e in result.errors)


# -- finding 11: whose credentials ---------------------------------------------------------------

STORAGE = {"uri": "s3://team-a/runs", "endpoint": "http://attacker.example:9000"}


def policy(**fields: Any) -> OperatorConfig:
    return OperatorConfig(policy=TenantPolicy.model_validate(fields))


@pytest.mark.parametrize(
    ("spec", "config", "reason", "words"),
    [
        # No secretRef: the operator never signs for a user-chosen endpoint or bucket.
        (spec_with(storage=STORAGE), OperatorConfig(), "PolicyViolation", "secretRef"),
        (spec_with(storage={"uri": "s3://team-a/runs"}), OperatorConfig(), "PolicyViolation",
         "ambientCredentialBuckets"),
        (spec_with(storage={"uri": "s3://team-a/runs"}),
         policy(ambientCredentialBuckets=["team-*"]), None, ""),
        (spec_with(storage=STORAGE), policy(ambientCredentialBuckets=["team-*"]),
         "PolicyViolation", "secretRef"),
        (spec_with(storage={**STORAGE, "secretRef": {"name": "s3"}}), OperatorConfig(), None, ""),
        (spec_with(storage={**STORAGE, "secretRef": {"name": "s3"}}),
         policy(allowedStorageEndpoints=["http://minio.*"]), "PolicyViolation",
         "allowedStorageEndpoints"),
        (spec_with(storage={**STORAGE, "secretRef": {"name": "s3"}}),
         policy(allowedStorageBuckets=["team-b"]), "PolicyViolation", "allowedStorageBuckets"),
        (spec_with(), policy(allowedImages=["registry.example.com/evals/*"]), None, ""),
        (spec_with(image="docker.io/evil:1"), policy(allowedImages=["registry.example.com/*"]),
         "PolicyViolation", "allowedImages"),
        (spec_with(), policy(allowedServiceAccounts=["evals-*"]), "PolicyViolation",
         "'default'"),
        (spec_with(serviceAccountName="evals-runner"), policy(allowedServiceAccounts=["evals-*"]),
         None, ""),
        (spec_with(serviceAccountName="admin"), policy(allowedServiceAccounts=["evals-*"]),
         "PolicyViolation", "allowedServiceAccounts"),
        # A cache elsewhere is reached with the storage's credentials, where they may go.
        (spec_with(storage={**STORAGE, "secretRef": {"name": "s3"}},
                   cache={"mode": "readWrite", "uri": "s3://team-a/cache"}), OperatorConfig(),
         None, ""),
        (spec_with(storage={**STORAGE, "secretRef": {"name": "s3"}},
                   cache={"mode": "readWrite", "uri": "s3://team-b/cache"}),
         policy(allowedStorageBuckets=["team-a"]), "PolicyViolation", "spec.cache.uri"),
        (spec_with(cache={"mode": "read", "uri": "s3://other/cache"}), OperatorConfig(),
         "PolicyViolation", "spec.cache names bucket 'other' without a secretRef"),
        (spec_with(cache={"mode": "readWrite", "uri": "/tmp/cache"}), OperatorConfig(),
         "PolicyViolation", "is not an s3:// URI"),
        (spec_with(cache={"mode": "off", "uri": "/tmp/cache"}), OperatorConfig(), None, ""),
    ],
)  # fmt: skip
def test_finding11_policy_admission(
    spec: dict[str, Any], config: OperatorConfig, reason: str | None, words: str
) -> None:
    problem = admit(EvalRunSpec.model_validate(spec), config)
    if reason is None:
        assert problem is None
        return
    assert problem is not None
    assert problem.reason == reason
    assert words in problem.message


class SecretsApi:
    """The one read :func:`connection` makes: Secrets, counted."""

    def __init__(self) -> None:
        self.reads: list[str] = []

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads.append(name)
        return {"url": "redis://:pw-1234@redis:6379/0"}


def test_finding11_storage_without_secret_ref_is_refused_before_any_read() -> None:
    spec = EvalRunSpec.model_validate(
        spec_with(storage=STORAGE, queue={"type": "redis", "secretRef": {"name": "q"}})
    )
    api = SecretsApi()
    conn = run_connection(spec, REF, OperatorConfig(), api, RunRuntime())  # type: ignore[arg-type]
    assert isinstance(conn, Problem)
    assert conn.reason == "PolicyViolation"
    assert api.reads == []


def test_finding11_a_run_with_its_own_secret_gets_its_own_credentials() -> None:
    spec = EvalRunSpec.model_validate(
        spec_with(
            storage={**STORAGE, "secretRef": {"name": "s3"}},
            queue={"type": "redis", "secretRef": {"name": "q"}},
        )
    )

    class Api(SecretsApi):
        def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
            self.reads.append(name)
            if name == "s3":
                return {"AWS_ACCESS_KEY_ID": "AKIARUN", "AWS_SECRET_ACCESS_KEY": "run-secret"}
            return super().read_secret(namespace, name)

    conn = run_connection(spec, REF, OperatorConfig(), Api(), RunRuntime())  # type: ignore[arg-type]
    assert isinstance(conn, Connection)
    assert conn.storage_credentials == {
        "AWS_ACCESS_KEY_ID": "AKIARUN",
        "AWS_SECRET_ACCESS_KEY": "run-secret",
    }


SUITE: dict[str, Any] = {
    "image": "registry.example.com/bench:1",
    "benchmarks": [{"name": "status", "command": ["git", "status"]}],
    "variants": [{"name": "git"}, {"name": "jj", "image": "docker.io/jj:2"}],
    "storage": {"uri": "s3://suites/bench", "secretRef": {"name": "s3"}},
}


@pytest.mark.parametrize(
    ("changes", "config", "words"),
    [
        ({}, OperatorConfig(), None),
        ({}, policy(allowedImages=["registry.example.com/*"]), "'docker.io/jj:2'"),
        ({"baseline": {"resultsUri": "/var/lib/proctor/results"}}, OperatorConfig(), "s3://"),
        ({"baseline": {"resultsUri": "s3://other-team/suite/records.jsonl.gz"}},
         policy(allowedStorageBuckets=["suites"]), "allowedStorageBuckets"),
        ({"baseline": {"resultsUri": "s3://suites/earlier"}},
         policy(allowedStorageBuckets=["suites"]), None),
        ({"baseline": {"resultsUri": "s3://suites/earlier"},
          "storage": {"uri": "s3://suites/bench"}}, OperatorConfig(), "secretRef"),
        ({"benchmarks": [{"name": "status", "command": ["git", "status"],
                          "env": [{"name": f"V{i}", "value": "x" * 1024} for i in range(125)]}]},
         OperatorConfig(), "KiB"),
    ],
)  # fmt: skip
def test_finding11_suite_policy_and_baseline(
    changes: dict[str, Any], config: OperatorConfig, words: str | None
) -> None:
    spec = BenchmarkSuiteSpec.model_validate({**SUITE, **changes})
    problem = admit_suite(spec, config)
    if words is None:
        assert problem is None
        return
    assert problem is not None
    assert problem.reason == ("SpecTooLarge" if words == "KiB" else "PolicyViolation")
    assert words in problem.message


# -- finding 4 (cluster half): results are fenced by spec ---------------------------------------


def test_finding4_result_fields_are_immutable_in_the_crd() -> None:
    schema = crd(KINDS[0])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = schema["properties"]["spec"]["x-kubernetes-validations"]
    transitions = {r["rule"]: r["message"] for r in rules if "oldSelf" in r["rule"]}
    for field in ("task", "cases", "compare", "image", "env", "caseTimeout"):
        cel = next(c for c in transitions if f"self.{field} == oldSelf.{field}" in c)
        assert transitions[cel].startswith(f"spec.{field} is immutable")
        assert "create a new EvalRun" in transitions[cel]


class KeylessApi(SecretsApi):
    """Secrets that name an endpoint but hold no AWS keys."""

    def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        self.reads.append(name)
        return {"region": "us-east-1", "endpoint": "http://attacker.example:9324"}


@pytest.mark.parametrize(
    ("queue", "storage", "field"),
    [
        ({"type": "sqs", "secretRef": {"name": "q"}}, None, "spec.queue"),
        (None, {**STORAGE, "secretRef": {"name": "s3"}}, "spec.storage"),
    ],
)
def test_finding11_a_secret_without_keys_never_falls_back_to_the_operators(
    queue: dict[str, Any] | None, storage: dict[str, Any] | None, field: str
) -> None:
    changes: dict[str, Any] = {k: v for k, v in (("queue", queue), ("storage", storage)) if v}
    spec = EvalRunSpec.model_validate(spec_with(**changes))
    config = OperatorConfig(default_queue_url="redis://q:6379/0", default_storage_uri="s3://d/r")
    conn = run_connection(spec, REF, config, KeylessApi(), RunRuntime())  # type: ignore[arg-type]
    assert isinstance(conn, Problem)
    assert conn.reason == "SecretKeyMissing"
    assert conn.message.startswith(f"{field}.secretRef")
    assert "AWS_SECRET_ACCESS_KEY" in conn.message


def test_finding11_the_operators_sqs_client_signs_with_the_runs_keys(moto_url: str) -> None:
    from proctor.queue import QueueConnections

    queues = QueueConnections()
    keys = {"AWS_ACCESS_KEY_ID": "AKIARUN1", "AWS_SECRET_ACCESS_KEY": "run-secret-1"}
    url = f"sqs://{moto_url.removeprefix('http://')}?region=us-east-1"
    try:
        queue = queues.open(url, "r1", credentials=keys)
        other = queues.open(url, "r2")
        signer = queue.client._request_signer._credentials  # type: ignore[attr-defined]
        assert signer.access_key == "AKIARUN1"
        assert signer.secret_key == "run-secret-1"
        assert other.client is not queue.client  # type: ignore[attr-defined]
    finally:
        queues.close()


def test_finding11_a_suite_baseline_is_read_with_the_suites_credentials(
    moto_url: str, s3_bucket: str
) -> None:
    import gzip
    import json

    import boto3

    from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteStatus
    from proctor.connection import SharedClients
    from proctor.suite.results import read_baseline

    record = {"benchmark": "status", "variant": "git", "repetition": 0, "seconds": 1.0}
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").put_object(
        Bucket=s3_bucket,
        Key="earlier/records.jsonl.gz",
        Body=gzip.compress(json.dumps(record).encode() + b"\n"),
    )
    uri = f"s3://{s3_bucket}/earlier"
    spec = BenchmarkSuiteSpec.model_validate(
        {
            **SUITE,
            "storage": {
                "uri": f"s3://{s3_bucket}/b",
                "endpoint": moto_url,
                "secretRef": {"name": "s"},
            },
            "baseline": {"resultsUri": uri},
        }
    )
    keys = {"AWS_ACCESS_KEY_ID": "AKIASUITE", "AWS_SECRET_ACCESS_KEY": "suite-secret"}
    conn = Connection("redis://r:6379/0", f"s3://{s3_bucket}/b", moto_url, "us-east-1", keys, [])
    clients = SharedClients()
    try:
        found = read_baseline(
            spec=spec, ref=REF, prev=BenchmarkSuiteStatus(), run_id="r1", conn=conn,
            clients=clients, config=OperatorConfig(), api=None,  # type: ignore[arg-type]
        )  # fmt: skip
        assert found == (uri, {"status.git": [record]})
        # The only S3 client made is the suite's: its keys, its endpoint.
        assert [k[:3] for k in clients._s3] == [(moto_url, "us-east-1", "AKIASUITE")]
    finally:
        clients.close()
