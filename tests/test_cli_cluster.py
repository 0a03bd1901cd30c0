"""``proctor get|status|watch``: what they show (pure views), how they find runs and which
kubeconfig context they use, and their errors without a cluster (issue 19). The commands
against a real control plane are in e2e/test_cli.py."""

from __future__ import annotations

import io
import json
import sys
import tomllib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from proctor.api.crdgen import KINDS
from proctor.cli import kubectl_plugin, main
from proctor.cli.context import EXIT_NO_ACCESS, EXIT_NOT_FOUND, EXIT_USAGE, CommandError, Target
from proctor.cli.lookup import find_run, kind_of, list_runs, split_name
from proctor.cli.status import run_view
from proctor.cli.views import final_exit_code, get_table, progress_of
from proctor.cli.watch import follow
from proctor.cluster.client import KubeApi, KubeApiError, LoginError, kubeconfig_login
from proctor.console import make_console

EVALRUN, SUITE = KINDS
NOW = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)


def evalrun(name: str = "quick", **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {
            "name": name,
            "namespace": "team",
            "creationTimestamp": "2026-12-07T11:56:40Z",
        },
        "spec": {},
        "status": status,
    }


def suite(name: str = "nap", **status: Any) -> dict[str, Any]:
    body = evalrun(name, **status)
    body["kind"] = "BenchmarkSuite"
    return body


def render(renderable: Any) -> str:
    buf = io.StringIO()
    make_console(file=buf).print(renderable)
    return buf.getvalue()


# -- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "kind"),
    [
        ("evalrun", "EvalRun"),
        ("evalruns", "EvalRun"),
        ("er", "EvalRun"),
        ("EvalRun", "EvalRun"),
        ("evalruns.proctor.dev", "EvalRun"),
        ("benchmarksuite", "BenchmarkSuite"),
        ("bs", "BenchmarkSuite"),
        ("bench", "BenchmarkSuite"),
        ("pods", None),
    ],
)
def test_kind_words_as_kubectl_takes_them(word: str, kind: str | None) -> None:
    found = kind_of(word)
    assert (found.kind if found else None) == kind


def test_split_name_refuses_a_kind_that_is_not_proctors() -> None:
    assert split_name("quick") == (None, "quick")
    assert split_name("er/quick") == (EVALRUN, "quick")
    with pytest.raises(CommandError) as err:
        split_name("pod/quick")
    assert err.value.code == EXIT_USAGE
    assert "evalrun/NAME" in str(err.value)


# -- exit codes and progress ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        pytest.param(EVALRUN, {"phase": "Running"}, None, id="running"),
        pytest.param(EVALRUN, {"phase": "Suspended"}, None, id="suspended-is-not-final"),
        pytest.param(
            EVALRUN, {"phase": "Succeeded", "result": {"decision": "accept"}}, 0, id="accept"
        ),
        pytest.param(EVALRUN, {"phase": "Succeeded", "result": {}}, 0, id="nothing-to-decide"),
        pytest.param(
            EVALRUN, {"phase": "Succeeded", "result": {"decision": "reject"}}, 1, id="reject"
        ),
        pytest.param(
            EVALRUN, {"phase": "Succeeded", "result": {"decision": "undecided"}}, 3, id="undecided"
        ),
        pytest.param(EVALRUN, {"phase": "Failed"}, 4, id="failed"),
        pytest.param(EVALRUN, {"phase": "Cancelled"}, 5, id="cancelled"),
        pytest.param(SUITE, {"phase": "Succeeded", "regressionCount": 0}, 0, id="suite-ok"),
        pytest.param(SUITE, {"phase": "Succeeded", "regressionCount": 2}, 1, id="suite-regressed"),
        pytest.param(SUITE, {"phase": "Failed", "regressionCount": 0}, 4, id="suite-failed"),
    ],
)
def test_final_exit_code(kind: Any, status: dict[str, Any], code: int | None) -> None:
    body = evalrun(**status)
    before = json.dumps(body, sort_keys=True)
    assert final_exit_code(kind, body) == code
    assert json.dumps(body, sort_keys=True) == before


def test_progress_of_both_kinds() -> None:
    running = evalrun(
        phase="Running",
        counts={"total": 1000, "completed": 390, "deadLettered": 10},
        casesPerSecond=12.5,
        eta="48s",
    )
    got = progress_of(EVALRUN, running)
    assert (got.phase, got.completed, got.total, got.rate, got.eta) == (
        "Running", 400, 1000, "12.5 cases/s", "eta 48s",
    )  # fmt: skip
    cells = [{"completed": 3, "total": 5}, {"completed": 5, "total": 5}]
    got = progress_of(SUITE, suite(phase="Running", cells=cells))
    assert (got.completed, got.total) == (8, 10)
    assert progress_of(EVALRUN, evalrun()).phase == "Pending"


