"""The control plane is real: schema/CEL validation, scheduling, garbage
collection, RBAC, and pods that run as local processes and feel preemption."""

from __future__ import annotations

import json
import re
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, utils, watch
from kubernetes.client.rest import ApiException

from e2e.conftest import Cluster
from e2e.harness import nodes
from e2e.harness.podrunner import MARKER, MARKER_VALUE, read_log
from e2e.harness.poll import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLES = REPO_ROOT / "manifests" / "samples"
VALID_SAMPLES = sorted(SAMPLES.glob("*.yaml"))
VALIDATE_ONLY = "# rejected-by: proctor validate"
"""The header of an invalid sample that only `proctor validate` can refuse: it reads the local
dataset's rows, which the API server cannot (the operator refuses it at admission instead)."""
INVALID_SAMPLES = sorted(
    p for p in (SAMPLES / "invalid").glob("*.yaml") if VALIDATE_ONLY not in p.read_text()
)

# An invalid sample states what the apiserver must answer in header comments:
# `# expect-field: spec.x` (the field path it names) and `# expect-message: ...`.
_EXPECT = re.compile(r"^#\s*expect-(field|message)\s*:\s*(.+?)\s*$", re.MULTILINE)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _expectations(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"field": [], "message": []}
    for kind, value in _EXPECT.findall(path.read_text()):
        found[kind].append(value.strip("\"'"))
    return found


def _create(
    cluster: Cluster, crds: list[dict[str, Any]], doc: dict[str, Any], namespace: str
) -> Any:
    """Create one manifest document in `namespace`: a custom resource or a core object. A
    sample that names its own namespace (kueue-evalrun.yaml: ml-team) is created in the test's,
    as `kubectl apply -n` would be asked to."""
    if "namespace" in doc.get("metadata", {}):
        doc = {**doc, "metadata": {**doc["metadata"], "namespace": namespace}}
    group, _, version = doc["apiVersion"].rpartition("/")
    for crd in crds:
        spec = crd["spec"]
        if spec["group"] == group and spec["names"]["kind"] == doc["kind"]:
            api = client.CustomObjectsApi(cluster.api_client)
            # Strict field validation, as kubectl sends it: unknown fields are errors.
            return api.create_namespaced_custom_object(
                group, version, namespace, spec["names"]["plural"], doc, field_validation="Strict"
            )
    return utils.create_from_dict(cluster.api_client, doc, namespace=namespace)


@pytest.fixture
def kwok_nodes(cluster: Cluster) -> Iterator[Callable[..., Any]]:
    """Factory for kwok nodes that are deleted after the test."""
    created: list[str] = []

    def make(name: str | None = None, **kwargs: Any) -> Any:
        name = name or f"kwok-{uuid.uuid4().hex[:6]}"
        created.append(name)
        return nodes.create_node(cluster.core, name, **kwargs)

    yield make
    for name in created:
        nodes.delete_node(cluster.core, name)


def _pod(name: str, command: list[str], **spec: Any) -> dict[str, Any]:
    labels = spec.pop("labels", {})
    metadata = spec.pop("metadata", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels, **metadata},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": "proctor/proctor:dev",
                    "command": command,
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
                    **spec.pop("container", {}),
                }
            ],
            **spec,
        },
    }


def _phase(core: Any, namespace: str, name: str) -> str:
    return str(core.read_namespaced_pod(name, namespace).status.phase)


# --- binaries ------------------------------------------------------------------------


def test_binaries_report_their_real_versions(cluster: Cluster) -> None:
    versions = cluster.state.versions
    assert "v1.37.2" in versions["kube-apiserver"], versions
    assert "v1.37.2" in versions["kube-scheduler"], versions
    assert "3.6.16" in versions["etcd"], versions
    assert "0.8.0" in versions["kwok"], versions
    info = client.VersionApi(cluster.api_client).get_code()
    assert info.git_version == "v1.37.2"


