"""The operator's RSS over the end-of-run merge: `finish_results` (every result object read
again from moto S3 and written as the merged results.parquet), in a fresh process set up as
the operator is (glibc arenas limited, the merge on a pass thread, every object counted once
before, as the run did).

The run's objects are the quickstart's records (250 evaluated once, repeated with shifted
indexes) in objects of 250 cases, as a quickstart EvalRun writes them. Prints RSS before and
after the merge, the peak, and the merged file's size; the operator's RSS target (<= +20 MB
from 10% to 100% of a run) counts this growth, since the merge runs in its last pass.

    python e2e/bench/merge_memory.py [--cases 250000]
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
from pathlib import Path

import boto3
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from e2e.harness import services
from e2e.harness.operator import CREDS, QUICKSTART
from proctor.api.v1alpha1.evalrun import EvalRun
from proctor.ranges import Range
from proctor.sdk.runner import load_task
from proctor.storage import open_storage

BUCKET = "bench-merge"
ENTRY = 250

# The measured process, set up as the operator is: glibc's arenas limited at start, each pass
# on a thread of a pool. First what the run itself did (a listing, every object read and
# counted once as it appeared), so that the heap is the operator's at the run's end and only
# the merge counts; RSS is sampled every 20 ms during the merge for its peak.
MERGE = """
import sys, threading, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from proctor.controller.settings import limit_malloc_arenas
limit_malloc_arenas()
from proctor.storage import open_storage
from proctor.storage.export import finish_results
from proctor.storage.tally import aggregate_table

def rss():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if "VmRSS" in x)
    return int(line.split()[1]) / 1024

def count_all(storage):
    for table in storage.iter_tables():
        aggregate_table(table)

def sample(stop, seen):
    while not stop.is_set():
        seen.append(rss())
        stop.wait(0.02)

storage = open_storage(sys.argv[1], "run", endpoint=sys.argv[2], region="us-east-1")
passes = ThreadPoolExecutor(4, thread_name_prefix="pass")
passes.submit(count_all, storage).result()
before, seen, stop = rss(), [], threading.Event()
sampler = threading.Thread(target=sample, args=(stop, seen))
sampler.start()
t0 = time.perf_counter()
passes.submit(finish_results, storage).result()
took = time.perf_counter() - t0
stop.set()
sampler.join()
after = rss()
size = len(storage.blobs.get(storage.merged_key()) or b"")
print(f"{before:.1f} {after:.1f} {max(seen + [after]):.1f} {size} {took:.2f}")
"""


def fill(uri: str, endpoint: str, cases: int) -> None:
    """The quickstart's records for ``cases`` cases, in objects of ``ENTRY``."""
    spec = EvalRun.model_validate(yaml.safe_load(QUICKSTART.read_text())).spec
    task = load_task(spec.task, spec.compare, spec.cases.seed)
    base = list(task.evaluate_batch(0, ENTRY, 10.0))
    storage = open_storage(uri, "run", endpoint=endpoint, region="us-east-1")
    for start in range(0, cases, ENTRY):
        records = [copy.deepcopy(r) | {"index": r["index"] + start} for r in base]
        storage.write_results(Range(start, start + ENTRY), records)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=250_000, help="a multiple of 250")
    args = parser.parse_args()
    os.environ.update(CREDS)
    uri = f"s3://{BUCKET}/runs"
    with services.moto_server() as moto:
        s3 = boto3.client("s3", endpoint_url=moto.url, region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        fill(uri, moto.url, args.cases)
        out = subprocess.run(
            [sys.executable, "-c", MERGE, uri, moto.url],
            capture_output=True,
            text=True,
            check=False,
        )
    if out.returncode:
        raise SystemExit(f"the merge failed:\n{out.stderr[-3000:]}")
    before, after, peak, size, took = out.stdout.split()
    print(
        f"merge of {args.cases:,} cases in {args.cases // ENTRY} objects in {took} s: RSS "
        f"{before} MB before, {after} MB after ({float(after) - float(before):+.1f} MB; peak "
        f"{peak} MB, {float(peak) - float(before):+.1f}); results.parquet {int(size) / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
