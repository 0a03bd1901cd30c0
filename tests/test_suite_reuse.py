"""BenchmarkSuite ``spec.cache`` and ``spec.cancel``: the cell fingerprint and cache entries
(pure, tables), and whole operator passes (:func:`reconcile_suite` with a real Redis queue and
real local storage, the harness of test_suite_pass) that reuse unchanged cells without
launching a pod for them, re-measure a changed one, ignore a corrupt entry, and cancel a
running suite."""

from __future__ import annotations

import copy
import gzip
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from test_suite_pass import BASE, PodsApi, World, nodes

from proctor.api.v1alpha1.benchmarksuite import BenchmarkSuiteSpec
from proctor.bench.matrix import Cell, cells
from proctor.bench.reuse import (
    DEFAULT_FOLDER,
    REUSED_FIELD,
    CachedCell,
    cacheable,
    cell_fingerprint,
    entry_body,
    parse_entry,
    reused_source,
)
from proctor.cli.lookup import split_name
from proctor.config import OperatorConfig, TenantPolicy
from proctor.connection import SharedClients
from proctor.suite.decide import admit_suite
from proctor.suite.runtime import SuiteRuntime

ROOT = Path(__file__).resolve().parents[1]
NOW = datetime(2026, 3, 1, tzinfo=UTC)
CACHED: dict[str, Any] = {**BASE, "cache": {"reuse": "unchanged"}}


def _spec(**changes: Any) -> BenchmarkSuiteSpec:
    return BenchmarkSuiteSpec.model_validate({**copy.deepcopy(BASE), **changes})


def _fp(spec: BenchmarkSuiteSpec, index: int = 0) -> str:
    return cell_fingerprint(spec, cells(spec)[index])


# -- the fingerprint ---------------------------------------------------------------------------

CHANGES: list[tuple[str, dict[str, Any]]] = [
    ("command", {"benchmarks": [{**BASE["benchmarks"][0], "command": ["false"]}]}),
    ("benchmark args", {"benchmarks": [{**BASE["benchmarks"][0], "args": ["-x"]}]}),
    ("repetitions", {"benchmarks": [{**BASE["benchmarks"][0], "repetitions": 3}]}),
    ("warmup", {"benchmarks": [{**BASE["benchmarks"][0], "warmup": 0}]}),
    ("timeout", {"benchmarks": [{**BASE["benchmarks"][0], "timeout": "1m"}]}),
    ("profile", {"benchmarks": [{**BASE["benchmarks"][0], "profile": "medium"}]}),
    ("suite image", {"image": "bench:2"}),
    ("variant image", {"variants": [{"name": "v1", "image": "other:1"}, {"name": "v2"}]}),
    ("variant args", {"variants": [{"name": "v1", "args": ["--jj"]}, {"name": "v2"}]}),
    (
        "variant env",
        {"variants": [{"name": "v1", "env": [{"name": "A", "value": "1"}]}, {"name": "v2"}]},
    ),
    ("isolation", {"isolation": "exclusive"}),
    ("placement", {"placement": {"nodeSelector": {"pool": "fast"}}}),
]


@pytest.mark.parametrize(("name", "change"), CHANGES, ids=[c[0] for c in CHANGES])
def test_what_changes_a_cells_timing_changes_its_fingerprint(
    name: str, change: dict[str, Any]
) -> None:
    assert _fp(_spec(**change)) != _fp(_spec())


SAME: list[tuple[str, dict[str, Any]]] = [
    ("maxParallel", {"maxParallel": 3}),
    ("failureBudget", {"failureBudget": 9}),
    ("another variant added", {"variants": [*BASE["variants"], {"name": "v3"}]}),
    ("baseline", {"baseline": {"suiteRun": "other"}}),
    ("cache mode", {"cache": {"reuse": "none"}}),
]


@pytest.mark.parametrize(("name", "change"), SAME, ids=[c[0] for c in SAME])
def test_what_does_not_change_timing_keeps_the_fingerprint(
    name: str, change: dict[str, Any]
) -> None:
    assert _fp(_spec(**change)) == _fp(_spec())


