"""``proctor run`` against the bare ceiling: the same per-case work with no engine at all.

The work is the quickstart's (``proctor.examples.topk``): each case is generated from
``(seed, index)`` for each side, as the SDK does so that neither side can spoil the other's
input; the sorted baseline and the heap candidate each run on it, their output is checked
against the three properties, and each of the four relations runs the implementation again on
its follow-up case and compares. The bare ceiling does exactly that in a 2-process
``multiprocessing`` pool (fork), in chunks of 1,000 cases, and returns only pass counts to the
parent: no queue, no records, no timeouts. Proctor runs the same task as an EvalRun with
``proctor run --workers 2`` (embedded queue, every case's record written once to a local
folder, the summary and the merged ``results.parquet`` at the end).

Both are timed as whole commands, start to exit (interpreter start-up, imports and process
start included on both sides), alternately, ``--repeats`` times each; the medians are compared.
Cases hold up to ``--max-length`` values (default 40, the task's own default and the size of
issue 21's measurement; the quickstart manifest uses 200, which makes cases about four times
as expensive and the engine's share smaller). Also printed: the time from ``proctor run``'s
start to its first recorded case (the first result object's modification time), median over
the repeats, the CPU seconds of each side's processes (a busy machine stretches wall time;
CPU time much less), and the load average. The last line is ``proctor reaches R of the bare
ceiling`` with R = bare wall / Proctor wall (1.00 is the limit).

    python e2e/bench/vs_bare.py [--cases 100000] [--workers 2] [--repeats 3] [--max-length 40]
"""

from __future__ import annotations

import argparse
import compileall
import json
import multiprocessing
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import proctor
from proctor.examples.topk import TopKTask, top_k_heap, top_k_sorted
from proctor.sdk import case_rng

ROOT = Path(__file__).resolve().parents[2]
SEED = 42
CHUNK = 1000

MANIFEST = """\
apiVersion: proctor.dev/v1alpha1
kind: EvalRun
metadata:
  name: vs-bare
spec:
  image: proctor/proctor:0.1.0
  task:
    entrypoint: proctor.examples.topk:task
    params:
      maxLength: {max_length}
  cases:
    count: {cases}
    seed: {seed}
  compare:
    baseline:
      ref: proctor.examples.topk:top_k_sorted
    candidate:
      ref: proctor.examples.topk:top_k_heap
    minDelta: -0.01
  batch:
    initialSize: 250
    targetDuration: 5s
  caseTimeout: 10s
"""

_TASKS: dict[int, TopKTask] = {}


def _side_passes(task: TopKTask, impl: Any, index: int) -> bool:
    case = task.generate(SEED, index)
    out = impl(case)
    ok = all(p.check(case, out) for p in task.properties)
    for rel in task.relations:
        follow = (
            rel.transform(case, case_rng(SEED, index, rel.name))
            if rel.uses_rng
            else rel.transform(case)
        )
        follow_out = impl(follow)
        holds = follow_out == out if rel.relate is None else rel.relate(out, follow_out)
        ok = ok and bool(holds)
    return ok


def bare_counts(start: int, end: int, max_length: int) -> tuple[int, int]:
    """The work of cases ``[start, end)``: how many passed on the baseline and the candidate."""
    task = _TASKS.get(max_length) or _TASKS.setdefault(
        max_length, TopKTask({"maxLength": max_length})
    )
    passed = [0, 0]
    for index in range(start, end):
        for side, impl in enumerate((top_k_sorted, top_k_heap)):
            passed[side] += _side_passes(task, impl, index)
    return passed[0], passed[1]


def _chunk(job: tuple[int, int, int]) -> tuple[int, int]:
    return bare_counts(*job)


def bare(cases: int, workers: int, max_length: int) -> tuple[int, int]:
    """The bare ceiling's run: pass counts of baseline and candidate."""
    chunks = [(s, min(cases, s + CHUNK), max_length) for s in range(0, cases, CHUNK)]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(workers) as pool:
        counts = pool.map(_chunk, chunks, chunksize=1)
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def children_cpu() -> float:
    """CPU seconds of the waited-for descendants of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_bare(args: argparse.Namespace) -> tuple[float, tuple[int, int]]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--bare-child", f"--cases={args.cases}",
         f"--workers={args.workers}", f"--max-length={args.max_length}"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    baseline, candidate = json.loads(done.stdout.splitlines()[-1])
    return seconds, (baseline, candidate)


def time_proctor(
    args: argparse.Namespace, tmp: Path, n: int
) -> tuple[float, float, dict[str, Any]]:
    """(wall seconds, seconds to the first recorded case, the summary)."""
    results = tmp / f"results-{n}"
    start_wall = time.time()
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "proctor", "run", str(tmp / "run.yaml"), "--json",
         f"--workers={args.workers}", f"--results-dir={results}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"proctor run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout)
    first = min(p.stat().st_mtime for p in (results / "vs-bare" / "results").glob("*.arrow*"))
    return seconds, first - start_wall, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--bare-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_child:
        print(json.dumps(bare(args.cases, args.workers, args.max_length)))
        return
    # As vs_metamorphic_guard.py: an installed copy has bytecode; an editable one may not.
    compileall.compile_dir(Path(proctor.__file__).parent, quiet=1)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "operator"), os.environ.get("PYTHONPATH", "")) if p
    )
    bare_s: list[float] = []
    proctor_s: list[float] = []
    first_s: list[float] = []
    bare_cpu: list[float] = []
    proctor_cpu: list[float] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "run.yaml").write_text(
            MANIFEST.format(cases=args.cases, seed=SEED, max_length=args.max_length)
        )
        for n in range(max(1, args.repeats)):
            c0 = children_cpu()
            seconds, counts = time_bare(args)
            bare_s.append(seconds)
            c1 = children_cpu()
            seconds, first, summary = time_proctor(args, tmp, n)
            proctor_s.append(seconds)
            bare_cpu.append(c1 - c0)
            proctor_cpu.append(children_cpu() - c1)
            first_s.append(first)
            if summary["completed"] != args.cases:
                raise SystemExit(f"proctor recorded {summary['completed']} of {args.cases}")
            passed = tuple(
                round(summary[f"{side}PassRate"] * args.cases) for side in ("baseline", "candidate")
            )
            if passed != counts:
                raise SystemExit(f"pass counts differ: bare {counts}, proctor {passed}")
            print(f"repeat {n + 1}: bare {bare_s[-1]:.2f} s ({bare_cpu[-1]:.2f} s CPU), proctor "
                  f"{proctor_s[-1]:.2f} s ({proctor_cpu[-1]:.2f} s CPU; first recorded case "
                  f"after {first:.2f} s)", flush=True)  # fmt: skip
    b, p = statistics.median(bare_s), statistics.median(proctor_s)
    print(f"bare ceiling ({args.workers} processes): median {b:.2f} s; proctor run "
          f"--workers {args.workers}: median {p:.2f} s; {args.cases:,} cases")  # fmt: skip
    print(f"start to first recorded case: median {statistics.median(first_s):.2f} s")
    cpu = statistics.median(bare_cpu) / statistics.median(proctor_cpu)
    print(f"CPU seconds, all processes: bare median {statistics.median(bare_cpu):.2f}, proctor "
          f"median {statistics.median(proctor_cpu):.2f} (bare / proctor {cpu:.2f}; on a busy "
          "machine this tells more than wall time)")  # fmt: skip
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"proctor reaches {b / p:.2f} of the bare ceiling")


if __name__ == "__main__":
    main()
