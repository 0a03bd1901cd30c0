"""Installing Proctor as users do, on the real control plane: `helm install` of charts/proctor and
`kubectl apply -f manifests/install.yaml` each bring the operator up as a pod (its process run by
the pod runner under the chart's ServiceAccount and RBAC), an EvalRun sample completes,
`kubectl get evalruns` shows its columns, and uninstalling removes everything but the CRDs.

The pod runner stands in for a kubelet: the tests give the operator pod its label with the
engine-free image's value (e2e/build-image), so the operator, the helm test pod and the workers
run inside that image's rootfs as uid 10001 with a read-only root, the chart's ConfigMap and
emptyDir mounted where the chart mounts them and the ServiceAccount token where a kubelet puts it
(the operator logs in as in a cluster). They also give it a kwok node and free ports (every pod
shares the host network).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.rest import ApiException

from e2e.harness.helmtools import helm, kubectl
from e2e.harness.image import Image
from e2e.harness.net import free_port
from e2e.harness.operator import operator_config
from e2e.harness.podrunner import MARKER, read_log
from e2e.harness.poll import wait_until
from e2e.test_operator import Env, env  # noqa: F401 - the fixture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

REPO_ROOT = Path(__file__).resolve().parent.parent
CHART = REPO_ROOT / "charts" / "proctor"
INSTALL = REPO_ROOT / "manifests" / "install.yaml"
CRD_NAMES = ("evalruns.proctor.dev", "benchmarksuites.proctor.dev")
PRINTER_COLUMNS = ["NAME", "PHASE", "PROGRESS", "WORKERS", "ETA", "DECISION", "AGE"]


def tool(argv: list[str], env_: Env, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "KUBECONFIG": str(env_.cluster.kubeconfig)}
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=environ, check=False
    )


def ok(out: subprocess.CompletedProcess[str]) -> str:
    assert out.returncode == 0, f"{out.args}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def runner_config(image: Image) -> dict[str, Any]:
    """What the operator needs here: worker pods the pod runner runs inside the image, a 1 s
    scaling loop."""
    return operator_config(run_workers=True, runner=image.label)


def operator_pods(env_: Env, namespace: str) -> list[Any]:
    pods = env_.cluster.core.list_namespaced_pod(
        namespace, label_selector="app.kubernetes.io/component=operator"
    ).items
    return [p for p in pods if not p.metadata.deletion_timestamp]


def run_sample_to_success(env_: Env, name: str, log_of: Any) -> dict[str, Any]:
    """The quickstart EvalRun (Redis queue, moto S3) completes; `kubectl get evalruns` shows
    its phase, progress, workers, ETA and decision; deleting it passes the finalizer."""
    env_.create(env_.evalrun(name, count=1000))
    try:
        status = env_.wait_phase(name, "Succeeded", timeout=180)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n--- operator log ---\n{log_of()[-6000:]}") from exc
    assert status["counts"]["completed"] == status["counts"]["total"] == 1000
    decision = status["result"]["decision"]
    assert decision

    table = ok(tool([kubectl(), "get", "evalruns", "-n", env_.namespace], env_)).splitlines()
    assert table[0].split() == PRINTER_COLUMNS
    row = next(line.split() for line in table[1:] if line.split()[0] == name)
    assert row[1] == "Succeeded"
    assert float(row[2]) == pytest.approx(100.0)
    assert row[5] == decision
    wide = ok(tool([kubectl(), "get", "proctor", "-n", env_.namespace, "-o", "name"], env_))
    assert f"evalrun.proctor.dev/{name}" in wide.split()

    env_.custom.delete_namespaced_custom_object(
        "proctor.dev", "v1alpha1", env_.namespace, "evalruns", name
    )
    wait_until(lambda: _gone(env_, name), 60, "run deleted past its finalizer")
    log = log_of()
    assert "Forbidden" not in log, log[-4000:]
    return status


def _gone(env_: Env, name: str) -> bool:
    try:
        env_.get(name)
    except ApiException as exc:
        return bool(exc.status == 404)
    return False


def crds_present(env_: Env) -> set[str]:
    ext = client.ApiextensionsV1Api(env_.cluster.api_client)
    names = {c.metadata.name for c in ext.list_custom_resource_definition().items}
    return names & set(CRD_NAMES)


# --- helm --------------------------------------------------------------------------------------


@pytest.fixture
def release(env: Env) -> Iterator[str]:  # noqa: F811
    name = f"proctor-{uuid.uuid4().hex[:6]}"
    yield name
    # Whatever the test left: uninstall (no-op when it already did).
    tool([helm(), "uninstall", name, "-n", env.namespace, "--ignore-not-found"], env)


def test_helm_install_runs_a_sample_and_uninstall_keeps_only_the_crds(
    env: Env,  # noqa: F811
    release: str,
    image: Image,
) -> None:
    env.node(cpu="8", memory="16Gi")
    ns = env.namespace
    health, metrics = free_port(), free_port()
    values = {
        "operator": {
            # One replica (two would share this machine's ports); peering stays on, so the
            # run only completes if the peering CRD, object and RBAC are all in place.
            "replicas": 1,
            "watchNamespaces": [ns],
            "logFormat": "console",
            "healthPort": health,
            "podLabels": {MARKER: image.label},
            "nodeSelector": {"e2e.proctor.dev/pool": env.pool},
            "terminationGracePeriodSeconds": 10,
        },
        "metrics": {"port": metrics},
        "config": runner_config(image),
        "tests": {"url": f"http://127.0.0.1:{health}/healthz"},
    }
    values_file = env.workdir / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    common = [release, str(CHART), "-n", ns, "-f", str(values_file)]

    # The second peer below is a local process: it reads the ConfigMap's content from a file.
    shown = ok(tool([helm(), "template", *common, "--show-only", "templates/configmap.yaml"], env))
    config_text = yaml.safe_load(shown)["data"]["config.yaml"]
    config_file = env.workdir / "config.yaml"
    config_file.write_text(config_text)

    out = tool([helm(), "install", *common, "--take-ownership", "--wait", "--timeout", "120s"], env)
    pod_name = ""

    def log_of() -> str:
        return read_log(ns, pod_name, stream="stderr") if pod_name else ""

    pods = operator_pods(env, ns)
    if pods:
        pod_name = pods[0].metadata.name
    assert out.returncode == 0, f"{out.stderr}\n--- operator log ---\n{log_of()[-4000:]}"
    assert len(pods) == 1
    cm = env.cluster.core.read_namespaced_config_map(f"{release}-operator", ns)
    assert cm.data["config.yaml"] == config_text
    pod = pods[0]
    assert pod.spec.service_account_name == f"{release}-operator"
    assert pod.spec.security_context.run_as_non_root is True
    assert set(crds_present(env)) == set(CRD_NAMES)

    # `helm test`: the hook pod checks /healthz.
    ok(tool([helm(), "test", release, "-n", ns, "--timeout", "90s"], env))

    # Peering is on: the replica announces itself, by pod name, in the namespace's KopfPeering.
    peering = wait_until(
        lambda: _peers(env, ns), 30, f"the operator in KopfPeering proctor\n{log_of()[-3000:]}"
    )
    assert pod_name in peering

    # A second peer (a local process, as another replica would be) joins; of the two, only the
    # higher priority works and the other pauses, while the sample runs to success.
    with second_peer(env, ns, config_file) as peer_log:
        wait_until(lambda: len(_peers(env, ns)) == 2, 30, "two peers in KopfPeering proctor")
        priorities = [p["priority"] for p in _peers(env, ns).values()]
        assert len(set(priorities)) == 2, priorities
        run_sample_to_success(env, "helm-sample", log_of)
        # Exactly one of them enqueued the run and started its workers.
        logs = {"pod": log_of(), "peer": peer_log.read_text()}
        worked = [who for who, log in logs.items() if "workers changed" in log]
        assert len(worked) == 1, "\n---\n".join(log[-3000:] for log in logs.values())
        assert sum("enqueued" in log for log in logs.values()) == 1
        # The other one's EvalRun pass loop paused with kopf (proctor.controller.peering).
        paused = [who for who, log in logs.items() if "run passes paused" in log]
        assert len(paused) == 1, paused
        assert paused != worked

    ok(tool([helm(), "uninstall", release, "-n", ns, "--wait", "--timeout", "90s"], env))
    # Helm deletes what it created; the garbage collector then removes the pods.
    wait_until(
        lambda: not _release_objects(env, ns, release),
        60,
        f"release objects gone (left: {_release_objects(env, ns, release)})",
    )
    # The CRDs stay (crds.keep), as docs/install.md says.
    assert set(crds_present(env)) == set(CRD_NAMES)


@contextlib.contextmanager
def second_peer(env_: Env, namespace: str, config: Path) -> Iterator[Path]:
    """`proctor operator --peering` for ``namespace`` as a local process; yields its log."""
    log = env_.workdir / "second-peer.log"
    argv = [
        sys.executable, "-m", "proctor", "operator", "--peering", f"--namespace={namespace}",
        f"--config={config}", f"--liveness-port={free_port()}", f"--metrics-port={free_port()}",
    ]  # fmt: skip
    environ = {**os.environ, "KUBECONFIG": str(env_.cluster.kubeconfig)}
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=environ, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _peers(env_: Env, namespace: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(env_.cluster.api_client)
    try:
        obj = custom.get_namespaced_custom_object(
            "kopf.dev", "v1", namespace, "kopfpeerings", "proctor"
        )
    except ApiException:
        return {}
    return dict(obj.get("status") or {})


def _release_objects(env_: Env, namespace: str, release: str) -> list[str]:
    """Every object labelled with the release that is still there (pods being deleted count)."""
    selector = f"app.kubernetes.io/instance={release}"
    api = env_.cluster.api_client
    core, apps = env_.cluster.core, client.AppsV1Api(api)
    rbac, policy = client.RbacAuthorizationV1Api(api), client.PolicyV1Api(api)
    net = client.NetworkingV1Api(api)
    found: list[str] = []
    listers: dict[str, Callable[[], Any]] = {
        "Deployment": lambda: apps.list_namespaced_deployment(namespace, label_selector=selector),
        "Pod": lambda: core.list_namespaced_pod(namespace, label_selector=selector),
        "Service": lambda: core.list_namespaced_service(namespace, label_selector=selector),
        "ConfigMap": lambda: core.list_namespaced_config_map(namespace, label_selector=selector),
        "ServiceAccount": lambda: core.list_namespaced_service_account(
            namespace, label_selector=selector
        ),
        "Role": lambda: rbac.list_namespaced_role(namespace, label_selector=selector),
        "RoleBinding": lambda: rbac.list_namespaced_role_binding(
            namespace, label_selector=selector
        ),
        "ClusterRole": lambda: rbac.list_cluster_role(label_selector=selector),
        "ClusterRoleBinding": lambda: rbac.list_cluster_role_binding(label_selector=selector),
        "PodDisruptionBudget": lambda: policy.list_namespaced_pod_disruption_budget(
            namespace, label_selector=selector
        ),
        "NetworkPolicy": lambda: net.list_namespaced_network_policy(
            namespace, label_selector=selector
        ),
    }
    for kind, lister in listers.items():
        found += [f"{kind}/{item.metadata.name}" for item in lister().items]
    custom = client.CustomObjectsApi(api)
    peerings = custom.list_namespaced_custom_object(
        "kopf.dev", "v1", namespace, "kopfpeerings", label_selector=selector
    )
    found += [f"KopfPeering/{p['metadata']['name']}" for p in peerings["items"]]
    return found


# --- kubectl apply -f manifests/install.yaml ----------------------------------------------------


def for_the_pod_runner(
    docs: list[dict[str, Any]], *, pool: str, image: Image, health: int, metrics: int
) -> list[dict[str, Any]]:
    """install.yaml's objects with the operator pod made runnable here (see the module doc) and
    the test's configuration in its ConfigMap."""
    out = []
    for doc in docs:
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "proctor-operator":
            doc["data"]["config.yaml"] = yaml.safe_dump(runner_config(image))
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]
            pod["metadata"]["labels"][MARKER] = image.label
            pod["spec"]["nodeSelector"] = {"e2e.proctor.dev/pool": pool}
            container = pod["spec"]["containers"][0]
            container["args"] = [
                f"--liveness-port={health}" if a.startswith("--liveness-port=") else a
                for a in container["args"]
            ]
            container["args"] = [
                f"--metrics-port={metrics}" if a.startswith("--metrics-port=") else a
                for a in container["args"]
            ]
        out.append(doc)
    return out


