"""Proctor against ``metamorphic-guard evaluate`` on the same task, n and seed, on this machine.

Both compare the same baseline and candidate (sorted vs. heap top-k, written as Metamorphic
Guard implementation files) on Metamorphic Guard's built-in ``top_k`` task. Metamorphic Guard
runs with ``--parallel W`` (its sandbox: one subprocess per call); Proctor runs the same options
through ``python -m proctor.mgadapter evaluate`` (``proctor run`` with W local workers, then
Metamorphic Guard's report from the records). Each side's time is its whole command, start to
exit, with 60 s per-call timeouts on both (a loaded machine must not time calls out and change
the verdict), so Proctor's figure includes starting workers, the queue and the report. The decisions
must agree. Proctor's command is timed ``--repeats`` times (default 3) and its median taken;
Metamorphic Guard's once (it takes minutes). The last line is the ratio of cases per second
(target: >= 100).

Both sides import from bytecode: pip compiles ``.pyc`` files when it installs a wheel (as it
did for Metamorphic Guard), but an editable install never has them where
``PYTHONDONTWRITEBYTECODE`` is set, and compiling Proctor's sources on every start would cost
it about 0.3 s that no installed copy pays; so the bench byte-compiles the package first.

    python e2e/bench/vs_metamorphic_guard.py [--n 400] [--seed 42] [--workers 2]
        [--repeats 3] [--proctor-n N]   # N: also time Proctor alone at a larger n
"""

from __future__ import annotations

import argparse
import compileall
import glob
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = "def solve(L, k):\n    return sorted(L, reverse=True)[:k]\n"
CANDIDATE = "import heapq\n\ndef solve(L, k):\n    return heapq.nlargest(k, L) if k > 0 else []\n"


def timed(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, done


def run_proctor(cwd: Path, n: int, seed: int, workers: int, name: str) -> tuple[float, bool]:
    seconds, done = timed(
        [sys.executable, "-m", "proctor.mgadapter", "evaluate", "--task", "top_k",
         "--baseline", "b.py", "--candidate", "c.py", f"--n={n}", f"--seed={seed}",
         f"--workers={workers}", f"--name=bench-{n}", "--json", "--timeout-s=60"],
        cwd,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise SystemExit(f"proctor failed ({done.returncode}):\n{done.stderr}")
    report = json.loads(done.stdout.splitlines()[-1])
    return seconds, bool(report["decision"]["adopt"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--proctor-n", type=int, default=0)
    args = parser.parse_args()
    import proctor

    compileall.compile_dir(Path(proctor.__file__).parent, quiet=1)
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "b.py").write_text(BASELINE)
        (cwd / "c.py").write_text(CANDIDATE)
        mg_s, mg = timed(
            ["metamorphic-guard", "evaluate", "--task", "top_k", "--baseline", "b.py",
             "--candidate", "c.py", f"--n={args.n}", f"--seed={args.seed}",
             f"--parallel={args.workers}", "--report-dir=mg", "--timeout-s=60"],
            cwd,
        )  # fmt: skip
        if mg.returncode not in (0, 1):
            raise SystemExit(f"metamorphic-guard failed ({mg.returncode}):\n{mg.stderr}")
        (path,) = glob.glob(str(cwd / "mg" / "report_*[0-9].json"))
        mg_adopt = bool(json.loads(Path(path).read_text())["decision"]["adopt"])
        runs = [
            run_proctor(cwd, args.n, args.seed, args.workers, "bench")
            for _ in range(max(1, args.repeats))
        ]
        pr_s = statistics.median(seconds for seconds, _ in runs)
        pr_adopt = runs[0][1]
        if any(adopt != pr_adopt for _, adopt in runs):
            raise SystemExit("proctor's repeats disagree")
        mg_rate, pr_rate = args.n / mg_s, args.n / pr_s
        print(f"metamorphic-guard evaluate: n={args.n} {mg_s:.1f}s {mg_rate:.1f} cases/s "
              f"adopt={mg_adopt}")  # fmt: skip
        times = ", ".join(f"{seconds:.2f}" for seconds, _ in runs)
        print(f"proctor (mgadapter):        n={args.n} {pr_s:.2f}s {pr_rate:.1f} cases/s "
              f"adopt={pr_adopt} (median of {times} s)")  # fmt: skip
        if mg_adopt != pr_adopt:
            raise SystemExit("the decisions differ")
        if args.proctor_n:
            big_s, _ = run_proctor(cwd, args.proctor_n, args.seed, args.workers, "big")
            print(f"proctor (mgadapter):        n={args.proctor_n} {big_s:.2f}s "
                  f"{args.proctor_n / big_s:.1f} cases/s")  # fmt: skip
        print(f"ratio of cases per second (proctor / metamorphic-guard): {pr_rate / mg_rate:.1f}")


if __name__ == "__main__":
    main()
