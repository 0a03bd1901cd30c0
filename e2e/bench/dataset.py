"""Datasets in: how fast one worker reads a Parquet dataset in S3 (moto), whether its memory
grows with the dataset, and how soon a run over 10M rows can start its first case.

1. A 1M-row Parquet dataset (4 files, row groups of 25,000 rows, three columns) is written to a
   moto bucket. A worker process (a subprocess, so its RSS is its own) admits nothing: it opens
   the manifest stored by admission and reads every row in batches of 1,000, as the engine
   does, printing rows/s and its RSS at 10% and at 100% of the rows (target: growth <= 20 MB).
2. A 10M-row dataset (10 files): time from nothing to the first case's row, as ``proctor run``
   and the operator do it: list the files, read their footers, store the manifest, open the
   reader, read row 0 (target: <= 2 s, no full download; the bytes fetched are printed).

    python e2e/bench/dataset.py [--rows 1000000] [--first-rows 10000000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from e2e.harness.services import moto_server  # noqa: E402
from proctor.api.v1alpha1.evalrun import EvalRunSpec  # noqa: E402
from proctor.dataset.rangefile import RangeFile  # noqa: E402
from proctor.dataset.run import admit, dataset_location, open_reader  # noqa: E402
from proctor.storage import LocalBlobs, RunStorage  # noqa: E402

BATCH = 1000


def spec(bucket: str, prefix: str, endpoint: str) -> EvalRunSpec:
    return EvalRunSpec.model_validate(
        {
            "image": "bench",
            "task": {"entrypoint": "proctor.examples.headlines:task"},
            "cases": {"dataset": {"uri": f"s3://{bucket}/{prefix}/", "endpoint": endpoint}},
        }
    )


def upload(s3: Any, bucket: str, prefix: str, rows: int, files: int) -> None:
    per = rows // files
    for n in range(files):
        start = n * per
        table = pa.table(
            {
                "id": pa.array(range(start, start + per), pa.int64()),
                "headline": [f"markets rally on day {i % 997}" for i in range(start, start + per)],
                "label": ["positive"] * per,
            }
        )
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=25_000)
        s3.put_object(Bucket=bucket, Key=f"{prefix}/part-{n:04d}.parquet", Body=buf.getvalue())


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> None:
    """The reading worker (run as a subprocess): every row once, in batches."""
    run = spec(args.bucket, args.prefix, args.endpoint)
    storage = RunStorage(LocalBlobs(Path(args.storage)), "bench")
    reader = open_reader(run, storage, dataset_location(run, endpoint=args.endpoint))
    total = reader.manifest.rows
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    t10 = 0.0
    for start in range(0, total, BATCH):
        for _ in reader.rows(start, min(total, start + BATCH)):
            pass
        if "rss10" not in marks and start + BATCH >= total // 10:
            marks["rss10"], t10 = rss_mb(), time.perf_counter()
    elapsed = time.perf_counter() - t0
    marks["rss100"] = rss_mb()
    rate = (total - total // 10) / (time.perf_counter() - t10)
    print(json.dumps({"rows": total, "seconds": elapsed, "rowsPerSecond": total / elapsed,
                      "rowsPerSecondAfter10pct": rate, **marks}))  # fmt: skip


def read_throughput(s3: Any, bucket: str, endpoint: str, rows: int, folder: Path) -> None:
    upload(s3, bucket, "m1", rows, 4)
    run = spec(bucket, "m1", endpoint)
    storage = RunStorage(LocalBlobs(folder), "bench")
    admit(run, storage, dataset_location(run, endpoint=endpoint), fresh=True)
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'operator'}{os.pathsep}{ROOT}"}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", "--bucket", bucket, "--prefix", "m1",
         "--endpoint", endpoint, "--storage", str(folder)],
        capture_output=True, text=True, check=True, env=env,
    )  # fmt: skip
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(
        f"read {got['rows']:,} Parquet rows from moto S3 in {got['seconds']:.1f} s: "
        f"{got['rowsPerSecond']:,.0f} rows/s per worker "
        f"({got['rowsPerSecondAfter10pct']:,.0f} rows/s after the first 10%); "
        f"RSS {got['rss10']:.1f} MB at 10%, {got['rss100']:.1f} MB at 100% "
        f"(growth {got['rss100'] - got['rss10']:+.1f} MB)"
    )


def first_case(s3: Any, bucket: str, endpoint: str, rows: int, folder: Path) -> None:
    upload(s3, bucket, "m10", rows, 10)
    size = sum(o["Size"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="m10/")["Contents"])
    fetched = [0]
    original = RangeFile.read_range

    def counted(self: RangeFile, start: int, end: int) -> bytes:
        data = original(self, start, end)
        fetched[0] += len(data)
        return data

    RangeFile.read_range = counted  # type: ignore[method-assign]
    run = spec(bucket, "m10", endpoint)
    t0 = time.perf_counter()
    storage = RunStorage(LocalBlobs(folder), "first")
    location = dataset_location(run, endpoint=endpoint)
    manifest = admit(run, storage, location, fresh=True)
    row = next(iter(open_reader(run, storage, location).rows(0, 1)))
    elapsed = time.perf_counter() - t0
    RangeFile.read_range = original  # type: ignore[method-assign]
    assert row.case is not None
    print(
        f"time to the first case over {manifest.rows:,} rows in {len(manifest.files)} files: "
        f"{elapsed:.2f} s (admission: list, footers, manifest; then row 0), "
        f"{fetched[0] / 1e6:.1f} MB fetched of {size / 1e6:.1f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--first-rows", type=int, default=10_000_000)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--bucket", "--prefix", "--endpoint", "--storage"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    with moto_server() as moto, tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        s3: Any = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
        s3.create_bucket(Bucket="bench")
        read_throughput(s3, "bench", moto.url, args.rows, Path(tmp) / "a")
        first_case(s3, "bench", moto.url, args.first_rows, Path(tmp) / "b")


if __name__ == "__main__":
    main()
