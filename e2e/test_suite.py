"""BenchmarkSuites end to end: real control plane, kwok nodes, benchmark pods run as local
`proctor bench-worker` processes by the pod runner, Redis for the cell queues and moto for S3.

Benchmarks are `sleep`s whose length a variable sets, so a planted slowdown is exactly known
and the machine's load barely moves the measurement.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from kubernetes import client, watch

from e2e.conftest import Cluster
from e2e.harness import nodes
from e2e.harness.operator import CREDS, OperatorProcess, operator_config, operator_process
from e2e.harness.poll import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

GROUP, VERSION, PLURAL = "proctor.dev", "v1alpha1", "benchmarksuites"
POOL_LABEL = "e2e.proctor.dev/pool"
# sleep BENCH_SECONDS x SLOW_<BENCHMARK> (1 unless a variant sets it).
SLEEP = 'sleep "$(awk -v s="$BENCH_SECONDS" -v f="${SLOW:-1}" "BEGIN { print s * f }")"'


def benchmark(
    name: str, seconds: float, *, warmup: int = 1, slow_var: str = "", repetitions: int = 5
) -> dict[str, Any]:
    """A benchmark that sleeps ``seconds``, scaled by ``$<slow_var>`` when a variant sets it."""
    command = SLEEP.replace("${SLOW:-1}", f"${{{slow_var}:-1}}") if slow_var else SLEEP
    return {
        "name": name,
        "command": ["sh", "-c", command],
        "env": [{"name": "BENCH_SECONDS", "value": str(seconds)}],
        "warmup": warmup,
        "repetitions": repetitions,
        "timeout": "1m",
    }


class Suites:
    """One test's namespace, Secrets, bucket, nodes and operator."""

    def __init__(self, cluster: Cluster, *, namespace: str, bucket: str, moto: str, tmp: Path):
        self.cluster = cluster
        self.namespace = namespace
        self.bucket = bucket
        self.moto = moto
        self.tmp = tmp
        self.pool = f"p{uuid.uuid4().hex[:6]}"  # a letter first: never a YAML number
        self.custom = client.CustomObjectsApi(cluster.api_client)
        self.nodes: list[str] = []

    def node(self, **kwargs: Any) -> str:
        name = f"kwok-bench-{self.pool}-{len(self.nodes)}"
        nodes.create_node(
            self.cluster.core, name, cpu="4", memory="8Gi", labels={POOL_LABEL: self.pool}, **kwargs
        )
        self.nodes.append(name)
        return name

    def operator(self) -> Any:
        return operator_process(
            self.cluster.kubeconfig,
            self.tmp,
            operator_config(run_workers=True),
            namespace=self.namespace,
        )

    def doc(
        self,
        name: str,
        benchmarks: list[dict[str, Any]],
        variants: list[dict[str, Any]],
        **spec: Any,
    ) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "BenchmarkSuite",
            "metadata": {"name": name},
            "spec": {
                "image": "proctor/proctor:0.1.0",
                "benchmarks": benchmarks,
                "variants": variants,
                "isolation": "exclusive",
                "placement": {"nodeSelector": {POOL_LABEL: self.pool}},
                "queue": {"type": "redis", "secretRef": {"name": "queue"}, "lease": "10s"},
                "storage": {
                    "uri": f"s3://{self.bucket}/suites",
                    "endpoint": self.moto,
                    "region": "us-east-1",
                    "secretRef": {"name": "s3"},
                },
                **spec,
            },
        }

    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, doc, field_validation="Strict"
        )
        return created

    def status(self, name: str) -> dict[str, Any]:
        got = self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
        return dict(got.get("status") or {})

    def wait_phase(self, op: OperatorProcess, name: str, phase: str, timeout: float) -> Any:
        def reached() -> dict[str, Any] | None:
            s = self.status(name)
            return s if s.get("phase") == phase else None

        try:
            return wait_until(reached, timeout, f"{name} phase {phase}", interval=0.5)
        except TimeoutError as exc:
            raise AssertionError(
                f"{exc}\nstatus: {self.status(name)}\n--- operator log ---\n{op.output()[-6000:]}"
            ) from exc

    def s3(self) -> Any:
        """An S3 client with the test's credentials (the operator has none of its own: it
        reads the suite's Secret, as on a real cluster)."""
        creds = {k.lower(): v for k, v in CREDS.items()}
        return boto3.client("s3", endpoint_url=self.moto, region_name="us-east-1", **creds)

    def store(self, name: str, run_id: str) -> Any:
        from proctor.bench.store import SuiteStore
        from proctor.storage import S3Blobs

        blobs = S3Blobs(self.bucket, "suites", client=self.s3())
        return SuiteStore(f"s3://{self.bucket}/suites", self.namespace, name, run_id, blobs=blobs)

    def records(self, name: str, run_id: str) -> dict[str, list[dict[str, Any]]]:
        records: dict[str, list[dict[str, Any]]] = self.store(name, run_id).all_records()
        return records

    def verdicts(self, name: str, run_id: str) -> str:
        """Each cell's wall times and its verdict against the baseline, for a failure message."""
        from proctor.bench.store import SUMMARY_KEY
        from proctor.bench.summary import wall_times

        store = self.store(name, run_id)
        summary = json.loads(store.blobs.get(store.base + SUMMARY_KEY) or b'{"baseline": []}')
        lines = [
            f"{name} {b['benchmark']}.{b['variant']}: {b['reason']}" for b in summary["baseline"]
        ]
        for cell, records in sorted(store.all_records().items()):
            lines.append(f"{name} {cell}: {[round(t, 3) for t in wall_times(records)]}")
        return "\n".join(lines)

    def events(self, name: str) -> list[Any]:
        items = self.cluster.core.list_namespaced_event(self.namespace).items
        return [e for e in items if e.involved_object.name == name]

    def wait_event(self, name: str, reason: str, timeout: float = 30) -> Any:
        """The first Event ``reason`` of suite ``name``, waited for: kopf posts Events from its
        own task after the pass that made them, so wait while the operator still runs."""
        return wait_until(
            lambda: next((e for e in self.events(name) if e.reason == reason), None),
            timeout, f"a {reason} Event of {name}", interval=0.5,
        )  # fmt: skip