# --- CRDs and samples -------------------------------------------------------------------


def test_crds_are_established(cluster: Cluster, crds: list[dict[str, Any]]) -> None:
    assert crds, "no CRDs found in crds/"
    ext = client.ApiextensionsV1Api(cluster.api_client)
    for doc in crds:
        live = ext.read_custom_resource_definition(doc["metadata"]["name"])
        conditions = {c.type: c.status for c in live.status.conditions}
        assert conditions.get("Established") == "True"
        assert conditions.get("NamesAccepted") == "True"


@pytest.mark.parametrize("sample", VALID_SAMPLES, ids=lambda p: p.name)
def test_valid_sample_is_accepted(
    cluster: Cluster, crds: list[dict[str, Any]], namespace: str, sample: Path
) -> None:
    for doc in _docs(sample):
        created = _create(cluster, crds, doc, namespace)
        assert created is not None


@pytest.mark.parametrize("sample", INVALID_SAMPLES, ids=lambda p: p.name)
def test_invalid_sample_is_rejected_with_the_fields_message(
    cluster: Cluster, crds: list[dict[str, Any]], namespace: str, sample: Path
) -> None:
    expected = _expectations(sample)
    assert expected["message"], f"{sample} states no `# expect-message: ...`"
    docs = _docs(sample)
    *supporting, invalid = docs  # the last document is the invalid one
    for doc in supporting:
        _create(cluster, crds, doc, namespace)
    with pytest.raises(ApiException) as caught:
        _create(cluster, crds, invalid, namespace)
    # 422 Invalid for schema and CEL errors; 400 BadRequest for strict decoding.
    assert caught.value.status in (400, 422), caught.value.body
    body = caught.value.body if isinstance(caught.value.body, str) else caught.value.body.decode()
    message = json.loads(body).get("message", body)
    for text in expected["field"] + expected["message"]:
        assert text in message, f"expected {text!r} in the apiserver's answer: {message}"


# --- scheduling ------------------------------------------------------------------------


def test_required_anti_affinity_leaves_the_third_pod_pending(
    core: Any, namespace: str, kwok_nodes: Callable[..., Any]
) -> None:
    pool = {"e2e.proctor.dev/pool": namespace}
    kwok_nodes(labels=pool)
    kwok_nodes(labels=pool, spot=True)
    app = {"app": "spread"}
    anti = {
        "podAntiAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": app}, "topologyKey": "kubernetes.io/hostname"}
            ]
        }
    }
    for i in range(3):
        core.create_namespaced_pod(
            namespace,
            _pod(f"spread-{i}", ["sleep", "3600"], labels=app, affinity=anti, nodeSelector=pool),
        )

    def settled() -> list[Any] | None:
        pods = core.list_namespaced_pod(namespace).items
        running = [p for p in pods if p.status.phase == "Running"]
        pending = [
            p
            for p in pods
            if p.status.phase == "Pending"
            and any(
                c.type == "PodScheduled" and c.reason == "Unschedulable"
                for c in p.status.conditions or []
            )
        ]
        return pods if len(running) == 2 and len(pending) == 1 else None

    pods = wait_until(settled, 60, "two Running pods and one Unschedulable")
    assert len({p.spec.node_name for p in pods if p.status.phase == "Running"}) == 2
    pending = next(p for p in pods if p.status.phase == "Pending")
    message = next(c.message for c in pending.status.conditions if c.type == "PodScheduled")
    assert "anti-affinity" in message, message
    assert "0/" in message, message  # the scheduler's "0/N nodes are available" summary


