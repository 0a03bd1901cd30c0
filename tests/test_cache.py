"""The result cache's keys and store: key derivation, create-once pieces on a folder and on
S3 (moto), corrupt pieces ignored, refused writes turning the store read-only."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.cache import keys
from proctor.cache.keys import (
    SideKey,
    UnfingerprintableError,
    blocks,
    code_identity,
    generated_space,
    implementation_fingerprint,
    piece_number,
    rows_space,
    task_fingerprint,
)
from proctor.cache.setup import task_code, task_keys, with_cache
from proctor.cache.store import CacheStore, Entry, decode, encode
from proctor.cache.task import CachedTask
from proctor.examples import topk
from proctor.sdk import Property, Task, clear_stop, load_task, request_stop
from proctor.sdk.records import side_record
from proctor.storage import Blobs, LocalBlobs, S3Blobs, StorageError

CODE = {"module": "m", "source": "abc"}
BASE = implementation_fingerprint(CODE, "baseline:m:f", None)
TASK = task_fingerprint("m:task", {"k": 5}, CODE, None, 60.0)

# Each variation of one input must change the fingerprint; equal inputs must not.
FINGERPRINTS = {
    "same inputs": (implementation_fingerprint(CODE, "baseline:m:f", None), True),
    "empty params are no params": (implementation_fingerprint(CODE, "baseline:m:f", {}), True),
    "another source": (
        implementation_fingerprint({**CODE, "source": "abd"}, "baseline:m:f", None),
        False,
    ),
    "another ref": (implementation_fingerprint(CODE, "baseline:m:g", None), False),
    "another role": (implementation_fingerprint(CODE, "candidate:m:f", None), False),
    "params": (implementation_fingerprint(CODE, "baseline:m:f", {"n": 1}), False),
    "a package version": (
        implementation_fingerprint({"module": "m", "package": "m==2"}, "baseline:m:f", None),
        False,
    ),
}


@pytest.mark.parametrize(("fingerprint", "same"), FINGERPRINTS.values(), ids=list(FINGERPRINTS))
def test_implementation_fingerprint(fingerprint: str, same: bool) -> None:
    assert (fingerprint == BASE) is same
    assert len(fingerprint) == 32


TASKS = {
    "same inputs": (task_fingerprint("m:task", {"k": 5}, CODE, None, 60.0), True),
    "params in another order": (task_fingerprint("m:task", {"k": 5}, dict(CODE), None, 60.0), True),
    "another entrypoint": (task_fingerprint("m:other", {"k": 5}, CODE, None, 60.0), False),
    "another param": (task_fingerprint("m:task", {"k": 6}, CODE, None, 60.0), False),
    "the task's source": (
        task_fingerprint("m:task", {"k": 5}, {**CODE, "source": "x"}, None, 60.0),
        False,
    ),
    "outputs kept": (task_fingerprint("m:task", {"k": 5}, CODE, 65536, 60.0), False),
    "a command": (task_fingerprint(["./t.sh"], {"k": 5}, CODE, None, 60.0), False),
    "another case timeout": (task_fingerprint("m:task", {"k": 5}, CODE, None, 1.0), False),
}


@pytest.mark.parametrize(("fingerprint", "same"), TASKS.values(), ids=list(TASKS))
def test_task_fingerprint(fingerprint: str, same: bool) -> None:
    assert (fingerprint == TASK) is same


def test_the_record_schema_version_is_in_the_task_fingerprint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(keys, "SCHEMA_VERSION", "2")
    assert task_fingerprint("m:task", {"k": 5}, CODE, None, 60.0) != TASK


@pytest.mark.parametrize(
    ("start", "end", "want"),
    [(0, 0, []), (0, 1, [0]), (0, 1000, [0]), (999, 1001, [0, 1]), (2500, 4001, [2, 3, 4])],
)
def test_blocks_of_a_range(start: int, end: int, want: list[int]) -> None:
    assert list(blocks(start, end)) == want


def test_case_spaces_and_piece_keys() -> None:
    assert generated_space(7) == "seed-7"
    assert rows_space("s3://b/data/", 7) != rows_space("s3://b/data/", 8)
    assert rows_space("s3://b/data/", 7) != rows_space("s3://b/other/", 7)
    key = SideKey("i" * 32, "t" * 32, "seed-7", "baseline")
    assert key.piece_key(3, 12) == f"v1/{'i' * 32}/{'t' * 32}/seed-7/00000003/000012.arrow.zst"
    assert piece_number(key.piece_key(3, 12)) == 12
    assert piece_number("v1/x/probe") is None


def test_code_identity_is_the_module_source_or_the_package_version(tmp_path: Path) -> None:
    ident = code_identity(topk.top_k_sorted)
    assert ident["module"] == "proctor.examples.topk"
    assert len(ident["source"]) == 64
    assert code_identity(topk.top_k_heap) == ident  # one file, one digest
    # A compiled module has no source file: its distribution's version pins it.
    assert code_identity(pa.array) == {
        "module": "pyarrow.lib",
        "package": f"pyarrow=={importlib.metadata.version('pyarrow')}",
    }
    # Built-in functions are pinned by Python's version.
    assert code_identity(len) == {"module": "builtins", "package": f"python=={sys.version}"}
    nowhere: dict[str, Any] = {"__name__": "made_up_nowhere"}
    exec("def f(case):\n    return case\n", nowhere)
    with pytest.raises(UnfingerprintableError):
        code_identity(nowhere["f"])


def spec(**cache: Any) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {
            "image": "x",
            "task": {"entrypoint": "proctor.examples.topk:task", "params": {"k": 3}},
            "cases": {"count": 10},
            "compare": {
                "baseline": {"ref": "proctor.examples.topk:top_k_sorted"},
                "candidate": {"ref": "proctor.examples.topk:top_k_heap"},
            },
            "cache": cache or {"mode": "readWrite"},
        }
    )


def test_a_property_from_another_module_is_in_the_task_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "cache_checks.py").write_text("def non_empty(case, out):\n    return bool(out)\n")
    cache_checks = importlib.import_module("cache_checks")

    class Checked(Task):
        properties = (Property("non-empty", cache_checks.non_empty),)
        relations = topk.TopKTask.relations

    before = task_code(Checked())
    assert set(before) == {__name__, "cache_checks", "proctor.examples.topk"}
    (tmp_path / "cache_checks.py").write_text("def non_empty(case, out):\n    return out != []\n")
    importlib.reload(cache_checks)
    assert task_code(Checked())["cache_checks"] != before["cache_checks"]
    assert task_code(Checked())[__name__] == before[__name__]


def test_task_keys_of_a_loaded_comparison() -> None:
    s = spec()
    with load_task(s.task, s.compare, 0) as task:
        parts = task_keys(s, task)
    assert parts is not None
    assert parts.roles == ("baseline", "candidate")
    # Same file, other refs: the two sides are cached apart.
    assert parts.implementations[0] != parts.implementations[1]
    other = spec()
    assert other.compare is not None
    other.compare.candidate.params = {"fast": True}
    with load_task(other.task, other.compare, 0) as task:
        again = task_keys(other, task)
    assert again is not None
    assert again.implementations[0] == parts.implementations[0]
    assert again.implementations[1] != parts.implementations[1]


# -- the store ---------------------------------------------------------------------------

KEY = SideKey("i" * 32, "t" * 32, "seed-1", "baseline")


def entries(indexes: range, run: str = "first", row: str = "") -> list[Entry]:
    return [Entry(i, row, side_record(["odd"] if i % 2 else [], None), run) for i in indexes]


@pytest.fixture(params=["local", "s3"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Blobs:
    if request.param == "local":
        return LocalBlobs(tmp_path / "cache", create=False)
    moto = request.getfixturevalue("moto_url")
    bucket = request.getfixturevalue("s3_bucket")
    return S3Blobs(bucket, "cache", endpoint_url=moto, region="us-east-1")


def test_entries_are_written_once_and_read_by_range(blobs: Blobs) -> None:
    writer = CacheStore(blobs, "first", writes=True)
    assert writer.add(KEY, entries(range(990, 1010))) == 20
    assert writer.add(KEY, entries(range(1000, 1020))) == 10  # only what no piece holds
    keys_written = sorted(blobs.walk(KEY.prefix), key=lambda b: b.key)
    assert [piece_number(b.key) for b in keys_written] == [0, 0, 1]
    reader = CacheStore(blobs, "second", writes=False)
    rows = dict.fromkeys(range(980, 1030), "")
    found = reader.lookup(KEY, 980, 1030, rows)
    assert sorted(found) == list(range(990, 1020))
    assert found[995].side["violations"] == ["odd"]
    assert found[995].run == "first"
    other = SideKey("j" * 32, KEY.task, KEY.space, "candidate")
    assert reader.lookup(other, 980, 1030, rows) == {}


def test_a_row_hit_needs_the_same_row_content(blobs: Blobs) -> None:
    store = CacheStore(blobs, "first", writes=True)
    store.add(KEY, entries(range(0, 3), row="aaa"))
    found = CacheStore(blobs, "x", writes=False).lookup(KEY, 0, 3, {0: "aaa", 1: "bbb", 2: None})
    assert sorted(found) == [0]
    # The changed row's result is added beside the old one, never over it.
    assert store.add(KEY, entries(range(1, 2), row="bbb")) == 1
    assert sorted(CacheStore(blobs, "y", writes=False).lookup(KEY, 0, 3, {1: "bbb"})) == [1]


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[: len(data) // 2],
        lambda data: b"not zstd at all",
        lambda data: b"",
    ],
    ids=["truncated", "garbage", "empty"],
)
def test_a_corrupt_piece_is_ignored_and_reported_once(tmp_path: Path, damage: Any) -> None:
    blobs = LocalBlobs(tmp_path / "cache")
    CacheStore(blobs, "first", writes=True).add(KEY, entries(range(0, 10)))
    name = KEY.piece_key(0, 0)
    blobs.put(name, damage(blobs.get(name)))
    events: list[tuple[str, str]] = []
    store = CacheStore(blobs, "second", writes=True, on_event=lambda w, r: events.append((w, r)))
    rows = dict.fromkeys(range(10), "")
    assert store.lookup(KEY, 0, 10, rows) == {}
    assert store.lookup(KEY, 0, 10, rows) == {}
    assert events == [("corrupt", "baseline")]
    assert store.corrupt == {name}
    # Its cases are written again, in a new piece: the damaged one is never overwritten.
    assert store.add(KEY, entries(range(0, 10), run="second")) == 10
    fresh = CacheStore(blobs, "third", writes=False).lookup(KEY, 0, 10, rows)
    assert {e.run for e in fresh.values()} == {"second"}


def test_a_piece_of_another_key_is_not_trusted(tmp_path: Path) -> None:
    data = encode(KEY, 0, entries(range(3)))
    other = SideKey("j" * 32, KEY.task, KEY.space, "candidate")
    with pytest.raises(ValueError, match="not an entry of this key"):
        decode(data, other, 0, KEY.piece_key(0, 0))
    with pytest.raises(ValueError, match="not in block"):
        decode(encode(KEY, 1, entries(range(3))), KEY, 1, KEY.piece_key(1, 0))


class DenyWrites:
    """A store the credentials may read but not write (S3's AccessDenied on put)."""

    def __init__(self, inner: Blobs) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put_if_absent(self, key: str, data: bytes) -> bool:
        raise StorageError("S3 put failed: AccessDenied")


def test_a_cache_that_refuses_writes_is_read_only_not_a_failure(tmp_path: Path) -> None:
    blobs = LocalBlobs(tmp_path / "cache")
    CacheStore(blobs, "first", writes=True).add(KEY, entries(range(0, 5)))
    events: list[tuple[str, str]] = []
    denied: Any = DenyWrites(blobs)
    store = CacheStore(denied, "second", writes=True, on_event=lambda w, r: events.append((w, r)))
    assert sorted(store.lookup(KEY, 0, 10, dict.fromkeys(range(10), ""))) == list(range(5))
    assert store.add(KEY, entries(range(5, 10))) == 0
    assert store.add(KEY, entries(range(10, 20))) == 0
    assert store.read_only
    assert "cannot be written" in store.read_only_reason
    assert events == [("readOnly", "baseline")]


def test_concurrent_writers_never_put_a_case_in_two_pieces(blobs: Blobs) -> None:
    """Writers racing on one block with overlapping ranges: each case once, every piece whole."""
    barrier = threading.Barrier(4)

    def write(n: int) -> None:
        store = CacheStore(blobs, f"run-{n}", writes=True)
        barrier.wait()
        for start in range(n * 7, 600, 50):
            store.add(KEY, entries(range(start, min(start + 80, 600)), run=f"run-{n}"))

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seen: dict[int, int] = {}
    for info in _pieces(blobs):
        data = blobs.get(info)
        assert data is not None
        for e in decode(data, KEY, 0, info):
            seen[e.index] = seen.get(e.index, 0) + 1
    assert set(seen.values()) == {1}
    assert sorted(seen) == list(range(600))


def _pieces(blobs: Blobs) -> Iterator[str]:
    return iter(blobs.list(KEY.block_prefix(0)))


# -- findings of the review ----------------------------------------------------------------


class StopsAtTwo(Task):
    """Case 2 is running when the worker stops, and returns what a case cut short returns
    (it caught the worker's Abandoned): -1, which breaks ``non_negative``."""

    properties = (Property("non_negative", lambda case, out: out >= 0),)

    def generate(self, seed: int, index: int) -> int:
        return index

    def solve(self, case: int) -> int:
        if case == 2:
            request_stop()
            return -1
        return case


def test_finding_the_case_running_when_the_worker_stopped_is_not_cached(tmp_path: Path) -> None:
    s = EvalRunSpec.model_validate(
        {
            "image": "x",
            "task": {"entrypoint": f"{__name__}:StopsAtTwo"},
            "cases": {"count": 5},
            "cache": {"mode": "readWrite"},
        }
    )
    cached = with_cache(load_task(s.task, None, 0), s, LocalBlobs(tmp_path / "c"), run="first")
    assert isinstance(cached, CachedTask)
    try:
        records = list(cached.evaluate_batch(0, 5, 5.0))
    finally:
        clear_stop()
        cached.close()
    assert [r["index"] for r in records] == [0, 1, 2]  # the batch ends at the stop
    found = cached.use.store.lookup(cached.use.keys[0], 0, 5, dict.fromkeys(range(5), ""))  # type: ignore[arg-type]
    assert sorted(found) == [0, 1]  # case 2 may have been cut short: evaluated again later
