"""The ``proctor`` command's output rules (issue 19): nothing cut off a terminal, user text
never read as markup, a file runs whole or not at all, ``validate`` reads like ``kubectl -f``,
``run -n`` still works with a warning, and an interrupted summary says how to resume."""

from __future__ import annotations

import io
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.table import Table

from proctor.cli import build_parser, main
from proctor.console import UNBOUNDED_WIDTH, escape, make_console, plain

ROOT = Path(__file__).resolve().parents[1]

EVALRUN: dict[str, Any] = {
    "apiVersion": "proctor.dev/v1alpha1",
    "kind": "EvalRun",
    "metadata": {"name": "small"},
    "spec": {
        "image": "proctor/proctor:0.1.0",
        "task": {"entrypoint": "proctor.examples.topk:task", "params": {"maxLength": 20, "k": 3}},
        "cases": {"count": 40, "seed": 1},
    },
}

SUITE: dict[str, Any] = {
    "apiVersion": "proctor.dev/v1alpha1",
    "kind": "BenchmarkSuite",
    "metadata": {"name": "nap"},
    "spec": {
        "image": "unused",
        "benchmarks": [{"name": "nap", "command": ["true"], "warmup": 0, "repetitions": 3}],
        "variants": [{"name": "git"}, {"name": "jj"}],
    },
}

LONG = "a-results-folder-whose-name-is-far-longer-than-eighty-columns-" * 3


def proctor(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it in a pipe (stdout and stderr are not terminals)."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "operator"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "proctor", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        env=env,
        input=stdin,
        timeout=240,
    )


def write(path: Path, *docs: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump_all(docs))
    return path


# -- width ------------------------------------------------------------------------------------


def test_a_console_off_a_terminal_is_unbounded_and_tables_fit_their_content() -> None:
    buf = io.StringIO()
    console = make_console(file=buf)
    assert console.width == UNBOUNDED_WIDTH
    table = Table()
    for column in ("benchmark", "median", "vs baseline"):
        table.add_column(column)
    table.add_row("x" * 120, "1.0s", "1.300x REGRESSION")
    console.print(table)
    lines = buf.getvalue().splitlines()
    assert any("vs baseline" in line for line in lines)
    assert any("x" * 120 in line and "1.300x REGRESSION" in line for line in lines)
    assert max(len(line) for line in lines) < 200  # as wide as the content, not the console


def test_evalrun_summary_keeps_the_whole_results_path_in_a_pipe(tmp_path: Path) -> None:
    manifest = write(tmp_path / "small.yaml", EVALRUN)
    results = tmp_path / LONG
    out = proctor("run", str(manifest), "--workers", "1", "--results-dir", str(results), cwd=ROOT)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if " results " in f" {line} ")
    assert results.as_uri() in row