@pytest.fixture
def suites(  # noqa: PLR0917 - pytest fixtures arrive as positional arguments
    cluster: Cluster,
    crds: list[dict[str, Any]],
    namespace: str,
    redis_server: str,
    moto_server: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Suites]:
    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    for key in CREDS:
        # The operator process inherits this environment: keep S3 credentials out of it, so
        # only the suite's Secret can give them.
        monkeypatch.delenv(key, raising=False)
    s = Suites(cluster, namespace=namespace, bucket=bucket, moto=moto_server, tmp=tmp_path)
    s.s3().create_bucket(Bucket=bucket)
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "queue"}, "stringData": {"url": redis_server}}
    )
    cluster.core.create_namespaced_secret(
        namespace, {"metadata": {"name": "s3"}, "stringData": dict(CREDS)}
    )
    try:
        yield s
    finally:
        for name in s.nodes:
            nodes.delete_node(cluster.core, name)


class Bindings:
    """Watches benchmark pods over a whole run: which node each runs on, and whether two ever
    ran on one node, or for one cell, at once (bound, neither finished nor deleted)."""

    def __init__(self, core: Any, namespace: str) -> None:
        self.core = core
        self.namespace = namespace
        self.running: dict[str, set[str]] = {}
        self.cells: dict[str, set[str]] = {}
        self.cell_violations: list[str] = []
        self.placed: dict[str, str] = {}
        self.violations: list[str] = []
        self.peak = 0
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._watch = watch.Watch()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Bindings:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._watch.stop()
        self._thread.join(10)
        # A watch that broke off mid-run saw only part of it: that proves nothing.
        assert self.error is None, f"the pod watch failed: {self.error!r}"

    def _run(self) -> None:
        try:
            self._follow()
        except Exception as exc:
            if not self._stopping.is_set():
                self.error = exc

    def _follow(self) -> None:
        stream = self._watch.stream(
            self.core.list_namespaced_pod,
            self.namespace,
            label_selector="app.kubernetes.io/component=benchmark",
            timeout_seconds=600,
        )
        for event in stream:
            pod = event["object"]
            name, node = pod.metadata.name, pod.spec.node_name
            cell = (pod.metadata.annotations or {}).get("proctor.dev/cell", "")
            for pods in (*self.running.values(), *self.cells.values()):
                pods.discard(name)
            gone = event["type"] == "DELETED" or pod.status.phase in ("Succeeded", "Failed")
            if node and not gone:
                self.placed[name] = node
                on_node = self.running.setdefault(node, set())
                on_node.add(name)
                if len(on_node) > 1:
                    self.violations.append(f"{node}: {sorted(on_node)}")
                of_cell = self.cells.setdefault(cell, set())
                of_cell.add(name)
                if len(of_cell) > 1:
                    self.cell_violations.append(f"{cell}: {sorted(of_cell)}")
            self.peak = max(self.peak, sum(len(p) for p in self.running.values()))