def test_kubectl_apply_install_yaml_runs_a_sample(env: Env, image: Image) -> None:  # noqa: F811
    env.node(cpu="8", memory="16Gi")
    docs = [d for d in yaml.safe_load_all(INSTALL.read_text()) if d]
    system_ns = next(d for d in docs if d["kind"] == "Namespace")["metadata"]["name"]
    adjusted = for_the_pod_runner(
        docs, pool=env.pool, image=image, health=free_port(), metrics=free_port()
    )
    manifest = env.workdir / "install.yaml"
    manifest.write_text(yaml.safe_dump_all(adjusted))
    # Everything but the CRDs, for the clean-up (later tests of the session use the CRDs).
    removable = env.workdir / "removable.yaml"
    removable.write_text(
        yaml.safe_dump_all([d for d in adjusted if d["kind"] != "CustomResourceDefinition"])
    )
    pod_name = ""

    def log_of() -> str:
        return read_log(system_ns, pod_name, stream="stderr") if pod_name else ""

    try:
        ok(tool([kubectl(), "apply", "-f", str(manifest)], env))
        rollout = tool(
            [kubectl(), "-n", system_ns, "rollout", "status", "deployment/proctor-operator",
             "--timeout=120s"],
            env,
        )  # fmt: skip
        pods = operator_pods(env, system_ns)
        pod_name = pods[0].metadata.name if pods else ""
        assert rollout.returncode == 0, f"{rollout.stderr}\n{log_of()[-4000:]}"
        assert pods[0].spec.service_account_name == "proctor-operator"
        run_sample_to_success(env, "kubectl-sample", log_of)
    finally:
        tool([kubectl(), "delete", "-f", str(removable), "--ignore-not-found", "--wait=false"], env)
    rbac = client.RbacAuthorizationV1Api(env.cluster.api_client)
    with pytest.raises(ApiException) as gone:
        rbac.read_cluster_role("proctor-operator")
    assert gone.value.status == 404
    wait_until(lambda: not operator_pods(env, system_ns), 60, "operator pod gone")
    assert set(crds_present(env)) == set(CRD_NAMES)
    with contextlib.suppress(ApiException):
        env.cluster.core.delete_namespace(system_ns)