def test_gpu_capacity_and_taints_are_scheduled_for_real(
    core: Any, namespace: str, kwok_nodes: Callable[..., Any]
) -> None:
    pool = {"e2e.proctor.dev/pool": namespace}
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    gpu_node = kwok_nodes(labels=pool, gpus=1, taints=[taint], instance_type="g5.xlarge")
    kwok_nodes(labels=pool)  # a CPU node: the GPU pods may not land there
    assert gpu_node.status.allocatable[nodes.GPU] == "1"
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    gpu = {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    for i in range(2):
        core.create_namespaced_pod(
            namespace,
            _pod(
                f"gpu-{i}",
                ["sleep", "3600"],
                nodeSelector=pool,
                tolerations=[toleration],
                container={"resources": gpu},
            ),
        )
    core.create_namespaced_pod(namespace, _pod("untolerated", ["sleep", "3600"], nodeSelector=pool))

    def placed() -> dict[str, Any] | None:
        pods = {p.metadata.name: p for p in core.list_namespaced_pod(namespace).items}
        phases = sorted(p.status.phase for p in pods.values())
        return pods if phases == ["Pending", "Running", "Running"] else None

    pods = wait_until(placed, 60, "one GPU pod Running, one Pending")
    assert pods["untolerated"].spec.node_name != gpu_node.metadata.name
    pending = next(p for p in pods.values() if p.status.phase == "Pending")
    message = next(c.message for c in pending.status.conditions if c.type == "PodScheduled")
    assert "Insufficient nvidia.com/gpu" in message, message


# --- garbage collection ------------------------------------------------------------------


def test_deleting_the_owner_deletes_its_pods(
    core: Any, namespace: str, kwok_nodes: Callable[..., Any]
) -> None:
    pool = {"e2e.proctor.dev/pool": namespace}
    kwok_nodes(labels=pool)
    owner = core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "owner"}, "data": {}}
    )
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    for i in range(2):
        core.create_namespaced_pod(
            namespace,
            _pod(
                f"owned-{i}",
                ["sleep", "3600"],
                metadata={"ownerReferences": [ref]},
                nodeSelector=pool,
            ),
        )
    core.create_namespaced_pod(namespace, _pod("bystander", ["sleep", "3600"], nodeSelector=pool))
    wait_until(
        lambda: all(p.status.phase == "Running" for p in core.list_namespaced_pod(namespace).items),
        60,
        "pods Running",
    )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")
    wait_until(
        lambda: (
            [p.metadata.name for p in core.list_namespaced_pod(namespace).items] == ["bystander"]
        ),
        60,
        "the garbage collector to delete the owned pods",
    )


# --- pod runner: real processes, real identity, real preemption ---------------------------

_WORKER = textwrap.dedent(
    """
    import os, signal, sys, time
    print("greeting", os.environ["GREETING"], flush=True)
    print("secret", os.environ["TOKEN"], flush=True)
    print("pod", os.environ["POD_NAME"], os.environ["NODE_NAME"], flush=True)
    print("url", os.environ["URL"], flush=True)
    print("python", sys.executable, flush=True)

    def on_term(signum, frame):
        print("got SIGTERM, handing work back", flush=True)
        sys.exit(42)

    signal.signal(signal.SIGTERM, on_term)
    print("ready", flush=True)
    while True:
        time.sleep(0.1)
    """
)


def _watch_pod(
    core: Any, namespace: str, name: str
) -> tuple[list[dict[str, Any]], threading.Event]:
    """Record a pod's events (raw objects) in the background until it is deleted."""
    events: list[dict[str, Any]] = []
    done = threading.Event()

    def run() -> None:
        w = watch.Watch()
        for event in w.stream(
            core.list_namespaced_pod,
            namespace,
            field_selector=f"metadata.name={name}",
            timeout_seconds=120,
        ):
            events.append({"type": event["type"], "object": event["raw_object"]})
            if event["type"] == "DELETED":
                break
        done.set()

    threading.Thread(target=run, daemon=True).start()
    return events, done


