"""The EvalRun operator end to end: real control plane, kwok nodes, worker pods run as local
`proctor worker` processes by the pod runner, Redis for the queue and moto for S3."""

from __future__ import annotations

import copy
import itertools
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from kubernetes import client

from e2e.conftest import Cluster
from e2e.harness import nodes
from e2e.harness.image import Image
from e2e.harness.imagepod import inspect_process
from e2e.harness.operator import (
    CREDS,
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    evalrun_doc,
    operator_config,
    operator_process,
)
from e2e.harness.podrunner import pod_dir
from e2e.harness.poll import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


class Env:
    """One test's namespace, Secrets, bucket, node label and operator."""

    def __init__(
        self,
        cluster: Cluster,
        *,
        namespace: str,
        pool: str,
        bucket: str,
        moto: str,
        workdir: Path,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.pool = pool
        self.bucket = bucket
        self.moto = moto
        self.workdir = workdir
        self.custom = client.CustomObjectsApi(cluster.api_client)
        self.nodes: list[str] = []

    def node(self, **kwargs: Any) -> str:
        name = f"kwok-{self.pool}-{len(self.nodes)}"
        labels = {"e2e.proctor.dev/pool": self.pool, **kwargs.pop("labels", {})}
        nodes.create_node(self.cluster.core, name, labels=labels, **kwargs)
        self.nodes.append(name)
        return name

    def operator(self, run_workers: bool = True, image: Image | None = None) -> Any:
        """The operator; with ``run_workers=False`` worker pods only look Running (kwok), which
        is all that planning tests need, and costs no CPU; with ``image``, worker pods run
        inside that image's rootfs rather than with the host's Python."""
        runner = image.label if image else "local"
        return operator_process(
            self.cluster.kubeconfig,
            self.workdir,
            operator_config(run_workers=run_workers, runner=runner),
            namespace=self.namespace,
        )

    def evalrun(self, name: str, count: int = 2000, **spec: Any) -> dict[str, Any]:
        doc = evalrun_doc(
            name,
            count=count,
            bucket=self.bucket,
            moto=self.moto,
            storage={"checkpointInterval": "2s"},
        )
        doc["spec"]["placement"] = {"nodeSelector": {"e2e.proctor.dev/pool": self.pool}}
        doc["spec"].update(spec)
        return doc

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, doc, field_validation="Strict"
        )
        return created

    def get(self, name: str) -> dict[str, Any]:
        got: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return got

    def patch_spec(self, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"spec": spec}
        )

    def run_storage(self, uid: str, monkeypatch: pytest.MonkeyPatch) -> Any:
        """The run's storage in the test bucket (moto), read with the test credentials."""
        for key, value in CREDS.items():
            monkeypatch.setenv(key, value)
        from proctor.storage import open_storage

        return open_storage(f"s3://{self.bucket}/runs", uid, endpoint=self.moto, region="us-east-1")

    def reclaim_mid_run(self, run: str, node: str, timeout: float = 60.0) -> int:
        """Wait for a worker of ``run`` on ``node`` and for the run's first results, then
        reclaim the node as a spot interruption does; returns the cases completed before."""
        wait_until(
            lambda: any(p.spec.node_name == node for p in self.workers(run)),
            timeout,
            "a worker on the spot node",
        )
        wait_until(
            lambda: (self.status(run).get("counts") or {}).get("completed", 0) > 0,
            90,
            "first results",
            interval=0.3,
        )
        done: int = self.status(run)["counts"]["completed"]
        nodes.preempt_node(self.cluster.core, node)
        self.nodes.remove(node)
        return done

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get(name).get("status") or {})

    def wait_phase(self, name: str, phase: str, timeout: float = 120.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            s = self.status(name)
            return s if s.get("phase") == phase else None

        return wait_until(
            reached,
            timeout=timeout,
            what=f"{name} phase {phase} (status: {self.status(name)})",
            interval=0.5,
        )

    def workers(self, name: str) -> list[Any]:
        pods = self.cluster.core.list_namespaced_pod(
            self.namespace, label_selector=f"proctor.dev/run={name}"
        ).items
        return [p for p in pods if not p.metadata.deletion_timestamp]

    def events(self, name: str) -> list[Any]:
        items = self.cluster.core.list_namespaced_event(self.namespace).items
        return [e for e in items if e.involved_object.name == name]


@pytest.fixture
def env(  # noqa: PLR0917 - pytest fixtures arrive as positional arguments
    cluster: Cluster,
    crds: list[dict[str, Any]],
    namespace: str,
    redis_server: str,
    moto_server: str,
    tmp_path: Path,
) -> Iterator[Env]:
    bucket = f"proctor-{uuid.uuid4().hex[:8]}"
    boto3.client(
        "s3", endpoint_url=moto_server, region_name="us-east-1", **_lower(CREDS)
    ).create_bucket(Bucket=bucket)
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "queue"}, "stringData": {"url": redis_server}}
    )
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "s3"}, "stringData": dict(CREDS)}
    )
    e = Env(
        cluster,
        namespace=namespace,
        # A letter first: a pool such as "414e29" is a number to YAML 1.2 readers (kubectl),
        # which then refuse it as a label value in nodeSelector.
        pool=f"p{uuid.uuid4().hex[:6]}",
        bucket=bucket,
        moto=moto_server,
        workdir=tmp_path,
    )
    try:
        yield e
    finally:
        for name in e.nodes:
            nodes.delete_node(cluster.core, name)


