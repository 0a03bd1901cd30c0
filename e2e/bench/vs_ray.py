"""``proctor run`` against Ray on the same work, on this machine.

The work is ``vs_bare.py``'s (the quickstart's top-k comparison, both sides, three properties
and four relations per case). Ray runs it as tasks of ``--chunk`` cases (default 1,000) on a
local Ray with ``--workers`` CPUs, each task returning its pass counts to the driver: no
records are kept, so Ray does less than Proctor, which writes every case's record once.
Proctor runs it with ``proctor run --workers N``. Both are timed as whole commands, start to
exit (Ray's includes ``ray.init``, also printed on its own), alternately, ``--repeats`` times;
the medians are compared and the pass counts must agree. The last line is ``proctor reaches R
of ray`` with R = Ray's wall / Proctor's wall (above 1.00: Proctor is faster).

Ray is optional: ``pip install 'proctor[bench]'`` (or ``pip install ray``). Without it the
bench says so on stderr and exits with status 2; it never passes silently.

    python e2e/bench/vs_ray.py [--cases 100000] [--workers 2] [--repeats 3] [--max-length 40]
"""

from __future__ import annotations

import argparse
import compileall
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import proctor  # noqa: E402
from e2e.bench.vs_bare import MANIFEST, SEED, bare_counts, time_proctor  # noqa: E402

EXIT_NO_RAY = 2


def ray_child(args: argparse.Namespace) -> None:
    """In the timed child: run the work on Ray, print (init seconds, pass counts)."""
    import ray

    t0 = time.perf_counter()
    ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
    init = time.perf_counter() - t0

    @ray.remote
    def chunk(start: int, end: int, max_length: int) -> tuple[int, int]:
        baseline, candidate = bare_counts(start, end, max_length)
        return int(baseline), int(candidate)

    refs = [
        chunk.remote(s, min(args.cases, s + args.chunk), args.max_length)
        for s in range(0, args.cases, args.chunk)
    ]
    counts = ray.get(refs)
    ray.shutdown()
    passed = (sum(c[0] for c in counts), sum(c[1] for c in counts))
    print(json.dumps({"init": init, "passed": passed}))


def time_ray(args: argparse.Namespace) -> tuple[float, float, tuple[int, int]]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--ray-child", f"--cases={args.cases}",
         f"--workers={args.workers}", f"--chunk={args.chunk}", f"--max-length={args.max_length}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"the Ray run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.splitlines()[-1])
    return seconds, float(out["init"]), (int(out["passed"][0]), int(out["passed"][1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunk", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--ray-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if importlib.util.find_spec("ray") is None:
        print(
            "vs_ray: Ray is not installed, so this benchmark cannot run (nothing was measured); "
            "install it with: pip install 'proctor[bench]'",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_NO_RAY)
    if args.ray_child:
        ray_child(args)
        return
    compileall.compile_dir(Path(proctor.__file__).parent, quiet=1)
    # Ray's workers import e2e.bench.vs_bare (the work) by name, as Proctor's import the task.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "operator"), str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    ray_s: list[float] = []
    init_s: list[float] = []
    proctor_s: list[float] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        (tmp / "run.yaml").write_text(
            MANIFEST.format(cases=args.cases, seed=SEED, max_length=args.max_length)
        )
        for n in range(max(1, args.repeats)):
            seconds, init, counts = time_ray(args)
            ray_s.append(seconds)
            init_s.append(init)
            seconds, _, summary = time_proctor(args, tmp, n)
            proctor_s.append(seconds)
            passed = tuple(
                round(summary[f"{side}PassRate"] * args.cases) for side in ("baseline", "candidate")
            )
            if summary["completed"] != args.cases or passed != counts:
                raise SystemExit(f"results differ: ray {counts}, proctor {passed}")
            print(f"repeat {n + 1}: ray {ray_s[-1]:.2f} s (ray.init {init:.2f} s), "
                  f"proctor {proctor_s[-1]:.2f} s", flush=True)  # fmt: skip
    r, p = statistics.median(ray_s), statistics.median(proctor_s)
    print(f"ray, tasks of {args.chunk} cases on {args.workers} CPUs: median {r:.2f} s "
          f"(ray.init median {statistics.median(init_s):.2f} s); proctor run --workers "
          f"{args.workers}: median {p:.2f} s; {args.cases:,} cases")  # fmt: skip
    print(f"proctor reaches {r / p:.2f} of ray")


if __name__ == "__main__":
    main()
