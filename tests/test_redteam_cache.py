"""Red-team findings on the result cache: each test shows a way a cached result could differ
from what the same run would have evaluated, or reach past the run's scope."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proctor.api.v1alpha1.evalrun import EvalRunSpec
from proctor.cache.setup import TaskKeys, task_keys, with_cache
from proctor.sdk import load_task
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


def test_finding_env_is_in_the_key() -> None:
    one = spec(env=[{"name": "MODEL", "value": "v1"}])
    two = spec(env=[{"name": "MODEL", "value": "v2"}])
    assert keys_of(one) != keys_of(two)


def test_finding_image_is_in_the_key() -> None:
    assert keys_of(spec(image="team/eval:1")) != keys_of(spec(image="team/eval:2"))


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


def test_finding_a_tenant_cannot_plant_results_in_another_namespaces_default_cache() -> None:
    # Pieces are not authenticated (docs/security.md: whoever can write a cache is trusted by
    # every run that reads it), so no two namespaces may share a cache by default: the
    # operator's default storage is shared by every namespace, and its default cache was too.
    cache = spec().cache
    root = "s3://operator-bucket/proctor"
    assert cache.location(root, "tenant-a") != cache.location(root, "tenant-b")
    assert cache.location(root, "tenant-a").startswith(root + "/proctor-cache/")
    assert cache.location(root) == root + "/proctor-cache"  # proctor run: one user
    named = spec(cache={"mode": "readWrite", "uri": "s3://shared/cache"}).cache
    assert named.location(root, "tenant-a") == "s3://shared/cache"  # named: the user's choice


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