def _lower(creds: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in creds.items()}


def _local_summary(doc: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """What `proctor run` decides for the same manifest on this machine."""
    local = copy.deepcopy(doc)
    for key in ("queue", "storage", "placement"):
        local["spec"].pop(key, None)
    path = tmp / "local.yaml"
    path.write_text(yaml.safe_dump(local))
    out = subprocess.run(
        [sys.executable, "-m", "proctor", "run", str(path), "--workers", "2", "--json",
         "--results-dir", str(tmp / "local-results")],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert out.returncode in (0, 1), out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def assert_each_case_once(storage: Any, total: int) -> None:
    """The run's result objects tile [0, total): no case lost, none recorded twice."""
    ranges = sorted((r.start, r.end) for r in storage.result_ranges())
    assert sum(e - s for s, e in ranges) == total
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))


def _dump(op: OperatorProcess) -> str:
    return "\n--- operator log ---\n" + op.output()[-6000:]


def test_quickstart_succeeds_with_the_local_decision(env: Env) -> None:
    env.node(cpu="4", memory="8Gi")
    doc = env.evalrun("quickstart")
    with env.operator() as op:
        env.create(doc)
        first = wait_until(lambda: env.workers("quickstart"), timeout=30, what="a first worker pod")
        assert first[0].metadata.labels["e2e.proctor.dev/run"] == "local"
        owner = first[0].metadata.owner_references[0]
        assert (owner.kind, owner.name, owner.controller) == ("EvalRun", "quickstart", True)
        try:
            status = env.wait_phase("quickstart", "Succeeded", timeout=180)
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
        wait_until(lambda: not env.workers("quickstart"), timeout=30, what="workers gone")
    counts = status["counts"]
    assert counts["completed"] == counts["total"] == 2000
    assert status["workers"]["failures"] == 0
    # Issue 15 #13: a finished run has no ready or wanted workers, and nothing degraded it.
    assert (status["workers"]["desired"], status["workers"]["ready"]) == (0, 0)
    assert status["disruptions"] == 0
    assert status["plan"]["boundBy"] in {"cpu", "backlog", "done"}
    conds = {c["type"]: c for c in status["conditions"]}
    assert (conds["Degraded"]["status"], conds["Degraded"]["reason"]) == ("False", "AsExpected")
    assert conds["Succeeded"]["status"] == "True"
    assert conds["Succeeded"]["reason"] == "Completed"
    local = _local_summary(doc, env.workdir)
    result = status["result"]
    assert result["decision"] == local["decision"]
    assert result["baselinePassRate"] == pytest.approx(local["baselinePassRate"])
    assert result["candidatePassRate"] == pytest.approx(local["candidatePassRate"])
    assert result["deltaLower"] == pytest.approx(local["interval"][0])
    assert result["resultsUri"].startswith(f"s3://{env.bucket}/runs/")
    assert result["resultsUri"].endswith("/results.parquet")  # the merged results (issue 17)


