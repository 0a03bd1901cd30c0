"""Operator passes over a run whose cases are a dataset in S3 (moto): admission counts the rows
and fixes the total, a dataset that cannot serve fails the run at admission, one that changes
while the run runs fails it naming the file, with what was recorded kept."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from proctor.config import OperatorConfig
from proctor.dataset import load_manifest
from tests.test_evalrun_pass import FakeCluster, World, spec

pytestmark = pytest.mark.integration


def put_parquet(s3: Any, bucket: str, key: str, rows: int, column: str = "x") -> None:
    buf = io.BytesIO()
    pq.write_table(pa.table({column: list(range(rows))}), buf, row_group_size=16)
    s3.put_object(Bucket=bucket, Key=key, Body=buf.getvalue())


def world(
    tmp_path: Path, moto_url: str, uri: str, ambient: str = "proctor-*", **dataset: Any
) -> World:
    """A run over ``uri`` with the operator's default storage: the dataset is read with the
    operator's (ambient) credentials, which its policy lends to the buckets ``ambient`` names."""
    config = OperatorConfig.model_validate(
        {
            "defaultQueueUrl": f"sqlite:///{tmp_path}/queue.db",
            "defaultStorageUri": str(tmp_path / "results"),
            "defaultStorageEndpoint": moto_url,
            "policy": {"ambientCredentialBuckets": [ambient]},
        }
    )
    run = spec()
    run["cases"] = {"dataset": {"uri": uri, "endpoint": moto_url, **dataset}}
    return World(FakeCluster(), run, config)


@pytest.fixture
def s3(moto_url: str) -> Any:
    return boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")


def test_admission_counts_the_rows_and_the_run_completes(
    tmp_path: Path, moto_url: str, s3: Any, s3_bucket: str
) -> None:
    put_parquet(s3, s3_bucket, "in/day=01/a.parquet", 25)
    put_parquet(s3, s3_bucket, "in/day=02/b.parquet", 20)
    w = world(tmp_path, moto_url, f"s3://{s3_bucket}/in/")
    w.reconcile()
    assert w.rt.total == 45
    assert w.cluster.status is not None
    assert w.cluster.status["counts"]["total"] == 45
    assert w.cluster.status["phase"] == "Pending"
    assert w.rt.storage is not None
    manifest = load_manifest(w.rt.storage)
    assert manifest is not None
    assert [f.path for f in manifest.files] == ["day=01/a.parquet", "day=02/b.parquet"]
    pods = w.cluster.pods[next(iter(w.cluster.pods))]
    env = {e["name"] for e in pods["spec"]["containers"][0]["env"]}
    assert "PROCTOR_SPEC" in env
    w.reconcile()
    w.work(10)
    w.reconcile()
    assert w.cluster.status["phase"] == "Succeeded"
    assert w.cluster.status["counts"]["completed"] == 45


def test_a_dataset_that_cannot_serve_fails_the_run_at_admission(
    tmp_path: Path, moto_url: str, s3: Any, s3_bucket: str
) -> None:
    put_parquet(s3, s3_bucket, "in/a.parquet", 5)
    put_parquet(s3, s3_bucket, "in/b.parquet", 5, column="y")
    w = world(tmp_path, moto_url, f"s3://{s3_bucket}/in/")
    w.reconcile()
    assert w.cluster.created == []
    assert w.cluster.status is not None
    assert w.cluster.status["phase"] == "Failed"
    failed = next(c for c in w.cluster.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DatasetInvalid"
    assert f"s3://{s3_bucket}/in/b.parquet has other columns than a.parquet" in failed["message"]
    assert [e.reason for e in w.events] == ["DatasetInvalid"]


def test_a_local_path_or_too_large_a_count_fails_the_run(
    tmp_path: Path, moto_url: str, s3: Any, s3_bucket: str
) -> None:
    local = world(tmp_path, moto_url, "data/rows.jsonl")
    local.reconcile()
    assert local.cluster.status is not None
    assert local.cluster.status["phase"] == "Failed"
    put_parquet(s3, s3_bucket, "few.parquet", 3)
    many = world(tmp_path / "m", moto_url, f"s3://{s3_bucket}/few.parquet")
    many.spec["cases"]["count"] = 4
    many.reconcile()
    assert many.cluster.status is not None
    failed = next(c for c in many.cluster.status["conditions"] if c["type"] == "Failed")
    assert "cases.count is 4 but the dataset has 3 rows" in failed["message"]


def test_a_dataset_changed_while_the_run_runs_fails_it_naming_the_file(
    tmp_path: Path, moto_url: str, s3: Any, s3_bucket: str
) -> None:
    put_parquet(s3, s3_bucket, "in/a.parquet", 20)
    put_parquet(s3, s3_bucket, "in/b.parquet", 20)
    w = world(tmp_path, moto_url, f"s3://{s3_bucket}/in/")
    w.reconcile()
    w.reconcile()
    w.work(1)
    w.reconcile()
    assert w.cluster.status is not None
    assert w.cluster.status["phase"] == "Running"
    put_parquet(s3, s3_bucket, "in/b.parquet", 21)
    w.rt.dataset_checked = -1e9  # the checkpoint interval has passed
    w.reconcile()
    assert w.cluster.status["phase"] == "Failed"
    failed = next(c for c in w.cluster.status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "DatasetChanged"
    assert f"s3://{s3_bucket}/in/b.parquet changed since the run started" in failed["message"]
    w.reconcile()
    assert w.cluster.pods == {}  # the failed run's workers are gone
    assert w.cluster.status["counts"]["completed"] == 10  # what was recorded is kept


def test_a_dataset_bucket_the_policy_does_not_lend_credentials_to_is_refused(
    tmp_path: Path, moto_url: str, s3: Any, s3_bucket: str
) -> None:
    put_parquet(s3, s3_bucket, "in/a.parquet", 5)
    w = world(tmp_path, moto_url, f"s3://{s3_bucket}/in/", ambient="elsewhere-*")
    w.reconcile()
    assert w.cluster.created == []
    assert w.rt.manifest is None  # the operator did not read the bucket
    assert w.cluster.status is not None
    assert w.cluster.status["phase"] == "Pending"
    assert [e.reason for e in w.events] == ["PolicyViolation"]
    assert "spec.cases.dataset names bucket" in w.events[0].message
    assert "add spec.cases.dataset.secretRef" in w.events[0].message
