"""The result cache through ``proctor run``: baseline hits across runs, source edits, a
nondeterministic task, two runs writing one cache at once, and decisions unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from proctor.cache.keys import SideKey, piece_number
from proctor.cache.store import decode
from proctor.cli import main

REPO = Path(__file__).resolve().parent.parent

TASK = """
from proctor.sdk import Task

class Sums(Task):
    cacheable = {cacheable}

    def generate(self, seed, index):
        return [(seed * 7 + index * 13 + j) % 50 for j in range(5)]

    def check(self, case, output):
        return [] if output == sum(case) else ["wrong-sum"]


def task(params):
    return Sums(params)
"""

IMPL = """
CALLS = []

def exact(case):
    return sum(case)

def sloppy(case):
    return sum(case) + (1 if case[0] % 10 == 3 else 0)
"""

MODULES = ("sums_task", "base_impl", "cand_impl")

MANIFEST = """
apiVersion: proctor.dev/v1alpha1
kind: EvalRun
metadata:
  name: {name}
spec:
  image: proctor/proctor:0.1.0
  task:
    entrypoint: sums_task:task
  cases:
    count: {count}
    seed: 3
  compare:
    baseline:
      ref: base_impl:{baseline}
    candidate:
      ref: cand_impl:{candidate}
    minDelta: -0.5
  cache:
    mode: {mode}
    {uri}
  batch:
    initialSize: 40
  caseTimeout: 10s