def test_suite_table_keeps_vs_baseline_and_paths_in_a_pipe(tmp_path: Path) -> None:
    results = str(tmp_path / LONG)
    first = proctor(
        "run", str(write(tmp_path / "a.yaml", SUITE)), "--results-dir", results,
        "--run-id", "r1", "--json", cwd=tmp_path,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    base = json.loads(first.stdout)["resultsUri"]
    again = {**SUITE, "spec": {**SUITE["spec"], "baseline": {"resultsUri": base}}}
    second = proctor(
        "run", str(write(tmp_path / "b.yaml", again)), "--results-dir", results,
        "--run-id", "r2", cwd=tmp_path,
    )  # fmt: skip
    assert second.returncode in (0, 1), second.stderr
    lines = second.stdout.splitlines()
    assert any("vs baseline" in line for line in lines), second.stdout
    rows = [line for line in lines if line.startswith("│ nap")]
    assert len(rows) == 2, lines
    assert all(" ok " in row or "REGRESSION" in row for row in rows), lines
    assert any(line.strip().startswith("nap: jj/git = ") and "x [" in line for line in lines)
    report = next(line for line in lines if line.startswith("report: "))
    assert report.startswith(f"report: {Path(results).as_uri()}/default/nap/r2")


# -- escaping ---------------------------------------------------------------------------------


def test_user_text_is_never_read_as_markup() -> None:
    buf = io.StringIO()
    console = make_console(file=buf)
    hint = "pip install 'proctor[metamorphic-guard]' [bold]x[/bold]"
    console.print(f"[red]error:[/red] {escape(hint)}")
    table = Table()
    table.add_column("what")
    table.add_row(plain(hint))
    console.print(table)
    printed = buf.getvalue()
    assert printed.count(hint) == 2


def test_a_suite_error_keeps_brackets_of_user_paths(tmp_path: Path) -> None:
    missing = tmp_path / "[metamorphic-guard]" / "none"
    suite = {**SUITE, "spec": {**SUITE["spec"], "baseline": {"resultsUri": str(missing)}}}
    out = proctor("run", str(write(tmp_path / "s.yaml", suite)), cwd=tmp_path)
    assert out.returncode == 2, out.stderr
    assert "[metamorphic-guard]" in out.stderr
    assert out.stderr.startswith("error:")


# -- one file, one run ------------------------------------------------------------------------


def test_a_file_with_an_evalrun_and_a_suite_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    manifest = write(tmp_path / "both.yaml", EVALRUN, SUITE)
    out = proctor("run", str(manifest), "--results-dir", str(tmp_path / "res"), cwd=tmp_path)
    assert out.returncode == 2
    assert "EvalRun/small" in out.stderr
    assert "BenchmarkSuite/nap" in out.stderr
    assert "none was run" in out.stderr
    assert not (tmp_path / "res").exists()


def test_other_kinds_beside_one_evalrun_are_ignored(tmp_path: Path) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}}
    manifest = write(tmp_path / "with-secret.yaml", secret, EVALRUN)
    out = proctor(
        "run", str(manifest), "--workers", "1", "--json", "--results-dir",
        str(tmp_path / "res"), cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["completed"] == 40


# -- validate like kubectl -f -----------------------------------------------------------------


def test_validate_reads_stdin(tmp_path: Path) -> None:
    good = proctor("validate", "-", cwd=tmp_path, stdin=yaml.safe_dump_all([EVALRUN, SUITE]))
    assert good.returncode == 0, good.stderr
    assert "<stdin>: EvalRun/small: valid" in good.stdout
    assert "<stdin>: BenchmarkSuite/nap: valid" in good.stdout
    bad = {**EVALRUN, "spec": {**EVALRUN["spec"], "workers": {"min": 5, "max": 2}}}
    out = proctor("validate", "-", cwd=tmp_path, stdin=yaml.safe_dump(bad))
    assert out.returncode == 1
    assert "workers.min must not exceed workers.max" in out.stderr


def test_validate_reads_a_folder_like_kubectl(tmp_path: Path) -> None:
    folder = tmp_path / "manifests"
    (folder / "nested").mkdir(parents=True)
    write(folder / "a.yaml", EVALRUN)
    (folder / "b.json").write_text(json.dumps(SUITE))
    (folder / "notes.txt").write_text("not a manifest")
    write(folder / "nested" / "c.yml", {**EVALRUN, "metadata": {"name": "Bad_Name"}})
    flat = proctor("validate", f"{folder}/", cwd=tmp_path)
    assert flat.returncode == 0, flat.stderr
    assert [line.split(": ", 1)[1] for line in flat.stdout.splitlines()] == [
        "EvalRun/small: valid",
        "BenchmarkSuite/nap: valid",
    ]
    deep = proctor("validate", "-R", str(folder), cwd=tmp_path)
    assert deep.returncode == 1
    assert "c.yml: EvalRun/Bad_Name: invalid" in deep.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = proctor("validate", str(empty), cwd=tmp_path)
    assert none.returncode == 1
    assert "holds no .yaml, .yml, .json file" in none.stderr


# -- run -n -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "workers", "deprecated"),
    [
        (["run", "f.yaml", "--workers", "3"], 3, None),
        (["run", "f.yaml", "-n", "3"], None, 3),
    ],
)
def test_run_n_is_a_hidden_alias_of_workers(
    argv: list[str], workers: int | None, deprecated: int | None
) -> None:
    args = build_parser().parse_args(argv)
    assert (args.workers, args.workers_n) == (workers, deprecated)
    run_help = proctor("run", "--help", cwd=ROOT).stdout
    assert "-n " not in run_help


def test_run_n_still_works_with_a_deprecation_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    manifest = write(tmp_path / "small.yaml", EVALRUN)
    code = main(["run", str(manifest), "-n", "1", "--json", "--results-dir", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "`proctor run -n` is deprecated" in captured.err
    assert "use --workers" in captured.err
    assert json.loads(captured.out.splitlines()[-1])["completed"] == 40


# -- resume -----------------------------------------------------------------------------------


def test_an_interrupted_summary_says_how_to_resume(tmp_path: Path) -> None:
    doc = {**EVALRUN, "metadata": {"name": "long"}}
    doc["spec"] = {**EVALRUN["spec"], "cases": {"count": 5_000_000, "seed": 1}}
    manifest = write(tmp_path / "long.yaml", doc)
    results = tmp_path / "res"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT)])}
    argv = [sys.executable, "-m", "proctor", "run", str(manifest), "--workers", "1"]
    proc = subprocess.Popen(
        [*argv, "--results-dir", str(results)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not list(results.glob("long/**/results/*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    row = next(line for line in out.splitlines() if "resume" in line and "--resume" in line)
    command = row[row.index("proctor run") :].rstrip(" │|")
    assert shlex.split(command) == [
        "proctor", "run", str(manifest), "--resume", "--run-id", "long",
        "--results-dir", str(results), "--workers", "1",
    ]  # fmt: skip