def _condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def test_impossible_profile_missing_secret_and_bad_spec_say_why(env: Env) -> None:
    env.node(cpu="4", memory="8Gi")
    with env.operator(run_workers=False) as op:
        env.create(env.evalrun("toolarge", profile="xlarge"))
        missing = env.evalrun("nosecret")
        missing["spec"]["queue"]["secretRef"] = {"name": "no-such-secret"}
        env.create(missing)
        try:
            big = wait_until(
                lambda: _problem(env, "toolarge", "ProfileTooLarge"), 30, "ProfileTooLarge"
            )
            nos = wait_until(
                lambda: _problem(env, "nosecret", "SecretNotFound"), 30, "SecretNotFound"
            )
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
        assert big["phase"] == "Pending"
        assert "xlarge" in _condition(big, "Degraded")["message"]
        assert "smaller profile" in _condition(big, "Degraded")["message"]
        assert "no-such-secret" in _condition(nos, "Degraded")["message"]
        for name, reason in (("toolarge", "ProfileTooLarge"), ("nosecret", "SecretNotFound")):
            events = wait_until(
                lambda n=name, r=reason: [  # type: ignore[misc]
                    e for e in env.events(n) if e.reason == r and e.type == "Warning"
                ],
                20,
                f"{reason} event",
            )
            assert events[0].message
        assert not env.workers("toolarge")
        assert not env.workers("nosecret")
    bad = env.evalrun("badspec", workers={"min": 5, "max": 2})
    with pytest.raises(client.ApiException) as err:
        env.create(bad)
    assert err.value.status == 422
    assert "workers.min must not exceed workers.max" in str(err.value.body)


def _problem(env: Env, name: str, reason: str) -> dict[str, Any] | None:
    status = env.status(name)
    degraded = [c for c in status.get("conditions", []) if c["type"] == "Degraded"]
    return status if degraded and degraded[0]["reason"] == reason else None


def _planned(env: Env, name: str, bound: str, replicas: int) -> dict[str, Any] | None:
    status = env.status(name)
    plan = status.get("plan") or {}
    if plan.get("boundBy") != bound or plan.get("replicas") != replicas:
        return None
    pods = env.workers(name)
    return status if len(pods) == replicas else None


@pytest.mark.parametrize(
    ("node", "spec", "bound", "replicas"),
    [
        # 4 CPUs less 20% reserved hold 3 workers of 1 CPU.
        ({"cpu": "4", "memory": "32Gi"}, {"profile": "small"}, "cpu", 3),
        # 8Gi less 25% reserved hold 2 workers of 3Gi.
        (
            {"cpu": "16", "memory": "8Gi"},
            {"profile": None, "resources": {"cpu": "100m", "memory": "3Gi"}},
            "memory",
            2,
        ),
        ({"cpu": "16", "memory": "32Gi", "gpus": 2}, {"gpus": 1, "profile": "small"}, "gpu", 2),
        ({"cpu": "16", "memory": "32Gi"}, {"workers": {"max": 2}}, "max", 2),
        # 2000 cases in batches of 250 are 8 entries; 4 per worker wants 2 workers.
        ({"cpu": "16", "memory": "32Gi"}, {"workers": {"targetBacklogPerWorker": 4}}, "backlog", 2),
    ],
    ids=["cpu", "memory", "gpu", "max", "backlog"],
)
def test_plan_is_bound_and_realised(
    env: Env, node: dict[str, Any], spec: dict[str, Any], bound: str, replicas: int
) -> None:
    env.node(**node)
    doc = env.evalrun("plan", **spec)
    doc["spec"] = {k: v for k, v in doc["spec"].items() if v is not None}
    with env.operator(run_workers=False) as op:
        env.create(doc)
        try:
            status = wait_until(
                lambda: _planned(env, "plan", bound, replicas), 40, f"plan bound by {bound}"
            )
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
    assert status["plan"]["fit"] >= replicas
    assert bound in status["plan"]["message"]


def test_required_spread_places_one_worker_per_node(env: Env) -> None:
    for _ in range(2):
        env.node(cpu="16", memory="32Gi")
    doc = env.evalrun("spread")
    doc["spec"]["placement"]["spread"] = "required"
    with env.operator(run_workers=False) as op:
        env.create(doc)
        try:
            wait_until(lambda: _planned(env, "spread", "nodes", 2), 40, "two workers")
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
        pods = wait_until(
            lambda: [p for p in env.workers("spread") if p.spec.node_name] or None,
            30,
            "scheduled workers",
        )
        wait_until(lambda: len(pods) == 2 or None, 1, "both scheduled")
        assert len({p.spec.node_name for p in pods}) == 2