def assert_every_repetition_once(records: dict[str, list[dict[str, Any]]], cells: int) -> None:
    assert len(records) == cells, sorted(records)
    for cell, recs in records.items():
        reps = sorted(int(r["repetition"]) for r in recs)
        assert reps == [0, 1, 2, 3, 4], (cell, reps)
        assert all(r["ok"] for r in recs), recs


def test_exclusive_suite_never_shares_a_node_and_reports(suites: Suites) -> None:
    for _ in range(3):
        suites.node()
    doc = suites.doc(
        "iso",
        [benchmark("alpha", 0.3), benchmark("beta", 0.2)],
        [{"name": "a"}, {"name": "b", "env": [{"name": "SLOW", "value": "1.5"}]}],
    )
    with suites.operator() as op, Bindings(suites.cluster.core, suites.namespace) as seen:
        suites.create(doc)
        status = suites.wait_phase(op, "iso", "Succeeded", timeout=300)
    assert seen.violations == []
    assert seen.cell_violations == []
    # Four cells, three nodes: pods really did run side by side, each on its own node.
    assert seen.peak >= 2, seen.placed
    assert len(set(seen.placed.values())) >= 2
    assert status["progressPercent"] == 100.0
    assert (status["disruptions"], status["failures"]) == (0, 0)
    cells = {(c["benchmark"], c["variant"]): c for c in status["cells"]}
    assert sorted(cells) == [("alpha", "a"), ("alpha", "b"), ("beta", "a"), ("beta", "b")]
    for c in cells.values():
        assert (c["completed"], c["total"], c["failed"]) == (5, 5, 0)
    # b sleeps 1.5 times as long as a: the medians say so.
    assert 1.3 < cells[("alpha", "b")]["p50"] / cells[("alpha", "a")]["p50"] < 1.7
    assert status["reportUri"].endswith("/report.html")
    assert [h["runId"] for h in status["history"]] == [status["runId"]]
    records = suites.records("iso", status["runId"])
    assert_every_repetition_once(records, 4)
    # Each record names the node it ran on: one of the pool's.
    assert {r["node"] for recs in records.values() for r in recs} <= set(suites.nodes)
    s3 = suites.s3()
    key = status["reportUri"].removeprefix(f"s3://{suites.bucket}/")
    html = s3.get_object(Bucket=suites.bucket, Key=key)["Body"].read().decode()
    assert "<svg" in html
    assert "alpha" in html


