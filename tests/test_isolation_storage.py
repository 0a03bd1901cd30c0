"""Isolation children and the worker's connections: a child forked to evaluate a side never
sends a request over a connection of the worker's (:mod:`proctor.worker.isolation`,
:mod:`proctor.aws`).

A forked child inherits the worker's pooled keep-alive connections. Were it to send its
``save_state`` (or a dataset read) over one while the worker records results over the same
socket, the two processes' requests and responses would interleave and each could read the
other's answer. A relay in front of the moto server notes which requests each TCP connection
carries, so a connection shared by the two processes shows.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from proctor import aws
from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.ranges import Range
from proctor.sdk import load_state, load_task, save_state, set_state_store
from proctor.sdk.state import decode_state
from proctor.storage import RunStorage, TaskStateStore, open_storage
from proctor.worker.isolation import isolated_records
from proctor.worker.metrics import WorkerMetrics


class Relay(http.server.ThreadingHTTPServer):
    """An HTTP/1.1 relay to the moto server on 127.0.0.1 that keeps its clients' connections
    alive between requests, as S3 does (moto closes each after one answer, so a client never
    reuses one there), and notes the paths requested over each connection."""

    daemon_threads = True

    def __init__(self, upstream: int) -> None:
        super().__init__(("127.0.0.1", 0), _Relayed)
        self.upstream = upstream
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.connections: list[list[str]] = []
        self.lock = threading.Lock()

    def requests(self) -> list[list[str]]:
        """The paths requested over each connection, in order."""
        with self.lock:
            return [list(c) for c in self.connections]


class _Relayed(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server: Relay

    def setup(self) -> None:
        super().setup()
        self.paths: list[str] = []
        with self.server.lock:
            self.server.connections.append(self.paths)

    def _relay(self) -> None:
        with self.server.lock:
            self.paths.append(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        up = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=30)
        try:
            up.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for key, value in self.headers.items():
                if key.lower() not in _HOP:
                    up.putheader(key, value)
            up.endheaders(body)
            answer = up.getresponse()
            data = answer.read()
            self.send_response(answer.status, answer.reason)
            for key, value in answer.getheaders():
                if key.lower() not in (*_HOP, "content-length", "server", "date"):
                    self.send_header(key, value)
            length = answer.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            up.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _relay  # noqa: N815 - http.server's names

    def log_message(self, format: str, *args: Any) -> None:
        pass


SIDES = ("baseline", "candidate")
_HOP = ("connection", "keep-alive", "expect", "transfer-encoding", "proxy-connection")


@contextlib.contextmanager
def relay(moto_url: str) -> Iterator[Relay]:
    port = urlsplit(moto_url).port
    assert port is not None
    r = Relay(port)
    serving = threading.Thread(target=r.serve_forever, daemon=True)
    serving.start()
    try:
        yield r
    finally:
        r.shutdown()
        r.server_close()
        serving.join()


def _saves(case: Mapping[str, Any], side: str) -> int:
    """Right, after checkpointing the case twice under ``side`` (the second save replaces the
    first) and reading it back."""
    save_state(side, {"i": case["i"], "pid": os.getpid(), "step": 1})
    save_state(side, {"i": case["i"], "pid": os.getpid(), "step": 2})
    back = load_state(side)
    assert back is not None
    assert back["step"] == 2
    return int(case["i"])


def saves_baseline(case: Mapping[str, Any]) -> int:
    return _saves(case, "baseline")


def saves_candidate(case: Mapping[str, Any]) -> int:
    return _saves(case, "candidate")


def _task() -> Any:
    spec = EvalRunSpec.model_validate(
        {
            "image": "test",
            "task": {"entrypoint": "tests.test_worker_tasks:Indexed"},
            "cases": {"count": 20},
            "compare": {
                "baseline": {"ref": "tests.test_isolation_storage:saves_baseline"},
                "candidate": {"ref": "tests.test_isolation_storage:saves_candidate"},
            },
        }
    )
    return load_task(spec.task, spec.compare, spec.cases.seed)


def _isolate_recording(storage: RunStorage, metrics: WorkerMetrics, start: int, end: int) -> None:
    """What the worker does with a redelivered entry: list what is recorded, then evaluate
    in isolation and record each case as it comes, while the children save their state."""
    set_state_store(TaskStateStore(storage, metrics.observe_checkpoint))
    try:
        assert storage.result_ranges(Range(start, end)) == []
        with _task() as task:
            for record in isolated_records(task, start, end, 0.0, threading.Event()):
                i = record["index"]
                assert storage.write_results(Range(i, i + 1), [record]).created
    finally:
        set_state_store(None)


def _whose(path: str) -> str:
    """Which process sends a request: the worker (results) or a side's child (its state)."""
    return path.rsplit("/", 1)[-1] if "/state/" in path else "worker"