# -- entries -----------------------------------------------------------------------------------


def _cell() -> Cell:
    return cells(_spec())[0]


def _record(i: int, ok: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "benchmark": "b", "variant": "v1", "repetition": i, "index": i, "wall_seconds": 0.5,
        "user_seconds": 0.1, "system_seconds": 0.0, "max_rss_bytes": 1, "exit_code": 0,
        "timed_out": False, "ok": ok, "worker": "w", "node": "n", "started_at": "t", **extra,
    }  # fmt: skip


def _entry(**changes: Any) -> bytes:
    body = json.loads(gzip.decompress(entry_body(_cell(), "f" * 64, "ns/s/r1", REC2, NOW)))
    body.update(changes)
    return gzip.compress(json.dumps(body).encode())


REC2 = {0: _record(0), 1: _record(1)}
MARK: dict[str, Any] = {REUSED_FIELD: "ns/s/r0"}
ENTRIES: list[tuple[str, bytes, bool]] = [
    ("whole", entry_body(_cell(), "f" * 64, "ns/s/r1", REC2, NOW), True),
    ("truncated", entry_body(_cell(), "f" * 64, "ns/s/r1", REC2, NOW)[:-9], False),
    ("not gzip", b'{"format": 1}', False),
    ("not JSON", gzip.compress(b"{oops"), False),
    ("another format", _entry(format=2), False),
    ("another fingerprint", _entry(fingerprint="0" * 64), False),
    ("another cell", _entry(cell="b.v2"), False),
    ("a repetition missing", _entry(records=[_record(0)]), False),
    ("a failed repetition", _entry(records=[_record(0), _record(1, ok=False)]), False),
    ("repetitions out of order", _entry(records=[_record(1), _record(0)]), False),
    (
        "a wall time that is not a number",
        _entry(records=[_record(0), _record(1, wall_seconds="x")]),
        False,
    ),
    ("a record without a field", _entry(records=[_record(0), {"repetition": 1}]), False),
]


@pytest.mark.parametrize(("name", "data", "valid"), ENTRIES, ids=[e[0] for e in ENTRIES])
def test_only_a_whole_entry_of_the_cell_is_trusted(name: str, data: bytes, valid: bool) -> None:
    entry = parse_entry(data, "f" * 64, _cell())
    assert (entry is not None) is valid
    if entry is not None:
        assert entry == CachedCell("ns/s/r1", NOW.isoformat(), [REC2[0], REC2[1]])


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (REC2, True),
        ({0: _record(0)}, False),  # incomplete
        ({0: _record(0), 1: _record(1, ok=False)}, False),  # a failure or timeout is no result
        ({0: _record(0), 1: _record(1, **MARK)}, False),  # cached already
    ],
)
def test_what_is_written_to_the_cache(records: dict[int, dict[str, Any]], expected: bool) -> None:
    assert cacheable(_cell(), records) is expected


def test_reused_source_names_the_run_only_when_every_record_came_from_it() -> None:
    assert reused_source([_record(0, **MARK), _record(1, **MARK)]) == "ns/s/r0"
    assert reused_source([_record(0, **MARK), _record(1)]) is None
    assert reused_source([_record(0), _record(1)]) is None


# -- whole passes ------------------------------------------------------------------------------


@pytest.fixture
def clients() -> Iterator[SharedClients]:
    shared = SharedClients()
    try:
        yield shared
    finally:
        shared.close()


def _world(spec: dict[str, Any], redis_url: str, storage: Path, clients: SharedClients) -> World:
    config = OperatorConfig(default_queue_url=redis_url, default_storage_uri=str(storage))
    return World(copy.deepcopy(spec), PodsApi(), config, clients, storage, nodes(2))


def _message(w: World, type_: str) -> str:
    return str(next(c["message"] for c in w.api.status["conditions"] if c["type"] == type_))


def _run_to_the_end(w: World) -> None:
    w.pass_()
    w.schedule()
    w.pass_()
    w.work(repetitions=2)
    assert w.pass_().phase == "Succeeded"