# -- views ------------------------------------------------------------------------------------


def test_get_table_lists_both_kinds_and_wide_adds_columns() -> None:
    uri = "s3://bucket/runs/" + "x" * 150 + "/results/"
    runs = [
        (EVALRUN, evalrun(
            phase="Running", progressPercent=39.0, workers={"ready": 3}, eta="3m20s",
            counts={"total": 1000, "failed": 7}, result={"decision": "undecided",
            "delta": -0.0125, "resultsUri": uri},
        )),
        (SUITE, suite(phase="Succeeded", progressPercent=100.0, regressionCount=1,
                      runId="r1", reportUri="s3://b/report.html", readyPods=0)),
    ]  # fmt: skip
    text = render(get_table(runs, NOW, wide=False, namespaces=False))
    lines = text.splitlines()
    assert lines[0].split() == ["NAME", "PHASE", "PROGRESS", "WORKERS", "ETA", "RESULT", "AGE"]
    assert lines[1].split() == ["evalrun/quick", "Running", "39.0%", "3", "3m20s", "undecided",
                                "3m20s"]  # fmt: skip
    assert lines[2].split()[:4] == ["benchmarksuite/nap", "Succeeded", "100.0%", "0"]
    assert "1 regressions" in lines[2]
    wide = render(get_table(runs, NOW, wide=True, namespaces=True)).splitlines()
    assert wide[0].split()[0] == "NAMESPACE"
    assert wide[0].split()[-5:] == ["CASES", "FAILED", "DELTA", "RUN", "RESULTS"]
    assert wide[1].split()[-5:] == ["1,000", "7", "-1.25%", "-", uri]
    assert wide[2].split()[-2:] == ["r1", "s3://b/report.html"]


def test_status_view_shows_the_whole_result_and_keeps_user_text() -> None:
    reason = "rejected: see [metamorphic-guard] report [bold]here[/bold]"
    uri = "s3://bucket/runs/" + "y" * 150 + "/results/"
    body = evalrun(
        phase="Succeeded",
        counts={"total": 2000, "completed": 2000, "passed": 1990, "failed": 10},
        progressPercent=100.0,
        workers={"ready": 0, "desired": 0, "failures": 1},
        plan={"replicas": 3, "fit": 3, "boundBy": "cpu", "profile": "small", "cpu": "1",
              "memory": "2Gi", "eligibleNodes": 1, "pools": [{"name": "spot", "replicas": 3,
              "fit": 3}]},
        result={"baselinePassRate": 0.995, "candidatePassRate": 0.99, "delta": -0.005,
                "deltaLower": -0.01, "deltaUpper": 0.0, "decision": "reject", "reason": reason,
                "resultsUri": uri},
        cache={"hits": 2000, "misses": 2000, "baseline": {"hits": 2000, "misses": 0},
               "candidate": {"hits": 0, "misses": 2000}},
        conditions=[{"type": "Succeeded", "status": "True", "reason": "Completed",
                     "message": "all 2000 cases evaluated",
                     "lastTransitionTime": "2026-12-07T11:59:00Z"}],
    )  # fmt: skip
    text = render(run_view(EVALRUN, body, NOW))
    assert "EvalRun team/quick" in text
    assert "Succeeded (Completed: all 2000 cases evaluated)" in text
    assert "2,000 of 2,000 cases (100.0%)" in text
    assert "3 workers (bound by cpu; 3 fit on 1 nodes), profile small: 1 CPU, 2Gi" in text
    assert "pools spot=3" in text
    assert "2,000 hits, 2,000 misses (baseline 2,000/0, candidate 0/2,000)" in text
    assert "-0.50% [-1.00%, 0.00%]" in text
    assert reason in text
    assert uri in text
    assert "Completed" in text.splitlines()[-1]


