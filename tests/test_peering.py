"""The peering gate applies kopf's rule: paused while another live peer has a higher priority
or the same one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from proctor.controller.peering import PeeringGate, is_pattern, matches, paused

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def peer(priority: int, seconds_ago: float = 1, lifetime: int = 60) -> dict[str, Any]:
    seen = (NOW - timedelta(seconds=seconds_ago)).isoformat()
    return {"priority": priority, "lifetime": lifetime, "lastseen": seen}


@pytest.mark.parametrize(
    ("status", "expect"),
    [
        pytest.param({}, False, id="no peers"),
        pytest.param({"me": peer(10)}, False, id="only me"),
        pytest.param({"me": peer(10), "b": peer(5)}, False, id="a lower peer"),
        pytest.param({"me": peer(10), "b": peer(20)}, True, id="a higher peer"),
        pytest.param({"me": peer(10), "b": peer(10)}, True, id="the same priority"),
        pytest.param({"me": peer(10), "b": peer(20, seconds_ago=61)}, False, id="a dead higher"),
        pytest.param({"b": {"priority": 20}}, True, id="no lastseen counts as live"),
        pytest.param({"b": "garbage"}, False, id="a malformed entry"),
    ],
)
def test_paused(status: dict[str, Any], expect: bool) -> None:
    assert paused([status], identity="me", priority=10, now=NOW) is expect


def test_any_namespace_pauses() -> None:
    assert paused([{"a": peer(1)}, {"b": peer(50)}], identity="me", priority=10, now=NOW)


class FakeKube:
    def __init__(self, objects: dict[str, Any]) -> None:
        self.objects = objects
        self.paths: list[str] = []
        self.fail = False

    def get(self, path: str) -> dict[str, Any] | None:
        self.paths.append(path)
        if self.fail:
            raise OSError("connection refused")
        return self.objects.get(path)

    def list(self, path: str) -> list[dict[str, Any]]:
        self.paths.append(path)
        return list(self.objects.get(path, []))


def _gate(kube: FakeKube, namespaces: tuple[str, ...] = ()) -> PeeringGate:
    return PeeringGate(
        kube,  # type: ignore[arg-type]
        name="proctor",
        namespaces=namespaces,
        identity="me",
        priority=10,
        every=0.0,
    )


def live(priority: int) -> dict[str, Any]:
    return {"priority": priority, "lifetime": 60, "lastseen": datetime.now(UTC).isoformat()}


def test_gate_is_open_without_peering_and_closed_until_first_read() -> None:
    assert PeeringGate(None, name="p", namespaces=(), identity="me", priority=0).open
    kube = FakeKube({})
    gate = _gate(kube)
    assert not gate.open
    gate.refresh()
    assert gate.open
    assert kube.paths == ["/apis/kopf.dev/v1/clusterkopfpeerings/proctor"]


def test_gate_follows_the_peering_object_and_keeps_its_answer_on_errors() -> None:
    path = "/apis/kopf.dev/v1/namespaces/ns1/kopfpeerings/proctor"
    kube = FakeKube({path: {"status": {"me": live(10), "other": live(99)}}})
    gate = _gate(kube, ("ns1",))
    gate.refresh()
    assert not gate.open
    kube.fail = True
    gate.refresh()
    assert not gate.open  # still paused: a failed read changes nothing
    kube.fail = False
    kube.objects[path] = {"status": {"me": live(10)}}
    gate.refresh()
    assert gate.open


def test_gate_with_namespace_patterns_lists_peerings() -> None:
    items = [
        {"metadata": {"name": "proctor", "namespace": "team-a"}, "status": {"x": live(50)}},
        {"metadata": {"name": "proctor", "namespace": "other"}, "status": {"y": live(50)}},
    ]
    kube = FakeKube({"/apis/kopf.dev/v1/kopfpeerings": items})
    gate = _gate(kube, ("team-*",))
    gate.refresh()
    assert not gate.open
    items[0]["status"] = {"x": live(1)}
    gate.refresh()
    assert gate.open  # the higher peer in "other" is not ours to follow


@pytest.mark.parametrize(
    ("namespace", "patterns", "expect"),
    [
        pytest.param("team-a", ("team-*",), True, id="a glob"),
        pytest.param("other", ("team-*",), False, id="outside the glob"),
        pytest.param("team-a", ("!kube-system",), True, id="only exclusions: the rest"),
        pytest.param("kube-system", ("!kube-system",), False, id="excluded"),
        pytest.param("team-x", ("team-*", "!team-x"), False, id="a glob less an exclusion"),
    ],
)
def test_namespace_patterns_match_as_kopf_serves_them(
    namespace: str, patterns: tuple[str, ...], expect: bool
) -> None:
    assert matches(namespace, patterns) is expect
    assert all(is_pattern(p) for p in patterns)
    assert not is_pattern(namespace)


def test_gate_with_only_exclusions_follows_every_other_namespace() -> None:
    items = [{"metadata": {"name": "proctor", "namespace": "team-a"}, "status": {"x": live(50)}}]
    gate = _gate(FakeKube({"/apis/kopf.dev/v1/kopfpeerings": items}), ("!kube-system",))
    gate.refresh()
    assert not gate.open
