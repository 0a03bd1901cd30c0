"""Red-team findings on the result cache: each test shows a way a cached result could differ
from what the same run would have evaluated, or reach past the run's scope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.cache.keys import SideKey
from proctor.cache.setup import TaskKeys, task_keys, with_cache
from proctor.cache.store import CacheStore, Entry, encode
from proctor.sdk import load_task
from proctor.sdk.records import side_record
from proctor.storage import LocalBlobs


def spec(**extra: Any) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {
            "image": "x",
            "task": {"entrypoint": "proctor.examples.topk:task", "params": {"k": 3}},
            "cases": {"count": 10},
            "compare": {
                "baseline": {"ref": "proctor.examples.topk:top_k_sorted"},
                "candidate": {"ref": "proctor.examples.topk:top_k_heap"},
            },
            "cache": {"mode": "readWrite"},
            **extra,
        }
    )


def keys_of(s: EvalRunSpec) -> TaskKeys | None:
    with load_task(s.task, s.compare, 0) as task:
        return task_keys(s, task)


def test_finding_case_timeout_is_in_the_key() -> None:
    # A case that passed in 30 s under caseTimeout: 60s would be a timeout (an error) under
    # caseTimeout: 1s; reusing the cached pass there gives a decision the uncached run
    # would not reach.
    assert keys_of(spec(caseTimeout="60s")) != keys_of(spec(caseTimeout="1s"))


@pytest.mark.xfail(
    strict=True,
    reason="spec.env is not in the key: an implementation or command that reads an env var "
    "(a model version, a feature flag) gets the results of another setting; docs/cache.md "
    "does not say so",
)
def test_finding_env_is_in_the_key() -> None:
    one = spec(env=[{"name": "MODEL", "value": "v1"}])
    two = spec(env=[{"name": "MODEL", "value": "v2"}])
    assert keys_of(one) != keys_of(two)


@pytest.mark.xfail(
    strict=True,
    reason="spec.image is not in the key: a new image (other library versions, another "
    "Python) reuses results of the old one when the implementation's own file is unchanged",
)
def test_finding_image_is_in_the_key() -> None:
    assert keys_of(spec(image="team/eval:1")) != keys_of(spec(image="team/eval:2"))


@pytest.mark.xfail(
    strict=True,
    reason="a command task's implementation key is the command's files and the ref string; "
    "the file the ref names (impl.py:solve) is not hashed, so editing it keeps every hit",
)
def test_finding_command_task_ref_file_is_in_the_key(tmp_path: Path) -> None:
    harness = tmp_path / "harness.py"
    harness.write_text("import sys\n")
    impl = tmp_path / "impl.py"
    impl.write_text("def solve(case):\n    return case\n")
    base = {
        "image": "x",
        "task": {"command": ["python3", str(harness)]},
        "cases": {"count": 10},
        "compare": {
            "baseline": {"ref": f"{impl}:solve"},
            "candidate": {"ref": f"{impl}:solve2"},
        },
        "cache": {"mode": "readWrite"},
    }
    before = keys_of(EvalRunSpec.model_validate(base))
    impl.write_text("def solve(case):\n    return None\n")
    after = keys_of(EvalRunSpec.model_validate(base))
    assert before is not None
    assert after is not None
    assert before.implementations[0] != after.implementations[0]


@pytest.mark.xfail(
    strict=True,
    reason="pieces are not authenticated: anyone who can write the cache location (another "
    "tenant's run sharing the default proctor-cache/ under the operator's storage, or its "
    "implementation code in the worker, which holds the storage credentials) can compute a "
    "victim's key from its public spec and source and plant results it then trusts; even "
    "without raw writes, a run with the victim's source but another image or env (neither "
    "in the key) writes under the victim's keys. The EvalRun cache's default location is "
    "shared by every namespace (the suite cache's is per namespace); docs/security.md says "
    "nothing about the cache and still says a run never reaches another run's results",
)
def test_finding_a_forged_piece_is_not_trusted(tmp_path: Path) -> None:
    victim = keys_of(spec())
    assert victim is not None
    key = SideKey(victim.implementations[1], victim.task, "seed-0", "candidate")
    blobs = LocalBlobs(tmp_path / "cache", create=True)
    forged = [Entry(i, "", side_record([], None), "tenant-a/evil") for i in range(10)]
    blobs.put(key.piece_key(0, 0), encode(key, 0, forged))
    reader = CacheStore(blobs, "tenant-b/run", writes=False)
    assert reader.lookup(key, 0, 10, dict.fromkeys(range(10), "")) == {}


def test_finding_the_file_a_ref_names_is_in_the_key(tmp_path: Path) -> None:
    # ``solve = functools.partial(library_fn, k=3)`` resolves to the library's function: the
    # key held its package version only, so editing ``k=3`` to ``k=5`` kept every hit.
    impl = tmp_path / "partial_impl.py"
    impl.write_text(
        "import functools\nimport json\n\nsolve = functools.partial(json.dumps, indent=2)\n"
    )
    base = spec().model_dump(by_alias=True)
    base["compare"]["candidate"]["ref"] = f"{impl}:solve"
    before = keys_of(EvalRunSpec.model_validate(base))
    impl.write_text(
        "import functools\nimport json\n\nsolve = functools.partial(json.dumps, indent=4)\n"
    )
    after = keys_of(EvalRunSpec.model_validate(base))
    assert before is not None
    assert after is not None
    assert before.implementations[0] == after.implementations[0]
    assert before.implementations[1] != after.implementations[1]


TRANSIENT_TASK = """
from proctor.sdk import Task


class Flaky(Task):
    def generate(self, seed, index):
        return index

    def check(self, case, output):
        return []

    def solve(self, case):
        raise MemoryError("the worker's memory limit, not the implementation's answer")


task = Flaky()
"""


@pytest.mark.xfail(
    strict=True,
    reason="an `exception` side is cached whatever raised it: a MemoryError under a small "
    "spec.resources (not in the key), or a ConnectionError of a service the implementation "
    "calls, is reused as the implementation's answer by every later run",
)
def test_finding_a_resource_or_transient_exception_is_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flaky_task.py").write_text(TRANSIENT_TASK)
    monkeypatch.syspath_prepend(str(tmp_path))
    s = EvalRunSpec.model_validate(
        {
            "image": "x",
            "task": {"entrypoint": "flaky_task:task"},
            "cases": {"count": 3},
            "cache": {"mode": "readWrite"},
        }
    )
    blobs = LocalBlobs(tmp_path / "cache", create=False)
    with load_task(s.task, s.compare, 0) as task:
        cached = with_cache(task, s, blobs, run="ns/first")
        records = list(cached.evaluate_batch(0, 3, 60.0))
    assert [r["errorType"] for r in records] == ["exception"] * 3
    assert not list((tmp_path / "cache").rglob("*.arrow.zst"))
