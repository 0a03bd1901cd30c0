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

``--spec dedupe`` runs a spec richer than ``top_k`` instead (``e2e/bench/mg_dedupe.py``: hard
and soft properties, four relations, a cluster key and a metric), with ``--ci-method
bootstrap-cluster`` on both sides; Metamorphic Guard's command is run with the spec registered
(``python -m e2e.bench.mg_dedupe evaluate ...``), Proctor loads it as
``e2e.bench.mg_dedupe:dedupe_spec``. Then not only the decisions but the reports must agree:
each side's passes, total, pass rate and property and relation violations, the delta and its
interval, the relative risk and its interval, the metrics and the relation coverage.

    python e2e/bench/vs_metamorphic_guard.py [--n 400] [--seed 42] [--workers 2]
        [--repeats 3] [--proctor-n N]   # N: also time Proctor alone at a larger n
        [--spec top_k|dedupe]
"""

from __future__ import annotations

import argparse
import compileall
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from e2e.bench import mg_dedupe  # noqa: E402

BASELINE = "def solve(L, k):\n    return sorted(L, reverse=True)[:k]\n"
CANDIDATE = "import heapq\n\ndef solve(L, k):\n    return heapq.nlargest(k, L) if k > 0 else []\n"


def timed(command: list[str], cwd: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    return time.perf_counter() - t0, done


SPECS = {
    # name: (Metamorphic Guard's command and task, Proctor's task, baseline, candidate, options)
    "top_k": (["metamorphic-guard"], "top_k", "top_k", BASELINE, CANDIDATE, []),
    "dedupe": (
        [sys.executable, "-m", "e2e.bench.mg_dedupe"], mg_dedupe.NAME,
        "e2e.bench.mg_dedupe:dedupe_spec", mg_dedupe.BASELINE, mg_dedupe.CANDIDATE,
        ["--ci-method=bootstrap-cluster"],
    ),
}  # fmt: skip
SIDE_FIELDS = ("passes", "total", "pass_rate", "prop_violations", "mr_violations")
REPORT_FIELDS = ("delta_pass_rate", "delta_ci", "relative_risk", "relative_risk_ci", "metrics",
                 "relation_coverage", "decision")  # fmt: skip


def report_differences(mg: dict[str, Any], pr: dict[str, Any]) -> list[str]:
    """The report fields on which the two differ (empty: the reports agree)."""
    out = [f for f in REPORT_FIELDS if mg.get(f) != pr.get(f)]
    for side in ("baseline", "candidate"):
        out += [f"{side}.{f}" for f in SIDE_FIELDS if mg[side].get(f) != pr[side].get(f)]
    return out


def run_proctor(
    cwd: Path, n: int, seed: int, workers: int, spec: str
) -> tuple[float, dict[str, Any]]:
    _, _, task, _, _, options = SPECS[spec]
    seconds, done = timed(
        [sys.executable, "-m", "proctor.mgadapter", "evaluate", "--task", task,
         "--baseline", "b.py", "--candidate", "c.py", f"--n={n}", f"--seed={seed}",
         f"--workers={workers}", f"--name=bench-{n}", "--json", "--timeout-s=60", *options],
        cwd,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise SystemExit(f"proctor failed ({done.returncode}):\n{done.stderr}")
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return seconds, report


def run_mg(cwd: Path, args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    command, name, _, _, _, options = SPECS[args.spec]
    seconds, done = timed(
        [*command, "evaluate", "--task", name, "--baseline", "b.py", "--candidate", "c.py",
         f"--n={args.n}", f"--seed={args.seed}", f"--parallel={args.workers}",
         "--report-dir=mg", "--timeout-s=60", *options],
        cwd,
    )  # fmt: skip
    if done.returncode not in (0, 1):
        raise SystemExit(f"metamorphic-guard failed ({done.returncode}):\n{done.stderr}")
    (path,) = glob.glob(str(cwd / "mg" / "report_*[0-9].json"))
    report: dict[str, Any] = json.loads(Path(path).read_text())
    return seconds, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--proctor-n", type=int, default=0)
    parser.add_argument("--spec", choices=sorted(SPECS), default="top_k")
    args = parser.parse_args()
    import proctor

    compileall.compile_dir(Path(proctor.__file__).parent, quiet=1)
    # Both commands import e2e.bench.mg_dedupe (the dedupe spec) by name.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    _, _, _, baseline, candidate, _ = SPECS[args.spec]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "b.py").write_text(baseline)
        (cwd / "c.py").write_text(candidate)
        mg_s, mg_report = run_mg(cwd, args)
        mg_adopt = bool(mg_report["decision"]["adopt"])
        runs = [
            run_proctor(cwd, args.n, args.seed, args.workers, args.spec)
            for _ in range(max(1, args.repeats))
        ]
        pr_s = statistics.median(seconds for seconds, _ in runs)
        pr_adopt = bool(runs[0][1]["decision"]["adopt"])
        if any(bool(r["decision"]["adopt"]) != pr_adopt for _, r in runs):
            raise SystemExit("proctor's repeats disagree")
        mg_rate, pr_rate = args.n / mg_s, args.n / pr_s
        print(f"metamorphic-guard evaluate: spec={args.spec} n={args.n} {mg_s:.1f}s "
              f"{mg_rate:.1f} cases/s adopt={mg_adopt}")  # fmt: skip
        times = ", ".join(f"{seconds:.2f}" for seconds, _ in runs)
        print(f"proctor (mgadapter):        spec={args.spec} n={args.n} {pr_s:.2f}s "
              f"{pr_rate:.1f} cases/s adopt={pr_adopt} (median of {times} s)")  # fmt: skip
        if mg_adopt != pr_adopt:
            raise SystemExit("the decisions differ")
        if args.spec != "top_k":
            differ = report_differences(mg_report, runs[0][1])
            if differ:
                raise SystemExit(f"the reports differ in {', '.join(differ)}")
            print(f"reports agree on {', '.join(REPORT_FIELDS)} and each side's "
                  f"{', '.join(SIDE_FIELDS)}")  # fmt: skip
        if args.proctor_n:
            big_s, _ = run_proctor(cwd, args.proctor_n, args.seed, args.workers, args.spec)
            print(f"proctor (mgadapter):        n={args.proctor_n} {big_s:.2f}s "
                  f"{args.proctor_n / big_s:.1f} cases/s (against metamorphic-guard's rate at "
                  f"n={args.n}: {args.proctor_n / big_s / mg_rate:.0f}x)")  # fmt: skip
        print(f"ratio of cases per second (proctor / metamorphic-guard): {pr_rate / mg_rate:.1f}")


if __name__ == "__main__":
    main()