def _second(spec: dict[str, Any], first: World) -> World:
    """Another suite (its own uid, so its own run) on the same storage and cache."""
    return World(
        copy.deepcopy(spec), PodsApi(), first.config, first.clients, first.storage, first.nodes,
        runtime=SuiteRuntime(),
    )  # fmt: skip


def test_an_unchanged_suite_reuses_every_cell_and_launches_nothing(
    redis_url: str, tmp_path: Path, clients: SharedClients
) -> None:
    first = _world(CACHED, redis_url, tmp_path, clients)
    _run_to_the_end(first)
    source = f"ns/suite/{first.api.status['runId']}"
    assert all(c.get("reusedFrom") is None for c in first.api.status["cells"])

    second = _second(CACHED, first)
    done = second.pass_()
    assert (done.phase, done.created, second.api.created) == ("Succeeded", 0, [])
    status = second.api.status
    assert [c["reusedFrom"] for c in status["cells"]] == [source, source]
    assert [c["completed"] for c in status["cells"]] == [2, 2]
    assert "CellsReused" in second.reasons()
    assert "2 cells reused from the cache" in _message(second, "Ready")
    report = Path(status["reportUri"].removeprefix("file://")).with_name("report.md").read_text()
    assert f"reused from {source}" in report
    assert "**reused cells**: 2 of 2" in report
    records = second.store().records("b.v1")
    assert [r[REUSED_FIELD] for r in records] == [source, source]


def test_changing_one_cells_command_measures_only_that_cell(
    redis_url: str, tmp_path: Path, clients: SharedClients
) -> None:
    first = _world(CACHED, redis_url, tmp_path, clients)
    _run_to_the_end(first)
    changed = copy.deepcopy(CACHED)
    changed["variants"] = [{"name": "v1"}, {"name": "v2", "args": ["--changed"]}]
    second = _second(changed, first)
    started = second.pass_()
    assert started.created == 1
    (pod,) = second.api.manifests.values()
    assert pod["metadata"]["annotations"]["proctor.dev/cell"] == "b.v2"
    second.schedule()
    second.pass_()
    second.work(repetitions=2)
    assert second.pass_().phase == "Succeeded"
    reused = [c.get("reusedFrom") is not None for c in second.api.status["cells"]]
    assert reused == [True, False]


def test_without_reuse_nothing_is_reused_but_the_cache_is_filled(
    redis_url: str, tmp_path: Path, clients: SharedClients
) -> None:
    writes = {**BASE, "cache": {"reuse": "none"}}
    first = _world(writes, redis_url, tmp_path, clients)
    _run_to_the_end(first)
    entries = sorted((tmp_path / "ns" / DEFAULT_FOLDER).glob("*/*.json.gz"))
    assert len(entries) == 2  # both cells, written for a later run that asks
    second = _second(writes, first)
    assert second.pass_().created == 2
    third = _second(BASE, first)  # no spec.cache at all
    assert third.pass_().created == 2
    assert "CellsReused" not in second.reasons() + third.reasons()
    fourth = _second(CACHED, first)
    assert fourth.pass_().created == 0  # what reuse: none wrote is there to reuse


def test_a_corrupt_entry_is_ignored_reported_once_and_the_cell_measured(
    redis_url: str, tmp_path: Path, clients: SharedClients
) -> None:
    first = _world(CACHED, redis_url, tmp_path, clients)
    _run_to_the_end(first)
    spec = BenchmarkSuiteSpec.model_validate(CACHED)
    (entry,) = (tmp_path / "ns" / DEFAULT_FOLDER / _fp(spec, 1)).glob("*.json.gz")
    entry.write_bytes(entry.read_bytes()[:-20])  # truncated
    second = _second(CACHED, first)
    assert second.pass_().created == 1  # b.v2 is measured, b.v1 reused
    second.schedule()
    second.pass_()
    second.work(repetitions=2)
    second.pass_()
    assert second.pass_().phase == "Succeeded"
    ignored = [e for e in second.events if e.reason == "CacheObjectIgnored"]
    assert len(ignored) == 1
    assert ignored[0].type == "Warning"
    assert entry.name in ignored[0].message
    cells_status = second.api.status["cells"]
    assert [c.get("reusedFrom") is not None for c in cells_status] == [True, False]
    assert [c["completed"] for c in cells_status] == [2, 2]