def test_preempted_node_loses_and_repeats_no_repetition(suites: Suites) -> None:
    spot = suites.node(spot=True)
    for _ in range(3):
        suites.node()
    doc = suites.doc(
        "spot",
        [benchmark("alpha", 0.8, warmup=0), benchmark("beta", 0.8, warmup=0)],
        [{"name": "a"}, {"name": "b"}],
    )
    with suites.operator() as op, Bindings(suites.cluster.core, suites.namespace) as seen:
        suites.create(doc)
        wait_until(lambda: spot in seen.placed.values(), 120, "a benchmark pod on the spot node")
        wait_until(
            lambda: any(
                c.get("completed", 0) > 0 for c in suites.status("spot").get("cells") or ()
            ),
            60,
            "a first recorded repetition",
            interval=0.3,
        )
        victims = nodes.preempt_node(suites.cluster.core, spot)
        suites.nodes.remove(spot)
        assert victims, "the spot node held no pod when it was reclaimed"
        status = suites.wait_phase(op, "spot", "Succeeded", timeout=300)
        suites.wait_event("spot", "Completed")
    assert seen.violations == []
    assert seen.cell_violations == []
    assert status["disruptions"] >= 1
    assert status["failures"] == 0
    assert all(c["completed"] == 5 for c in status["cells"])
    assert_every_repetition_once(suites.records("spot", status["runId"]), 4)


def test_planted_slowdown_is_flagged_in_exactly_its_cell(suites: Suites) -> None:
    for _ in range(4):
        suites.node()
    # Nine repetitions, not five: the 95 % bootstrap interval of a ratio of medians of five
    # reaches down to the baseline's maximum (its resampled median is the maximum 5.8 % of the
    # time), so one stalled repetition of the baseline can hide the slowdown (a CI run once
    # flagged nothing). Of nine, the resampled median is one outlier 0.14 % of the time.
    benchmarks = [
        benchmark("alpha", 0.5, warmup=0, slow_var="SLOW_ALPHA", repetitions=9),
        benchmark("beta", 0.5, warmup=0, slow_var="SLOW_BETA", repetitions=9),
    ]
    plain = [{"name": "a"}, {"name": "b"}]
    # The candidate variant b makes alpha 30 % slower; beta and variant a are untouched.
    slowed: list[dict[str, Any]] = [
        {"name": "a"},
        {"name": "b", "env": [{"name": "SLOW_ALPHA", "value": "1.3"}]},
    ]
    against_base = {"baseline": {"suiteRun": "base", "threshold": 0.1}}
    with suites.operator() as op:
        suites.create(suites.doc("base", benchmarks, plain))
        # Created at once: it waits for its baseline, saying so.
        suites.create(suites.doc("slow", benchmarks, slowed, **against_base))
        waiting = wait_until(
            lambda: (
                suites.status("slow").get("phase") == "Pending"
                and any(
                    c["reason"] == "BaselineNotReady" for c in suites.status("slow")["conditions"]
                )
            ),
            60,
            "slow waiting for its baseline",
        )
        assert waiting
        base = suites.wait_phase(op, "base", "Succeeded", timeout=240)
        slow = suites.wait_phase(op, "slow", "Succeeded", timeout=240)
        suites.wait_event("slow", "RegressionFound")
        suites.create(suites.doc("same", benchmarks, plain, **against_base))
        same = suites.wait_phase(op, "same", "Succeeded", timeout=240)
    assert base.get("regressionCount") is None
    flagged = [(r["benchmark"], r["variant"]) for r in slow["regressions"]]
    why = suites.verdicts("slow", slow["runId"]) + "\n" + suites.verdicts("base", base["runId"])
    assert flagged == [("alpha", "b")], why
    assert slow["regressionCount"] == 1
    assert 1.15 < slow["regressions"][0]["ratio"] < 1.45
    assert slow["baselineUri"] == base["resultsUri"]
    assert [c["regression"] for c in slow["cells"]] == [False, True, False, False]
    regressed = next(c for c in slow["conditions"] if c["type"] == "Regressed")
    assert regressed["status"] == "True"
    warnings = [e for e in suites.events("slow") if e.reason == "RegressionFound"]
    assert len(warnings) == 1
    assert "alpha.b" in warnings[0].message
    assert same["regressions"] == [], suites.verdicts("same", same["runId"])
    assert same["regressionCount"] == 0
    assert not [e for e in suites.events("same") if e.reason == "RegressionFound"]