"""


@pytest.fixture(autouse=True)
def _files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    write_task(tmp_path, cacheable=True)
    (tmp_path / "base_impl.py").write_text(IMPL)
    (tmp_path / "cand_impl.py").write_text(IMPL)


def write_task(tmp_path: Path, *, cacheable: bool) -> None:
    (tmp_path / "sums_task.py").write_text(TASK.format(cacheable=cacheable))


def run(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    *,
    baseline: str = "exact",
    candidate: str = "exact",
    mode: str = "readWrite",
    count: int = 300,
    uri: str | None = None,
    workers: int = 2,
    stderr: list[str] | None = None,
) -> tuple[int, dict[str, Any]]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        MANIFEST.format(
            name=name,
            count=count,
            baseline=baseline,
            candidate=candidate,
            mode=mode,
            uri=f"uri: {uri}" if uri else "",
        )
    )
    for module in MODULES:  # workers are forked: each run imports the files as they are now
        sys.modules.pop(module, None)
    capsys.readouterr()
    code = main(["run", str(path), "--workers", str(workers), "--json"])
    captured = capsys.readouterr()
    if stderr is not None:
        stderr.append(captured.err)
    out = captured.out.strip().splitlines()
    return code, json.loads(out[-1])


def records(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    table = pq.read_table(tmp_path / "proctor-results" / name / "results.parquet")
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def test_a_new_candidate_reuses_every_baseline_result(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, first = run(tmp_path, capsys, "first", candidate="exact")
    assert first["cache"] == {
        "hits": 0,
        "misses": 600,
        "baseline": {"hits": 0, "misses": 300},
        "candidate": {"hits": 0, "misses": 300},
        "uri": (tmp_path / "proctor-results" / "proctor-cache").as_uri(),
    }
    _, second = run(tmp_path, capsys, "second", candidate="sloppy")
    assert second["cache"]["baseline"] == {"hits": 300, "misses": 0}
    assert second["cache"]["candidate"] == {"hits": 0, "misses": 300}
    rows = records(tmp_path, "second")
    assert all(r["baseline_cached_from"] == "first" for r in rows)
    assert all(r["cached_from"] is None for r in rows)
    # The sloppy candidate's failures are its own, fresh; the baseline's passes are cached.
    assert sum(not r["passed"] for r in rows) == second["failed"] > 0


def test_editing_one_line_of_the_baseline_gives_zero_hits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(tmp_path, capsys, "first")
    _, again = run(tmp_path, capsys, "again")
    assert again["cache"]["baseline"] == {"hits": 300, "misses": 0}
    source = (tmp_path / "base_impl.py").read_text()
    (tmp_path / "base_impl.py").write_text(source.replace("CALLS = []", "CALLS = [None]"))
    _, edited = run(tmp_path, capsys, "edited")
    assert edited["cache"]["baseline"] == {"hits": 0, "misses": 300}
    assert edited["cache"]["candidate"] == {"hits": 300, "misses": 0}


def test_a_nondeterministic_task_is_never_cached(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_task(tmp_path, cacheable=False)
    run(tmp_path, capsys, "first")
    _, second = run(tmp_path, capsys, "second")
    assert second["cache"]["hits"] == 0
    assert second["cache"]["misses"] == 600
    assert not (tmp_path / "proctor-results" / "proctor-cache" / "v1").exists()


def test_the_decision_equals_that_of_an_uncached_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code_plain, plain = run(tmp_path, capsys, "plain", candidate="sloppy", mode="off")
    assert "cache" not in plain
    run(tmp_path, capsys, "warm", candidate="sloppy")
    code_cached, cached = run(tmp_path, capsys, "cached", candidate="sloppy")
    assert cached["cache"]["misses"] == 0
    same = ("decision", "baselinePassRate", "candidatePassRate", "delta", "interval", "failed")
    assert code_cached == code_plain
    assert {k: cached[k] for k in same} == {k: plain[k] for k in same}
    assert [r["passed"] for r in records(tmp_path, "cached")] == [
        r["passed"] for r in records(tmp_path, "plain")
    ]


def test_read_mode_adds_nothing_and_write_mode_reuses_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, read = run(tmp_path, capsys, "read", mode="read")
    assert read["cache"]["hits"] == 0
    assert not (tmp_path / "proctor-results" / "proctor-cache" / "v1").exists()
    run(tmp_path, capsys, "write", mode="write")
    _, write = run(tmp_path, capsys, "write2", mode="write")
    assert write["cache"] == {**write["cache"], "hits": 0, "misses": 600}
    _, reread = run(tmp_path, capsys, "reread", mode="read")
    assert reread["cache"]["hits"] == 600


def test_two_runs_writing_one_cache_at_once_leave_no_duplicate_or_corrupt_entry(
    tmp_path: Path,
) -> None:
    """Two ``proctor run`` processes at once, each with two workers, over one cache."""
    cache = tmp_path / "shared-cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "operator"), str(tmp_path)])}
    procs = {}
    for name in ("one", "two"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(
            MANIFEST.format(
                name=name, count=2500, baseline="exact", candidate="exact", mode="readWrite",
                uri=f"uri: {cache}",
            )
        )  # fmt: skip
        command = [sys.executable, "-m", "proctor", "run", str(path), "--workers", "2", "--json"]
        procs[name] = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE)
    results = {name: proc.wait(timeout=240) for name, proc in procs.items()}
    for proc in procs.values():
        assert proc.stdout is not None
        proc.stdout.close()
    assert results == {"one": 0, "two": 0}
    seen: dict[tuple[str, int], int] = {}
    pieces = list(cache.rglob("*.arrow.zst"))
    assert pieces
    for path in pieces:
        assert piece_number(path.name) is not None
        side = path.relative_to(cache / "v1").parts[0]
        block = int(path.parent.name)
        key = _side_key(cache, path)
        for entry in decode(path.read_bytes(), key, block, path.name):  # never corrupt
            seen[(side, entry.index)] = seen.get((side, entry.index), 0) + 1
    assert sorted(set(seen.values())) == [1]  # no case twice
    assert len(seen) == 2 * 2500  # both sides, every case


def _side_key(cache: Path, path: Path) -> SideKey:
    impl, task, space = path.relative_to(cache / "v1").parts[:3]
    return SideKey(impl, task, space, "baseline")


def test_a_cache_that_cannot_be_written_is_read_only_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    err: list[str] = []
    blocked = str(tmp_path / "a-file" / "cache")
    code, summary = run(tmp_path, capsys, "blocked", uri=blocked, stderr=err)
    assert code == 0
    assert summary["completed"] == 300
    assert summary["cache"]["readOnly"] is True
    assert summary["cache"]["misses"] == 600
    # The warning was printed before the summary (on stderr), saying what happened.
    assert "cannot be written" in err[0]
    assert "only read by this run" in err[0]


def test_proctor_cache_clear_by_side_then_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(tmp_path, capsys, "first")
    sys.modules.pop("base_impl", None)
    assert main(["cache", "clear", str(tmp_path / "first.yaml"), "--side", "baseline"]) == 0
    out = capsys.readouterr().out
    assert "removed" in out
    assert "v1/" in out
    _, second = run(tmp_path, capsys, "second")
    assert second["cache"]["baseline"] == {"hits": 0, "misses": 300}
    assert second["cache"]["candidate"] == {"hits": 300, "misses": 0}
    cache = tmp_path / "proctor-results" / "proctor-cache"
    assert main(["cache", "clear", "--uri", str(cache)]) == 0
    assert not list(cache.rglob("*.arrow.zst"))
    _, third = run(tmp_path, capsys, "third")
    assert third["cache"]["hits"] == 0


def test_proctor_cache_clear_by_implementation_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(tmp_path, capsys, "first", candidate="sloppy")
    cache = tmp_path / "proctor-results" / "proctor-cache"
    implementations = sorted(p.name for p in (cache / "v1").iterdir())
    assert len(implementations) == 2  # each side its own
    args = ["cache", "clear", "--uri", cache.as_uri(), "--implementation", implementations[0]]
    assert main(args) == 0
    assert sorted(p.name for p in (cache / "v1").iterdir()) == implementations[1:]
    assert main(["cache", "clear", "--uri", str(cache), "--side", "baseline"]) == 2
    assert main(["cache", "clear"]) == 2
