"""Tenant safety on the real control plane (issue 15, findings 4, 9, 10 and 11): no Secret
value reaches an Event, a log or a status; the API server refuses operator variables in
spec.env and changes to what decides results; the policy refuses a run that would borrow the
operator's credentials."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from kubernetes.client.rest import ApiException

from e2e.conftest import Cluster
from e2e.harness import nodes
from e2e.harness.operator import CREDS
from e2e.harness.poll import wait_until
from e2e.test_operator import Env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


class TenantEnv(Env):
    """An :class:`Env` whose Secrets hold distinctive values, a Redis with a password."""

    secrets: dict[str, str]

    def runs(self) -> list[dict[str, Any]]:
        listed: dict[str, Any] = self.custom.list_namespaced_custom_object(
            "proctor.dev", "v1alpha1", self.namespace, "evalruns"
        )
        return list(listed["items"])

    def leaks(self, op_log: str) -> list[str]:
        """Where a Secret value appears: Events, operator log, worker logs, statuses."""
        texts: dict[str, str] = {"operator log": op_log}
        for event in self.cluster.core.list_namespaced_event(self.namespace).items:
            texts[f"event {event.reason} {event.involved_object.name}"] = event.message or ""
        pods = self.cluster.state_dir / "pods"
        for path in sorted(pods.glob(f"{self.namespace}_*/*.log")):
            texts[f"worker log {path.parent.name}/{path.name}"] = path.read_text(errors="replace")
        for run in self.runs():
            texts[f"status {run['metadata']['name']}"] = json.dumps(run.get("status") or {})
        return [
            f"{key} of Secret holds in {where}"
            for where, text in texts.items()
            for key, value in self.secrets.items()
            if value in text
        ]


@pytest.fixture
def tenv(  # noqa: PLR0917 - pytest fixtures arrive as positional arguments
    cluster: Cluster,
    crds: list[dict[str, Any]],
    namespace: str,
    redis_server: str,
    moto_server: str,
    tmp_path: Path,
) -> Iterator[TenantEnv]:
    tag = uuid.uuid4().hex[:10]
    password, wrong = f"Qpw{tag}", f"Xpw{tag}"
    redis.Redis.from_url(redis_server).config_set("requirepass", password)
    good = redis_server.replace("redis://", f"redis://:{password}@")
    key_id, secret_key = f"AKIA{tag.upper()}", f"S3key/{tag}+"
    bucket = f"proctor-{tag[:8]}"
    boto3.client(
        "s3",
        endpoint_url=moto_server,
        region_name="us-east-1",
        **{k.lower(): v for k, v in CREDS.items()},
    ).create_bucket(Bucket=bucket)
    core = cluster.core
    for name, data in (
        ("queue", {"url": good}),
        ("queue-down", {"url": f"redis://:{wrong}@127.0.0.1:1/0"}),
        ("s3", {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret_key}),
    ):
        core.create_namespaced_secret(namespace, {"metadata": {"name": name}, "stringData": data})
    e = TenantEnv(
        cluster,
        namespace=namespace,
        pool=f"p{tag[:6]}",
        bucket=bucket,
        moto=moto_server,
        workdir=tmp_path,
    )
    e.secrets = {
        "queue password": password,
        "queue-down password": wrong,
        "AWS_ACCESS_KEY_ID": key_id,
        "AWS_SECRET_ACCESS_KEY": secret_key,
    }
    try:
        yield e
    finally:
        for name in e.nodes:
            nodes.delete_node(cluster.core, name)


def _events(env: Env, name: str, reason: str) -> list[Any]:
    return [e for e in env.events(name) if e.reason == reason]


def test_finding9_no_secret_value_in_events_logs_or_status(tenv: TenantEnv) -> None:
    tenv.node(cpu="4", memory="8Gi")
    down = tenv.evalrun("queue-down", count=50)
    down["spec"]["queue"]["secretRef"] = {"name": "queue-down"}
    with tenv.operator() as op:
        tenv.create(tenv.evalrun("works", count=200))
        tenv.create(down)
        failed = wait_until(
            lambda: _events(tenv, "queue-down", "ReconcileError"),
            timeout=60,
            what="a ReconcileError Event for the unreachable queue",
        )
        tenv.wait_phase("works", "Succeeded", timeout=180)
        assert tenv.runs()
    assert "cannot reach Redis" in failed[0].message
    assert "redis://***@127.0.0.1:1/0" in failed[0].message
    assert list((tenv.cluster.state_dir / "pods").glob(f"{tenv.namespace}_works-worker-*"))
    assert tenv.leaks(op.output()) == []


def test_finding10_api_server_refuses_operator_variables_in_env(tenv: TenantEnv) -> None:
    for name in ("PROCTOR_RUN_ID", "PROCTOR_STORAGE_URI", "POD_NAME"):
        doc = tenv.evalrun(f"env-{name.lower().replace('_', '-')}", count=10)
        doc["spec"]["env"] = [{"name": name, "value": "another-run"}]
        with pytest.raises(ApiException) as refused:
            tenv.create(doc)
        assert refused.value.status == 422
        assert "the operator sets them" in str(refused.value.body)
    ok = tenv.evalrun("env-ok", count=10)
    ok["spec"]["env"] = [{"name": "PROCTOR_METRICS_PORT", "value": "9090"}]
    tenv.create(ok)


def test_finding4_api_server_refuses_changes_to_what_decides_results(tenv: TenantEnv) -> None:
    tenv.create(tenv.evalrun("fenced", count=10, suspend=True))
    changes: list[dict[str, Any]] = [
        {"task": {"entrypoint": "proctor.examples.quickstart:other"}},
        {"cases": {"count": 11}},
        {"compare": None},
        {"image": "proctor/proctor:0.2.0"},
        {"env": [{"name": "MODE", "value": "fast"}]},
        {"caseTimeout": "1s"},
    ]
    for change in changes:
        with pytest.raises(ApiException) as refused:
            tenv.patch_spec("fenced", change)
        assert refused.value.status == 422
        assert "is immutable" in str(refused.value.body)
        assert "create a new EvalRun" in str(refused.value.body)
    tenv.patch_spec("fenced", {"suspend": False, "retries": 5})  # the rest may change
    assert tenv.get("fenced")["spec"]["retries"] == 5


def test_finding11_storage_without_secret_ref_is_a_policy_violation(tenv: TenantEnv) -> None:
    tenv.node(cpu="4", memory="8Gi")
    borrowed = tenv.evalrun("borrowed", count=10)
    del borrowed["spec"]["storage"]["secretRef"]
    with tenv.operator(run_workers=False):
        tenv.create(borrowed)
        wait_until(
            lambda: _events(tenv, "borrowed", "PolicyViolation"),
            timeout=60,
            what="a PolicyViolation Event",
        )
        status = tenv.status("borrowed")
        assert not tenv.workers("borrowed")
    refused = [c for c in status["conditions"] if c["reason"] == "PolicyViolation"]
    assert refused, status["conditions"]
    assert "secretRef" in refused[0]["message"]
    assert "ambientCredentialBuckets" in refused[0]["message"]
