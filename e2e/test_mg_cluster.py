"""A Metamorphic Guard task spec as an EvalRun on the real control plane: the sample manifest
(with a small n) completes, a spot node preempted mid-run loses and repeats no case, and the
decision is ``metamorphic-guard evaluate``'s for the same task, implementations, n and seed."""

from __future__ import annotations

import glob
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("metamorphic_guard")

from e2e.test_operator import Env, _dump, assert_each_case_once

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

from e2e.test_operator import env  # noqa: E402  (the fixture)

__all__ = ["env"]

SAMPLE = Path(__file__).resolve().parent.parent / "manifests/samples/metamorphic-guard-topk.yaml"

# Implementation files as Metamorphic Guard takes them (their `solve`), used unchanged by both.
# Each call sleeps a little so that the run lasts long enough on the cluster for the spot node
# to be reclaimed mid-run; the outputs are those of sorting (a baseline that drops duplicates,
# a planted bug, against a correct heap-based candidate: Metamorphic Guard adopts).
SLOW = "import time\n\nDELAY = 0.02\n\n"
SOLVERS = {
    "baseline": SLOW + "def solve(L, k):\n    time.sleep(DELAY)\n"
    "    return sorted(set(L), reverse=True)[:k]\n",
    "candidate": SLOW + "import heapq\n\ndef solve(L, k):\n    time.sleep(DELAY)\n"
    "    return heapq.nlargest(k, L) if k > 0 else []\n",
}
N, SEED = 120, 42


def _mg_run(env: Env, files: dict[str, Path]) -> dict[str, Any]:
    """The sample, n = N, pointed at this test's Redis, bucket, nodes and implementation files."""
    doc: dict[str, Any] = yaml.safe_load(SAMPLE.read_text())
    base = env.evalrun("mg")
    doc["metadata"] = {"name": "mg"}
    spec = doc["spec"]
    assert spec["task"]["entrypoint"] == "proctor.mgadapter:task"
    spec["cases"] = {"count": N, "seed": SEED}
    spec["compare"]["baseline"]["ref"] = str(files["baseline"])
    spec["compare"]["candidate"]["ref"] = str(files["candidate"])
    # Metamorphic Guard's default gate (minDelta 0.02), as `metamorphic-guard evaluate` has it.
    spec["task"]["params"]["minDelta"] = 0.02
    spec["caseTimeout"] = "60s"  # a loaded machine must not time calls out
    spec["batch"] = {"initialSize": 5, "maxSize": 10}
    for key in ("queue", "storage", "placement"):
        spec[key] = base["spec"][key]
    spec["placement"]["spread"] = "required"
    return doc


def _start_metamorphic_guard(tmp: Path, files: dict[str, Path]) -> subprocess.Popen[bytes]:
    """`metamorphic-guard evaluate` on the same task, files, n and seed (it takes a while)."""
    return subprocess.Popen(
        ["metamorphic-guard", "evaluate", "--task", "top_k",
         f"--baseline={files['baseline']}", f"--candidate={files['candidate']}",
         f"--n={N}", f"--seed={SEED}", "--parallel=2", "--timeout-s=60",
         "--min-delta=0.02", "--report-dir=mg-report"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def test_metamorphic_guard_run_survives_preemption_with_metamorphic_guards_decision(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = {}
    for role, body in SOLVERS.items():
        files[role] = env.workdir / f"{role}.py"
        files[role].write_text(body)
    spot = env.node(cpu="4", memory="8Gi", spot=True)
    env.node(cpu="4", memory="8Gi")
    doc = _mg_run(env, files)
    theirs_proc = _start_metamorphic_guard(env.workdir, files)
    try:
        with env.operator() as op:
            created = env.create(doc)
            try:
                done_before = env.reclaim_mid_run("mg", spot)
                status = env.wait_phase("mg", "Succeeded", timeout=240)
            except TimeoutError as exc:
                raise AssertionError(str(exc) + _dump(op)) from exc
        assert theirs_proc.wait(timeout=360) in (0, 1)
    finally:
        if theirs_proc.poll() is None:
            theirs_proc.kill()
            theirs_proc.wait()

    assert done_before < N, "the node was reclaimed after the run had finished"
    assert status["counts"]["completed"] == N
    assert status["counts"]["deadLettered"] == 0
    assert status["disruptions"] >= 1
    assert status["workers"]["failures"] == 0

    from proctor.integrations.metamorphic_guard.summary import REPORT_NAME

    storage = env.run_storage(created["metadata"]["uid"], monkeypatch)
    # Every case exactly once: the result objects tile [0, N) and each index has one record.
    assert_each_case_once(storage, N)
    assert [r["index"] for r in storage.iter_records()] == list(range(N))

    # The operator's summary is Metamorphic Guard's report, and its decision theirs.
    raw = storage.blobs.get(storage.base + REPORT_NAME)
    assert raw is not None, "the operator wrote no Metamorphic Guard report"
    ours = json.loads(raw)
    (path,) = glob.glob(str(env.workdir / "mg-report" / "report_*[0-9].json"))
    theirs = json.loads(Path(path).read_text())
    assert ours["decision"] == theirs["decision"]
    assert ours["delta_ci"] == theirs["delta_ci"]
    for side in ("baseline", "candidate"):
        assert ours[side]["passes"] == theirs[side]["passes"], side
    assert ours["relation_coverage"]["relations"] == theirs["relation_coverage"]["relations"]
    result = status["result"]
    assert result["decision"] == ("accept" if theirs["decision"]["adopt"] else "reject")
    assert result["reason"] == f"Metamorphic Guard: {theirs['decision']['reason']}"
    assert [result["deltaLower"], result["deltaUpper"]] == theirs["delta_ci"]
    assert theirs["decision"]["adopt"] is True  # the planted baseline bug: the candidate wins