def test_a_child_saves_state_over_connections_of_its_own(
    moto_url: str, s3_bucket: str, run_id: str
) -> None:
    """Each side's child saves its cases' state while the worker records them: every
    connection carries the requests of one process, every state is stored when the case's
    record is, and the worker's metrics count the children's checkpoints."""
    metrics = WorkerMetrics(CollectorRegistry())
    with relay(moto_url) as r:
        storage = open_storage(f"s3://{s3_bucket}/runs", run_id, endpoint=r.url)
        _isolate_recording(storage, metrics, 3, 7)
        connections = r.requests()
        saved = [
            storage.get_state(f"cases/{i}/{side}/{side}") for i in range(3, 7) for side in SIDES
        ]
        statuses = [rec["status"] for rec in storage.iter_records()]
    paths = [p for c in connections for p in c]
    # The worker: a listing, then a PUT per case; each side: two PUTs and a GET per case.
    assert sorted(map(_whose, paths)) == sorted(["worker"] * 5 + [*SIDES] * 4 * 3)
    assert [sorted({_whose(p) for p in c}) for c in connections if len({*map(_whose, c)}) > 1] == []
    for n, data in enumerate(saved):
        assert data is not None
        state = decode_state(data)
        assert (state["i"], state["step"]) == (3 + n // 2, 2)
        assert state["pid"] != os.getpid()
    assert statuses == ["passed"] * 4
    registry = metrics.registry
    assert registry.get_sample_value("proctor_worker_checkpoint_duration_seconds_count") == 16
    written = registry.get_sample_value("proctor_worker_checkpoint_bytes_total")
    assert written == 2 * sum(len(x) for x in saved if x is not None)


def test_a_client_used_in_a_forked_child_connects_afresh(moto_url: str, s3_bucket: str) -> None:
    """Any client :func:`proctor.aws.client` made (storage, dataset, cache, queue) opens its own
    connection in a forked child, and the parent keeps its own."""
    with relay(moto_url) as r:
        client = aws.client("s3", endpoint_url=r.url, region="us-east-1")
        client.put_object(Bucket=s3_bucket, Key="parent-before", Body=b"1")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child leaves through os._exit
            code = 1
            with contextlib.suppress(BaseException):
                client.put_object(Bucket=s3_bucket, Key="child", Body=b"2")
                code = 0
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        client.put_object(Bucket=s3_bucket, Key="parent-after", Body=b"3")
        connections = r.requests()
    assert os.waitstatus_to_exitcode(status) == 0
    child = [c for c in connections if any(p.endswith("/child") for p in c)]
    assert len(child) == 1
    assert not any(p.endswith(("/parent-before", "/parent-after")) for p in child[0])


def test_a_child_checkpoints_though_another_thread_held_a_metric_when_it_was_forked(
    tmp_path: Path,
) -> None:
    """A lock another thread held at the fork is held for ever in the child: the child sends
    its checkpoints to the worker, which counts them once the lock is free, instead of
    waiting on the metric until the case times out."""
    metrics = WorkerMetrics(CollectorRegistry())
    storage = open_storage(str(tmp_path), "run")
    lock = metrics.checkpoint_bytes._value._lock  # prometheus_client's MutexValue
    lock.acquire()  # a scrape of /metrics reading the counter, say
    threading.Timer(0.5, lock.release).start()
    set_state_store(TaskStateStore(storage, metrics.observe_checkpoint))
    try:
        with _task() as task:
            records = list(isolated_records(task, 0, 2, 1.0, threading.Event()))
    finally:
        set_state_store(None)
    # The baseline's child was forked with the lock held (the candidate's after its answer).
    assert [[r[side]["errorType"] for side in SIDES] for r in records] == [[None, None]] * 2
    registry = metrics.registry
    assert registry.get_sample_value("proctor_worker_checkpoint_duration_seconds_count") == 8