def test_marked_pod_runs_a_real_process_and_feels_preemption(
    cluster: Cluster, core: Any, namespace: str, kwok_nodes: Callable[..., Any]
) -> None:
    pool = {"e2e.proctor.dev/pool": namespace}
    node = kwok_nodes(labels=pool, spot=True).metadata.name
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}}
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}}
    )
    env = [
        {
            "name": "GREETING",
            "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "greeting"}},
        },
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "URL", "value": "http://$(POD_NAME):8080"},
    ]
    pod = _pod(
        "worker",
        ["python", "-c", _WORKER],
        labels={MARKER: MARKER_VALUE},
        nodeSelector=pool,
        restartPolicy="Never",
        terminationGracePeriodSeconds=20,
        container={"env": env},
    )
    core.create_namespaced_pod(namespace, pod)
    wait_until(
        lambda: "ready" in read_log(namespace, "worker", state_dir=cluster.state_dir),
        60,
        "worker output",
    )
    out = read_log(namespace, "worker", state_dir=cluster.state_dir)
    assert "greeting hello" in out
    assert "secret s3cr3t" in out
    assert f"pod worker {node}" in out
    assert "url http://worker:8080" in out
    assert f"python {Path(sys.executable).parent}" in out  # the project's own environment

    live = core.read_namespaced_pod("worker", namespace)
    assert live.status.phase == "Running"
    assert live.status.container_statuses[0].state.running is not None

    events, done = _watch_pod(core, namespace, "worker")
    nodes.preempt_node(core, node)
    assert done.wait(30), "pod was not deleted"
    assert "got SIGTERM, handing work back" in read_log(
        namespace, "worker", state_dir=cluster.state_dir
    )
    final = events[-1]["object"]
    assert events[-1]["type"] == "DELETED"
    status = final["status"]
    assert status["phase"] == "Failed"
    terminated = status["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 42
    assert any(
        c["type"] == "DisruptionTarget" and c["status"] == "True" for c in status["conditions"]
    )
    with pytest.raises(ApiException):
        core.read_node(node)


def test_process_ignoring_sigterm_is_killed_after_the_grace_period(
    cluster: Cluster, core: Any, namespace: str, kwok_nodes: Callable[..., Any]
) -> None:
    pool = {"e2e.proctor.dev/pool": namespace}
    kwok_nodes(labels=pool)
    script = textwrap.dedent(
        """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("up", flush=True)
        time.sleep(3600)
        """
    )
    pod = _pod(
        "stubborn", ["python", "-c", script], labels={MARKER: MARKER_VALUE}, nodeSelector=pool
    )
    core.create_namespaced_pod(namespace, pod)
    wait_until(
        lambda: "up" in read_log(namespace, "stubborn", state_dir=cluster.state_dir),
        60,
        "process start",
    )
    events, done = _watch_pod(core, namespace, "stubborn")
    core.delete_namespaced_pod("stubborn", namespace, grace_period_seconds=2)
    assert done.wait(30)
    terminated = events[-1]["object"]["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 137


def test_restart_policy_on_failure_restarts_until_success(
    cluster: Cluster, core: Any, namespace: str, kwok_nodes: Callable[..., Any]
) -> None:
    pool = {"e2e.proctor.dev/pool": namespace}
    kwok_nodes(labels=pool)
    # Fails on the first run, succeeds on the second (the work dir persists across restarts).
    script = textwrap.dedent(
        """
        import os, sys
        if os.path.exists("once"):
            sys.exit(0)
        open("once", "w").close()
        sys.exit(3)
        """
    )
    pod = _pod(
        "flaky",
        ["python", "-c", script],
        labels={MARKER: MARKER_VALUE},
        nodeSelector=pool,
        restartPolicy="OnFailure",
    )
    core.create_namespaced_pod(namespace, pod)
    wait_until(lambda: _phase(core, namespace, "flaky") == "Succeeded", 60, "pod Succeeded")
    status = core.read_namespaced_pod("flaky", namespace).status.container_statuses[0]
    assert status.restart_count == 1
    assert status.state.terminated.exit_code == 0


def test_missing_secret_holds_the_pod_until_it_exists(
    cluster: Cluster, core: Any, namespace: str, kwok_nodes: Callable[..., Any]
) -> None:
    pool = {"e2e.proctor.dev/pool": namespace}
    kwok_nodes(labels=pool)
    env = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "late", "key": "token"}}}]
    pod = _pod(
        "patient",
        ["python", "-c", "import os; print('token', os.environ['TOKEN'])"],
        labels={MARKER: MARKER_VALUE},
        nodeSelector=pool,
        restartPolicy="Never",
        container={"env": env},
    )
    core.create_namespaced_pod(namespace, pod)

    def waiting_reason() -> str | None:
        statuses = core.read_namespaced_pod("patient", namespace).status.container_statuses
        waiting = statuses[0].state.waiting if statuses else None
        return waiting.reason if waiting else None

    reason = wait_until(waiting_reason, 60, "a waiting reason")
    assert reason == "CreateContainerConfigError"
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "late"}, "stringData": {"token": "t0k"}}
    )
    wait_until(lambda: _phase(core, namespace, "patient") == "Succeeded", 60, "pod Succeeded")
    assert "token t0k" in read_log(namespace, "patient", state_dir=cluster.state_dir)


