"""Argo CD health checks (manifests/argocd/health/*.lua) run by Debian's lua5.4 the way Argo CD
calls them: the object as the global ``obj``, the script's returned table read for ``status``
and ``message``.

EvalRun statuses come from the operator's own status function
(:func:`proctor.evalrun.status.next_status`), so the phases and conditions the Lua sees are the
ones the operator writes. BenchmarkSuite has no controller yet: its samples are validated
against the status model instead.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml

from proctor.api.conditions import Problem
from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteStatus
from proctor.api.v1alpha1.evalrun import (
    CaseCounts,
    EvalRunSpec,
    EvalRunStatus,
    ResultSummary,
    WorkerCounts,
)
from proctor.evalrun.status import Observation, next_status

ROOT = Path(__file__).resolve().parents[1]
ARGOCD = ROOT / "manifests" / "argocd"
SCRIPTS = {
    "EvalRun": ARGOCD / "health" / "evalrun.lua",
    "BenchmarkSuite": ARGOCD / "health" / "benchmarksuite.lua",
}
LUA = shutil.which("lua5.4")
needs_lua = pytest.mark.skipif(LUA is None, reason="lua5.4 is missing: run e2e/install-lua")


def lua_literal(value: Any) -> str:
    """A Lua expression for a JSON-like value. Numbers become floats, as Argo CD's conversion
    from Go's float64 makes them; None becomes nil (a missing key, as in Go maps)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(float(value))
    if isinstance(value, str):
        escaped = "".join(
            c if (c.isascii() and c.isprintable() and c not in '"\\') else
            "".join(f"\\{b:03d}" for b in c.encode())
            for c in value
        )  # fmt: skip
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        items = [f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()]
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def health(kind: str, obj: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    assert LUA is not None
    runner = tmp_path / "run.lua"
    runner.write_text(
        f"obj = {lua_literal(obj)}\n"
        f"local hs = dofile({lua_literal(str(SCRIPTS[kind]))})\n"
        'io.write(tostring(hs.status), "\\n", tostring(hs.message), "\\n")\n'
    )
    done = subprocess.run(
        [LUA, str(runner)], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    status, message = done.stdout.split("\n", 2)[:2]
    return status, message


# EvalRun statuses, written by the operator's status function.
T0 = datetime(2026, 1, 1, tzinfo=UTC)
SPEC = EvalRunSpec.model_validate(
    {
        "image": "proctor/proctor:0.1.0",
        "task": {"entrypoint": "proctor.examples.topk:task"},
        "cases": {"count": 1000},
        "workers": {"failureBudget": 2},
    }
)


def observe(**changes: Any) -> Observation:
    base = Observation(
        spec=SPEC,
        generation=1,
        now=T0,
        previous=EvalRunStatus(),
        counts=CaseCounts(total=1000),
        workers=WorkerCounts(desired=4, ready=0),
    )
    return replace(base, **changes)


def status_of(o: Observation) -> dict[str, Any]:
    dumped: dict[str, Any] = next_status(o).status.model_dump(
        by_alias=True, exclude_none=True, mode="json"
    )
    return dumped


def evalrun(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "EvalRun",
        "metadata": {"name": "r", "namespace": "ns", "generation": generation},
        "spec": SPEC.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }
    if status is not None:
        obj["status"] = status
    return obj


RUNNING = next_status(
    observe(workers=WorkerCounts(desired=4, ready=3), counts=CaseCounts(total=1000, completed=250))
).status
STALLED = status_of(
    observe(
        previous=RUNNING,
        now=T0 + timedelta(seconds=301),
        workers=WorkerCounts(desired=4, ready=3),
        counts=CaseCounts(total=1000, completed=250),
    )
)
ACCEPTED = ResultSummary(decision="accept", reason="delta -0.001 within margin")
REJECTED = ResultSummary(decision="reject", reason="delta -0.2 below minDelta -0.01")
DONE = CaseCounts(total=1000, completed=1000)


class Case(NamedTuple):
    obj: dict[str, Any]
    status: str
    message: str  # a regular expression the message must match


EVALRUN_CASES: dict[str, Case] = {
    "no status yet": Case(evalrun(None), "Progressing", "Waiting for the operator"),
    "pending, workers being scheduled": Case(
        evalrun(status_of(observe())), "Progressing", r"^Pending: 0\.0% done, 0/4 workers ready$"
    ),
    "running": Case(
        evalrun(RUNNING.model_dump(by_alias=True, exclude_none=True, mode="json")),
        "Progressing",
        r"^Running: 25\.0% done, 3/4 workers ready$",
    ),
    "spec change not yet observed": Case(
        evalrun(RUNNING.model_dump(by_alias=True, exclude_none=True, mode="json"), generation=2),
        "Progressing",
        "observe generation 2$",
    ),
    "stalled": Case(evalrun(STALLED), "Degraded", "^NoProgress: no case completed for more than"),
    "succeeded, accepted": Case(
        evalrun(status_of(observe(finished=True, counts=DONE, result=ACCEPTED))),
        "Healthy",
        "^Completed: all 1000 cases evaluated; decision accept$",
    ),
    "succeeded without a comparison": Case(
        evalrun(status_of(observe(finished=True, counts=DONE))),
        "Healthy",
        "^Completed: all 1000 cases evaluated$",
    ),
    "succeeded, candidate rejected": Case(
        evalrun(status_of(observe(finished=True, counts=DONE, result=REJECTED))),
        "Degraded",
        "^Candidate rejected: delta -0.2 below minDelta",
    ),
    "failed: worker failure budget": Case(
        evalrun(status_of(observe(workers=WorkerCounts(failures=3)))),
        "Degraded",
        "^FailureBudgetExhausted: 3 worker failures exceed the budget of 2",
    ),
    "suspended": Case(
        evalrun(
            status_of(observe(spec=SPEC.model_copy(update={"suspend": True}), previous=RUNNING))
        ),
        "Suspended",
        "^Suspended",
    ),
    "cancelled": Case(
        evalrun(
            status_of(
                observe(
                    spec=SPEC.model_copy(update={"cancel": True}),
                    previous=RUNNING,
                    finished=True,
                    cancelled=True,
                    counts=CaseCounts(total=1000, completed=250),
                )
            )
        ),
        "Degraded",
        "^Cancelled: spec.cancel: 250 of 1000 cases evaluated",
    ),
    "missing Secret: cannot start": Case(
        evalrun(
            status_of(observe(problem=Problem("SecretNotFound", "Secret 'queue' does not exist")))
        ),
        "Degraded",
        "^SecretNotFound: Secret 'queue' does not exist$",
    ),
    "running with dead letters keeps progressing": Case(
        evalrun(
            status_of(
                observe(
                    previous=RUNNING,
                    workers=WorkerCounts(desired=4, ready=4),
                    counts=CaseCounts(total=1000, completed=500, dead_lettered=10),
                )
            )
        ),
        "Progressing",
        r"^Running: 50\.0% done",
    ),
}


def cond(type_: str, status: str, reason: str = "", message: str = "") -> dict[str, str]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def suite(status: dict[str, Any] | None, generation: int = 1) -> dict[str, Any]:
    if status is not None:
        BenchmarkSuiteStatus.model_validate(status)  # the sample is a status the API allows
    obj: dict[str, Any] = {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "BenchmarkSuite",
        "metadata": {"name": "s", "namespace": "ns", "generation": generation},
        "spec": {},
    }
    if status is not None:
        obj["status"] = status
    return obj


SUITE_RUNNING = {
    "phase": "Running",
    "observedGeneration": 1,
    "progressPercent": 40,
    "conditions": [cond("Progressing", "True", "Running"), cond("Stalled", "False", "Progress")],
}
SUITE_DONE = {
    "phase": "Succeeded",
    "observedGeneration": 1,
    "progressPercent": 100,
    "regressionCount": 0,
    "conditions": [cond("Succeeded", "True", "Completed", "20 cells measured")],
}
REGRESSIONS = [
    {"benchmark": "status", "variant": "jj", "ratio": 1.31, "ratioCi": [1.2, 1.4]},
    {"benchmark": "log", "variant": "jj", "ratio": 1.12, "ratioCi": [1.05, 1.2]},
]
SUITE_CASES: dict[str, Case] = {
    "no status yet": Case(suite(None), "Progressing", "Waiting for the operator"),
    "running": Case(suite(SUITE_RUNNING), "Progressing", r"^Running: 40\.0% of repetitions"),
    "spec change not yet observed": Case(
        suite(SUITE_RUNNING, generation=3), "Progressing", "observe generation 3$"
    ),
    "stalled": Case(
        suite(
            {
                **SUITE_RUNNING,
                "conditions": [cond("Stalled", "True", "NoProgress", "no repetition for 300s")],
            }
        ),
        "Degraded",
        "^NoProgress: no repetition for 300s$",
    ),
    "succeeded": Case(suite(SUITE_DONE), "Healthy", "^Completed: 20 cells measured$"),
    "succeeded with regressions": Case(
        suite({**SUITE_DONE, "regressionCount": 2, "regressions": REGRESSIONS}),
        "Degraded",
        r"^2 regression\(s\) against the baseline: status/jj x1\.31, log/jj x1\.12$",
    ),
    "failed": Case(
        suite(
            {
                "phase": "Failed",
                "observedGeneration": 1,
                "conditions": [cond("Failed", "True", "FailureBudgetExhausted", "6 pod failures")],
            }
        ),
        "Degraded",
        "^FailureBudgetExhausted: 6 pod failures$",
    ),
    "cancelled": Case(
        suite(
            {
                "phase": "Cancelled",
                "observedGeneration": 2,
                "conditions": [
                    cond("Cancelled", "True", "Cancelled", "spec.cancel is true: 5 of 6 kept")
                ],
            },
            generation=2,
        ),
        "Degraded",
        "^Cancelled: spec.cancel is true: 5 of 6 kept$",
    ),
    "suspended": Case(
        suite(
            {
                "phase": "Suspended",
                "observedGeneration": 1,
                "conditions": [cond("Suspended", "True", "Suspended")],
            }
        ),
        "Suspended",
        "^Suspended",
    ),
}


@needs_lua
@pytest.mark.parametrize("case", EVALRUN_CASES.values(), ids=EVALRUN_CASES.keys())
def test_evalrun_health(case: Case, tmp_path: Path) -> None:
    status, message = health("EvalRun", case.obj, tmp_path)
    assert (status, bool(re.search(case.message, message))) == (case.status, True), message


@needs_lua
@pytest.mark.parametrize("case", SUITE_CASES.values(), ids=SUITE_CASES.keys())
def test_benchmarksuite_health(case: Case, tmp_path: Path) -> None:
    status, message = health("BenchmarkSuite", case.obj, tmp_path)
    assert (status, bool(re.search(case.message, message))) == (case.status, True), message


def test_the_samples_cover_every_phase_and_stalled() -> None:
    phases = {c.obj.get("status", {}).get("phase") for c in EVALRUN_CASES.values()}
    assert {"Pending", "Running", "Succeeded", "Failed", "Suspended", "Cancelled"} <= phases
    assert STALLED["phase"] == "Running"
    assert any(
        c["type"] == "Stalled" and c["status"] == "True" for c in STALLED.get("conditions", [])
    )


def test_argocd_cm_carries_the_same_lua() -> None:
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] == "argocd-cm"
    for kind, path in SCRIPTS.items():
        key = f"resource.customizations.health.proctor.dev_{kind}"
        assert cm["data"].get(key) == path.read_text(), (
            f"argocd-cm.yaml's {key} differs from {path.relative_to(ROOT)}: run "
            "manifests/argocd/generate-argocd-cm"
        )


# Argo CD runs the scripts in gopher-lua (Lua 5.1): nothing newer may appear.
LUA51_ONLY = [
    (r"//", "integer division"),
    (r"\bgoto\b", "goto"),
    (r"<const>|<close>", "attributes"),
    (r"\butf8\.", "the utf8 library"),
    (r"\btable\.unpack\b|\bmath\.tointeger\b|\bmath\.type\b", "5.3 library functions"),
    (r"[^~<>=]=?\s*[&|]\s*|<<|>>", "bitwise operators"),
]


@pytest.mark.parametrize("kind", SCRIPTS)
def test_scripts_stay_within_lua_5_1(kind: str) -> None:
    code = "\n".join(line.split("--", 1)[0] for line in SCRIPTS[kind].read_text().splitlines())
    for pattern, what in LUA51_ONLY:
        assert not re.search(pattern, code), f"{SCRIPTS[kind].name} uses {what} (not in Lua 5.1)"


def test_application_points_at_the_chart() -> None:
    app = yaml.safe_load((ARGOCD / "application.yaml").read_text())
    assert (app["apiVersion"], app["kind"]) == ("argoproj.io/v1alpha1", "Application")
    source = app["spec"]["source"]
    assert source["path"] == "charts/proctor"
    chart = yaml.safe_load((ROOT / source["path"] / "Chart.yaml").read_text())
    assert chart["name"] == app["spec"]["source"]["helm"]["releaseName"] == "proctor"
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]


def test_lua_literal_escapes_strings() -> None:
    assert lua_literal({"a": [1, 'x"y\\é']}) == '{["a"] = {1.0, "x\\034y\\092\\195\\169"}}'
    with pytest.raises(TypeError):
        lua_literal(object())