def test_cancel_removes_pods_keeps_what_was_recorded_and_ends_cancelled(
    redis_url: str, tmp_path: Path, clients: SharedClients
) -> None:
    spec = {**copy.deepcopy(CACHED), "variants": [{"name": "v1"}, {"name": "v2"}, {"name": "v3"}]}
    spec["maxParallel"] = 2
    w = _world(spec, redis_url, tmp_path, clients)
    assert w.pass_().created == 2
    w.schedule()
    w.pass_()
    w.work(repetitions=2)  # b.v1 and b.v2 finish; b.v3 gets a pod next
    assert w.pass_().created == 1
    w.schedule()
    w.work(repetitions=1)  # b.v3 records one of two repetitions
    w.spec = {**w.spec, "cancel": True}
    w.generation = 2
    cancelled = w.pass_()
    assert (cancelled.phase, cancelled.created, cancelled.deleted) == ("Cancelled", 0, 1)
    assert [p for p in w.pods() if p.live] == []
    status = w.api.status
    assert w.condition("Cancelled") == ("True", "Cancelled")
    assert w.condition("Ready")[0] == "False"
    assert [c["completed"] for c in status["cells"]] == [2, 2, 1]
    assert status["completionTime"]
    assert status["history"][0]["phase"] == "Cancelled"
    assert "report.html" in status["reportUri"]  # a report of what was recorded
    assert "5 of 6 repetitions recorded are kept" in _message(w, "Cancelled")
    assert len(w.store().records("b.v3")) == 1  # kept
    cached = list((tmp_path / "ns" / DEFAULT_FOLDER).glob("*/*.json.gz"))
    assert len(cached) == 2  # the finished cells, not the half-measured one
    again = w.pass_()
    assert (again.phase, again.created) == ("Cancelled", 0)
    assert w.reasons().count("Cancelled") == 1


def test_cancel_before_any_pod_ran_and_of_a_finished_suite(
    redis_url: str, tmp_path: Path, clients: SharedClients
) -> None:
    w = _world({**BASE, "cancel": True}, redis_url, tmp_path / "a", clients)
    first = w.pass_()
    assert (first.phase, first.created) == ("Cancelled", 0)
    assert w.condition("Cancelled") == ("True", "Cancelled")
    assert _message(w, "Cancelled") == "spec.cancel is true: no run was started"
    done = _world(BASE, redis_url, tmp_path / "b", clients)
    _run_to_the_end(done)
    done.spec = {**done.spec, "cancel": True}
    assert done.pass_().phase == "Succeeded"  # nothing left to cancel: it keeps its phase


def test_cancel_stops_a_schedule_between_runs(
    redis_url: str, tmp_path: Path, clients: SharedClients
) -> None:
    w = _world({**BASE, "schedule": {"cron": "0 3 * * *"}}, redis_url, tmp_path, clients)
    w.pass_(timedelta(minutes=30))
    w.schedule()
    w.work(repetitions=2)
    assert w.pass_().phase == "Succeeded"
    w.spec = {**w.spec, "cancel": True}
    assert w.pass_().phase == "Cancelled"
    assert w.pass_(timedelta(days=1)).created == 0  # the next day's fire starts nothing
    assert [h["phase"] for h in w.api.status["history"]] == ["Succeeded"]


# -- proctor run of a suite --------------------------------------------------------------------


def _local_suite(path: Path, *, reuse: str, args: list[str] | None = None) -> Path:
    doc = {
        "apiVersion": "proctor.dev/v1alpha1",
        "kind": "BenchmarkSuite",
        "metadata": {"name": "local"},
        "spec": {
            "image": "unused:1",
            "benchmarks": [
                {"name": "t", "command": ["true"], "warmup": 0, "repetitions": 2},
                {"name": "u", "command": ["true", *(args or [])], "warmup": 0, "repetitions": 2},
            ],
            "variants": [{"name": "v"}],
            "cache": {"reuse": reuse},
        },
    }
    path.write_text(json.dumps(doc))
    return path