def test_suspend_removes_workers_and_resume_finishes(env: Env) -> None:
    env.node(cpu="4", memory="8Gi")
    # Large enough that it cannot finish (about 1,700 cases/s here) before the suspend lands.
    doc = env.evalrun("pause", count=30000)
    with env.operator() as op:
        env.create(doc)
        try:
            wait_until(
                lambda: (env.status("pause").get("counts") or {}).get("completed", 0) > 0,
                60,
                "first results",
                interval=0.3,
            )
            env.patch_spec("pause", {"suspend": True})
            status = env.wait_phase("pause", "Suspended", timeout=60)
            wait_until(lambda: not env.workers("pause"), 60, "workers removed")
            assert _condition(status, "Suspended")["status"] == "True"
            env.patch_spec("pause", {"suspend": False})
            status = env.wait_phase("pause", "Succeeded", timeout=180)
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
    assert status["counts"]["completed"] == 30000
    assert status["workers"]["failures"] == 0


def test_preempted_node_loses_and_repeats_nothing(
    env: Env, image: Image, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers run inside the image (uid 10001, read-only root): they reach Redis and moto
    on loopback, record results, and the reclaimed node's worker hands its batch back on
    SIGTERM."""
    first = env.node(cpu="4", memory="8Gi", spot=True)
    env.node(cpu="4", memory="8Gi")
    # Large enough that the preemption lands mid-run, not after the last batch.
    doc = env.evalrun("spot", count=30000)
    doc["spec"]["placement"]["spread"] = "required"
    with env.operator(image=image) as op:
        created = env.create(doc)
        try:
            worker = wait_until(lambda: _running_worker(env, "spot"), 60, "a running worker")
            assert_runs_inside(image, worker)
            env.reclaim_mid_run("spot", first, timeout=40)
            status = env.wait_phase("spot", "Succeeded", timeout=200)
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
    assert status["counts"]["completed"] == 30000
    assert status["disruptions"] >= 1
    assert status["workers"]["failures"] == 0
    assert_each_case_once(env.run_storage(created["metadata"]["uid"], monkeypatch), 30000)


def _running_worker(env: Env, run: str) -> Path | None:
    """The pod runner's directory of a worker of ``run`` whose process has started its command
    (the sandbox has exec'd it), if any."""
    for pod in env.workers(run):
        directory = pod_dir(env.namespace, pod.metadata.name, env.cluster.state_dir)
        if pod.status.phase != "Running" or not (directory / "pid").exists():
            continue
        try:
            process = inspect_process(directory)
        except (OSError, ValueError):
            continue  # between the pid file and /proc, or the process already gone
        root = directory / "overlay" / "merged"
        if process.root == root and process.exe.is_relative_to(root):
            return directory
    return None


def assert_runs_inside(image: Image, directory: Path) -> None:
    """The worker's process runs in an overlay of the image's rootfs, as uid/gid 10001, with
    the image's Python, a read-only root and a writable /tmp (the pod's emptyDir)."""
    process = inspect_process(directory)
    assert (process.uid, process.gid) == (10001, 10001)
    assert process.root == directory / "overlay" / "merged"
    assert process.exe.is_relative_to(process.root), process.exe
    assert (image.rootfs / process.exe.relative_to(process.root)).exists()
    assert "ro" in process.mount_options["/"], process.mount_options["/"]
    assert "rw" in process.mount_options["/tmp"], process.mount_options["/tmp"]


def test_operator_killed_mid_run_a_new_one_finishes_without_enqueueing_twice(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    env.node(cpu="4", memory="8Gi")
    # Large enough that the workers cannot finish it before the first operator is killed.
    doc = env.evalrun("restart", count=30000)
    with env.operator() as first:
        created = env.create(doc)
        wait_until(
            lambda: (env.status("restart").get("counts") or {}).get("completed", 0) > 0,
            60,
            "first results",
            interval=0.3,
        )
        first.kill()
    assert "entries=120" in first.output()
    with env.operator() as second:
        try:
            status = env.wait_phase("restart", "Succeeded", timeout=180)
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(second)) from exc
        # The new operator's enqueue found every chunk already there and added nothing.
        wait_until(lambda: "entries=" in second.output() or None, 30, "the second enqueue")
        assert "entries=0" in second.output(), second.output()
    assert status["counts"]["completed"] == 30000
    assert_each_case_once(env.run_storage(created["metadata"]["uid"], monkeypatch), 30000)
