"""kopf's settings for the operator: the diff-base annotation is written for BenchmarkSuites
(their handlers diff the spec) and never for EvalRuns (their spec changes are seen from
metadata.generation); kopf's connections are bounded without starving its watches."""

from __future__ import annotations

import json
from typing import Any

import kopf
import pytest

from proctor.controller.settings import (
    GROUP,
    KOPF_REQUEST_CONNECTIONS,
    DiffBaseStorage,
    configure,
    kopf_connection_limit,
)

KEY = f"{GROUP}/last-handled-configuration"


def _body(kind: str, annotations: dict[str, str] | None = None) -> kopf.Body:
    raw: dict[str, Any] = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": kind,
        "metadata": {"name": "x", "namespace": "ns", "annotations": annotations or {}},
        "spec": {"cases": {"count": 3}},
    }
    return kopf.Body(raw)  # type: ignore[arg-type]


def _storage() -> DiffBaseStorage:
    return DiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration", only_for={"BenchmarkSuite"}
    )


def test_a_suite_gets_its_diff_base_and_reads_it_back() -> None:
    storage, body, patch = _storage(), _body("BenchmarkSuite"), kopf.Patch()
    essence = storage.build(body=body)
    storage.store(body=body, patch=patch, essence=essence)
    written = patch["metadata"]["annotations"][KEY]
    assert json.loads(written)["spec"] == {"cases": {"count": 3}}
    assert storage.fetch(body=_body("BenchmarkSuite", {KEY: written})) == essence


def test_an_evalrun_gets_no_annotation_and_an_old_one_is_ignored() -> None:
    storage, body, patch = _storage(), _body("EvalRun"), kopf.Patch()
    storage.store(body=body, patch=patch, essence=storage.build(body=body))
    assert not patch  # nothing to write
    old = json.dumps({"spec": {"cases": {"count": 1}}})
    assert storage.fetch(body=_body("EvalRun", {KEY: old})) is None


def test_an_evalrun_essence_is_not_copied() -> None:
    # kopf builds an essence on every watch event; for EvalRuns nothing would read it.
    assert _storage().build(body=_body("EvalRun", {"a": "b"})) == {}
    assert _storage().build(body=_body("Pod")) == {}
    assert _storage().build(body=_body("BenchmarkSuite"))["spec"] == {"cases": {"count": 3}}


def test_the_operator_settings_use_it() -> None:
    settings = kopf.OperatorSettings()
    configure(settings, peering=False)
    storage = settings.persistence.diffbase_storage
    assert isinstance(storage, DiffBaseStorage)
    assert storage.only_for == {"BenchmarkSuite"}


@pytest.mark.parametrize(
    ("namespaces", "limit"),
    [
        pytest.param((), 8 + KOPF_REQUEST_CONNECTIONS, id="cluster-wide"),
        pytest.param(("a",), 8 + KOPF_REQUEST_CONNECTIONS, id="one namespace"),
        pytest.param(("a", "b", "c"), 16 + KOPF_REQUEST_CONNECTIONS, id="three namespaces"),
        pytest.param(("team-*",), 0, id="a pattern: no limit"),
        pytest.param(("a", "!kube-system"), 0, id="an exclusion: no limit"),
    ],
)
def test_kopf_connection_limit_leaves_room_for_every_watch(
    namespaces: tuple[str, ...], limit: int
) -> None:
    assert kopf_connection_limit(namespaces) == limit
