"""What ``proctor COMMAND`` imports before it runs (issue 21's start-up): only the invoked
command's module, so ``proctor run`` never pays for the operator, the CRD generator, the
cluster client or the benchmark worker. Checked in a fresh interpreter by the modules it
holds, never by timing (docs/performance.md has the figures)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from proctor.cli.main import COMMANDS, build_parser, invoked_command

ROOT = Path(__file__).resolve().parents[1]

PARSE_AND_LIST = """\
import json, sys
from proctor.cli.main import build_parser, invoked_command
argv = sys.argv[1:]
build_parser("proctor", invoked_command(argv)).parse_args(argv)
print(json.dumps(sorted(sys.modules)))
"""

NOT_FOR_RUN = (
    # Other commands' modules and what only they need.
    "proctor.api.crdgen",
    "proctor.bench",
    "proctor.cli.cancel",
    "proctor.cli.context",
    "proctor.cli.crds",
    "proctor.cli.operator",
    "proctor.cli.plan",
    "proctor.cli.results",
    "proctor.cli.status",
    "proctor.cli.worker",
    "proctor.cluster",
    "proctor.controller",
    "proctor.evalrun",
    "proctor.suite",
    "kopf",
    "kubernetes",
    "urllib3",
    # The queue and storage services a local run does not name.
    "boto3",
    "botocore",
    "redis",
)


def modules_after_parsing(*argv: str) -> set[str]:
    """The modules a fresh interpreter holds once ``proctor ARGV``'s arguments are parsed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", PARSE_AND_LIST, *argv],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        timeout=120,
    )
    return set(json.loads(done.stdout))


def loaded(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(f"{package}."))


def test_run_imports_only_what_a_local_evalrun_needs(tmp_path: Path) -> None:
    modules = modules_after_parsing("run", str(tmp_path / "run.yaml"), "--workers", "2")
    assert "proctor.cli.run" in modules  # the command's own module, and nothing beside it
    found = {name: loaded(modules, name) for name in NOT_FOR_RUN}
    assert {name: mods for name, mods in found.items() if mods} == {}


def test_a_cluster_command_does_not_load_the_run_engine() -> None:
    modules = modules_after_parsing("get", "-n", "default")
    assert "proctor.cli.get" in modules
    for name in ("proctor.local", "proctor.bench", "proctor.worker", "pyarrow"):
        assert loaded(modules, name) == [], name


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run", "f.yaml"], "run"),
        (["bench-worker"], "bench-worker"),
        (["operator", "--peering"], "operator"),
        ([], None),
        (["--help"], None),
        (["-h", "run"], None),  # the top-level help lists every command
        (["--version"], None),
        (["f.yaml"], None),  # not a command: the full parser says which ones there are
        (["runn", "f.yaml"], None),
    ],
)
def test_invoked_command(argv: list[str], command: str | None) -> None:
    assert invoked_command(argv) == command


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "f.yaml", "--workers", "3", "--json"],
        ["operator", "--peering", "-n", "a", "-n", "b"],
        ["worker", "--queue", "redis://q:6379/0"],
        ["crds", "--out-dir", "out"],
    ],
)
def test_a_command_parses_alone_as_in_the_full_parser(argv: list[str]) -> None:
    alone = vars(build_parser(command=argv[0]).parse_args(argv))
    full = vars(build_parser().parse_args(argv))
    assert alone == full


def test_every_command_is_listed_with_its_help() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    helps = {a.dest: a.help for a in getattr(sub, "_choices_actions", [])}
    assert list(helps) == [name for name, _, _ in COMMANDS]
    assert all(helps.values()), helps


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=300,
    )


def test_exit_at_once_runs_exit_handlers_and_flushes() -> None:
    done = python(
        "import atexit, sys\n"
        "from proctor.cli.main import exit_at_once\n"
        "atexit.register(lambda: print('handler ran', file=sys.stderr))\n"
        "sys.stdout.write('unflushed line')\n"
        "exit_at_once(5)\n"
        "print('not reached')\n"
    )
    assert (done.returncode, done.stdout, done.stderr) == (5, "unflushed line", "handler ran\n")


def test_exit_at_once_leaves_the_usual_exit_to_a_running_thread() -> None:
    done = python(
        "import threading, time\n"
        "from proctor.cli.main import exit_at_once\n"
        "t = threading.Thread(target=time.sleep, args=(0.5,))\n"
        "t.start()\n"
        "exit_at_once(5)\n"
        "print('returned')\n"
    )
    assert (done.returncode, done.stdout) == (0, "returned\n")


def test_proctor_run_as_the_program_writes_everything_before_it_exits(tmp_path: Path) -> None:
    manifest = tmp_path / "small.yaml"
    manifest.write_text(
        "apiVersion: proctor.dev/v1alpha1\nkind: EvalRun\nmetadata: {name: small}\n"
        "spec:\n  image: proctor/proctor:0.1.0\n"
        "  task: {entrypoint: 'proctor.examples.topk:task', params: {maxLength: 20}}\n"
        "  cases: {count: 300, seed: 1}\n  batch: {initialSize: 50}\n"
    )
    results = tmp_path / "results"
    done = python(
        "", "-m", "proctor", "run", str(manifest), "--json", "--workers", "2",
        "--results-dir", str(results),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["completed"] == 300
    assert json.loads((results / "small" / "summary.json").read_text())["completed"] == 300
    assert (results / "small" / "results.parquet").stat().st_size > 0
