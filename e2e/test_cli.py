"""``proctor get|status|watch`` and ``kubectl proctor`` on the real control plane: a run
followed from creation to its end, shown by every view, through kubectl's plugin mechanism,
and the errors of a user without permission or of a run that does not exist (issue 19)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from e2e.conftest import Cluster
from e2e.harness.helmtools import kubectl
from e2e.harness.kubeconfig import write_token_kubeconfig
from e2e.harness.poll import wait_until
from e2e.test_operator import Env, env  # noqa: F401 - the fixture

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO_ROOT = Path(__file__).resolve().parent.parent


def environ(cluster: Cluster, **extra: str) -> dict[str, str]:
    """The user's shell: the cluster's kubeconfig, this checkout's proctor, no terminal."""
    path = os.pathsep.join([str(REPO_ROOT / "operator"), os.environ.get("PYTHONPATH", "")])
    base = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return {**base, "KUBECONFIG": str(cluster.kubeconfig), "PYTHONPATH": path, **extra}


def proctor(cluster: Cluster, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proctor", *args],
        capture_output=True, text=True, timeout=timeout, env=environ(cluster), check=False,
    )  # fmt: skip


def plugin_dir(tmp: Path) -> Path:
    """A folder holding ``kubectl-proctor`` as pip installs it from pyproject's
    [project.scripts] entry (this checkout may be installed from another one)."""
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, func = scripts["kubectl-proctor"].partition(":")
    folder = tmp / "plugins"
    folder.mkdir()
    script = folder / "kubectl-proctor"
    script.write_text(
        f"#!{sys.executable}\nimport sys\nfrom {module} import {func}\nsys.exit({func}())\n"
    )
    script.chmod(0o755)
    return folder