def test_operator_killed_mid_suite_a_new_one_enqueues_nothing_twice(suites: Suites) -> None:
    for _ in range(2):
        suites.node()
    doc = suites.doc(
        "restart",
        [benchmark("alpha", 0.6, warmup=0), benchmark("beta", 0.6, warmup=0)],
        [{"name": "a"}, {"name": "b"}],
    )
    with Bindings(suites.cluster.core, suites.namespace) as seen:
        with suites.operator() as first:
            suites.create(doc)
            wait_until(
                lambda: any(
                    c.get("completed") for c in suites.status("restart").get("cells") or ()
                ),
                90,
                "a first recorded repetition",
                interval=0.3,
            )
            first.kill()
        enqueued = [line for line in first.output().splitlines() if "enqueued" in line]
        assert len(enqueued) == 4, first.output()[-4000:]
        assert all("entries=5" in line for line in enqueued), enqueued
        with suites.operator() as second:
            status = suites.wait_phase(second, "restart", "Succeeded", timeout=300)
            again = [line for line in second.output().splitlines() if "enqueued" in line]
    # The new operator found every repetition already queued or recorded, and its pods did
    # not double the first one's.
    assert len(again) >= 4, second.output()[-4000:]
    assert all("entries=0" in line for line in again), again
    assert seen.violations == []
    assert seen.cell_violations == []
    assert_every_repetition_once(suites.records("restart", status["runId"]), 4)


def test_schedule_starts_a_run_per_fire_and_keeps_a_bounded_history(suites: Suites) -> None:
    suites.node()
    doc = suites.doc(
        "nightly",
        [benchmark("alpha", 0.2, warmup=0)],
        [{"name": "a"}],
        schedule={"cron": "* * * * *", "historyLimit": 1},
        # Each run against the suite's own previous one.
        baseline={"suiteRun": "nightly"},
    )
    with suites.operator() as op:
        suites.create(doc)

        def scheduled() -> dict[str, Any] | None:
            status = suites.status("nightly")
            return status if status.get("nextScheduleTime") else None

        planned = wait_until(scheduled, 30, "the next fire time in status")
        if "runId" not in planned:
            # Like a CronJob: nothing runs before the first fire.
            assert planned["phase"] == "Pending", planned
            ready = next(c for c in planned["conditions"] if c["type"] == "Ready")
            assert ready["reason"] == "WaitingForSchedule", planned
        first = wait_until(
            lambda: (suites.status("nightly").get("history") or [None])[0],
            150,
            "a first scheduled run in history",
            interval=0.5,
        )
        second = wait_until(
            lambda: next(
                (h for h in suites.status("nightly").get("history") or () if h != first), None
            ),
            150,
            "a second scheduled run in history",
            interval=0.5,
        )
        status = suites.status("nightly")
        # The run dropped from history is deleted from storage, right after the status says so.
        wait_until(
            lambda: suites.records("nightly", first["runId"]) == {},
            30,
            "the dropped run's records deleted",
        )
        assert op.proc.poll() is None, op.output()[-4000:]
    assert first["phase"] == second["phase"] == "Succeeded"
    assert first["runId"] < second["runId"]
    # Each run id names its fire time, on a whole minute.
    assert first["runId"].split("-")[1].endswith("00")
    assert [h["runId"] for h in status["history"]] == [second["runId"]]
    assert status["runId"] == second["runId"]
    assert status["baselineUri"] == first["resultsUri"]
    assert status["regressionCount"] == 0
    assert_every_repetition_once(suites.records("nightly", second["runId"]), 1)
