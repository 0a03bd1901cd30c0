"""The coordinator's RSS over the end-of-run merge: `finish_results` (every result object read
again from moto S3 and written as the merged results.parquet), in a fresh process.

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

# The measured process: imports and one listing and GET first, so that only the merge counts.
MERGE = """
import resource, sys
from pathlib import Path
from proctor.storage import open_storage
from proctor.storage.export import finish_results

def rss():
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if "VmRSS" in x)
    return int(line.split()[1]) / 1024

storage = open_storage(sys.argv[1], "run", endpoint=sys.argv[2], region="us-east-1")
storage.blobs.get(next(key for _, key in storage.result_keys()))
before = rss()
finish_results(storage)
after = rss()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
size = len(storage.blobs.get(storage.merged_key()) or b"")
print(f"{before:.1f} {after:.1f} {peak:.1f} {size}")
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
    before, after, peak, size = out.stdout.split()
    print(
        f"merge of {args.cases:,} cases in {args.cases // ENTRY} objects: RSS {before} MB "
        f"before, {after} MB after ({float(after) - float(before):+.1f} MB; peak {peak} MB); "
        f"results.parquet {int(size) / 1e6:.1f} MB"
    )


if __name__ == "__main__":
    main()
