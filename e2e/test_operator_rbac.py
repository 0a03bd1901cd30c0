"""The operator as a pod under its own ServiceAccount, bound to the shipped ClusterRole: the pod
runner gives the process that ServiceAccount's token, so a verb missing from
manifests/rbac/clusterrole.yaml fails this test."""

from __future__ import annotations

import contextlib
import copy
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.harness.podrunner import read_log
from e2e.harness.poll import wait_until
from e2e.test_operator import Env, env  # noqa: F401 - the fixture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parent.parent
RBAC = REPO_ROOT / "manifests" / "rbac"
# A refused request as the client logs it ("(403)", "status 403", "403 Forbidden"), not the
# digits inside a timestamp (".403456Z"), a port or an identifier.
HTTP_403 = re.compile(r"(?<![\w.])403(?![\w.])")


@pytest.fixture
def operator_rbac(env: Env) -> Iterator[str]:  # noqa: F811
    """The shipped ClusterRole under a unique name, bound to a ServiceAccount of the test."""
    rbac = client.RbacAuthorizationV1Api(env.cluster.api_client)
    name = f"proctor-operator-{uuid.uuid4().hex[:6]}"
    role = yaml.safe_load((RBAC / "clusterrole.yaml").read_text())
    role["metadata"]["name"] = name
    binding = copy.deepcopy(yaml.safe_load((RBAC / "clusterrolebinding.yaml").read_text()))
    binding["metadata"]["name"] = name
    binding["roleRef"]["name"] = name
    binding["subjects"][0]["namespace"] = env.namespace
    env.cluster.core.create_namespaced_service_account(
        env.namespace, {"metadata": {"name": "proctor-operator"}}
    )
    rbac.create_cluster_role(role)
    rbac.create_cluster_role_binding(binding)
    try:
        yield name
    finally:
        for delete in (rbac.delete_cluster_role_binding, rbac.delete_cluster_role):
            with contextlib.suppress(ApiException):
                delete(name)


def test_operator_pod_with_shipped_rbac_runs_a_run_to_success(
    env: Env,  # noqa: F811
    operator_rbac: str,
) -> None:
    env.node(cpu="8", memory="16Gi")
    config = env.workdir / "operator.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "workerPodLabels": {"e2e.proctor.dev/run": "local"},
                "scalingIntervalSeconds": 1.0,
                "workerMetricsPort": 0,  # workers here share one network: no fixed port
            }
        )
    )
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "proctor-operator", "labels": {"e2e.proctor.dev/run": "local"}},
        "spec": {
            "serviceAccountName": "proctor-operator",
            "nodeSelector": {"e2e.proctor.dev/pool": env.pool},
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "operator",
                    "image": "proctor/proctor:0.1.0",
                    "command": ["proctor", "operator"],
                    "args": [
                        f"--namespace={env.namespace}",
                        "--liveness-port=0",
                        "--metrics-port=0",
                    ],
                    "env": [{"name": "PROCTOR_CONFIG", "value": str(config)}],
                    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}},
                }
            ],
        },
    }
    env.cluster.core.create_namespaced_pod(env.namespace, pod)
    env.create(env.evalrun("rbac", count=1000))
    try:
        status = env.wait_phase("rbac", "Succeeded", timeout=150)
    except TimeoutError as exc:
        log = read_log(env.namespace, "proctor-operator", stream="stderr")
        raise AssertionError(f"{exc}\n--- operator pod stderr ---\n{log[-6000:]}") from exc
    assert status["counts"]["completed"] == 1000
    log = read_log(env.namespace, "proctor-operator", stream="stderr")
    assert "Forbidden" not in log
    assert not HTTP_403.search(log), HTTP_403.search(log)
    # Deletion goes through the finalizer (queue removed) with the same permissions.
    env.custom.delete_namespaced_custom_object(
        "proctor.dev", "v1alpha1", env.namespace, "evalruns", "rbac"
    )
    wait_until(lambda: _gone(env, "rbac"), 30, "run deleted past its finalizer")


def _gone(test_env: Env, name: str) -> bool:
    try:
        test_env.get(name)
    except ApiException as exc:
        return bool(exc.status == 404)
    return False