def _proctor_run(manifest: Path, results: Path, run_id: str) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", "proctor", "run", str(manifest), "--results-dir", str(results),
         "--run-id", run_id, "--json"],
        capture_output=True, text=True, check=False, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    data["stderr"] = done.stderr
    return data


def test_proctor_run_reuses_unchanged_cells_and_runs_no_worker_for_them(tmp_path: Path) -> None:
    results = tmp_path / "res"
    first = _proctor_run(_local_suite(tmp_path / "a.yaml", reuse="unchanged"), results, "r1")
    assert first["reused"] == 0
    changed = _local_suite(tmp_path / "b.yaml", reuse="unchanged", args=["changed"])
    second = _proctor_run(changed, results, "r2")
    assert [c.get("reusedFrom") for c in second["cells"]] == ["default/local/r1", None]
    assert second["reused"] == 1
    assert (second["completed"], second["failed"]) == (4, 0)
    logs = results / ".logs" / "default-local-r2"
    assert sorted(p.name for p in logs.iterdir()) == ["u.v.log"]  # no worker ran for t.v
    report = Path(urlsplit(second["reportUri"]).path).with_name("report.md").read_text()
    assert "reused from default/local/r1" in report
    unchanged = _proctor_run(_local_suite(tmp_path / "c.yaml", reuse="none"), results, "r3")
    assert unchanged["reused"] == 0


def test_proctor_run_ignores_a_corrupt_entry_and_says_so(tmp_path: Path) -> None:
    results = tmp_path / "res"
    manifest = _local_suite(tmp_path / "a.yaml", reuse="unchanged")
    _proctor_run(manifest, results, "r1")
    for entry in (results / "default" / DEFAULT_FOLDER).glob("*/*.json.gz"):
        entry.write_bytes(b"\x1f\x8b garbage")
    again = _proctor_run(manifest, results, "r2")
    assert again["reused"] == 0
    assert again["stderr"].count("ignored a corrupt cache object") == 2


@pytest.mark.parametrize(
    ("ref", "kind", "name"),
    [
        ("suite/nightly", "BenchmarkSuite", "nightly"),
        ("benchmarksuite/nightly", "BenchmarkSuite", "nightly"),
        ("bs/nightly", "BenchmarkSuite", "nightly"),
        ("evalrun/r1", "EvalRun", "r1"),
        ("r1", None, "r1"),
    ],
)
def test_proctor_cancel_names_a_suite_as_suite_slash_name(
    ref: str, kind: str | None, name: str
) -> None:
    wanted, found = split_name(ref)
    assert (wanted.kind if wanted else None, found) == (kind, name)


STORAGE = {"uri": "s3://team/suites", "secretRef": {"name": "s3"}}
CACHE_URIS: list[tuple[str, str, dict[str, Any], str | None]] = [
    ("unset: beside the storage", "", {}, None),
    ("a bucket the policy allows", "s3://team/cache", {}, None),
    ("a local folder", "/var/cache", {}, "is not an s3:// URI"),
    (
        "a bucket the policy does not allow",
        "s3://elsewhere/cache",
        {"allowed_storage_buckets": ["team"]},
        "bucket 'elsewhere' of spec.cache.uri",
    ),
]


@pytest.mark.parametrize(
    ("name", "uri", "policy", "message"), CACHE_URIS, ids=[c[0] for c in CACHE_URIS]
)
def test_the_tenant_policy_checks_an_explicit_cache_uri(
    name: str, uri: str, policy: dict[str, Any], message: str | None
) -> None:
    cache: dict[str, Any] = {"reuse": "unchanged", **({"uri": uri} if uri else {})}
    spec = _spec(storage=STORAGE, cache=cache)
    problem = admit_suite(spec, OperatorConfig(policy=TenantPolicy(**policy)))
    if message is None:
        assert problem is None
    else:
        assert problem is not None
        assert problem.reason == "PolicyViolation"
        assert message in problem.message
