"""``proctor results|report|logs NAME`` and the exit codes of every cluster command on the real
control plane, run as a user runs them (the command, a kubeconfig, a namespace) (issue 19).

- results: the failing cases of a buggy candidate, as its status names them, and every case
  exported; a store that cannot be reached is named, with exit 8.
- logs: a worker's lines through the API server (the pod runner serves the kubelet's log
  endpoint), prefixed with its pod's name, and followed to the run's end.
- report: a suite's Markdown report on stdout, its HTML into a file.
- exit codes: no cluster, no permission and no such run, the same for every cluster command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from kubernetes import client

from e2e.conftest import Cluster
from e2e.harness.kubeconfig import write_token_kubeconfig
from e2e.harness.operator import CREDS
from e2e.harness.poll import wait_until
from e2e.test_operator import Env, env  # noqa: F401 - the fixture
from e2e.test_suite import Suites, benchmark, suites  # noqa: F401 - the fixture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

REPO_ROOT = Path(__file__).resolve().parent.parent
CLUSTER_COMMANDS = ("get", "status", "watch", "results", "report", "logs", "cancel")


def environ(kubeconfig: str | Path) -> dict[str, str]:
    """The user's shell: a kubeconfig, this checkout's proctor, no AWS credentials of its own
    (the run's Secret gives them), no terminal."""
    path = os.pathsep.join([str(REPO_ROOT / "operator"), os.environ.get("PYTHONPATH", "")])
    drop = {"COLUMNS", *CREDS}
    base = {k: v for k, v in os.environ.items() if k not in drop}
    return {**base, "KUBECONFIG": str(kubeconfig), "PYTHONPATH": path}


def proctor(
    kubeconfig: str | Path, *args: str, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proctor", *args],
        capture_output=True, text=True, timeout=timeout, env=environ(kubeconfig), check=False,
    )  # fmt: skip


def test_results_and_logs_of_a_buggy_candidate(env: Env) -> None:  # noqa: F811
    env.node(cpu="4", memory="8Gi")
    ns, config = env.namespace, env.cluster.kubeconfig
    # Two workers over 20,000 cases: long enough (some 20 s) to read a worker's log mid-run.
    doc = env.evalrun("buggy", count=20000, workers={"min": 0, "max": 2})
    doc["spec"]["compare"]["candidate"]["ref"] = "proctor.examples.topk:top_k_buggy"
    with env.operator():
        env.create(doc)
        follower = subprocess.Popen(
            [sys.executable, "-m", "proctor", "logs", "buggy", "-f", "-n", ns],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ(config),
        )  # fmt: skip
        try:
            # While it runs: a worker's own lines, through the API server's pods/log.
            def worker_started() -> subprocess.CompletedProcess[str] | None:
                out = proctor(config, "logs", "buggy", "-n", ns)
                return out if out.returncode == 0 and "worker started" in out.stdout else None

            shown = wait_until(worker_started, 90, "a worker's log", interval=1.0)
            started = [line for line in shown.stdout.splitlines() if "worker started" in line]
            pod = started[0][1 : started[0].index("]")]
            suffix = pod.removeprefix("buggy-")
            one = proctor(config, "logs", "buggy", "-n", ns, "--worker", suffix, "--tail", "1")
            env.wait_phase("buggy", "Succeeded", timeout=240)
            followed, followed_err = follower.communicate(timeout=90)
        finally:
            follower.kill()
    assert all(line.startswith("[buggy-worker-") for line in shown.stdout.splitlines())
    assert one.returncode == 0, one.stderr
    assert [line.split("]")[0] for line in one.stdout.splitlines()] == [f"[{pod}"]
    assert follower.returncode == 0, followed_err
    assert "worker finished" in followed, followed
    assert all(line.startswith("[buggy-") for line in followed.splitlines()), followed

    assert_results_name_the_failing_cases(env)


def assert_results_name_the_failing_cases(env: Env) -> None:  # noqa: F811
    """``proctor results buggy`` after the run: what its status says failed, every case
    exported, and a store that cannot be reached named with exit 8."""
    ns, config = env.namespace, env.cluster.kubeconfig
    status = env.status("buggy")
    result = status["result"]
    assert result["decision"] == "reject"
    out = proctor(config, "results", "buggy", "-n", ns)
    assert out.returncode == 0, out.stderr
    failing = ", ".join(map(str, result["firstFailing"]))
    assert f"first failing cases: {failing}" in out.stdout
    assert result["topViolations"][0]["name"] in out.stdout
    assert "20,000 cases recorded" in out.stdout
    data = json.loads(proctor(config, "results", "evalrun/buggy", "-n", ns, "--json").stdout)
    assert data["firstFailing"] == result["firstFailing"]
    assert data["notEvaluated"] == []
    assert data["evaluated"] == data["recorded"] == 20000
    exported = env.workdir / "cases.parquet"
    wrote = proctor(config, "results", "buggy", "-n", ns, "--out", str(exported))
    assert wrote.returncode == 0, wrote.stderr
    table = pq.read_table(exported)
    assert table.num_rows == 20000
    assert sorted(table.column("index").to_pylist()) == list(range(20000))

    # A store that cannot be reached from here: which URI, why, exit 8.
    uid = env.get("buggy")["metadata"]["uid"]
    far = proctor(config, "results", "buggy", "-n", ns, "--endpoint", "http://127.0.0.1:1")
    assert far.returncode == 8, far.stderr
    assert f"s3://{env.bucket}/runs/{uid}" in far.stderr
    assert "the run's Secret s3" in far.stderr
    assert CREDS["AWS_SECRET_ACCESS_KEY"] + "@" not in far.stderr
    assert len(far.stderr.strip().splitlines()) == 1


def test_report_prints_a_suite_report_and_writes_its_html(suites: Suites) -> None:  # noqa: F811
    suites.node()
    doc = suites.doc("nap", [benchmark("alpha", 0.1, warmup=0, repetitions=3)], [{"name": "a"}])
    with suites.operator() as op:
        suites.create(doc)
        status = suites.wait_phase(op, "nap", "Succeeded", timeout=240)
    config, ns = suites.cluster.kubeconfig, suites.namespace
    markdown = proctor(config, "report", "nap", "-n", ns)
    assert markdown.returncode == 0, markdown.stderr
    assert markdown.stdout.startswith("#")
    assert "| alpha" in markdown.stdout
    html = suites.tmp / "nap.html"
    wrote = proctor(config, "report", "benchmarksuite/nap", "-n", ns, "--html", str(html))
    assert wrote.returncode == 0, wrote.stderr
    assert status["reportUri"] in wrote.stdout
    assert "<svg" in html.read_text()
    wrong = proctor(config, "results", "nap", "-n", ns)
    assert wrong.returncode == 2
    assert "proctor report nap" in wrong.stderr
    missing = proctor(config, "report", "nap", "-n", ns, "--run-id", "never")
    assert missing.returncode == 8
    assert "no report at s3://" in missing.stderr


def _token_kubeconfig(cluster: Cluster, namespace: str, tmp: Path, rules: list[Any]) -> Path:
    """A kubeconfig of a ServiceAccount that may do ``rules`` in ``namespace`` (none: nothing)."""
    name = f"user{len(rules)}"
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    if rules:
        rbac = client.RbacAuthorizationV1Api(cluster.api_client)
        rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": rules})
        rbac.create_namespaced_role_binding(
            namespace,
            {
                "metadata": {"name": name},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
            },
        )
    token = cluster.core.create_namespaced_service_account_token(
        name, namespace, client.AuthenticationV1TokenRequest(spec={"audiences": []})
    ).status.token
    return write_token_kubeconfig(
        tmp / name, cluster.state.server, cluster.state_dir / "pki" / "ca.crt", token,
        namespace=namespace,
    )  # fmt: skip


def test_every_cluster_command_exits_7_without_access_and_6_for_no_such_run(
    cluster: Cluster,
    crds: list[dict[str, Any]],
    namespace: str,
    tmp_path: Path,
) -> None:
    nowhere = tmp_path / "nowhere"
    cfg = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    cfg["clusters"][0]["cluster"]["server"] = "https://127.0.0.1:1"
    nowhere.write_text(yaml.safe_dump(cfg))
    nobody = _token_kubeconfig(cluster, namespace, tmp_path, [])
    plan = REPO_ROOT / "manifests" / "samples" / "quickstart.yaml"
    for command in (*CLUSTER_COMMANDS, "plan"):
        arg = str(plan) if command == "plan" else "nope"
        unreachable = proctor(nowhere, command, arg, "-n", namespace, timeout=120)
        assert unreachable.returncode == 7, (command, unreachable.stderr)
        assert "https://127.0.0.1:1 cannot be reached" in unreachable.stderr, command
        refused = proctor(nobody, command, arg, "-n", namespace)
        assert refused.returncode == 7, (command, refused.stderr)
        assert "forbidden (403)" in refused.stderr, (command, refused.stderr)
        if command == "plan":
            continue
        unknown = proctor(cluster.kubeconfig, command, "nope", "-n", namespace)
        assert unknown.returncode == 6, (command, unknown.stderr)
        assert "'nope'" in unknown.stderr or "EvalRun nope" in unknown.stderr, unknown.stderr