def test_suite_view_lists_cells_and_regressions() -> None:
    body = suite(
        phase="Succeeded", progressPercent=100.0, runId="20261207T115640Z", regressionCount=1,
        regressions=[{"benchmark": "log", "variant": "jj", "ratio": 1.31, "ratioCi": [1.2, 1.4]}],
        cells=[{"benchmark": "log", "variant": "jj", "completed": 5, "total": 5, "failed": 0,
                "p50": 0.262, "mean": 0.27, "regression": True},
               {"benchmark": "status", "variant": "jj", "completed": 5, "total": 5, "failed": 0,
                "p50": 0.1, "mean": 0.1, "reusedFrom": "ns/nap/20261206T115640Z"}],
        reportUri="s3://b/nap/report.html",
    )  # fmt: skip
    text = render(run_view(SUITE, body, NOW))
    assert "10 of 10 repetitions (100.0%)" in text
    assert "1: log.jj 1.310x" in text
    assert "s3://b/nap/report.html" in text
    row = next(line for line in text.splitlines() if line.startswith("log"))
    assert row.split() == ["log", "jj", "5/5", "0", "0.262s", "0.27s", "yes", "-"]
    reused = next(line for line in text.splitlines() if line.startswith("status"))
    assert reused.split()[-2:] == ["-", "ns/nap/20261206T115640Z"]  # reused from that run


# -- finding runs -----------------------------------------------------------------------------


class FakeApi(KubeApi):
    """Answers GETs from a dict of paths, as the API server would (404s included)."""

    def __init__(self, objects: dict[str, Any], served: bool = True) -> None:
        super().__init__(login=lambda: pytest.fail("no login"))
        self.objects = objects
        self.served = served

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        assert method == "GET"
        if not self.served:
            raise KubeApiError(
                404, json.dumps({"message": "the server could not find the requested resource"})
            )
        if path in self.objects:
            return self.objects[path]
        if path.endswith(("/evalruns", "/benchmarksuites")):
            return {"items": []}
        raise KubeApiError(404, json.dumps({"message": f"{path} not found"}))


BASE = "/apis/proctor.dev/v1alpha1/namespaces/team"


def test_find_run_by_bare_name_either_kind_and_refuses_ambiguity() -> None:
    api = FakeApi({f"{BASE}/evalruns/quick": evalrun(), f"{BASE}/benchmarksuites/nap": suite()})
    target = Target(api, "team")
    assert find_run(target, "quick")[0] is EVALRUN
    assert find_run(target, "nap")[0] is SUITE
    with pytest.raises(CommandError) as err:
        find_run(target, "bs/quick")
    assert err.value.code == EXIT_NOT_FOUND
    assert "no BenchmarkSuite named 'quick' in namespace team" in str(err.value)
    api.objects[f"{BASE}/benchmarksuites/quick"] = suite("quick")
    with pytest.raises(CommandError) as err:
        find_run(target, "quick")
    assert err.value.code == EXIT_USAGE
    assert "evalrun/quick or benchmarksuite/quick" in str(err.value)


def test_without_the_crds_the_error_says_so() -> None:
    target = Target(FakeApi({}, served=False), "team")
    for call in (lambda: find_run(target, "quick"), lambda: list_runs(target)):
        with pytest.raises(CommandError) as err:
            call()
        assert err.value.code == EXIT_NO_ACCESS
        assert "CRDs are not installed" in str(err.value)


def test_list_runs_all_namespaces_sorted() -> None:
    listed = {
        "/apis/proctor.dev/v1alpha1/evalruns": {"items": [evalrun("b"), evalrun("a")]},
        "/apis/proctor.dev/v1alpha1/benchmarksuites": {"items": [suite("c")]},
    }
    runs = list_runs(Target(FakeApi(listed), None))
    assert [(k.kind, b["metadata"]["name"]) for k, b in runs] == [
        ("BenchmarkSuite", "c"), ("EvalRun", "a"), ("EvalRun", "b"),
    ]  # fmt: skip


# -- kubeconfig and errors without a cluster --------------------------------------------------


