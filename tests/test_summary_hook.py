"""The summary hook a task may provide (proctor.sdk.hooks): found from the entrypoint, never
importing a user's module, and Metamorphic Guard's tasks provide it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import proctor.mgadapter
from proctor.api.v1alpha1.evalrun import EvalRunSpec, ResultSummary
from proctor.sdk.hooks import TaskSummary, summarize_with_task, summary_hook

MODULE = "proctor_hook_probe_module"


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable user module that defines a hook and records that it was imported."""
    (tmp_path / f"{MODULE}.py").write_text(
        "IMPORTED = True\n"
        "def summarize_run(spec, storage, summary, *, run_user_code):\n"
        "    raise AssertionError('a user hook ran')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, MODULE, raising=False)
    return MODULE


HOOKS = [
    ("Metamorphic Guard's factory", "proctor.mgadapter:task", True),
    ("Metamorphic Guard's class", "proctor.mgadapter:MGTask", True),
    ("a Proctor example without a hook", "proctor.examples.topk:TopKTask", False),
    ("a Proctor module that does not exist", "proctor.no_such_module:task", False),
    ("a file path", "tasks/mine.py:Task", False),
    ("no entrypoint (a command task)", None, False),
]


@pytest.mark.parametrize(("entrypoint", "found"), [c[1:] for c in HOOKS], ids=[c[0] for c in HOOKS])
def test_hook_found_from_entrypoint(entrypoint: str | None, found: bool) -> None:
    hook = summary_hook(entrypoint)
    assert (hook is proctor.mgadapter.summarize_run) if found else hook is None


def test_user_module_is_not_imported_for_its_hook(user_module: str) -> None:
    assert summary_hook(f"{user_module}:Task") is None
    assert user_module not in sys.modules


def _spec(entrypoint: str) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {"image": "img", "task": {"entrypoint": entrypoint}, "cases": {"count": 4}}
    )


def test_task_without_hook_keeps_the_summary() -> None:
    base = ResultSummary(decision="accept", reason="proctor's rule")
    assert summarize_with_task(
        _spec("proctor.examples.topk:TopKTask"), None, base, run_user_code=False
    ) == TaskSummary(base)


def test_mg_task_without_compare_passes_through() -> None:
    # Not a comparison: Metamorphic Guard has no decision to make, the hook changes nothing.
    base = ResultSummary(decision="undecided", reason="no compare")
    judged = summarize_with_task(_spec("proctor.mgadapter:task"), None, base, run_user_code=False)
    assert judged == TaskSummary(base)
