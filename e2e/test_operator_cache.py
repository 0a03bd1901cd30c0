"""The result cache on the real control plane: two EvalRuns share the default cache beside
their storage (moto S3); the second, a new candidate against the same baseline, reports every
baseline result as a hit in ``status.cache`` and decides as an uncached run of it does."""

from __future__ import annotations

import copy

import pytest

from e2e.test_operator import Env, _dump, _local_summary

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

__all__ = ["env"]
from e2e.test_operator import env  # noqa: E402  (the fixture)

COUNT = 600


def test_a_new_candidate_reuses_every_baseline_result(env: Env) -> None:
    env.node(cpu="4", memory="8Gi")
    first = env.evalrun("cache-first", count=COUNT, cache={"mode": "readWrite"})
    second = copy.deepcopy(env.evalrun("cache-second", count=COUNT, cache={"mode": "readWrite"}))
    second["spec"]["compare"]["candidate"]["ref"] = "proctor.examples.topk:top_k_buggy"
    with env.operator() as op:
        try:
            env.create(first)
            one = env.wait_phase("cache-first", "Succeeded", timeout=180)
            env.create(second)
            two = env.wait_phase("cache-second", "Succeeded", timeout=180)
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
    uri = f"s3://{env.bucket}/runs/proctor-cache/{env.namespace}"  # one per namespace
    assert one["cache"] == {
        "hits": 0,
        "misses": 2 * COUNT,
        "baseline": {"hits": 0, "misses": COUNT},
        "candidate": {"hits": 0, "misses": COUNT},
        "uri": uri,
    }
    assert two["cache"]["baseline"] == {"hits": COUNT, "misses": 0}
    assert two["cache"]["candidate"] == {"hits": 0, "misses": COUNT}
    conds = {c["type"]: c for c in two["conditions"]}
    assert (conds["CacheReadOnly"]["status"], conds["CacheReadOnly"]["reason"]) == (
        "False",
        "CacheWritable",
    )
    # The same comparison without a cache, on this machine, decides alike.
    uncached = copy.deepcopy(second)
    uncached["spec"].pop("cache")
    local = _local_summary(uncached, env.workdir)
    result = two["result"]
    assert result["decision"] == local["decision"]
    assert result["baselinePassRate"] == pytest.approx(local["baselinePassRate"])
    assert result["candidatePassRate"] == pytest.approx(local["candidatePassRate"])
    assert result["deltaLower"] == pytest.approx(local["interval"][0])