def kubeconfig(path: Path, server: str = "http://127.0.0.1:9") -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "here",
        "contexts": [
            {"name": "here", "context": {"cluster": "c", "user": "u", "namespace": "team"}},
            {"name": "there", "context": {"cluster": "c", "user": "u"}},
        ],
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "t0ken-value"}}],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def test_context_and_kubeconfig_choose_as_kubectl_does(tmp_path: Path) -> None:
    config = str(kubeconfig(tmp_path / "config"))
    assert kubeconfig_login(kubeconfig=config).default_namespace == "team"  # type: ignore[union-attr]
    assert kubeconfig_login(kubeconfig=config, context="there").default_namespace is None  # type: ignore[union-attr]
    with pytest.raises(
        LoginError, match=r"context 'nope' is not in kubeconfig .*\(contexts: here, there\)"
    ):
        kubeconfig_login(kubeconfig=config, context="nope")
    with pytest.raises(LoginError, match="no such file"):
        kubeconfig_login(kubeconfig=str(tmp_path / "missing"))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["get"],
            "cannot list evalruns in namespace team: the API server http://127.0.0.1:9 "
            "cannot be reached",
        ),
        (["get", "-A"], "cannot list evalruns in all namespaces"),
        (["status", "quick", "-n", "other"], "cannot read evalruns in namespace other"),
        (["watch", "quick", "--context", "nope"], "context 'nope' is not in kubeconfig"),
    ],
)
def test_no_cluster_is_one_line_and_exit_7(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    config = str(kubeconfig(tmp_path / "config"))
    assert main([*argv, "--kubeconfig", config]) == EXIT_NO_ACCESS
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "t0ken-value" not in err


def test_watch_refuses_a_bad_interval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(kubeconfig(tmp_path / "config"))
    assert main(["watch", "quick", "--interval", "often", "--kubeconfig", config]) == EXIT_USAGE
    assert "--interval" in capsys.readouterr().err


def test_every_command_documents_its_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("crds", "validate", "run", "worker", "bench-worker", "operator", "get",
                    "status", "watch"):  # fmt: skip
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "exit codes" in out, command
    for command in ("get", "status", "watch"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = capsys.readouterr().out
        assert "-n NAMESPACE, --namespace NAMESPACE" in out
        assert "--context CONTEXT" in out


def test_kubectl_proctor_is_declared_and_names_itself(capsys: pytest.CaptureFixture[str]) -> None:
    root = Path(__file__).resolve().parents[1]
    scripts = tomllib.loads((root / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["proctor"] == "proctor.cli:main"
    assert scripts["kubectl-proctor"] == "proctor.cli:kubectl_plugin"
    with pytest.raises(SystemExit) as done:
        kubectl_plugin_help()
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage: kubectl proctor [-h]")


def kubectl_plugin_help() -> int:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "argv", ["kubectl-proctor", "--help"])
        return kubectl_plugin()


class SequenceApi(FakeApi):
    """Each GET of the run answers the next status of ``steps`` (the last one stays)."""

    def __init__(self, path: str, steps: list[dict[str, Any] | None]) -> None:
        super().__init__({})
        self.path, self.steps = path, steps

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        if path != self.path:
            return super().request(method, path, **kwargs)
        body = self.steps.pop(0) if len(self.steps) > 1 else self.steps[0]
        if body is None:
            raise KubeApiError(404, json.dumps({"message": 'evalruns "quick" not found'}))
        return body


def running(done: int) -> dict[str, Any]:
    return evalrun(phase="Running", counts={"total": 100, "completed": done}, eta="5s")


def test_watch_follows_until_final_and_prints_a_line_per_step(
    capsys: pytest.CaptureFixture[str],
) -> None:
    steps: list[dict[str, Any] | None] = [
        evalrun(phase="Pending", counts={"total": 100}),
        running(0), running(5), running(25), running(26), running(60),
        evalrun(phase="Succeeded", counts={"total": 100, "completed": 100},
                result={"decision": "reject", "resultsUri": "s3://b/r/"}),
    ]  # fmt: skip
    target = Target(SequenceApi(f"{BASE}/evalruns/quick", steps), "team")
    kind, body = find_run(target, "quick")
    out = make_console(stderr=True)
    code = follow(target, kind, body, "evalrun/quick", out, interval=0, deadline=None)
    captured = capsys.readouterr()
    assert code == 1  # Succeeded, rejected
    lines = [line for line in captured.err.splitlines() if "evalrun/quick: " in line]
    assert [line.split(": ", 1)[1] for line in lines] == [
        "Pending, 0/100",
        "Running, 0/100, eta 5s",
        "Running, 25/100, eta 5s",
        "Running, 60/100, eta 5s",
        "Succeeded, 100/100",
    ]
    assert "s3://b/r/" in captured.out  # then the detailed view


def test_watch_says_when_the_run_is_deleted_or_the_timeout_passes() -> None:
    path = f"{BASE}/evalruns/quick"
    target = Target(SequenceApi(path, [running(1), running(1), None]), "team")
    kind, body = find_run(target, "quick")
    with pytest.raises(CommandError) as err:
        follow(target, kind, body, "q", make_console(file=io.StringIO()), interval=0, deadline=None)
    assert err.value.code == EXIT_NOT_FOUND
    assert "evalrun/quick was deleted while watched" in str(err.value)
    target = Target(SequenceApi(path, [running(1)]), "team")
    code = follow(target, kind, body, "q", make_console(file=io.StringIO()), interval=0, deadline=0)
    assert code == 124