def test_process_has_its_service_accounts_rbac(
    cluster: Cluster, core: Any, namespace: str, kwok_nodes: Callable[..., Any]
) -> None:
    pool = {"e2e.proctor.dev/pool": namespace}
    kwok_nodes(labels=pool)
    rbac = client.RbacAuthorizationV1Api(cluster.api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "configmap-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    script = textwrap.dedent(
        f"""
        from kubernetes import client, config
        from kubernetes.client.rest import ApiException
        config.load_kube_config()
        core = client.CoreV1Api()
        items = core.list_namespaced_config_map({namespace!r}).items
        print("configmaps", isinstance(items, list), flush=True)
        try:
            core.list_namespaced_secret({namespace!r})
            print("secrets allowed", flush=True)
        except ApiException as err:
            print("secrets", err.status, flush=True)
        """
    )
    pod = _pod(
        "rbac",
        ["python", "-c", script],
        labels={MARKER: MARKER_VALUE},
        nodeSelector=pool,
        restartPolicy="Never",
        serviceAccountName="reader",
    )
    core.create_namespaced_pod(namespace, pod)
    wait_until(
        lambda: _phase(core, namespace, "rbac") in ("Succeeded", "Failed"), 60, "pod finished"
    )
    out = read_log(namespace, "rbac", state_dir=cluster.state_dir)
    err = read_log(namespace, "rbac", "stderr", state_dir=cluster.state_dir)
    assert "configmaps True" in out, out + err
    assert "secrets 403" in out, out + err
    assert _phase(core, namespace, "rbac") == "Succeeded"


# --- services ------------------------------------------------------------------------------


def test_redis_and_moto_services(redis_server: str, moto_server: str) -> None:
    import boto3
    import redis

    r = redis.Redis.from_url(redis_server)
    r.xadd("work", {"range": "0-99"})
    assert r.xlen("work") == 1

    kwargs: dict[str, Any] = {
        "endpoint_url": moto_server,
        "region_name": "us-east-1",
        "aws_access_key_id": "testing",
        "aws_secret_access_key": "testing",
    }
    s3 = boto3.client("s3", **kwargs)
    s3.create_bucket(Bucket="results")
    s3.put_object(Bucket="results", Key="batch-0", Body=b"ok")
    assert s3.get_object(Bucket="results", Key="batch-0")["Body"].read() == b"ok"
    sqs = boto3.client("sqs", **kwargs)
    url = sqs.create_queue(QueueName="work")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="0-99")
    messages = sqs.receive_message(QueueUrl=url).get("Messages", [])
    assert [m["Body"] for m in messages] == ["0-99"]
