"""Export of a 1M-case run to Parquet: ``proctor results --format parquet`` from a local folder
of result objects (1,000 Arrow objects of 1,000 cases, as batch-1000 workers write them; one
case in 20 failed with violations, one in 50 errored), each case once. Also the other formats
and the operator's merged ``results.parquet``. Target: <= 10 s for 1M cases to Parquet.

    python e2e/bench/export.py [--cases N] [--batch N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import pyarrow.parquet as pq  # noqa: E402

from proctor.ranges import Range  # noqa: E402
from proctor.sdk.records import case_record, side_record  # noqa: E402
from proctor.storage import LocalBlobs, RunStorage  # noqa: E402
from proctor.storage.export import export, finish_results  # noqa: E402


def record(i: int) -> dict[str, object]:
    if i % 50 == 0:
        side = side_record([], f"ValueError: case {i} (at task.py:12 in solve)", "exception")
    else:
        side = side_record(["sorted", "length"] if i % 20 == 0 else [], None)
    return case_record(i, [side], 0.25)


def fill(storage: RunStorage, cases: int, batch: int) -> float:
    t0 = time.perf_counter()
    for start in range(0, cases, batch):
        r = Range(start, min(cases, start + batch))
        storage.write_results(r, [record(i) for i in range(r.start, r.end)])
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        storage = RunStorage(LocalBlobs(Path(tmp) / "store"), "run")
        wrote = fill(storage, args.cases, args.batch)
        size = sum(f.stat().st_size for f in (Path(tmp) / "store").rglob("*.arrow*"))
        print(f"result objects: {args.cases:,} cases, {size / 2**20:.1f} MiB, "
              f"written in {wrote:.1f} s (setup, not timed below)")  # fmt: skip
        print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        timed = {}
        for fmt in ("parquet", "jsonl", "csv"):
            out = Path(tmp) / f"out.{fmt}"
            t0 = time.perf_counter()
            rows = export(storage, fmt, out)
            timed[fmt] = time.perf_counter() - t0
            assert rows == args.cases
            print(f"export {fmt:>7}: {timed[fmt]:6.2f} s  {out.stat().st_size / 2**20:7.1f} MiB")
        assert pq.read_metadata(Path(tmp) / "out.parquet").num_rows == args.cases
        t0 = time.perf_counter()
        finish_results(storage)
        print(f"merged results.parquet (operator, end of run): {time.perf_counter() - t0:.2f} s")
    print(f"export of {args.cases:,} cases to Parquet: {timed['parquet']:.2f} s (target <= 10 s)")


if __name__ == "__main__":
    main()
