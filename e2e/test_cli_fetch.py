"""``proctor results|report|logs NAME`` and the exit codes of every cluster command on the real
control plane, run as a user runs them (the command, a kubeconfig, a namespace) (issue 19).

- results: the failing cases of a buggy candidate, as its status names them, and every case
  exported; a store that cannot be reached is named, with exit 8.
- logs: a worker's lines through the API server (the pod runner serves the kubelet's log
  endpoint), prefixed with its pod's name, and followed to the run's end; kubectl's
  --timestamps, --since-time and --previous (a container that restarted, and the kubelet's
  answer for one that has not).
- report: a suite's Markdown report on stdout, its HTML into a file.
- exit codes: no cluster, no permission and no such run, the same for every cluster command.
"""

from __future__ import annotations

import json
import os
import re
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
from e2e.harness.podrunner import MARKER, MARKER_VALUE
from e2e.harness.poll import wait_until
from e2e.test_operator import Env, env  # noqa: F401 - the fixture
from e2e.test_suite import Suites, benchmark, suites  # noqa: F401 - the fixture
from proctor.api.names import LABEL_RUN_UID

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


STAMPED = re.compile(r"^\[(?P<pod>[^]]+)\] (?P<at>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z) ")
"""A line of ``proctor logs --timestamps``: its pod, then the kubelet's RFC 3339 time."""


def test_results_and_logs_of_a_buggy_candidate(env: Env) -> None:  # noqa: F811
    node = env.node(cpu="4", memory="8Gi")
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

    assert_log_options_on_a_restarted_container(env, node)
    assert_results_name_the_failing_cases(env)


CRASH_ONCE = (
    'n=$(cat count 2>/dev/null || echo 0); echo "attempt $n"; echo $((n + 1)) > count; '
    '[ "$n" -eq 0 ] && exit 1; sleep 2; echo later; exec sleep 300'
)


def run_pod(env: Env, node: str, name: str, script: str, restart: str) -> None:  # noqa: F811
    """A pod of the run ``buggy`` (its run-uid label), run by the pod runner on ``node``."""
    uid = env.get("buggy")["metadata"]["uid"]
    env.cluster.core.create_namespaced_pod(
        env.namespace,
        {
            "metadata": {"name": name, "labels": {MARKER: MARKER_VALUE, LABEL_RUN_UID: uid}},
            "spec": {
                "nodeName": node,
                "restartPolicy": restart,
                "terminationGracePeriodSeconds": 0,
                "containers": [
                    {"name": "worker", "image": "busybox", "command": ["sh", "-c", script]}
                ],
            },
        },
    )


