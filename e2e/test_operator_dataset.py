"""An EvalRun over a Parquet dataset in S3 (moto) on the real control plane: the operator
admits the dataset (rows counted from the footers, the total fixed), workers read only their
row ranges, a spot node reclaimed mid-run loses and repeats nothing, every row is recorded once
with its identity; a dataset that cannot serve the run fails it with DatasetInvalid."""

from __future__ import annotations

import io
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from e2e.harness.operator import CREDS
from e2e.test_operator import Env, _dump, _lower, assert_each_case_once

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

__all__ = ["env"]
from e2e.test_operator import env  # noqa: E402  (the fixture)

ROWS_PER_FILE = 20_000
FILES = 2


def _upload(env: Env, key: str, table: pa.Table) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf, row_group_size=5_000)
    s3: Any = boto3.client("s3", endpoint_url=env.moto, region_name="us-east-1", **_lower(CREDS))
    s3.put_object(Bucket=env.bucket, Key=key, Body=buf.getvalue())


def _headlines(start: int, n: int) -> pa.Table:
    return pa.table(
        {
            "id": [f"r{i}" for i in range(start, start + n)],
            "headline": [f"shares rally {i}" for i in range(start, start + n)],
            "label": ["positive"] * n,
        }
    )


def _dataset_run(env: Env, name: str, uri: str) -> dict[str, Any]:
    doc = env.evalrun(name)
    # 1 ms a row (a model call's latency): long enough for the reclaim to land mid-run.
    doc["spec"]["task"] = {
        "entrypoint": "proctor.examples.headlines:task",
        "params": {"delayMs": 1},
    }
    doc["spec"].pop("compare", None)
    doc["spec"]["cases"] = {"dataset": {"uri": uri, "idField": "id", "endpoint": env.moto}}
    doc["spec"]["results"] = {"outputs": True}
    return doc


def test_parquet_dataset_in_s3_survives_a_reclaimed_node(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(FILES):
        _upload(env, f"input/day=0{n}/part-0.parquet", _headlines(n * ROWS_PER_FILE, ROWS_PER_FILE))
    total = FILES * ROWS_PER_FILE
    spot = env.node(cpu="4", memory="8Gi", spot=True)
    env.node(cpu="4", memory="8Gi")
    doc = _dataset_run(env, "rows", f"s3://{env.bucket}/input/")
    doc["spec"]["placement"]["spread"] = "required"
    with env.operator() as op:
        created = env.create(doc)
        try:
            env.reclaim_mid_run("rows", spot, timeout=60)
            status = env.wait_phase("rows", "Succeeded", timeout=220)
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
    assert status["counts"]["total"] == total
    assert status["counts"]["completed"] == total
    assert status["disruptions"] >= 1
    assert status["workers"]["failures"] == 0
    storage = env.run_storage(created["metadata"]["uid"], monkeypatch)
    assert_each_case_once(storage, total)
    records = list(storage.iter_records())
    assert [r["id"] for r in records] == [f"r{i}" for i in range(total)]
    assert records[ROWS_PER_FILE]["partition"] == "day=01"
    assert {r["output"] for r in records} == {"positive"}


def test_a_dataset_that_cannot_serve_fails_the_run(env: Env) -> None:
    _upload(env, "bad/a.parquet", _headlines(0, 10))
    _upload(env, "bad/b.parquet", pa.table({"other": [1, 2]}))
    env.node(cpu="4", memory="8Gi")
    with env.operator(run_workers=False) as op:
        env.create(_dataset_run(env, "bad", f"s3://{env.bucket}/bad/"))
        try:
            status = env.wait_phase("bad", "Failed", timeout=60)
        except TimeoutError as exc:
            raise AssertionError(str(exc) + _dump(op)) from exc
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DatasetInvalid"
    assert "b.parquet has other columns than a.parquet" in failed["message"]
    assert env.workers("bad") == []
