"""The operator's kopf registry and the small pieces its handlers delegate to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from proctor.config import OperatorConfig
from proctor.controller.evalrun import build_registry, delete_expired_run
from proctor.controller.refs import run_ref
from proctor.evalrun.reconcile import RunRef, RunRuntime


def test_handlers_whose_progress_kopf_persists_keep_their_ids() -> None:
    # kopf keys the progress it writes to annotations by handler id: these must not change.
    registry = build_registry(OperatorConfig())
    changing = [h.id for h in registry._changing.get_all_handlers()]
    spawning = [h.id for h in registry._spawning.get_all_handlers()]
    assert changing == [
        "build_registry.<locals>.delete",
        "register_suite_handlers.<locals>.suite_apply/spec",
        "register_suite_handlers.<locals>.suite_apply",
        "register_suite_handlers.<locals>.suite_apply",
        "register_suite_handlers.<locals>.suite_delete",
    ]
    assert spawning == ["register_suite_handlers.<locals>.suite_reconcile"]


def test_registry_has_every_index_a_pass_reads() -> None:
    registry = build_registry(OperatorConfig())
    assert [h.id for h in registry._indexing.get_all_handlers()] == [
        "proctor_nodes",
        "proctor_usage",
        "proctor_workers",
        "proctor_bench_pods",
        "proctor_bench_nodes",
    ]


META = {"namespace": "ns", "name": "r", "uid": "u-1"}


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        (
            {**META, "generation": 3, "annotations": {"a": "b"}},
            RunRef("ns", "r", "u-1", 3, {"a": "b"}),
        ),
        (META, RunRef("ns", "r", "u-1", 1, {})),
        ({**META, "generation": None, "annotations": None}, RunRef("ns", "r", "u-1", 1, {})),
    ],
    ids=["full", "no generation or annotations", "nulls"],
)
def test_run_ref(meta: dict[str, Any], expected: RunRef) -> None:
    assert run_ref(meta) == expected


@dataclass
class DeletingApi:
    """The one call delete_expired_run makes, recorded; fails when told to."""

    fail: bool
    deleted: list[tuple[str, str]] = field(default_factory=list)

    def delete_run(self, namespace: str, name: str) -> None:
        if self.fail:
            raise RuntimeError("API server unavailable")
        self.deleted.append((namespace, name))


@pytest.mark.parametrize(("fail", "deleting"), [(False, True), (True, False)])
def test_expired_run_is_deleted_once_or_asked_again(fail: bool, deleting: bool) -> None:
    api = DeletingApi(fail)
    runtime = RunRuntime()
    ref = RunRef("ns", "r", "u-1", 1, {})
    delete_expired_run(api, ref, runtime)  # type: ignore[arg-type]  # only delete_run is called
    assert runtime.deleting is deleting  # a failed delete is asked again by the next pass
    assert api.deleted == ([] if fail else [("ns", "r")])
    runtime.close()
