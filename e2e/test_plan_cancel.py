"""``proctor plan`` and ``proctor cancel`` on the real control plane, run as a user runs them
(the command, a kubeconfig, a namespace).

- plan: for three node layouts, what ``proctor plan`` prints equals the plan the operator then
  writes to the run's status for the same spec and nodes; a spec the cluster cannot hold and a
  user without the documented role are refused, each saying why.
- cost: the operator counts node-seconds and cost by pool and capacity type while workers hold
  nodes.
- cancel: a running run stops, keeps its results, ends Cancelled with no worker left; a
  finished run is not cancelled again, and ``spec.cancel`` cannot be undone.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.harness.operator import OperatorProcess, operator_config, operator_process
from e2e.harness.poll import wait_until
from e2e.test_operator import (
    Env,
    _dump,
    env,  # noqa: F401 - the fixture
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parent.parent
USER_ROLE = REPO_ROOT / "manifests" / "rbac" / "user-clusterrole.yaml"
RBAC_GROUP = "rbac.authorization.k8s.io"
PRICES = {"instanceTypes": {"m5.2xlarge": {"onDemand": 0.384, "spot": 0.12}}}


def proctor(
    tenv: Env, *args: str, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The ``proctor`` command as a user runs it against the test cluster."""
    return subprocess.run(
        [sys.executable, "-m", "proctor", *args, "-n", tenv.namespace,
         "--kubeconfig", str(kubeconfig or tenv.cluster.kubeconfig)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def priced_operator(tenv: Env) -> contextlib.AbstractContextManager[OperatorProcess]:
    """The operator with the test's price table; its workers only look Running (kwok)."""
    return operator_process(
        tenv.cluster.kubeconfig, tenv.workdir, layout_config(), namespace=tenv.namespace
    )


def plan_json(tenv: Env, doc: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    manifest = tenv.workdir / f"{doc['metadata']['name']}.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    config_file = tenv.workdir / "plan-config.yaml"
    config_file.write_text(yaml.safe_dump(config))
    out = proctor(tenv, "plan", str(manifest), "-o", "json", "--config", str(config_file))
    assert out.returncode == 0, out.stderr
    report: dict[str, Any] = json.loads(out.stdout)
    return report


def operator_plan_equals(tenv: Env, doc: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    """Plan ``doc`` with the command, then create it under the operator (workers only look
    Running, so the backlog the plan counts stays as it was) and compare the two plans."""
    report = plan_json(tenv, doc, config)
    name = doc["metadata"]["name"]
    with priced_operator(tenv) as op:
        tenv.create(doc)
        try:
            status = wait_until(
                lambda: (s := tenv.status(name)).get("plan") and s, 60, "a plan in status"
            )
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
        wait_until(
            lambda: len(tenv.workers(name)) == status["plan"]["replicas"], 30, "the planned workers"
        )
    assert report["plan"] == status["plan"]
    return report


def layout_config(**extra: Any) -> dict[str, Any]:
    return operator_config(run_workers=False, prices=PRICES, **extra)


def test_plan_equals_the_operators_on_equal_on_demand_nodes(env: Env) -> None:  # noqa: F811
    for _ in range(3):
        env.node(cpu="4", memory="8Gi")
    doc = env.evalrun("equal", count=2000)  # 8 batches of 250: 4 workers at 2 batches each
    report = operator_plan_equals(env, doc, layout_config())
    plan = report["plan"]
    assert (plan["replicas"], plan["boundBy"], plan["fit"]) == (4, "backlog", 9)
    assert [n["workers"] for n in report["nodes"]] == [2, 1, 1]
    assert report["memoryPerWorker"] == "1Gi"
    assert report["costPerHour"]["pools"][0]["capacityType"] == "on-demand"
    assert report["costPerHour"]["estimatedCost"] > 0


def test_plan_equals_the_operators_with_spot_and_on_demand_pools(env: Env) -> None:  # noqa: F811
    env.node(cpu="2", memory="8Gi", spot=True)
    env.node(cpu="2", memory="8Gi", spot=True)
    on_demand = env.node(cpu="8", memory="16Gi")
    env.cluster.core.patch_node(
        on_demand, {"metadata": {"annotations": {"proctor.dev/hourly-price": "0.5"}}}
    )
    doc = env.evalrun("pools", count=3000)  # 12 batches
    doc["spec"]["workers"] = {"max": 6}
    doc["spec"]["placement"]["pools"] = [
        {"name": "spot", "nodeSelector": {"karpenter.sh/capacity-type": "spot"}, "weight": 2},
        {
            "name": "steady",
            "nodeSelector": {"karpenter.sh/capacity-type": "on-demand"},
            "weight": 1,
        },
    ]
    report = operator_plan_equals(env, doc, layout_config())
    pools = {p["name"]: (p["replicas"], p["fit"]) for p in report["plan"]["pools"]}
    assert pools == {"spot": (2, 2), "steady": (4, 6)}
    by_node = {n["name"]: n for n in report["nodes"]}
    assert by_node[on_demand]["hourlyPrice"] == 0.5
    kinds = {p["capacityType"] for p in report["costPerHour"]["pools"]}
    assert kinds == {"spot", "on-demand"}


def test_plan_equals_the_operators_with_usage_quota_and_required_spread(
    env: Env,  # noqa: F811
) -> None:
    nodes = [env.node(cpu="4", memory="8Gi") for _ in range(4)]
    # Another tenant's pod takes most of one node: that node holds no worker.
    env.cluster.core.create_namespaced_pod(
        env.namespace,
        {
            "metadata": {"name": "neighbour"},
            "spec": {
                "nodeName": nodes[0],
                "containers": [
                    {"name": "c", "image": "x", "resources": {"requests": {"cpu": "3"}}}
                ],
            },
        },
    )
    wait_until(
        lambda: env.cluster.core.read_namespaced_pod("neighbour", env.namespace).spec.node_name,
        20,
        "bound",
    )
    env.cluster.core.create_namespaced_resource_quota(
        env.namespace,
        {"metadata": {"name": "q"}, "spec": {"hard": {"requests.cpu": "6"}}},
    )
    read_quota = env.cluster.core.read_namespaced_resource_quota
    wait_until(
        lambda: (read_quota("q", env.namespace).status.used or {}).get("requests.cpu"),
        20,
        "quota usage counted",
    )
    doc = env.evalrun("spread", count=4000)
    doc["spec"]["placement"]["spread"] = "required"
    report = operator_plan_equals(env, doc, layout_config())
    plan = report["plan"]
    # One per node on the three free nodes; the quota's 6 CPUs less the neighbour's 3 allow 3.
    assert (plan["replicas"], plan["fit"], plan["eligibleNodes"]) == (3, 3, 4)
    assert plan["boundBy"] in {"nodes", "quota"}


def test_plan_of_a_run_the_cluster_cannot_hold(env: Env) -> None:  # noqa: F811
    env.node(cpu="2", memory="4Gi")
    doc = env.evalrun("huge", count=100)
    doc["spec"]["profile"] = "xlarge"
    manifest = env.workdir / "huge.yaml"
    manifest.write_text(yaml.safe_dump(doc))
    out = proctor(env, "plan", str(manifest))
    assert out.returncode == 1, out.stdout + out.stderr
    assert "the cluster cannot hold this run" in out.stderr
    assert "no eligible node can hold one worker of profile xlarge" in out.stderr


@contextlib.contextmanager
def user_kubeconfig(tenv: Env, *, role: bool) -> Iterator[Path]:
    """A kubeconfig of a ServiceAccount that has the documented user role (or nothing)."""
    core, rbac = tenv.cluster.core, client.RbacAuthorizationV1Api(tenv.cluster.api_client)
    name = f"proctor-user-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_service_account(tenv.namespace, {"metadata": {"name": name}})
    if role:
        cluster_role = yaml.safe_load(USER_ROLE.read_text())
        cluster_role["metadata"]["name"] = name
        rbac.create_cluster_role(cluster_role)
        rbac.create_cluster_role_binding(
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": tenv.namespace}],
            }
        )  # fmt: skip
    token = core.create_namespaced_service_account_token(
        name, tenv.namespace, {"spec": {"expirationSeconds": 3600}}
    ).status.token
    admin = yaml.safe_load(Path(tenv.cluster.kubeconfig).read_text())
    admin["users"] = [{"name": admin["contexts"][0]["context"]["user"], "user": {"token": token}}]
    path = tenv.workdir / f"{name}.kubeconfig"
    path.write_text(yaml.safe_dump(admin))
    try:
        yield path
    finally:
        if role:
            with contextlib.suppress(ApiException):
                rbac.delete_cluster_role_binding(name)
            with contextlib.suppress(ApiException):
                rbac.delete_cluster_role(name)


def test_plan_needs_the_documented_role_and_nothing_more(env: Env) -> None:  # noqa: F811
    env.node(cpu="4", memory="8Gi")
    manifest = env.workdir / "rbac.yaml"
    manifest.write_text(yaml.safe_dump(env.evalrun("rbac", count=100)))
    with user_kubeconfig(env, role=False) as nobody:
        out = proctor(env, "plan", str(manifest), kubeconfig=nobody)
    assert out.returncode == 7, out.stdout + out.stderr  # no cluster access (docs/cli.md)
    assert "cannot list nodes, pods and resourcequotas: forbidden (403)" in out.stderr
    with user_kubeconfig(env, role=True) as user:
        out = proctor(env, "plan", str(manifest), kubeconfig=user)
        assert out.returncode == 0, out.stderr
        assert "Workers: 1 of small" in out.stdout
        assert (
            env.custom.list_namespaced_custom_object(
                "proctor.dev", "v1alpha1", env.namespace, "evalruns"
            )["items"]
            == []
        )  # read-only: nothing was created


def test_cost_accrues_by_pool_while_workers_hold_nodes(env: Env) -> None:  # noqa: F811
    env.node(cpu="4", memory="8Gi", spot=True)
    env.node(cpu="4", memory="8Gi")
    doc = env.evalrun("costly", count=2000)
    doc["spec"]["workers"] = {"max": 4}
    with priced_operator(env) as op:
        env.create(doc)
        wait_until(lambda: len(env.workers("costly")) == 4, 60, "four workers")
        try:
            status = wait_until(
                lambda: (s := env.status("costly")).get("cost", {}).get("nodeSeconds", 0) > 2 and s,
                90,
                "cost accrued",
                interval=1.0,
            )
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
    cost = status["cost"]
    assert cost["currency"] == "USD"
    assert cost["estimatedCost"] > 0
    assert {p["capacityType"] for p in cost["pools"]} <= {"spot", "on-demand"}
    assert sum(p["nodeSeconds"] for p in cost["pools"]) == pytest.approx(cost["nodeSeconds"])


def test_cancel_stops_a_running_run_and_keeps_its_results(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env.node(cpu="4", memory="8Gi")
    doc = env.evalrun("stopme", count=200_000)
    doc["spec"]["workers"] = {"max": 2}
    with env.operator() as op:
        created = env.create(doc)
        try:
            wait_until(
                lambda: (env.status("stopme").get("counts") or {}).get("completed", 0) > 0,
                120,
                "first results",
                interval=0.5,
            )
            out = proctor(env, "cancel", "stopme", "--wait", "--timeout", "90")
            assert out.returncode == 0, out.stdout + out.stderr
            assert "ended Cancelled" in out.stdout
            wait_until(lambda: not env.workers("stopme"), 30, "no worker left")
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
        status = env.status("stopme")
        again = proctor(env, "cancel", "stopme")
    assert status["phase"] == "Cancelled"
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["Cancelled"]["status"], conds["Succeeded"]["status"]) == ("True", "False")
    counts, result = status["counts"], status["result"]
    assert 0 < counts["completed"] < counts["total"]
    assert result["decision"] == "undecided"
    assert result["notEvaluated"] == counts["total"] - counts["completed"]
    storage = env.run_storage(created["metadata"]["uid"], monkeypatch)
    kept = sum(r.end - r.start for r in storage.result_ranges())
    assert kept == counts["completed"]  # every result written is counted, none lost
    assert again.returncode == 1
    assert "has already finished (phase Cancelled)" in again.stderr
    with pytest.raises(ApiException) as refused:
        env.patch_spec("stopme", {"cancel": False})
    assert refused.value.status == 422
    assert "spec.cancel cannot be undone" in str(refused.value.body)