def test_watch_follows_a_run_to_its_end_and_every_view_shows_it(env: Env) -> None:  # noqa: F811
    env.node(cpu="4", memory="8Gi")
    ns = env.namespace
    with env.operator():
        # Long enough (some 15 s) that the status moves through several tenths on an idle machine.
        env.create(env.evalrun("watched", count=20000))
        watch = subprocess.Popen(
            [sys.executable, "-m", "proctor", "watch", "watched", "-n", ns, "--interval", "500ms"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environ(env.cluster),
        )  # fmt: skip
        try:
            listed = wait_until(
                lambda: (
                    (out := proctor(env.cluster, "get", "-n", ns)).returncode == 0
                    and "evalrun/watched" in out.stdout
                    and out.stdout
                ),
                30,
                "the run in proctor get",
            )
            out, err = watch.communicate(timeout=200)
        finally:
            watch.kill()
    status = env.status("watched")
    decision = status["result"]["decision"]
    assert watch.returncode == {"accept": 0, "reject": 1, "undecided": 3}[decision], err
    assert str(listed).splitlines()[0].split() == [
        "NAME", "PHASE", "PROGRESS", "WORKERS", "ETA", "RESULT", "AGE",
    ]  # fmt: skip

    # Off a terminal: one line per phase change and per tenth, in order, ending Succeeded.
    lines = [line for line in err.splitlines() if "evalrun/watched: " in line]
    phases = [re.search(r"evalrun/watched: (\w+)", line).group(1) for line in lines]  # type: ignore[union-attr]
    assert phases[-1] == "Succeeded", err
    assert "Running" in phases, err
    counted = [re.search(r", ([\d,]+)/20,000", line) for line in lines]
    done = [int(m.group(1).replace(",", "")) for m in counted if m is not None]
    assert done == sorted(done), err
    assert done[-1] == 20000
    assert len(done) >= 3, err  # tenths along the way, not only the ends
    # Then the detailed view, with the whole results URI.
    assert "EvalRun " + f"{ns}/watched" in out
    assert "20,000 of 20,000 cases (100.0%)" in out
    assert status["result"]["resultsUri"] in out

    table = proctor(env.cluster, "get", "-n", ns, "-o", "wide")
    assert table.returncode == 0, table.stderr
    row = next(line.split() for line in table.stdout.splitlines() if "evalrun/watched" in line)
    assert row[1:3] == ["Succeeded", "100.0%"]
    assert row[4] == "0s"  # ETA, a duration
    assert row[-5] == "20,000"
    assert row[-1] == status["result"]["resultsUri"]
    every = proctor(env.cluster, "get", "-A")
    assert any(line.split()[:2] == [ns, "evalrun/watched"] for line in every.stdout.splitlines())
    shown = proctor(env.cluster, "status", "watched", "-n", ns)
    assert shown.returncode == 0, shown.stderr
    assert "decision" in shown.stdout
    assert status["result"]["resultsUri"] in shown.stdout

    # kubectl's own table: ETA as a duration, and -o wide shows the priority-1 columns.
    wide = subprocess.run(
        [kubectl(), "get", "evalruns", "-n", ns, "-o", "wide"],
        capture_output=True, text=True, env=environ(env.cluster), check=True,
    ).stdout.splitlines()  # fmt: skip
    assert wide[0].split() == [
        "NAME", "PHASE", "PROGRESS", "WORKERS", "ETA", "DECISION", "AGE",
        "CASES", "FAILED", "DELTA", "RESULTS",
    ]  # fmt: skip
    cells = wide[1].split()
    assert (cells[0], cells[4], cells[7]) == ("watched", "0s", "20000")
    assert cells[-1] == status["result"]["resultsUri"]


def test_kubectl_proctor_status_through_the_plugin_mechanism(env: Env, tmp_path: Path) -> None:  # noqa: F811
    env.node(cpu="4", memory="8Gi")
    ns = env.namespace
    with env.operator(run_workers=False):
        env.create(env.evalrun("plugged", count=100))
        wait_until(lambda: env.status("plugged").get("phase"), 30, "a first status")
    path = os.pathsep.join([str(plugin_dir(tmp_path)), os.environ.get("PATH", "")])
    shell = environ(env.cluster, PATH=path)
    plugins = subprocess.run(
        [kubectl(), "plugin", "list"], capture_output=True, text=True, env=shell, check=False
    )
    assert "kubectl-proctor" in plugins.stdout, plugins.stderr
    shown = subprocess.run(
        [kubectl(), "proctor", "status", "plugged", "-n", ns],
        capture_output=True, text=True, env=shell, check=False, timeout=60,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert f"EvalRun {ns}/plugged" in shown.stdout
    assert "of 100 cases" in shown.stdout
    usage = subprocess.run(
        [kubectl(), "proctor", "--help"], capture_output=True, text=True, env=shell, check=True
    )
    assert usage.stdout.startswith("usage: kubectl proctor")
    missing = subprocess.run(
        [kubectl(), "proctor", "status", "nope", "-n", ns],
        capture_output=True, text=True, env=shell, check=False, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 6
    assert f"no EvalRun or BenchmarkSuite named 'nope' in namespace {ns}" in missing.stderr


def test_watch_exit_code_says_the_run_failed(env: Env) -> None:  # noqa: F811
    # No node matches the run's pool: it waits, then its deadline fails it.
    with env.operator(run_workers=False):
        env.create(env.evalrun("late", count=100, activeDeadlineSeconds=2))
        out = proctor(env.cluster, "watch", "evalrun/late", "-n", env.namespace,
                      "--interval", "300ms", timeout=120)  # fmt: skip
    assert out.returncode == 4, out.stderr
    assert "Failed (DeadlineExceeded" in out.stdout


def test_no_permission_and_unknown_runs_say_so(
    cluster: Cluster, crds: list[dict[str, Any]], namespace: str, tmp_path: Path
) -> None:
    cluster.core.create_namespaced_service_account(namespace, {"metadata": {"name": "nobody"}})
    token = cluster.core.create_namespaced_service_account_token(
        "nobody", namespace, client.AuthenticationV1TokenRequest(spec={"audiences": []})
    ).status.token
    config = write_token_kubeconfig(
        tmp_path / "nobody", cluster.state.server, cluster.state_dir / "pki" / "ca.crt", token,
        namespace=namespace,
    )  # fmt: skip
    refused = proctor(cluster, "get", "--kubeconfig", str(config))
    assert refused.returncode == 7
    assert refused.stderr.startswith(f"error: cannot list evalruns in namespace {namespace}: ")
    assert "forbidden (403)" in refused.stderr
    assert token not in refused.stderr
    unknown = proctor(cluster, "status", "nope", "-n", namespace)
    assert unknown.returncode == 6
    assert "no EvalRun or BenchmarkSuite named 'nope'" in unknown.stderr
    timed = proctor(cluster, "watch", "nope", "-n", namespace, "--timeout", "1s")
    assert timed.returncode == 6
    empty = proctor(cluster, "get", "-n", namespace)
    assert (empty.returncode, empty.stdout) == (0, "")
    assert f"No runs found in namespace {namespace}." in empty.stderr