def assert_log_options_on_a_restarted_container(env: Env, node: str) -> None:  # noqa: F811
    """-p/--previous (the log of a pod's container before its restart, and the kubelet's answer
    for one that has not restarted), --timestamps, --since-time, --since and --tail, through the
    API server and the pod runner's kubelet endpoint. The run's workers never restart
    (restartPolicy Never) and are gone once it has finished, so two pods of the run stand in:
    one crashes once and is restarted as the kubelet restarts a container, one never restarts."""
    ns, config = env.namespace, env.cluster.kubeconfig
    run_pod(env, node, "buggy-crashy", CRASH_ONCE, "Always")
    run_pod(env, node, "buggy-steady", "echo steady; exec sleep 300", "Never")
    crashy = ("-n", ns, "--worker", "crashy")

    def restarted() -> subprocess.CompletedProcess[str] | None:
        out = proctor(config, "logs", "buggy", "-n", ns)
        return out if "[buggy-crashy] later" in out.stdout else None

    def ours(out: str) -> list[str]:  # the run's workers may not all be gone yet
        return [line for line in out.splitlines() if line.startswith(("[buggy-c", "[buggy-s"))]

    current = wait_until(restarted, 60, "the restarted container's log", interval=1.0)
    assert ours(current.stdout) == [
        "[buggy-crashy] attempt 1", "[buggy-crashy] later", "[buggy-steady] steady"
    ]  # fmt: skip
    previous = proctor(config, "logs", "buggy", "-n", ns, "--previous", "--timestamps")
    assert previous.returncode == 0, previous.stderr
    [line] = ours(previous.stdout)
    assert STAMPED.match(line), previous.stdout
    assert line.split(" ", 2)[::2] == ["[buggy-crashy]", "attempt 0"]
    never = 'previous terminated container "worker" in pod "buggy-steady" not found'
    assert f"[buggy-steady] no previous log: {never}\n" in previous.stderr
    steady = proctor(config, "logs", "buggy", "-n", ns, "--worker", "steady", "-p")
    assert steady.returncode == 6, steady.stderr
    assert never in steady.stderr
    assert "no pod of EvalRun buggy has a previous container" in steady.stderr

    stamped = proctor(config, "logs", "buggy", *crashy, "--timestamps")
    matched = [STAMPED.match(line) for line in stamped.stdout.splitlines()]
    assert [m["pod"] if m else None for m in matched] == ["buggy-crashy"] * 2, stamped.stdout
    first, last = (m["at"] for m in matched if m is not None)
    assert first < last
    assert proctor(config, "logs", "buggy", *crashy, "--tail", "1").stdout == (
        "[buggy-crashy] later\n"
    )
    # "later" came 2 s after "attempt 1": from its second on, only it (whole seconds).
    since = proctor(config, "logs", "buggy", *crashy, "--since-time", last[:19] + "Z")
    assert (since.returncode, since.stdout) == (0, "[buggy-crashy] later\n"), since.stderr
    recent = proctor(config, "logs", "buggy", *crashy, "--since", "1h")
    assert recent.stdout == "[buggy-crashy] attempt 1\n[buggy-crashy] later\n"
    future = proctor(config, "logs", "buggy", *crashy, "--since-time", "2099-01-01T00:00:00Z")
    assert (future.returncode, future.stdout) == (0, ""), future.stderr
    for name in ("buggy-crashy", "buggy-steady"):
        env.cluster.core.delete_namespaced_pod(name, ns, grace_period_seconds=0)


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


def test_report_of_a_running_suite_is_partial(suites: Suites) -> None:  # noqa: F811
    """A suite still running has no report yet: ``proctor report`` prints one of the
    repetitions measured so far, marked partial with what is still pending, and exits 0."""
    suites.node()
    doc = suites.doc(
        "slow",
        [benchmark("alpha", 0.1, warmup=0, repetitions=2),
         benchmark("beta", 1.0, warmup=0, repetitions=60)],
        [{"name": "a"}],
    )  # fmt: skip
    config, ns = suites.cluster.kubeconfig, suites.namespace

    def measuring() -> dict[str, Any] | None:
        s = suites.status("slow")
        done = sum(c.get("completed", 0) for c in s.get("cells") or ())
        return s if s.get("phase") == "Running" and done >= 4 else None

    with suites.operator():
        suites.create(doc)
        wait_until(measuring, 240, "slow measuring", interval=0.5)
        markdown = proctor(config, "report", "slow", "-n", ns)
        html = suites.tmp / "slow.html"
        wrote = proctor(config, "report", "slow", "-n", ns, "--html", str(html))
        after = suites.status("slow")
    assert markdown.returncode == 0, markdown.stderr
    assert after["phase"] == "Running", after  # still running when both were read
    out = markdown.stdout
    assert out.startswith("# Benchmark suite slow (partial")
    assert "partial report" in markdown.stderr
    assert "| alpha | a | 2/2 |" in out, out
    done = re.search(r"\| beta \| a \| (\d+)/60 \|", out)
    assert done is not None, out
    assert int(done.group(1)) < 60, out
    assert "- **pending**: beta.a (" in out, out
    assert wrote.returncode == 0, wrote.stderr
    assert "partial" in html.read_text()


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
